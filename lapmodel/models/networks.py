"""The Unsup3D networks (Wu et al., CVPR 2020), for 64, 128 and 256 px input.

The published networks are for 64 px; larger inputs add stride-2 stages (channels capped at 8*nf) so that every
network still reaches a 4x4 map before its 1x1 bottleneck. Shape comments use S for the input side and
``n = log2(S / 4)`` for the number of stride-2 stages (4 at 64 px, 5 at 128, 6 at 256).

Pieces are reusable: ``DownPath.features(x)`` returns the per-scale features (S/2, S/4, ..., 4x4, 1x1 code), which
the LAP aggregation encoders pool, and ``EDDeconv`` is ``encoder`` (DownPath) + ``decoder`` (UpPath) so a code
fused over a photo set can be decoded with ``net.decoder(code)``.
"""

from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn

from lapdata.core.errors import LapError


def num_stages(size: int) -> int:
    """Number of stride-2 stages from ``size`` down to 4x4 (64 -> 4, 128 -> 5, 256 -> 6)."""
    n = math.log2(size / 4) if size > 0 else -1
    if size < 16 or n != int(n):
        raise LapError(f"image size {size} is not supported: use a power of two >= 16 (64, 128 or 256)")
    return int(n)


def stage_channels(nf: int, n: int) -> list[int]:
    """Channels after each stride-2 stage: nf, 2nf, 4nf, 8nf, 8nf, ... (Unsup3D at 64 px: nf, 2nf, 4nf, 8nf)."""
    return [nf * min(2**i, 8) for i in range(n)]


def group_norm(c: int) -> nn.GroupNorm:
    """Unsup3D's GroupNorm (16 groups for 64 channels, i.e. 4 channels per group), valid for any width."""
    return nn.GroupNorm(max(1, c // 4), c)


class Encoder(nn.Module):
    """Image -> vector (light: cout=4, view: cout=6). Convs without normalisation, ReLU, tanh output.

    (B, cin, S, S) -> (B, cout)

    ``channels``: the widths of the stride-2 stages (default ``stage_channels(nf, n)``; the LAP demo's 128 px
    encoders use nf, nf, 2nf, 4nf, 8nf).
    """

    def __init__(self, cin: int, cout: int, size: int = 64, nf: int = 32, activation: type[nn.Module] | None = nn.Tanh,
                 channels: Sequence[int] | None = None):
        super().__init__()
        n = num_stages(size)
        ch = list(channels) if channels is not None else stage_channels(nf, n)
        if len(ch) != n:
            raise ValueError(f"Encoder at {size} px needs {n} stage widths, got {ch}")
        layers: list[nn.Module] = []
        c = cin
        for co in ch:  # (B, c, s, s) -> (B, co, s/2, s/2); S -> S/2 -> ... -> 4
            layers += [nn.Conv2d(c, co, 4, stride=2, padding=1, bias=False), nn.ReLU(inplace=True)]
            c = co
        layers += [
            nn.Conv2d(c, c, 4, stride=1, padding=0, bias=False),  # (B, 8nf, 4, 4) -> (B, 8nf, 1, 1)
            nn.ReLU(inplace=True),
            nn.Conv2d(c, cout, 1, stride=1, padding=0, bias=False),  # (B, 8nf, 1, 1) -> (B, cout, 1, 1)
        ]
        if activation is not None:
            layers.append(activation())
        self.network = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x).reshape(x.shape[0], -1)  # (B, cout)


class DownPath(nn.Module):
    """Encoder half of EDDeconv / ConfNet: (B, cin, S, S) -> code (B, zdim, 1, 1).

    ``features(x)`` returns the output of every stage: [(B, ch[0], S/2, S/2), (B, ch[1], S/4, S/4), ...,
    (B, ch[-1], 4, 4), (B, zdim, 1, 1)] (n + 1 tensors). GroupNorm on every stride-2 stage but the last (as Unsup3D).
    """

    def __init__(self, cin: int, size: int = 64, nf: int = 64, zdim: int = 256):
        super().__init__()
        ch = stage_channels(nf, num_stages(size))
        self.channels = ch + [zdim]
        stages = []
        c = cin
        for i, co in enumerate(ch):  # (B, c, s, s) -> (B, co, s/2, s/2)
            conv = nn.Conv2d(c, co, 4, stride=2, padding=1, bias=False)
            norm = group_norm(co) if i < len(ch) - 1 else nn.Identity()
            stages.append(nn.Sequential(conv, norm, nn.LeakyReLU(0.2, inplace=True)))
            c = co
        stages.append(nn.Sequential(nn.Conv2d(c, zdim, 4, stride=1, padding=0, bias=False),  # 4x4 -> 1x1
                                    nn.ReLU(inplace=True)))
        self.stages = nn.ModuleList(stages)

    def features(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x  # (B, zdim, 1, 1)


class UpPath(nn.Module):
    """Decoder half of EDDeconv: code (B, zdim, 1, 1) -> (B, cout, S, S)."""

    def __init__(self, cout: int, size: int = 64, nf: int = 64, zdim: int = 256,
                 activation: type[nn.Module] | None = nn.Tanh):
        super().__init__()
        ch = stage_channels(nf, num_stages(size))
        c = ch[-1]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(zdim, c, 4, stride=1, padding=0, bias=False),  # (B, zdim, 1, 1) -> (B, 8nf, 4, 4)
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, stride=1, padding=1, bias=False),  # (B, 8nf, 4, 4)
            nn.ReLU(inplace=True),
        ]
        for co in reversed(ch[:-1]):  # (B, c, s, s) -> (B, co, 2s, 2s); 4 -> 8 -> ... -> S/2
            layers += [
                nn.ConvTranspose2d(c, co, 4, stride=2, padding=1, bias=False), group_norm(co), nn.ReLU(inplace=True),
                nn.Conv2d(co, co, 3, stride=1, padding=1, bias=False), group_norm(co), nn.ReLU(inplace=True),
            ]
            c = co
        layers += [
            nn.Upsample(scale_factor=2, mode="nearest"),  # (B, nf, S/2, S/2) -> (B, nf, S, S)
            nn.Conv2d(c, c, 3, stride=1, padding=1, bias=False), group_norm(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 5, stride=1, padding=2, bias=False), group_norm(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, cout, 5, stride=1, padding=2, bias=False),  # (B, nf, S, S) -> (B, cout, S, S)
        ]
        if activation is not None:
            layers.append(activation())
        self.network = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.network(z)


class EDDeconv(nn.Module):
    """Encoder-decoder for canonical depth (cout=1, no activation) and albedo (cout=3, tanh).

    (B, cin, S, S) -> (B, cout, S, S). ``encoder.features(x)`` exposes the per-scale features.
    """

    def __init__(self, cin: int, cout: int, size: int = 64, nf: int = 64, zdim: int = 256,
                 activation: type[nn.Module] | None = nn.Tanh):
        super().__init__()
        self.encoder = DownPath(cin, size, nf, zdim)
        self.decoder = UpPath(cout, size, nf, zdim, activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class ConfNet(nn.Module):
    """Confidence maps (softplus, > 0): full size for the photometric loss, quarter size for the perceptual loss.

    (B, cin, S, S) -> ((B, 2, S, S), (B, 2, S/4, S/4)); channel 0 is for the reconstruction, 1 for the flipped one.
    """

    def __init__(self, cin: int, size: int = 64, nf: int = 64, zdim: int = 128):
        super().__init__()
        ch = stage_channels(nf, num_stages(size))
        self.encoder = DownPath(cin, size, nf, zdim)
        c = ch[-1]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(zdim, c, 4, stride=1, padding=0, bias=False),  # (B, zdim, 1, 1) -> (B, 8nf, 4, 4)
            nn.ReLU(inplace=True),
        ]
        for co in reversed(ch[1:-1]):  # (B, c, s, s) -> (B, co, 2s, 2s); 4 -> ... -> S/4 (ends at 2nf)
            layers += [nn.ConvTranspose2d(c, co, 4, stride=2, padding=1, bias=False), group_norm(co),
                       nn.ReLU(inplace=True)]
            c = co
        self.network = nn.Sequential(*layers)
        c0 = ch[0]
        self.out_net1 = nn.Sequential(
            nn.ConvTranspose2d(c, c0, 4, stride=2, padding=1, bias=False),  # (B, 2nf, S/4) -> (B, nf, S/2)
            group_norm(c0), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c0, c0, 4, stride=2, padding=1, bias=False),  # (B, nf, S/2) -> (B, nf, S)
            group_norm(c0), nn.ReLU(inplace=True),
            nn.Conv2d(c0, 2, 5, stride=1, padding=2, bias=False),  # (B, nf, S, S) -> (B, 2, S, S)
            nn.Softplus(),
        )
        self.out_net2 = nn.Sequential(
            nn.Conv2d(c, 2, 3, stride=1, padding=1, bias=False),  # (B, 2nf, S/4, S/4) -> (B, 2, S/4, S/4)
            nn.Softplus(),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.network(self.encoder(x))  # (B, 2nf, S/4, S/4)
        return self.out_net1(h), self.out_net2(h)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["Encoder", "DownPath", "UpPath", "EDDeconv", "ConfNet", "num_stages", "stage_channels", "group_norm",
           "count_parameters"]
