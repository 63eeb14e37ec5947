"""StyleGAN (v1) generator in InterfaceGAN's state-dict layout (genforce/interfacegan
``models/stylegan_generator_model.py``, converted from NVlabs' TF weights: ``stylegan_ffhq.pth``,
``stylegan_celebahq.pth``), our own module in plain PyTorch.

Layout: ``truncation.w_avg``; ``mapping.dense{0..7}.linear.weight`` + ``.wscale.bias`` (lr multiplier 0.01, gain
sqrt 2, leaky ReLU); ``synthesis.layer{i}`` (``layer0.first_layer`` the 4x4 constant; even layers upsample: nearest
x2 + ``conv.weight`` (O, I, 3, 3), or from 128 px up InterfaceGAN's fused transposed convolution, ``weight``
(3, 3, I, O); then ``blur.kernel``), each with an ``epilogue`` (``apply_noise.noise`` buffer + per-channel
``weight``, ``bias``, leaky ReLU, instance norm, ``style_mod.dense``), ``synthesis.output{j}`` ToRGB per
resolution, ``synthesis.lod`` (0 for a trained model: every block runs). The per-layer truncation coefficients
InterfaceGAN rebuilds at load (``truncation.truncation``) are not in the file; ``lapdata.synthetic.stylegan``
applies the truncation. Noise is the stored one (InterfaceGAN's ``randomize_noise=False``). Built by
``stylegan_files``.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as Fn
from torch import nn

from lapdata.synthetic.stylegan_ops import StyleNet, holder, normalize_2nd_moment


class _Dense(nn.Module):
    """``linear`` (no bias) + ``wscale`` (scale gain / sqrt(fan_in) * lr, bias * lr) + optional leaky ReLU."""

    def __init__(self, i: int, o: int, gain: float, lr_mul: float, lrelu: bool):
        super().__init__()
        self.linear = nn.Linear(i, o, bias=False).requires_grad_(False)
        self.wscale = holder(bias=torch.zeros(o))
        self.scale, self.lr_mul, self.lrelu = gain / math.sqrt(i) * lr_mul, lr_mul, lrelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x) * self.scale + self.wscale.bias * self.lr_mul
        return Fn.leaky_relu(x, 0.2) if self.lrelu else x


class _Mapping(nn.Module):
    def __init__(self, dims: list[tuple[int, int]]):
        super().__init__()
        self.n = len(dims)
        for k, (i, o) in enumerate(dims):
            setattr(self, f"dense{k}", _Dense(i, o, math.sqrt(2.0), 0.01, True))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = normalize_2nd_moment(z)
        for k in range(self.n):
            x = getattr(self, f"dense{k}")(x)
        return x


class _Epilogue(nn.Module):
    def __init__(self, c: int, res: int, w_dim: int):
        super().__init__()
        self.apply_noise = holder(weight=torch.zeros(c))
        self.apply_noise.register_buffer("noise", torch.zeros(1, 1, res, res))
        self.bias = nn.Parameter(torch.zeros(c), requires_grad=False)
        self.style_mod = nn.Module()
        self.style_mod.dense = _Dense(w_dim, 2 * c, 1.0, 1.0, False)
        self.c = c

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = x + self.apply_noise.noise * self.apply_noise.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        x = Fn.leaky_relu(x, 0.2)
        x = x - x.mean(dim=[2, 3], keepdim=True)
        x = x * (x.square().mean(dim=[2, 3], keepdim=True) + 1e-8).rsqrt()
        style = self.style_mod.dense(w).view(-1, 2, self.c, 1, 1)
        return x * (style[:, 0] + 1) + style[:, 1]


class _Layer(nn.Module):
    """One synthesis layer: the constant (layer 0), an upsampling conv (even) or a conv (odd), then the epilogue."""

    def __init__(self, sd: dict, p: str, idx: int, w_dim: int):
        super().__init__()
        res = 2 ** (idx // 2 + 2)
        self.kind = "const" if idx == 0 else ("fused" if p + "weight" in sd else ("up" if idx % 2 == 0 else "conv"))
        if self.kind == "const":
            c = int(sd[p + "first_layer"].shape[1])
            self.first_layer = nn.Parameter(torch.zeros(1, c, 4, 4), requires_grad=False)
        elif self.kind == "fused":
            k, _, i, c = sd[p + "weight"].shape
            self.weight = nn.Parameter(torch.zeros(k, k, i, c), requires_grad=False)
        else:
            c, i, k, _ = sd[p + "conv.weight"].shape
            self.conv = nn.Conv2d(i, c, k, padding=k // 2, bias=False).requires_grad_(False)
        if self.kind != "const":
            self.scale = math.sqrt(2.0) / math.sqrt(i * k * k)
        if idx > 0 and idx % 2 == 0:
            self.blur = nn.Module()
            self.blur.register_buffer("kernel", torch.zeros(c, 1, 3, 3))
        self.epilogue = _Epilogue(int(c), res, w_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.kind == "const":
            x = self.first_layer.repeat(w.shape[0], 1, 1, 1)
        elif self.kind == "fused":  # InterfaceGAN's fused upscale: the 3x3 kernel summed over 4 shifts, stride 2
            k = Fn.pad(self.weight * self.scale, (0, 0, 0, 0, 1, 1, 1, 1))
            k = (k[1:, 1:] + k[:-1, 1:] + k[1:, :-1] + k[:-1, :-1]).permute(2, 3, 0, 1)
            x = Fn.conv_transpose2d(x, k, stride=2, padding=1)
        else:
            if self.kind == "up":
                x = Fn.interpolate(x, scale_factor=2, mode="nearest")
            x = self.conv(x) * self.scale
        if hasattr(self, "blur"):
            x = Fn.conv2d(x, self.blur.kernel, padding=1, groups=x.shape[1])
        return self.epilogue(x, w)


class _ToRGB(nn.Module):
    def __init__(self, c: int, out: int):
        super().__init__()
        self.conv = nn.Conv2d(c, out, 1, bias=False).requires_grad_(False)
        self.bias = nn.Parameter(torch.zeros(out), requires_grad=False)
        self.scale = 1 / math.sqrt(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale + self.bias.view(1, -1, 1, 1)


class InterfaceGANStyleGAN1(StyleNet):
    """InterfaceGAN's StyleGAN generator read from its ``.pth`` state dict (see the module doc)."""

    kind = "interfacegan-stylegan1"

    def __init__(self, sd: dict[str, torch.Tensor]):
        super().__init__()
        n_dense = len({m.group(1) for k in sd for m in [re.fullmatch(r"mapping\.dense(\d+)\.linear\.weight", k)] if m})
        dims = [tuple(int(s) for s in sd[f"mapping.dense{k}.linear.weight"].shape[::-1]) for k in range(n_dense)]
        self.mapping = _Mapping(dims)
        self.z_dim, self.w_dim = dims[0][0], dims[-1][1]
        self.truncation = nn.Module()
        self.truncation.register_buffer("w_avg", torch.zeros(self.w_dim))
        self.num_ws = len({m.group(1) for k in sd for m in [re.fullmatch(r"synthesis\.layer(\d+)\..*", k)] if m})
        self.synthesis = nn.Module()
        for i in range(self.num_ws):
            setattr(self.synthesis, f"layer{i}", _Layer(sd, f"synthesis.layer{i}.", i, self.w_dim))
        for j in range(self.num_ws // 2):
            w = sd[f"synthesis.output{j}.conv.weight"].shape
            setattr(self.synthesis, f"output{j}", _ToRGB(int(w[1]), int(w[0])))
        self.synthesis.lod = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.resolution = 2 ** (self.num_ws // 2 + 1)

    def z_to_w(self, z: torch.Tensor) -> torch.Tensor:
        return self.mapping(z)

    def ws_to_image(self, ws: torch.Tensor) -> torch.Tensor:
        """Blocks past ``lod`` are skipped and the image upsampled (nearest), as InterfaceGAN does."""
        s, lod, blocks = self.synthesis, float(self.synthesis.lod), self.num_ws // 2
        x = image = None
        for b in range(blocks):
            if b + 1 + lod < blocks + 1:
                x = s.layer0(None, ws[:, 0]) if b == 0 else getattr(s, f"layer{2 * b}")(x, ws[:, 2 * b])
                x = getattr(s, f"layer{2 * b + 1}")(x, ws[:, 2 * b + 1])
                image = getattr(s, f"output{b}")(x)
            else:
                image = Fn.interpolate(image, scale_factor=2, mode="nearest")
        return image

    def tracked_w_avg(self) -> torch.Tensor | None:
        return self.truncation.w_avg
