"""LAP aggregation networks (paper Sec. 3.2): many photos of one identity -> one canonical albedo / depth.

Each photo of the set goes through a shared per-image encoder. Every scale of that encoder is reduced by a 3x3 conv
and global average pooling to a vector; the vectors are concatenated and fused by a 1x1 conv into the photo's code
``x_i`` (Z channels). A small head predicts channel-wise logits from ``x_i``; a softmax over the set (per channel,
padded views get -inf) gives weights ``w_i`` that sum to 1 over the valid views; the identity code is
``x_c = sum_i w_i * x_i`` (Eq. 4), decoded to the canonical map (albedo a_c: 3 channels, depth d_c: 1 channel).

With ``adaptive=False`` the weights are uniform over the valid views (the "average aggregation" ablation of Table 2).
The encoder is the Unsup3D DownPath of ``networks.py`` (GroupNorm, no batch statistics), so a set of one photo gives exactly ``x_c = x_1`` and the output
does not depend on the order of the set or on the padded views.

Shapes: B identities, N views (padded), S image side (a power of two >= 16), Z code channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lapmodel.models.networks import DownPath, UpPath


@dataclass
class AggregateOutput:
    """canon:   (B, C_out, S, S) aggregated canonical map (pre-activation for depth, tanh for albedo)
    code:    (B, Z) identity code x_c
    codes:   (B, N, Z) per-view codes x_i (padded views hold whatever the encoder made of zeros)
    weights: (B, N, Z) aggregation weights, softmax over N per channel, exactly 0 at padded views
    """

    canon: Tensor
    code: Tensor
    codes: Tensor
    weights: Tensor


class ScaleEncoder(nn.Module):
    """Per-image encoder: the Unsup3D DownPath (``networks.DownPath``) whose every scale is reduced to a vector,
    the vectors fused into the code x_i.

    image (M, C_in, S, S) -> code (M, Z). For S = 64 and nf = 64 (n = 4 stride-2 stages):
        stage0 (M, 64, 32, 32)   stage1 (M, 128, 16, 16)   stage2 (M, 256, 8, 8)   stage3 (M, 512, 4, 4)
        stage4 (M, Z, 1, 1)      (4x4 valid conv)
        each scale k: conv3x3 (1x1 at the 1x1 level) C_k -> R, LeakyReLU, global average pool -> (M, R, 1, 1)
        concat -> (M, 5R, 1, 1) -> fuse 1x1 conv -> (M, Z, 1, 1) -> (M, Z)
    """

    def __init__(self, in_channels: int = 3, size: int = 64, zdim: int = 256, nf: int = 64, reduce: int = 64):
        super().__init__()
        self.down = DownPath(in_channels, size, nf, zdim)
        chans = self.down.channels  # n + 1 levels, the last one 1x1
        self.reducers = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c, reduce, 3 if i < len(chans) - 1 else 1, padding=1 if i < len(chans) - 1 else 0),
                nn.LeakyReLU(0.2, inplace=True),
            )
            for i, c in enumerate(chans)
        )
        self.fuse = nn.Conv2d(reduce * len(chans), zdim, 1)  # (M, L*R, 1, 1) -> (M, Z, 1, 1)
        self.size = size
        self.zdim = zdim

    def forward(self, x: Tensor) -> Tensor:
        vecs = [red(f).mean(dim=(2, 3), keepdim=True) for f, red in zip(self.down.features(x), self.reducers)]
        return self.fuse(torch.cat(vecs, dim=1)).flatten(1)  # (M, Z)


class DeepEncoder(nn.Module):
    """Per-image encoder that keeps only the Unsup3D DownPath's own 1x1 bottleneck as the code (as Unsup3D's
    ``EDDeconv`` and the official LAP demo's ``ED_Aggregation`` do): image (M, C_in, S, S) -> code (M, Z)."""

    def __init__(self, in_channels: int = 3, size: int = 64, zdim: int = 256, nf: int = 64):
        super().__init__()
        self.down = DownPath(in_channels, size, nf, zdim)
        self.size = size
        self.zdim = zdim

    def forward(self, x: Tensor) -> Tensor:
        return self.down(x).flatten(1)  # (M, Z)


def set_softmax(logits: Tensor, valid: Tensor) -> Tensor:
    """Softmax over the set, per channel, ignoring padded views.

    logits (B, N, Z), valid (B, N) bool -> weights (B, N, Z): sum over N = 1 per channel, exactly 0 where invalid.
    Every identity must have at least one valid view.
    """
    masked = logits.masked_fill(~valid[:, :, None], float("-inf"))
    return torch.softmax(masked, dim=1)


def uniform_weights(valid: Tensor, zdim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Plain mean over the valid views as weights: valid (B, N) -> (B, N, Z)."""
    v = valid.to(dtype)
    w = v / v.sum(dim=1, keepdim=True).clamp_min(1.0)
    return w[:, :, None].expand(-1, -1, zdim)


class Aggregator(nn.Module):
    """One aggregation network (albedo or depth): set of images -> canonical map.

    images (B, N, C_in, S, S), valid (B, N) bool -> AggregateOutput (canon (B, C_out, S, S)).
    """

    def __init__(
        self,
        out_channels: int,
        size: int = 64,
        zdim: int = 256,
        nf: int = 64,
        adaptive: bool = True,
        tanh: bool = True,
        in_channels: int = 3,
        encoder: str = "multiscale",
    ):
        super().__init__()
        if encoder not in ("multiscale", "deep"):
            raise ValueError(f"encoder must be 'multiscale' or 'deep', got {encoder!r}")
        self.encoder = ScaleEncoder(in_channels, size, zdim, nf) if encoder == "multiscale" else \
            DeepEncoder(in_channels, size, zdim, nf)
        # channel-wise weight head: x_i (M, Z) -> logits (M, Z)
        self.weight_head = nn.Sequential(nn.Linear(zdim, zdim), nn.LeakyReLU(0.2, inplace=True), nn.Linear(zdim, zdim))
        # x_c (B, Z) -> (B, Z, 1, 1) -> Unsup3D decoder -> (B, C_out, S, S)
        self.decoder = UpPath(out_channels, size, nf, zdim, nn.Tanh if tanh else None)
        self.adaptive = adaptive
        self.zdim = zdim

    def aggregate_codes(self, codes: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """codes (B, N, Z), valid (B, N) -> (x_c (B, Z), weights (B, N, Z)) by Eq. 4."""
        if self.adaptive:
            weights = set_softmax(self.weight_head(codes), valid)  # (B, N, Z)
        else:
            weights = uniform_weights(valid, codes.shape[-1], codes.dtype)
        code = (weights * codes.masked_fill(~valid[:, :, None], 0.0)).sum(dim=1)  # (B, Z)
        return code, weights

    def forward(self, images: Tensor, valid: Tensor | None = None) -> AggregateOutput:
        b, n = images.shape[:2]
        if valid is None:
            valid = torch.ones(b, n, dtype=torch.bool, device=images.device)
        if not bool(valid.any(dim=1).all()):
            raise ValueError("every identity of the batch needs at least one valid view")
        codes = self.encoder(images.flatten(0, 1)).view(b, n, -1)  # (B, N, Z)
        code, weights = self.aggregate_codes(codes, valid)
        canon = self.decoder(code[:, :, None, None])  # (B, C_out, S, S)
        return AggregateOutput(canon=canon, code=code, codes=codes, weights=weights)

    def single(self, image: Tensor) -> Tensor:
        """The single-image path: image (B, C_in, S, S) -> canonical map of that image alone (B, C_out, S, S)."""
        return self.decoder(self.encoder(image)[:, :, None, None])
