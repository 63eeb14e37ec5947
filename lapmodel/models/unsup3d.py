"""The Unsup3D photo-geometric autoencoder (Wu, Rupprecht, Vedaldi, CVPR 2020) as one nn.Module.

Per image, five networks predict the canonical (frontal, symmetric) depth and albedo, a light and a viewpoint, and
two confidence maps. The canonical depth/albedo are also flipped horizontally; both versions are shaded, rendered
into the input's view and compared with the input (Eq. 3 of LAP: confidence-calibrated L1 + a perceptual loss with
its own confidence, + depth smoothness). The flipped reconstruction is what makes the model learn symmetric shape.

Everything between the networks' raw outputs and the loss (mappings, render, loss, and the deviations from the
official code with their reasons) is ``lapmodel.models.photogeo``, shared with the LAP model. Networks see images in
[-1, 1]; the photometric loss is computed in that range (as Unsup3D); pictures and outputs are in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from lapmodel.config import ModelConfig
from lapmodel.models import photogeo
from lapmodel.models.model import Model
from lapmodel.models.networks import ConfNet, EDDeconv, Encoder, num_stages
from lapmodel.models.outputs import Reconstruction


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


class Unsup3D(nn.Module, Model):
    """Photo-geometric autoencoder. ``forward(images (B, 3, S, S) in [0, 1] | Batch) -> Unsup3DOutput``.

    Submodules: netD (depth), netA (albedo), netL (light), netV (view), netC (confidence); ``perceptual`` (the
    frozen perceptual network, VGG16 or MobileNetV2; optional: without it the perceptual loss is off).
    """

    accepts_sets = False  # one photo at a time

    def __init__(self, cfg: ModelConfig = ModelConfig(), perceptual: nn.Module | None = None):
        super().__init__()
        s = cfg.image_size
        num_stages(s)  # validates the size
        self.cfg = cfg
        self.netD = EDDeconv(3, 1, s, cfg.nf, cfg.zdim, activation=None)  # (B, 3, S, S) -> (B, 1, S, S)
        self.netA = EDDeconv(3, 3, s, cfg.nf, cfg.zdim)                   # (B, 3, S, S) -> (B, 3, S, S) tanh
        self.netL = Encoder(3, 4, s, cfg.nf_encoder)                      # (B, 3, S, S) -> (B, 4) tanh
        self.netV = Encoder(3, 6, s, cfg.nf_encoder)                      # (B, 3, S, S) -> (B, 6) tanh
        self.netC = ConfNet(3, s, cfg.nf, cfg.zdim_conf) if cfg.use_conf else None
        if cfg.depth_init == "flat":
            photogeo.init_flat_depth(self.netD)
        self.perceptual = perceptual
        self.step = 0  # set by the training loop (flip-weight schedule)

    @property
    def border_depth(self) -> float:
        return photogeo.border_depth(self.cfg)

    def map_depth(self, raw: Tensor) -> Tensor:
        """(B, S, S) raw network output -> canonical depth in [min, max] (``photogeo.map_depth``)."""
        return photogeo.map_depth(raw, self.cfg)

    def map_light(self, raw: Tensor) -> Tensor:
        return photogeo.map_light(raw, self.cfg)

    def map_view(self, raw: Tensor) -> Tensor:
        return photogeo.map_view(raw, self.cfg)

    # ----------------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor | "Batch") -> Unsup3DOutput:  # noqa: F821
        weight = None
        if not isinstance(x, Tensor):  # a lapmodel.io.data.Batch: every valid view is one image
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

        r = photogeo.render(canon_albedo, canon_depth, light, view, c, flip=True)
        return Unsup3DOutput(
            images=images, canon_depth=canon_depth, canon_albedo=canon_albedo, canon_normal=r.normal,
            canon_shading=r.shading, canon_image=r.canon_image, light=light, view=view,
            recon_image=r.recon, recon_depth=r.recon_depth, recon_mask=r.mask, recon_image_flip=r.recon_flip,
            recon_depth_flip=r.recon_depth_flip, conf_l1=conf_l1, conf_perc=conf_perc, weight=weight)

    # ----------------------------------------------------------------------------------------- loss
    def flip_weight(self) -> float:
        return photogeo.flip_weight(self.cfg, self.step)

    def loss(self, out: Unsup3DOutput, batch: object = None, weight: Tensor | None = None
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss (``photogeo.reconstruction_loss``) and detached scalars for the log.

        ``weight`` (B, S, S) / (B, 1, S, S): optional per-pixel weight (multiplied with the hard-view weight that
        a Batch carries in ``out.weight``). ``batch`` is accepted for the generic training loop (unused: the
        forward pass already took what it needs from it).
        """
        if weight is not None and weight.dim() == 4:
            weight = weight[:, 0]
        if out.weight is not None:
            weight = out.weight[:, 0] if weight is None else out.weight[:, 0] * weight
        r = photogeo.RenderOut(albedo=out.canon_albedo, depth=out.canon_depth, normal=out.canon_normal,
                               shading=out.canon_shading, canon_image=out.canon_image, recon=out.recon_image,
                               recon_depth=out.recon_depth, mask=out.recon_mask, recon_flip=out.recon_image_flip,
                               recon_depth_flip=out.recon_depth_flip)
        total, logs = photogeo.reconstruction_loss(r, out.images, self.cfg, conf=out.conf_l1, conf_perc=out.conf_perc,
                                                   perceptual=self.perceptual, lam_flip=self.flip_weight(),
                                                   weight=weight)
        logs = {("loss_" + k): v for k, v in logs.items()} | photogeo.view_logs(out.view, self.cfg)
        logs["loss"] = total.detach()
        return total, logs

    # ----------------------------------------------------------------------------------------- helpers
    def trainable_parameters(self, stage: str | None = None) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def view_network(self) -> nn.Module:
        return self.netV

    def compile_networks(self) -> None:
        """torch.compile each network in place (state_dict keys unchanged)."""
        for m in (self.netD, self.netA, self.netL, self.netV, self.netC):
            if m is not None:
                m.compile()

    def reconstruct(self, images: Tensor, as_set: bool = False) -> Reconstruction:
        """images (B, 3, S, S) in [0, 1] -> Reconstruction (runs under the caller's grad mode and train/eval mode).
        ``as_set`` must be False: Unsup3D has no aggregation (``accepts_sets`` is False)."""
        if as_set:
            raise ValueError("Unsup3D reconstructs single images: as_set needs a model that accepts sets (LAP)")
        out = self(images)
        return Reconstruction(
            canon_depth=out.canon_depth, canon_albedo=out.canon_albedo, canon_normal=out.canon_normal,
            canon_shading=out.canon_shading, canon_image=out.canon_image, view=out.view, light=out.light,
            recon_image=out.recon_image, recon_depth=out.recon_depth, recon_mask=out.recon_mask,
            fov_deg=self.cfg.fov_deg, depth_range=photogeo.depth_range(self.cfg))
