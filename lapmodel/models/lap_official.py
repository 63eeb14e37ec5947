"""The networks of the official LAP demo (TencentYoutuResearch/3DFaceReconstruction-LAP, ``demo/networks.py``), so
that its released weights (``checkpoint300.pth``) load into ``LAPModel`` with ``model.lap.arch: official``.

They are not lapmodel's own LAP networks (``aggregate.py``, ``refine.py``, which follow the paper's text); they are
what the released file holds, with the same interfaces so that ``LAPModel`` trains and reconstructs with either:

* :class:`OfficialAggregator` (the demo's ``ED_Aggregation``): per photo, a 128 px encoder with extra 3x3 "bucket"
  convolutions at 8x8 and 4x4 ends in 2Z channels: the photo's code (first Z) and its channel-wise aggregation
  logits (last Z); a softmax over the set per channel weights the codes (Eq. 4), two 1x1 convolutions
  (``combine_net``) follow, and a decoder of transposed convolutions and two nearest upsamplings gives the 128 px map;
* :class:`OfficialRefineNet` (``ED_attribute_refining``), one per attribute, paired by :class:`OfficialRefiner`: the
  canonical map (albedo after tanh, depth raw) is encoded to 1x1 while the target photo's own encoder
  (``network_inject``) is concatenated in at 8x8, 4x4 and 1x1; the decoder's 32 and 64 px features take the encoder's
  features through a channel softmax (``Softmax2d``) "filtered connection" (``fusion3_*``, ``fusion2_*``). Its output
  is the refined map itself (no residual);
* the light and view encoders are ``networks.Encoder`` with the demo's 128 px widths (:func:`encoder_channels`).

Submodule names and layer order are those of the published state dicts (``network1``, ``combine_net``,
``network``; ``network_consist``, ``network_inject``, ``network_decoder``, ``fusion{2,3}_{1,2}``), so the weights
load by name. GroupNorm has 16 groups per ``nf`` channels, as there. 128 px only (the published networks).

Shapes: B identities, N views, M = B * N images, Z = ``zdim`` (512 in the demo), nf = 64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lapmodel.models.aggregate import AggregateOutput, set_softmax, uniform_weights
from lapmodel.models.refine import RefinedAttribute, RefineOutput

SIZE = 128  # the only size the published networks take and give


def encoder_channels(nf: int) -> list[int]:
    """Widths of the demo's 128 px light / view encoders' stride-2 stages: nf, nf, 2nf, 4nf, 8nf."""
    return [nf, nf, 2 * nf, 4 * nf, 8 * nf]


def _gn(c: int, nf: int) -> nn.GroupNorm:
    return nn.GroupNorm(16 * c // nf, c)


def _down(cin: int, cout: int, nf: int, groups: int | None = None) -> list[nn.Module]:
    """4x4 stride-2 conv, GroupNorm, LeakyReLU: (M, cin, s, s) -> (M, cout, s/2, s/2)."""
    norm = nn.GroupNorm(groups, cout) if groups else _gn(cout, nf)
    return [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), norm, nn.LeakyReLU(0.2, inplace=True)]


def _bucket(cin: int, cout: int, nf: int) -> list[nn.Module]:
    """3x3 conv, GroupNorm, LeakyReLU at constant size."""
    return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), _gn(cout, nf), nn.LeakyReLU(0.2, inplace=True)]


def _encoder_tail(c8: int, c4: int, nf: int, cout: int) -> list[nn.Module]:
    """The shared 8x8 -> 1x1 part: buckets at 8x8 (c8 in), 4x4 stride-2 conv, buckets at 4x4 (c4 in), 4x4 valid conv.

    (M, c8, 8, 8) -> [6] (M, 4nf, 8, 8) -> [8] (M, 8nf, 4, 4) -> (concat to c4) -> [14] (M, 8nf, 4, 4)
    -> [16] (M, cout, 1, 1); indices are the layers' positions after the four stride-2 stages (12 layers)."""
    return [*_bucket(c8, 8 * nf, nf), *_bucket(8 * nf, 4 * nf, nf),
            nn.Conv2d(4 * nf, 8 * nf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            *_bucket(c4, 16 * nf, nf), *_bucket(16 * nf, 8 * nf, nf),
            nn.Conv2d(8 * nf, cout, 4, 1, 0, bias=False), nn.ReLU(inplace=True)]


def _decoder(zdim: int, nf: int, cout: int, tanh: bool) -> list[nn.Module]:
    """code (M, Z, 1, 1) -> [2] 4x4 -> [5] 8x8 -> [8] 16x16 -> [11] 32x32 -> [15] 64x64 -> 128x128 (M, cout)."""
    layers: list[nn.Module] = [nn.ConvTranspose2d(zdim, 8 * nf, 4, 1, 0, bias=False), nn.ReLU(inplace=True)]
    for ci, co in ((8 * nf, 4 * nf), (4 * nf, 2 * nf), (2 * nf, nf)):
        layers += [nn.ConvTranspose2d(ci, co, 4, 2, 1, bias=False), _gn(co, nf), nn.ReLU(inplace=True)]
    for _ in range(2):  # 32 -> 64 -> 128
        layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                   nn.Conv2d(nf, nf, 3, 1, 1, bias=False), _gn(nf, nf), nn.ReLU(inplace=True)]
    layers += [nn.Conv2d(nf, nf, 5, 1, 2, bias=False), _gn(nf, nf), nn.ReLU(inplace=True),
               nn.Conv2d(nf, cout, 5, 1, 2, bias=False)]
    return layers + ([nn.Tanh()] if tanh else [])


def _check_size(x: Tensor, what: str) -> None:
    if x.shape[-1] != SIZE or x.shape[-2] != SIZE:
        raise ValueError(f"the official LAP networks take {SIZE} px {what}, got {tuple(x.shape)}")


class OfficialAggregator(nn.Module):
    """The demo's ``ED_Aggregation`` with the interface of ``aggregate.Aggregator``.

    images (B, N, C_in, 128, 128), valid (B, N) bool -> AggregateOutput (canon (B, C_out, 128, 128)).
    """

    def __init__(self, out_channels: int, nf: int = 64, zdim: int = 512, adaptive: bool = True, tanh: bool = True,
                 in_channels: int = 3):
        super().__init__()
        down = [*_down(in_channels, nf, nf), *_down(nf, nf, nf), *_down(nf, 2 * nf, nf), *_down(2 * nf, 4 * nf, nf)]
        self.network1 = nn.Sequential(*down, *_encoder_tail(4 * nf, 8 * nf, nf, 2 * zdim))  # -> (M, 2Z, 1, 1)
        self.combine_net = nn.Sequential(nn.Conv2d(zdim, zdim, 1, bias=False), nn.ReLU(inplace=True),
                                         nn.Conv2d(zdim, zdim, 1, bias=False), nn.ReLU(inplace=True))
        self.network = nn.Sequential(*_decoder(zdim, nf, out_channels, tanh))
        self.adaptive = adaptive
        self.zdim = zdim

    @property
    def decoder(self) -> nn.Module:
        """The decoder (``photogeo.init_flat_depth`` zeroes its last convolution)."""
        return self.network

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (M, C_in, 128, 128) -> codes (M, Z), aggregation logits (M, Z)."""
        _check_size(x, "images")
        f = self.network1(x).flatten(1)  # (M, 2Z)
        return f[:, : self.zdim], f[:, self.zdim :]

    def decode(self, code: Tensor) -> Tensor:
        """Identity code (B, Z) -> canonical map (B, C_out, 128, 128) through ``combine_net`` and the decoder."""
        return self.network(self.combine_net(code[:, :, None, None]))

    def forward(self, images: Tensor, valid: Tensor | None = None) -> AggregateOutput:
        b, n = images.shape[:2]
        if valid is None:
            valid = torch.ones(b, n, dtype=torch.bool, device=images.device)
        if not bool(valid.any(dim=1).all()):
            raise ValueError("every identity of the batch needs at least one valid view")
        codes, logits = (t.view(b, n, -1) for t in self.encode(images.flatten(0, 1)))  # (B, N, Z) each
        weights = set_softmax(logits, valid) if self.adaptive else uniform_weights(valid, self.zdim, codes.dtype)
        code = (weights * codes.masked_fill(~valid[:, :, None], 0.0)).sum(dim=1)  # (B, Z)
        return AggregateOutput(canon=self.decode(code), code=code, codes=codes, weights=weights)

    def single(self, image: Tensor) -> Tensor:
        """image (B, C_in, 128, 128) -> the canonical map of that image alone (a set of one: weight 1)."""
        return self.decode(self.encode(image)[0])


class OfficialRefineNet(nn.Module):
    """The demo's ``ED_attribute_refining`` for one attribute: canonical map (B, C, 128, 128), target photo
    (B, 3, 128, 128) in [-1, 1] -> (refined map (B, C, 128, 128), attention {32: (B, nf, 32, 32), 64: (...)})."""

    def __init__(self, channels: int, nf: int = 64, zdim: int = 512, tanh: bool = True):
        super().__init__()
        down = [*_down(channels, nf, nf), *_down(nf, nf, nf), *_down(nf, 2 * nf, nf), *_down(2 * nf, 4 * nf, nf)]
        self.network_consist = nn.Sequential(  # [:3] 64 px, [3:6] 32 px, [6:12] 8 px, [12:20] 4 px, [20:28] 1x1
            *down, *_encoder_tail(8 * nf, 16 * nf, nf, zdim),
            nn.Conv2d(2 * zdim, zdim, 1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(zdim, zdim, 1, bias=False), nn.ReLU(inplace=True))
        self.network_inject = nn.Sequential(  # target: [:12] 8x8 (4nf), [12:14] 4x4 (8nf), [14:] 1x1 (Z)
            *_down(3, 32, nf, groups=16), *_down(32, nf, nf, groups=16), *_down(nf, 2 * nf, nf),
            *_down(2 * nf, 4 * nf, nf), nn.Conv2d(4 * nf, 8 * nf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(8 * nf, zdim, 4, 1, 0, bias=False), nn.ReLU(inplace=True))
        for name in ("fusion2_1", "fusion2_2", "fusion3_1", "fusion3_2"):  # (B, 2nf, s, s) -> (B, nf, s, s)
            self.add_module(name, nn.Sequential(nn.Conv2d(2 * nf, nf, 3, 1, 1, bias=False), _gn(nf, nf),
                                                nn.ReLU(inplace=True)))
        self.network_decoder = nn.Sequential(*_decoder(zdim, nf, channels, tanh))

    def forward(self, canon: Tensor, target: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        _check_size(canon, "canonical maps")
        _check_size(target, "target photos")
        inj, con, dec = self.network_inject, self.network_consist, self.network_decoder
        t8 = inj[:12](target)  # (B, 4nf, 8, 8)
        t4 = inj[12:14](t8)  # (B, 8nf, 4, 4)
        t1 = inj[14:](t4)  # (B, Z, 1, 1)
        e64 = con[:3](canon)  # (B, nf, 64, 64)
        e32 = con[3:6](e64)  # (B, nf, 32, 32)
        e = con[6:12](e32)  # (B, 4nf, 8, 8)
        e = con[12:20](torch.cat([e, t8], 1))  # (B, 8nf, 4, 4)
        e = con[20:28](torch.cat([e, t4], 1))  # (B, Z, 1, 1)
        code = con[28:](torch.cat([e, t1], 1))  # (B, Z, 1, 1)
        g = dec[8:11](dec[5:8](dec[:5](code)))  # (B, nf, 32, 32)
        a32 = torch.softmax(self.fusion3_1(torch.cat([g, e32], 1)), dim=1)  # channel softmax (Softmax2d)
        g = self.fusion3_2(torch.cat([g, e32 * a32], 1))
        g = dec[11:15](g)  # (B, nf, 64, 64)
        a64 = torch.softmax(self.fusion2_1(torch.cat([g, e64], 1)), dim=1)
        g = self.fusion2_2(torch.cat([g, e64 * a64], 1))
        return dec[15:](g), {32: a32, 64: a64}


class OfficialRefiner(nn.Module):
    """The demo's two refining networks (``refine_netA``, ``refine_netD``) with the interface of ``refine.Refiner``.

    canon_albedo (B, 3, 128, 128) after tanh, canon_depth (B, 1, 128, 128) raw, target (B, 3, S_t, S_t) in [-1, 1]
    (resized to 128 px, bilinear, as the demo) -> RefineOutput at 128 px.
    """

    def __init__(self, nf: int = 64, zdim: int = 512):
        super().__init__()
        self.albedo = OfficialRefineNet(3, nf, zdim, tanh=True)
        self.depth = OfficialRefineNet(1, nf, zdim, tanh=False)
        self.out_size = SIZE

    def forward(self, canon_albedo: Tensor, canon_depth: Tensor, target: Tensor) -> RefineOutput:
        if target.shape[-1] != SIZE:
            target = F.interpolate(target, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        a, att_a = self.albedo(canon_albedo, target)
        d, att_d = self.depth(canon_depth, target)
        return RefineOutput(albedo=a, depth=d, albedo_detail=RefinedAttribute(a, att_a),
                            depth_detail=RefinedAttribute(d, att_d))
