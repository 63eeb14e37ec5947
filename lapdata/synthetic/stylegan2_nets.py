"""StyleGAN2 generators in the two published state-dict layouts, our own modules (plain PyTorch, no compiled ops):

* ``RosinalityG``: rosinality/stylegan2-pytorch ``Generator`` (the ``g_ema`` of its ``.pt`` files): ``style.K``
  mapping, ``input.input``, ``conv1``/``to_rgb1``, ``convs.I``, ``to_rgbs.J``, ``noises.noise_I``.
* ``NVlabsG``: NVlabs stylegan2-ada-pytorch ``Generator`` (``G_ema`` of its ``.pkl``; the stylegan3 repository's
  StyleGAN2 config is the same layout): ``mapping.fcK`` + ``mapping.w_avg``, ``synthesis.b{res}`` blocks with
  ``conv0``/``conv1``/``torgb``, skip or orig architecture, ``noise_const`` buffers, ``conv_clamp``.

Both are built from the weights' own names and shapes (resolution, widths per resolution, mapping depth, style
size), so every published config loads strictly; both run the noise stored in the file (NVlabs' ``noise_mode=
'const'``, rosinality's ``randomize_noise=False``) in float32. Built by ``stylegan_files``.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as Fn
from torch import nn

from lapdata.synthetic.stylegan_ops import (SQRT2, StyleNet, bias_act, holder, modulated_conv2d, normalize_2nd_moment, upsample2d)


def _count(sd: dict, pattern: str) -> int:
    """Number of distinct integers captured by ``pattern`` (one group) over the state-dict keys."""
    return len({m.group(1) for k in sd for m in [re.fullmatch(pattern, k)] if m})


# ------------------------------------------------------------------------------------------------ rosinality


class _EqualLinear(nn.Module):
    def __init__(self, i: int, o: int, lr_mul: float = 1.0, act: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(o, i), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(o), requires_grad=False)
        self.scale, self.lr_mul, self.act = lr_mul / math.sqrt(i), lr_mul, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act:
            return bias_act(Fn.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return Fn.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class _ModConv(nn.Module):
    """rosinality's ModulatedConv2d (weight (1, O, I, k, k), ``modulation``, ``blur`` kernel when upsampling)."""

    def __init__(self, i: int, o: int, k: int, style_dim: int, demodulate: bool = True, up: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, o, i, k, k), requires_grad=False)
        self.modulation = _EqualLinear(style_dim, i)
        self.scale, self.demodulate, self.up = 1 / math.sqrt(i * k * k), demodulate, up
        if up:
            self.blur = nn.Module()
            self.blur.register_buffer("kernel", torch.zeros(4, 4))  # stored pre-scaled (x4)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return modulated_conv2d(x, self.scale * self.weight[0], self.modulation(w), self.demodulate, self.up,
                                self.blur.kernel if self.up else None, up_gain=1.0)


class _StyledConv(nn.Module):
    def __init__(self, i: int, o: int, style_dim: int, up: bool = False):
        super().__init__()
        self.conv = _ModConv(i, o, 3, style_dim, up=up)
        self.noise = holder(weight=torch.zeros(1))
        self.activate = holder(bias=torch.zeros(o))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return bias_act(self.conv(x, w) + self.noise.weight * noise, self.activate.bias)


class _ToRGB(nn.Module):
    def __init__(self, i: int, style_dim: int, up: bool, out: int = 3):
        super().__init__()
        self.conv = _ModConv(i, out, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, out, 1, 1), requires_grad=False)
        if up:
            self.upsample = nn.Module()
            self.upsample.register_buffer("kernel", torch.zeros(4, 4))  # stored pre-scaled (x4)

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        out = self.conv(x, w) + self.bias
        return out if skip is None else out + upsample2d(skip, self.upsample.kernel, gain=1.0)


class RosinalityG(StyleNet):
    """rosinality's StyleGAN2 ``Generator`` read from a ``g_ema`` state dict (see the module doc)."""

    kind = "rosinality-stylegan2"

    def __init__(self, sd: dict[str, torch.Tensor]):
        super().__init__()
        n_mlp = _count(sd, r"style\.(\d+)\.weight")
        self.z_dim = self.w_dim = int(sd["style.1.weight"].shape[1])
        self.style = nn.Sequential(nn.Identity(), *[_EqualLinear(self.w_dim, self.w_dim, 0.01, act=True)
                                                    for _ in range(n_mlp)])
        c4 = int(sd["input.input"].shape[1])
        self.input = holder(input=torch.zeros(1, c4, 4, 4))
        self.conv1 = _StyledConv(c4, c4, self.w_dim)
        self.to_rgb1 = _ToRGB(c4, self.w_dim, up=False)
        n_up = _count(sd, r"to_rgbs\.(\d+)\.bias")
        self.convs, self.to_rgbs, cin = nn.ModuleList(), nn.ModuleList(), c4
        for j in range(n_up):
            cout = int(sd[f"convs.{2 * j}.conv.weight"].shape[1])
            self.convs.extend([_StyledConv(cin, cout, self.w_dim, up=True), _StyledConv(cout, cout, self.w_dim)])
            self.to_rgbs.append(_ToRGB(cout, self.w_dim, up=True))
            cin = cout
        self.noises = nn.Module()
        for i in range(2 * n_up + 1):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.zeros(1, 1, r, r))
        self.resolution, self.num_ws = 2 ** (n_up + 2), 2 * (n_up + 2) - 2
        self.register_buffer("latent_avg", None, persistent=False)

    def z_to_w(self, z: torch.Tensor) -> torch.Tensor:
        return self.style[1:](normalize_2nd_moment(z))

    def ws_to_image(self, ws: torch.Tensor) -> torch.Tensor:
        noise = [getattr(self.noises, f"noise_{i}") for i in range(2 * len(self.to_rgbs) + 1)]
        x = self.input.input.repeat(ws.shape[0], 1, 1, 1)
        x = self.conv1(x, ws[:, 0], noise[0])
        skip = self.to_rgb1(x, ws[:, 1], None)
        for j, to_rgb in enumerate(self.to_rgbs):
            i = 2 * j + 1
            x = self.convs[2 * j](x, ws[:, i], noise[i])
            x = self.convs[2 * j + 1](x, ws[:, i + 1], noise[i + 1])
            skip = to_rgb(x, ws[:, i + 2], skip)
        return skip

    def tracked_w_avg(self) -> torch.Tensor | None:
        return self.latent_avg


# ------------------------------------------------------------------------------------------------ NVlabs


class _FC(nn.Module):
    """NVlabs' FullyConnectedLayer (weight (O, I), bias (O), learning-rate multiplier, linear or lrelu)."""

    def __init__(self, i: int, o: int, lr_mul: float = 1.0, lrelu: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(o, i), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(o), requires_grad=False)
        self.weight_gain, self.bias_gain, self.lrelu = lr_mul / math.sqrt(i), lr_mul, lrelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.matmul((self.weight * self.weight_gain).t())
        return bias_act(x, self.bias * self.bias_gain, self.lrelu, SQRT2 if self.lrelu else 1.0)


class _Mapping(nn.Module):
    def __init__(self, z_dim: int, widths: list[int], lr_mul: float):
        super().__init__()
        self.num_layers = len(widths)
        for k, o in enumerate(widths):
            setattr(self, f"fc{k}", _FC(z_dim if k == 0 else widths[k - 1], o, lr_mul, lrelu=True))
        self.register_buffer("w_avg", torch.zeros(widths[-1]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = normalize_2nd_moment(z)
        for k in range(self.num_layers):
            x = getattr(self, f"fc{k}")(x)
        return x


class _SynthLayer(nn.Module):
    def __init__(self, i: int, o: int, w_dim: int, res: int, k: int, up: bool, noise: bool, clamp: float | None):
        super().__init__()
        self.up, self.use_noise, self.clamp = up, noise, clamp
        self.register_buffer("resample_filter", torch.zeros(4, 4))
        self.affine = _FC(w_dim, i)
        self.weight = nn.Parameter(torch.zeros(o, i, k, k), requires_grad=False)
        if noise:
            self.register_buffer("noise_const", torch.zeros(res, res))
            self.noise_strength = nn.Parameter(torch.zeros([]), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(o), requires_grad=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = modulated_conv2d(x, self.weight, self.affine(w), True, self.up, self.resample_filter)
        if self.use_noise:
            x = x + self.noise_const * self.noise_strength
        return bias_act(x, self.bias, True, SQRT2, self.clamp)


class _ToRGBLayer(nn.Module):
    def __init__(self, i: int, o: int, w_dim: int, clamp: float | None):
        super().__init__()
        self.affine = _FC(w_dim, i)
        self.weight = nn.Parameter(torch.zeros(o, i, 1, 1), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(o), requires_grad=False)
        self.weight_gain, self.clamp = 1 / math.sqrt(i), clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = modulated_conv2d(x, self.weight, self.affine(w) * self.weight_gain, demodulate=False)
        return bias_act(x, self.bias, False, 1.0, self.clamp)


class _Block(nn.Module):
    def __init__(self, sd: dict, p: str, res: int, w_dim: int, clamp: float | None):
        super().__init__()
        self.register_buffer("resample_filter", torch.zeros(4, 4))
        first = p + "const" in sd
        c1 = sd[p + "conv1.weight"].shape
        if first:
            self.const = nn.Parameter(torch.zeros(c1[1], res, res), requires_grad=False)
        else:
            c0 = sd[p + "conv0.weight"].shape
            self.conv0 = _SynthLayer(c0[1], c0[0], w_dim, res, c0[2], True, p + "conv0.noise_const" in sd, clamp)
        self.conv1 = _SynthLayer(c1[1], c1[0], w_dim, res, c1[2], False, p + "conv1.noise_const" in sd, clamp)
        self.has_rgb = p + "torgb.weight" in sd
        if self.has_rgb:
            self.torgb = _ToRGBLayer(c1[0], int(sd[p + "torgb.weight"].shape[0]), w_dim, clamp)
        self.num_conv = 1 if first else 2

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor):
        if x is None:
            x = self.conv1(self.const[None].repeat(ws.shape[0], 1, 1, 1), ws[:, 0])
        else:
            x = self.conv1(self.conv0(x, ws[:, 0]), ws[:, 1])
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.has_rgb:
            y = self.torgb(x, ws[:, self.num_conv])
            img = y if img is None else img + y
        return x, img


class NVlabsG(StyleNet):
    """NVlabs' StyleGAN2 ``Generator`` from its parameters/buffers (``sd``, the names of ``G_ema.state_dict()``)
    and its init kwargs (``kwargs``: z_dim, c_dim, w_dim, img_resolution, mapping_kwargs, synthesis_kwargs)."""

    kind = "nvlabs-stylegan2"

    def __init__(self, sd: dict[str, torch.Tensor], kwargs: dict):
        super().__init__()
        mk, sk = dict(kwargs.get("mapping_kwargs") or {}), dict(kwargs.get("synthesis_kwargs") or {})
        self.z_dim, self.w_dim = int(kwargs["z_dim"]), int(kwargs["w_dim"])
        self.resolution = int(kwargs["img_resolution"])
        n_fc = _count(sd, r"mapping\.fc(\d+)\.weight")
        widths = [int(sd[f"mapping.fc{k}.weight"].shape[0]) for k in range(n_fc)]
        self.mapping = _Mapping(self.z_dim, widths, float(mk.get("lr_multiplier", 0.01)))
        clamp = sk.get("conv_clamp")
        self.synthesis = nn.Module()
        self.res_list = [2 ** k for k in range(2, int(math.log2(self.resolution)) + 1)]
        for res in self.res_list:
            setattr(self.synthesis, f"b{res}", _Block(sd, f"synthesis.b{res}.", res, self.w_dim,
                                                     None if clamp is None else float(clamp)))
        self.num_ws = sum(getattr(self.synthesis, f"b{r}").num_conv for r in self.res_list) + 1

    def z_to_w(self, z: torch.Tensor) -> torch.Tensor:
        return self.mapping(z)

    def ws_to_image(self, ws: torch.Tensor) -> torch.Tensor:
        x = img = None
        i = 0
        for res in self.res_list:
            block = getattr(self.synthesis, f"b{res}")
            x, img = block(x, img, ws[:, i: i + block.num_conv + 1])
            i += block.num_conv
        return img

    def tracked_w_avg(self) -> torch.Tensor | None:
        return self.mapping.w_avg
