"""LAP attribute-refining network (paper Sec. 3.3): personalise the identity's (a_c, d_c) to one target photo.

For one attribute (albedo: 3 channels, depth: 1 channel) an :class:`AttributeRefiner` is a U-Net over the canonical
map resized to the output size S_out (64, 128 or 256; one network per output size, as in the paper):

* **encoder** of the canonical attribute: S_out -> S_out/2 -> ... -> 8 -> 4 -> 1;
* **attribute injection**: a target-image encoder (:class:`TargetEncoder`, shared by the albedo and depth refiners)
  gives features of the target photo at 8x8, 4x4 and 1x1. At each of those levels the target feature goes through
  learned *channel-wise selection weights* (sigmoid of an MLP on the pooled attribute and target features, (B, C, 1, 1))
  and is then fused with the attribute feature by a 1x1 conv (:class:`Injection`).
  ``injection="vector"`` (ablation) injects at 1x1 only;
* **filtered connections** (:class:`FilteredConnection`): at every decoder level with an encoder feature of the same
  size, a sigmoid spatial attention (B, 1, h, w) is learned from the concatenated encoder and decoder features and the
  *filtered* encoder feature (attention * encoder feature) is concatenated to the decoder feature.
  ``filtered_connection="plain"`` passes the encoder feature unfiltered (a U-Net skip), ``"none"`` passes nothing
  (the ablation "w/o filtered connection" of Table 2 is ``"none"``: the decoder sees only the bottleneck and the
  injected target features);
* the output is a residual on the resized canonical map, with a zero-initialised last conv so that an untrained
  refiner returns a_c / d_c exactly (stage 2 starts from the stage-1 result).

Shapes: B images, S_out output side, values in the canonical map's own space (albedo in [-1, 1], depth raw).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INJECT_LEVELS = (8, 4, 1)


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, min(16, c // 4)), c)


def _chan(size: int, base: int, width: int) -> int:
    """Channels at spatial size ``size`` for an encoder starting at ``base`` px: doubles each halving, max 256."""
    k = int(math.log2(base // size)) if size > 1 else int(math.log2(base // 4)) + 1
    return min(width * 2 ** max(k - 1, 0), 256)


class TargetEncoder(nn.Module):
    """Target photo -> features at 8x8, 4x4 and 1x1. image (B, 3, T, T) resized to T = ``size`` (default 64):
        (B, 32, 32, 32) -> (B, 64, 16, 16) -> (B, 128, 8, 8) [level 8] -> (B, 256, 4, 4) [level 4]
        -> 4x4 conv -> (B, 256, 1, 1) [level 1]
    """

    def __init__(self, size: int = 64, width: int = 32):
        super().__init__()
        self.size = size
        n_down = int(math.log2(size // 4))
        self.down = nn.ModuleList()
        self.sizes: list[int] = []
        c_prev, s = 3, size
        for _ in range(n_down):
            s //= 2
            c = _chan(s, size, width)
            self.down.append(nn.Sequential(nn.Conv2d(c_prev, c, 4, 2, 1, bias=False), _gn(c), nn.LeakyReLU(0.2, True)))
            self.sizes.append(s)
            c_prev = c
        self.to_vec = nn.Sequential(nn.Conv2d(c_prev, 256, 4, 1, 0), nn.LeakyReLU(0.2, True))  # (B, 256, 1, 1)
        self.channels = {8: _chan(8, size, width), 4: _chan(4, size, width), 1: 256}

    def forward(self, image: Tensor) -> dict[int, Tensor]:
        if image.shape[-1] != self.size:
            image = F.interpolate(image, size=(self.size, self.size), mode="bilinear", align_corners=False)
        feats: dict[int, Tensor] = {}
        x = image
        for s, layer in zip(self.sizes, self.down):
            x = layer(x)
            if s in (8, 4):
                feats[s] = x
        feats[1] = self.to_vec(x)
        return feats


class Injection(nn.Module):
    """Attribute injection at one level: attribute feature e (B, C, h, w), target feature t (B, C_t, h, w) ->
    fused (B, C, h, w) = conv1x1([e, s * t]) with channel-wise selection weights s = sigmoid(MLP([pool e, pool t]))
    of shape (B, C_t, 1, 1). The selection weights are kept in ``last_selection`` for inspection.
    """

    def __init__(self, channels: int, target_channels: int):
        super().__init__()
        self.select = nn.Sequential(
            nn.Linear(channels + target_channels, target_channels),
            nn.LeakyReLU(0.2, True),
            nn.Linear(target_channels, target_channels),
        )
        self.fuse = nn.Sequential(nn.Conv2d(channels + target_channels, channels, 1), nn.LeakyReLU(0.2, True))
        self.last_selection: Tensor | None = None

    def forward(self, e: Tensor, t: Tensor) -> Tensor:
        pooled = torch.cat([e.mean(dim=(2, 3)), t.mean(dim=(2, 3))], dim=1)  # (B, C + C_t)
        s = torch.sigmoid(self.select(pooled))[:, :, None, None]  # (B, C_t, 1, 1)
        self.last_selection = s.detach()
        return self.fuse(torch.cat([e, s * t], dim=1))  # (B, C, h, w)


class FilteredConnection(nn.Module):
    """Filtered skip: encoder feature e (B, C_e, h, w), decoder feature g (B, C_g, h, w) ->
    (filtered (B, C_e, h, w), attention (B, 1, h, w)) with attention = sigmoid(conv3x3(relu(conv3x3([e, g])))).
    mode "plain": attention = 1 (unfiltered U-Net skip); mode "none": the connection passes nothing (returns None).
    """

    def __init__(self, enc_channels: int, dec_channels: int, mode: str = "filtered"):
        super().__init__()
        self.mode = mode
        if mode == "filtered":
            hid = max(8, enc_channels // 4)
            self.attn = nn.Sequential(
                nn.Conv2d(enc_channels + dec_channels, hid, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(hid, 1, 3, padding=1),
            )

    def forward(self, e: Tensor, g: Tensor) -> tuple[Tensor | None, Tensor | None]:
        if self.mode == "none":
            return None, None
        if self.mode == "plain":
            return e, None
        a = torch.sigmoid(self.attn(torch.cat([e, g], dim=1)))  # (B, 1, h, w)
        return a * e, a


@dataclass
class RefinedAttribute:
    """out: (B, C, S_out, S_out) refined map; attention: {h: (B, 1, h, h)} filtered-connection maps;
    selection: {level: (B, C_t, 1, 1)} injection selection weights."""

    out: Tensor
    attention: dict[int, Tensor] = field(default_factory=dict)
    selection: dict[int, Tensor] = field(default_factory=dict)


class AttributeRefiner(nn.Module):
    """Refine one canonical attribute to a target photo. For S_out = 64, width 32 (enc channels by size):

    encoder  canon (B, C, 64, 64) -> e32 (B, 32, 32, 32) -> e16 (B, 64, 16, 16) -> e8 (B, 128, 8, 8)
             -> e4 (B, 256, 4, 4) -> e1 (B, 256, 1, 1)
    inject   e8 += target 8x8 (B, 128, 8, 8); e4 += target 4x4 (B, 256, 4, 4); e1 += target 1x1 (B, 256, 1, 1)
    decoder  e1 -convT4-> g4 (B, 256, 4, 4) [+ filtered e4] -> up -> g8 (B, 128, 8, 8) [+ filtered e8]
             -> g16 (B, 64, ...) [+ filtered e16] -> g32 [+ filtered e32] -> g64 (B, 32, 64, 64)
             -> conv (B, C, 64, 64) (zero-init) + canon
    For S_out = 128 / 256 there are one / two more levels at the top (encoder widths capped at 256).
    """

    def __init__(
        self,
        channels: int,
        out_size: int = 64,
        width: int = 32,
        target_channels: dict[int, int] | None = None,
        filtered_connection: Literal["filtered", "plain", "none"] = "filtered",
        injection: Literal["multi", "vector"] = "multi",
    ):
        super().__init__()
        if out_size not in (32, 64, 128, 256):
            raise ValueError(f"refiner output size must be 32, 64, 128 or 256, got {out_size}")
        if filtered_connection not in ("filtered", "plain", "none"):
            raise ValueError(f"filtered_connection must be filtered/plain/none, got {filtered_connection!r}")
        if injection not in ("multi", "vector"):
            raise ValueError(f"injection must be multi/vector, got {injection!r}")
        target_channels = target_channels or {8: 128, 4: 256, 1: 256}
        self.out_size = out_size
        self.levels = INJECT_LEVELS if injection == "multi" else (1,)
        self.mode = filtered_connection
        # encoder: sizes out/2, ..., 4, then 1
        self.enc_sizes: list[int] = []
        self.enc = nn.ModuleList()
        c_prev, s = channels, out_size
        while s > 4:
            s //= 2
            c = _chan(s, out_size, width)
            self.enc.append(nn.Sequential(nn.Conv2d(c_prev, c, 4, 2, 1, bias=False), _gn(c), nn.LeakyReLU(0.2, True)))
            self.enc_sizes.append(s)
            c_prev = c
        self.enc_channels = {s: _chan(s, out_size, width) for s in self.enc_sizes}
        self.enc1 = nn.Sequential(nn.Conv2d(c_prev, 256, 4, 1, 0), nn.LeakyReLU(0.2, True))  # (B, 256, 1, 1)
        self.enc_channels[1] = 256
        self.inject = nn.ModuleDict(
            {str(lv): Injection(self.enc_channels[lv], target_channels[lv]) for lv in self.levels}
        )
        # decoder
        self.dec4 = nn.Sequential(nn.ConvTranspose2d(256, self.enc_channels[4], 4, 1, 0, bias=False), nn.ReLU(True))
        self.skips = nn.ModuleDict()
        self.ups = nn.ModuleDict()
        c_dec = self.enc_channels[4]
        for s in reversed(self.enc_sizes):  # 4, 8, ..., out/2
            c_e = self.enc_channels[s]
            self.skips[str(s)] = FilteredConnection(c_e, c_dec, filtered_connection)
            c_in = c_dec + (c_e if filtered_connection != "none" else 0)
            s_next = s * 2
            c_next = _chan(s_next, out_size, width) if s_next < out_size else width
            self.ups[str(s)] = nn.Sequential(
                nn.Conv2d(c_in, c_dec, 3, padding=1, bias=False), _gn(c_dec), nn.ReLU(True),
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(c_dec, c_next, 3, padding=1, bias=False), _gn(c_next), nn.ReLU(True),
            )  # (B, c_next, 2s, 2s)
            c_dec = c_next
        self.head = nn.Conv2d(c_dec, channels, 5, padding=2)  # (B, C, S_out, S_out)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, canon: Tensor, target: dict[int, Tensor]) -> RefinedAttribute:
        if canon.shape[-1] != self.out_size:
            canon = F.interpolate(canon, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False)
        feats: dict[int, Tensor] = {}
        x = canon
        for s, layer in zip(self.enc_sizes, self.enc):
            x = layer(x)
            feats[s] = x
        feats[1] = self.enc1(x)
        selection: dict[int, Tensor] = {}
        for lv in self.levels:
            inj = self.inject[str(lv)]
            feats[lv] = inj(feats[lv], target[lv])
            selection[lv] = inj.last_selection
        g = self.dec4(feats[1])  # (B, C4, 4, 4)
        attention: dict[int, Tensor] = {}
        for s in reversed(self.enc_sizes):
            skip, a = self.skips[str(s)](feats[s], g)
            if a is not None:
                attention[s] = a
            if skip is not None:
                g = torch.cat([g, skip], dim=1)
            g = self.ups[str(s)](g)  # (B, c, 2s, 2s)
        return RefinedAttribute(out=canon + self.head(g), attention=attention, selection=selection)


@dataclass
class RefineOutput:
    """albedo: (B, 3, S_out, S_out) a_t; depth: (B, 1, S_out, S_out) d_t (raw depth space); per-branch details."""

    albedo: Tensor
    depth: Tensor
    albedo_detail: RefinedAttribute
    depth_detail: RefinedAttribute


class Refiner(nn.Module):
    """The attribute-refining network for one output size: a shared target encoder + albedo and depth refiners.

    canon_albedo (B, 3, S, S), canon_depth (B, 1, S, S), target (B, 3, S_t, S_t) -> RefineOutput at S_out.
    """

    def __init__(
        self,
        out_size: int = 64,
        width: int = 32,
        target_size: int = 64,
        filtered_connection: Literal["filtered", "plain", "none"] = "filtered",
        injection: Literal["multi", "vector"] = "multi",
    ):
        super().__init__()
        self.target_encoder = TargetEncoder(target_size, width)
        tc = self.target_encoder.channels
        self.albedo = AttributeRefiner(3, out_size, width, tc, filtered_connection, injection)
        self.depth = AttributeRefiner(1, out_size, width, tc, filtered_connection, injection)
        self.out_size = out_size

    def forward(self, canon_albedo: Tensor, canon_depth: Tensor, target: Tensor) -> RefineOutput:
        t = self.target_encoder(target)
        a = self.albedo(canon_albedo, t)
        d = self.depth(canon_depth, t)
        return RefineOutput(albedo=a.out, depth=d.out, albedo_detail=a, depth_detail=d)
