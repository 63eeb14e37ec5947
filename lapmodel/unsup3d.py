"""The Unsup3D photo-geometric autoencoder (Wu, Rupprecht, Vedaldi, CVPR 2020) as one nn.Module.

Per image, five networks predict the canonical (frontal, symmetric) depth and albedo, a light and a viewpoint, and
two confidence maps. The canonical depth/albedo are also flipped horizontally; both versions are shaded, rendered
into the input's view by ``lapmodel.renderer`` and compared with the input (Eq. 3 of LAP: confidence-calibrated
L1 + a perceptual loss on VGG16 relu3_3 with its own confidence). The flipped reconstruction is what makes the
model learn symmetric shape.

Mappings (Unsup3D): depth = tanh(raw - mean(raw)) rescaled into [min_depth, max_depth], with a fixed border of
``S // 32`` columns on the left and right at ``border_depth``; rotation angles = tanh * xyz_rotation_range
(degrees); translations = tanh * ranges; ambient / diffuse light = tanh rescaled into [min, max] (>= 0); light
direction (dx, dy) = tanh output (the renderer normalises (dx, dy, 1)). Networks see images in [-1, 1]; the
photometric loss is computed in that range (as Unsup3D); pictures and outputs are in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lapmodel import renderer
from lapmodel.outputs import Reconstruction

from .config import ModelConfig
from .losses import perceptual_loss, photometric_loss
from .networks import ConfNet, EDDeconv, Encoder, num_stages
from .vgg import VGG16Relu33


@dataclass
class Unsup3DOutput:
    """Everything one forward pass produces (B input images of side S)."""

    images: Tensor            # (B, 3, S, S) the input in [0, 1]
    canon_depth: Tensor       # (B, S, S) canonical depth in [min_depth, max_depth] (border fixed)
    canon_albedo: Tensor      # (B, 3, S, S) canonical albedo in [0, 1]
    canon_normal: Tensor      # (B, S, S, 3) normals of the canonical depth
    canon_shading: Tensor     # (B, 1, S, S) Lambertian shading
    canon_image: Tensor       # (B, 3, S, S) shaded canonical image (albedo * shading)
    light: Tensor             # (B, 4) ambient, diffuse (>= 0), direction x, y
    view: Tensor              # (B, 6) rotations x, y, z (radians), translations x, y, z
    recon_image: Tensor       # (B, 3, S, S) re-render in the input's view (zero outside recon_mask)
    recon_depth: Tensor       # (B, S, S) depth in the input's view
    recon_mask: Tensor        # (B, S, S) 1 where both the reconstruction and its flipped version are valid
    recon_image_flip: Tensor  # (B, 3, S, S) re-render from the flipped canonical depth and albedo
    recon_depth_flip: Tensor  # (B, S, S)
    conf_l1: Tensor | None    # (B, 2, S, S) sigma of the photometric loss (recon, flipped recon)
    conf_perc: Tensor | None  # (B, 2, S/4, S/4) sigma of the perceptual loss (recon, flipped recon)
    weight: Tensor | None = None  # (B, 1, S, S) per-pixel loss weight carried from a Batch (hard views -> 0)


def depth_border(size: int) -> int:
    """Columns fixed at the border depth on each side (2 at 64 px as Unsup3D)."""
    return max(1, size // 32)


class Unsup3D(nn.Module):
    """Photo-geometric autoencoder. ``forward(images (B, 3, S, S) in [0, 1] | Batch) -> Unsup3DOutput``.

    Submodules: netD (depth), netA (albedo), netL (light), netV (view), netC (confidence); ``vgg`` (frozen,
    optional: without it the perceptual loss is off).
    """

    def __init__(self, cfg: ModelConfig = ModelConfig(), vgg: VGG16Relu33 | None = None):
        super().__init__()
        s = cfg.image_size
        num_stages(s)  # validates the size
        self.cfg = cfg
        self.netD = EDDeconv(3, 1, s, cfg.nf, cfg.zdim, activation=None)  # (B, 3, S, S) -> (B, 1, S, S)
        self.netA = EDDeconv(3, 3, s, cfg.nf, cfg.zdim)                   # (B, 3, S, S) -> (B, 3, S, S) tanh
        self.netL = Encoder(3, 4, s, cfg.nf_encoder)                      # (B, 3, S, S) -> (B, 4) tanh
        self.netV = Encoder(3, 6, s, cfg.nf_encoder)                      # (B, 3, S, S) -> (B, 6) tanh
        self.netC = ConfNet(3, s, cfg.nf, cfg.zdim_conf) if cfg.use_conf else None
        self.vgg = vgg
        self.step = 0  # set by the training loop (flip-weight schedule)

    # ----------------------------------------------------------------------------------------- mappings
    @property
    def border_depth(self) -> float:
        c = self.cfg
        return c.border_depth if c.border_depth is not None else 0.7 * c.max_depth + 0.3 * c.min_depth

    def map_depth(self, raw: Tensor) -> Tensor:
        """(B, S, S) raw network output -> canonical depth in [min, max] with the border fixed."""
        c = self.cfg
        d = torch.tanh(raw - raw.mean(dim=(1, 2), keepdim=True))
        d = (1 + d) / 2 * c.max_depth + (1 - d) / 2 * c.min_depth
        k = depth_border(d.shape[-1])
        border = torch.zeros_like(d[:1])
        border[..., :k] = 1
        border[..., -k:] = 1
        return d * (1 - border) + border * self.border_depth

    def map_light(self, raw: Tensor) -> Tensor:
        """(B, 4) tanh output -> [ambient, diffuse, dx, dy] with ambient/diffuse in their [min, max] ranges."""
        c = self.cfg
        amb = (1 + raw[:, :1]) / 2 * c.max_amb_light + (1 - raw[:, :1]) / 2 * c.min_amb_light
        dif = (1 + raw[:, 1:2]) / 2 * c.max_diff_light + (1 - raw[:, 1:2]) / 2 * c.min_diff_light
        return torch.cat([amb, dif, raw[:, 2:4]], 1)

    def map_view(self, raw: Tensor) -> Tensor:
        """(B, 6) tanh output -> rotations (radians) and translations within the configured ranges."""
        c = self.cfg
        return torch.cat([raw[:, :3] * (math.pi / 180 * c.xyz_rotation_range),
                          raw[:, 3:5] * c.xy_translation_range,
                          raw[:, 5:6] * c.z_translation_range], 1)

    # ----------------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor | "Batch") -> Unsup3DOutput:  # noqa: F821
        weight = None
        if not isinstance(x, Tensor):  # a lapmodel.data.Batch: every valid view is one image
            images = x.views()
            if x.hard is not None:
                keep = (~x.hard[x.valid]).to(images.dtype)  # (Bv,)
                weight = keep.view(-1, 1, 1, 1).expand(-1, 1, *images.shape[-2:])
        else:
            images = x
        b = images.shape[0]
        c = self.cfg
        inp = images * 2 - 1  # networks see [-1, 1]

        canon_depth = self.map_depth(self.netD(inp).squeeze(1).float())             # (B, S, S)
        canon_albedo = self.netA(inp).float() / 2 + 0.5                             # (B, 3, S, S) in [0, 1]
        light = self.map_light(self.netL(inp).float())                              # (B, 4)
        view = self.map_view(self.netV(inp).float())                                # (B, 6)
        if self.netC is not None:
            conf_l1, conf_perc = (t.float() for t in self.netC(inp))                # (B,2,S,S), (B,2,S/4,S/4)
        else:
            conf_l1 = conf_perc = None

        with torch.autocast(device_type=images.device.type, enabled=False):  # geometry in fp32
            depth2 = torch.cat([canon_depth, canon_depth.flip(2)], 0)               # (2B, S, S)
            albedo2 = torch.cat([canon_albedo, canon_albedo.flip(3)], 0)            # (2B, 3, S, S)
            light2, view2 = light.repeat(2, 1), view.repeat(2, 1)
            normal2 = renderer.depth_to_normal(depth2, c.fov_deg)                   # (2B, S, S, 3)
            shading2, canon_image2 = renderer.shade(albedo2, normal2, light2)       # (2B,1,S,S), (2B,3,S,S)
            r = renderer.render(depth2, canon_image2, view2, c.fov_deg, depth_range=(c.min_depth, c.max_depth))
            mask = (r.mask[:b] * r.mask[b:]).detach()                               # (B, S, S) both valid
            recon = r.image * mask.repeat(2, 1, 1).unsqueeze(1)                     # (2B, 3, S, S)

        return Unsup3DOutput(
            images=images, canon_depth=canon_depth, canon_albedo=canon_albedo, canon_normal=normal2[:b],
            canon_shading=shading2[:b], canon_image=canon_image2[:b], light=light, view=view,
            recon_image=recon[:b], recon_depth=r.depth[:b], recon_mask=mask, recon_image_flip=recon[b:],
            recon_depth_flip=r.depth[b:], conf_l1=conf_l1, conf_perc=conf_perc, weight=weight)

    # ----------------------------------------------------------------------------------------- loss
    def flip_weight(self) -> float:
        return 1.0 if self.step < self.cfg.lam_flip_start_step else self.cfg.lam_flip

    def loss(self, out: Unsup3DOutput, batch: object = None, weight: Tensor | None = None
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and detached scalars for the log.

        ``weight`` (B, S, S) / (B, 1, S, S): optional per-pixel weight (multiplied with the hard-view weight that
        a Batch carries in ``out.weight``). ``batch`` is accepted for the generic training loop (unused: the
        forward pass already took what it needs from it).
        """
        c = self.cfg
        if out.weight is not None:
            weight = out.weight if weight is None else out.weight * (weight if weight.dim() == 4 else
                                                                      weight.unsqueeze(1))
        x = out.images.float()  # outputs are fp32 (see forward), so the sums below are too
        sig = out.conf_l1
        s1, s1f = (sig[:, :1], sig[:, 1:]) if sig is not None else (None, None)
        # photometric terms in Unsup3D's [-1, 1] image range: |2a - 2b|
        l1 = photometric_loss(out.recon_image * 2, x * 2, s1, out.recon_mask, weight)
        l1_flip = photometric_loss(out.recon_image_flip * 2, x * 2, s1f, out.recon_mask, weight)
        lam_flip = self.flip_weight()
        total = l1 + lam_flip * l1_flip
        logs = {"loss_l1": l1.detach(), "loss_l1_flip": l1_flip.detach()}
        if self.vgg is not None and c.lam_perc > 0:
            sp = out.conf_perc
            s2, s2f = (sp[:, :1], sp[:, 1:]) if sp is not None else (None, None)
            perc = perceptual_loss(self.vgg, out.recon_image, x, s2, out.recon_mask, weight).float()
            perc_flip = perceptual_loss(self.vgg, out.recon_image_flip, x, s2f, out.recon_mask, weight).float()
            total = total + c.lam_perc * (perc + lam_flip * perc_flip)
            logs.update(loss_perc=perc.detach(), loss_perc_flip=perc_flip.detach())
        elif out.conf_perc is not None:
            # perceptual loss off: keep the quarter-size confidence head in the graph (zero gradient), so that
            # DDP sees every parameter used and all-reduces every gradient bucket
            total = total + 0.0 * out.conf_perc.sum()
        logs["loss"] = total.detach()
        return total, logs

    # ----------------------------------------------------------------------------------------- helpers
    def trainable_parameters(self, stage: str | None = None) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def compile_networks(self) -> None:
        """torch.compile each network in place (state_dict keys unchanged)."""
        for m in (self.netD, self.netA, self.netL, self.netV, self.netC):
            if m is not None:
                m.compile()

    def reconstruct(self, images: Tensor) -> Reconstruction:
        """images (B, 3, S, S) in [0, 1] -> Reconstruction (runs under the caller's grad mode and train/eval mode)."""
        out = self(images)
        return Reconstruction(
            canon_depth=out.canon_depth, canon_albedo=out.canon_albedo, canon_normal=out.canon_normal,
            canon_shading=out.canon_shading, canon_image=out.canon_image, view=out.view, light=out.light,
            recon_image=out.recon_image, recon_depth=out.recon_depth, recon_mask=out.recon_mask,
            fov_deg=self.cfg.fov_deg)
