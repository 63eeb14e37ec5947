"""The LAP model (Zhang et al., CVPR 2021): learn to aggregate a photo set into one identity, then personalise it.

``LAPModel`` is an nn.Module with named submodules:

* ``albedo_agg`` / ``depth_agg`` (:class:`lapmodel.models.aggregate.Aggregator`): the set of photos -> canonical albedo a_c
  and depth d_c of the identity (Eq. 4);
* ``light_net`` / ``view_net`` (``networks.Encoder``) and ``conf_net`` (``networks.ConfNet``): per photo, as Unsup3D;
* ``refiner`` (:class:`lapmodel.models.refine.Refiner`): (a_c, d_c, photo) -> personalised (a_t, d_t) at ``refine_size``.

With ``model.lap.arch: official`` the aggregators, the refiner and the light / view encoders are the official LAP
demo's networks (``lapmodel.models.lap_official``, 128 px), so that its released weights load
(``lapmodel.io.published``); everything else (stages, losses, reconstruct) is the same.

Stages (``model.lap.stage`` in the config; ``lapmodel train --stage``):

* ``aggregate``: (a_c, d_c) rendered with each photo's own light and view; loss = Relaxed Consistency Loss (Eq. 5):
  Eq. 3 weighted per pixel by M_re (from the batch's ``seg`` via ``lapdata.parsing.masks.label_to_masks``), on each
  photo of the set and on its flipped reconstruction, plus the perceptual term with the same weights. Hard views
  (``batch.hard``) and padded views are skipped. Without ``seg`` in the batch, or with ``rcl: false`` (ablation), the
  loss is plain Eq. 3 (the log's ``rcl_frac`` says which fraction of views had masks).
* ``personalize``: the refiner alone is trained (everything else frozen, run without gradients); loss = Eq. 3 (+ flip,
  + perceptual) on the re-render of (a_t, d_t).
* ``finetune``: every network trained jointly; loss = RCL on (a_c, d_c) + Eq. 3 on (a_t, d_t).

The photo-geometric core (depth / light / view mappings, the render of (albedo, depth) into each photo's view and
its flipped version, Eq. 3 + perceptual + smoothness) is ``lapmodel.models.photogeo``, the same code as Unsup3D's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lapdata.core.errors import LapError

from lapmodel.config import LAP_STAGES, ModelConfig
from lapmodel.models import photogeo
from lapmodel.models.aggregate import Aggregator
from lapmodel.models.model import Model
from lapmodel.models.photogeo import RenderOut
from lapmodel.models.networks import ConfNet, Encoder
from lapmodel.models.outputs import Reconstruction
from lapmodel.models.refine import Refiner


def process_depth(raw: Tensor, cfg) -> Tensor:
    """Raw depth (B, 1, S, S) or (B, S, S) -> canonical depth (B, S, S) (``photogeo.map_depth``, prior included)."""
    return photogeo.map_depth(raw, cfg)


# --------------------------------------------------------------------------------------------- outputs


@dataclass
class LAPOutput:
    """What ``LAPModel.forward`` returns. M = number of valid views in the batch (flattened, identity-major).

    stage: the stage the outputs were computed for
    index: (M,) int64 identity index (0..B-1) of each view; images: (M, 3, S, S) input views in [0, 1]
    weights: (M, S, S) per-pixel loss weight of each view for the aggregated render (M_re, or 1; 0 for hard views)
    rcl_frac: fraction of views whose weight came from RCL masks (0 without seg or with rcl off)
    canon_albedo: (B, 3, S, S) a_c in [0, 1]; canon_depth: (B, S, S) d_c
    view: (M, 6); light: (M, 4); conf: (M, 2, S, S) photometric sigmas; conf_perc: (M, 2, S/4, S/4)
    agg: RenderOut of (a_c, d_c) in each view (None in stage personalize when not needed)
    ref: RenderOut of (a_t, d_t) in each view at the refiner's size (None in stage aggregate)
    agg_weights: (B, N, Z) albedo aggregation weights (for inspection)
    """

    stage: str
    index: Tensor
    images: Tensor
    weights: Tensor
    rcl_frac: float
    canon_albedo: Tensor
    canon_depth: Tensor
    view: Tensor
    light: Tensor
    conf: Tensor
    conf_perc: Tensor
    agg: RenderOut | None
    ref: RenderOut | None
    agg_weights: Tensor


# --------------------------------------------------------------------------------------------- the model


class LAPModel(nn.Module, Model):
    """LAP: aggregation (albedo, depth) + per-photo light/view/confidence + attribute refiner.

    ``cfg`` is a ``lapmodel.config.ModelConfig`` whose ``lap`` section is a ``LAPConfig``; ``perceptual`` the frozen
    perceptual network of the loss (VGG16 or MobileNetV2) or None (perceptual loss off).
    """

    accepts_sets = True  # reconstruct(images, as_set=True) aggregates the photos into one identity

    def __init__(self, cfg: ModelConfig, perceptual: nn.Module | None = None):
        super().__init__()
        lap = cfg.lap
        s = cfg.image_size
        self.cfg = cfg
        self.size = s
        official = lap.arch == "official"  # the LAP demo's networks, whose released weights load (lap_official.py)
        widths = None
        if official:
            from lapmodel.models import lap_official as off

            if s != off.SIZE:
                raise LapError(f"model.lap.arch official (the LAP demo's networks) is {off.SIZE} px only, "
                               f"not model.image_size {s}")
            self.albedo_agg = off.OfficialAggregator(3, cfg.nf, cfg.zdim, adaptive=lap.adaptive, tanh=True)
            self.depth_agg = off.OfficialAggregator(1, cfg.nf, cfg.zdim, adaptive=lap.adaptive, tanh=False)
            widths = off.encoder_channels(cfg.nf_encoder)
        else:
            self.albedo_agg = Aggregator(3, s, cfg.zdim, cfg.nf, adaptive=lap.adaptive, tanh=True, encoder=lap.encoder)
            self.depth_agg = Aggregator(1, s, cfg.zdim, cfg.nf, adaptive=lap.adaptive, tanh=False, encoder=lap.encoder)
        self.light_net = Encoder(3, 4, s, cfg.nf_encoder, channels=widths)  # (M, 3, S, S) -> (M, 4)
        self.view_net = Encoder(3, 6, s, cfg.nf_encoder, channels=widths)  # (M, 3, S, S) -> (M, 6)
        self.conf_net = ConfNet(3, s, cfg.nf, cfg.zdim_conf) if cfg.use_conf else None
        if cfg.depth_init == "flat":
            photogeo.init_flat_depth(self.depth_agg.decoder)
        if not lap.refiner:
            self.refiner = None
        elif official:
            self.refiner = off.OfficialRefiner(cfg.nf, cfg.zdim)
        else:
            self.refiner = Refiner(lap.refine_size, lap.refine_nf, lap.target_size, lap.filtered_connection,
                                   lap.injection)
        self.perceptual = perceptual
        self.register_buffer("refiner_trained", torch.zeros((), dtype=torch.bool))
        self.stage = lap.stage
        self.set_stage(lap.stage)
        self.step = 0  # the train loop may set it (flip-weight schedule)

    # ----------------------------------------------------------------------------------------- stages

    def set_stage(self, stage: str) -> None:
        if stage not in LAP_STAGES:
            raise LapError(f"unknown LAP stage {stage!r}: use one of {list(LAP_STAGES)}")
        if stage != "aggregate" and self.refiner is None:
            raise LapError(f"stage {stage!r} needs the refiner, but model.lap.refiner is false")
        self.stage = stage
        trainable = {id(p) for p in self.trainable_parameters(stage)}
        for p in self.parameters():
            p.requires_grad_(id(p) in trainable)

    def stage_modules(self, stage: str) -> list[nn.Module]:
        base = [self.albedo_agg, self.depth_agg, self.light_net, self.view_net]
        if self.conf_net is not None:
            base.append(self.conf_net)
        if stage == "aggregate":
            return base
        if stage == "personalize":
            return [self.refiner]
        return base + [self.refiner]

    def trainable_parameters(self, stage: str | None = None) -> list[nn.Parameter]:
        """Parameters the optimizer updates in ``stage`` (default: the current one); the perceptual network is
        never trained."""
        stage = stage or self.stage
        return [p for m in self.stage_modules(stage) for p in m.parameters()]

    def view_network(self) -> nn.Module:
        return self.view_net

    def compile_networks(self) -> None:
        """torch.compile the whole forward pass in place (``nn.Module.compile``: state_dict keys unchanged)."""
        self.compile()

    # ----------------------------------------------------------------------------------------- forward

    def _per_view(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (M, 3, S, S) in [-1, 1] -> view (M, 6), light (M, 4), conf (M, 2, S, S), conf_perc (M, 2, S/4, S/4)."""
        view = photogeo.map_view(self.view_net(x), self.cfg)
        light = photogeo.map_light(self.light_net(x), self.cfg)
        if self.conf_net is not None:
            conf, conf_perc = self.conf_net(x)
        else:
            m, s = x.shape[0], x.shape[-1]
            conf, conf_perc = x.new_ones(m, 2, s, s), x.new_ones(m, 2, s // 4, s // 4)
        return view, light, conf, conf_perc

    def _loss_weights(self, images: Tensor, valid: Tensor, seg: Tensor | None, hard: Tensor | None
                      ) -> tuple[Tensor, float]:
        """(M, S, S) per-pixel weights of the aggregated render's loss and the fraction of views with RCL masks."""
        m = int(valid.sum())
        s = images.shape[-1]
        w = images.new_ones(m, s, s)
        frac = 0.0
        if self.cfg.lap.rcl and seg is not None:
            from lapdata.parsing.masks import label_to_masks

            seg_v = seg[valid]  # (M, S, S)
            if seg_v.shape[-1] != s:
                seg_v = F.interpolate(seg_v[:, None].float(), size=(s, s), mode="nearest")[:, 0].long()
            _, m_re = label_to_masks(seg_v, self.rcl_masks)
            has = (seg_v > 0).flatten(1).any(1)  # a view without any label (no parse) keeps weight 1
            w = torch.where(has[:, None, None], m_re.to(w.dtype), w)
            frac = float(has.float().mean()) if m else 0.0
        if hard is not None:
            w = w * (~hard[valid]).to(w.dtype)[:, None, None]
        return w, frac

    @property
    def rcl_masks(self):
        return self.cfg.lap.rcl_masks

    def forward(self, batch) -> LAPOutput:
        """batch: ``lapmodel.io.data.Batch`` (images (B, N, 3, S, S) in [0, 1], valid (B, N), seg, hard) -> LAPOutput."""
        images, valid = batch.images, batch.valid
        b, n = valid.shape
        if images.shape[-1] != self.size:
            raise LapError(f"batch images are {images.shape[-1]} px but the model is {self.size} px "
                           "(set model.image_size or the loader's size)")
        stage = self.stage
        x = images * 2 - 1  # (B, N, 3, S, S) in [-1, 1]
        index = torch.arange(b, device=images.device)[:, None].expand(b, n)[valid]  # (M,)
        xv = x[valid]  # (M, 3, S, S)
        base_grad = torch.is_grad_enabled() and stage != "personalize"
        with torch.set_grad_enabled(base_grad):
            a_out = self.albedo_agg(x, valid)
            d_out = self.depth_agg(x, valid)
            view, light, conf, conf_perc = self._per_view(xv)
        canon_albedo = a_out.canon / 2 + 0.5  # (B, 3, S, S) in [0, 1]
        c = self.cfg
        canon_depth = process_depth(d_out.canon, c)  # (B, S, S)
        weights, frac = self._loss_weights(images, valid, batch.seg, batch.hard)
        agg = None
        if stage != "personalize" or not self.training:
            with torch.set_grad_enabled(base_grad):
                agg = photogeo.render(canon_albedo[index], canon_depth[index], light, view, c)
        ref = None
        if stage != "aggregate":
            ref = self._refine(a_out.canon[index], d_out.canon[index], xv, light, view)
            if self.training and torch.is_grad_enabled():
                self.refiner_trained.fill_(True)
        return LAPOutput(stage, index, images[valid], weights, frac, canon_albedo, canon_depth, view, light, conf,
                         conf_perc, agg, ref, a_out.weights)

    def _refine(self, albedo_raw: Tensor, depth_raw: Tensor, xv: Tensor, light: Tensor, view: Tensor,
                flip: bool = True) -> RenderOut:
        """Per-view canonical maps (M, 3, S, S) tanh albedo, (M, 1, S, S) raw depth, target photos (M, 3, S, S) in
        [-1, 1] -> RenderOut of (a_t, d_t) at the refiner's size."""
        c = self.cfg
        r = self.refiner(albedo_raw, depth_raw, xv)
        a_t = (r.albedo.clamp(-1, 1) / 2 + 0.5)  # (M, 3, R, R)
        d_t = process_depth(r.depth, c)  # (M, R, R)
        return photogeo.render(a_t, d_t, light, view, c, flip=flip)

    # ----------------------------------------------------------------------------------------- losses

    def flip_weight(self) -> float:
        return photogeo.flip_weight(self.cfg, self.step)

    def _render_loss(self, r: RenderOut, images: Tensor, conf: Tensor, conf_perc: Tensor, weight: Tensor | None,
                     prefix: str) -> tuple[Tensor, dict[str, Tensor]]:
        """``photogeo.reconstruction_loss`` of one RenderOut against the input views."""
        return photogeo.reconstruction_loss(r, images, self.cfg, conf=conf, conf_perc=conf_perc,
                                            perceptual=self.perceptual, lam_flip=self.flip_weight(), weight=weight,
                                            prefix=prefix)

    def loss(self, out: LAPOutput, batch=None) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss of the stage and a dict of detached scalars to log."""
        logs: dict[str, Tensor] = {
            "rcl_frac": torch.tensor(out.rcl_frac),
            "set_size": torch.tensor(out.index.numel() / max(1, out.canon_depth.shape[0])),
            **photogeo.view_logs(out.view, self.cfg),
        }
        total = out.canon_depth.new_zeros(())
        if out.stage in ("aggregate", "finetune"):
            la, lg = self._render_loss(out.agg, out.images, out.conf, out.conf_perc, out.weights, "agg_")
            total = total + la
            logs.update(lg)
        if out.stage in ("personalize", "finetune"):
            hard_w = (out.weights.flatten(1).amax(1) > 0).to(out.images.dtype)[:, None, None]  # skip hard views
            hard_w = hard_w.expand_as(out.weights)
            lr_, lg = self._render_loss(out.ref, out.images, out.conf.detach() if out.stage == "personalize"
                                        else out.conf, out.conf_perc, hard_w, "ref_")
            total = total + lr_
            logs.update(lg)
        logs["loss"] = total.detach()
        return total, logs

    # ----------------------------------------------------------------------------------------- inference

    @torch.no_grad()
    def reconstruct(self, images: Tensor, as_set: bool = False, personalize: bool | None = None) -> Reconstruction:
        """images (K, 3, S', S') in [0, 1] -> Reconstruction of K entries (resized to the model's size).

        as_set=False: every image is its own identity (a set of one). as_set=True: the K photos are one identity;
        their aggregated (a_c, d_c) is rendered in each photo's own view and light. ``personalize`` (default: when
        the refiner has been trained) uses the refined (a_t, d_t) of each photo instead (at the refiner's size,
        resized to the model's size for the Reconstruction).
        """
        was = self.training
        self.eval()
        try:
            s = self.size
            if images.shape[-1] != s or images.shape[-2] != s:
                images = F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False)
            k = images.shape[0]
            if as_set:
                x = images[None] * 2 - 1  # (1, K, 3, S, S)
                valid = torch.ones(1, k, dtype=torch.bool, device=images.device)
            else:
                x = images[:, None] * 2 - 1  # (K, 1, 3, S, S)
                valid = torch.ones(k, 1, dtype=torch.bool, device=images.device)
            index = torch.arange(x.shape[0], device=images.device)[:, None].expand_as(valid)[valid]  # (K,)
            xv = x[valid]
            a_raw = self.albedo_agg(x, valid).canon[index]  # (K, 3, S, S)
            d_raw = self.depth_agg(x, valid).canon[index]  # (K, 1, S, S)
            view, light, _, _ = self._per_view(xv)
            c = self.cfg
            use_ref = (self.refiner is not None and bool(self.refiner_trained)) if personalize is None else personalize
            if use_ref:
                if self.refiner is None:
                    raise LapError("personalize=True but this model has no refiner")
                r = self.refiner(a_raw, d_raw, xv)
                a_raw, d_raw = r.albedo.clamp(-1, 1), r.depth
                if a_raw.shape[-1] != s:
                    a_raw = F.interpolate(a_raw, size=(s, s), mode="bilinear", align_corners=False)
                    d_raw = F.interpolate(d_raw, size=(s, s), mode="bilinear", align_corners=False)
            albedo = a_raw / 2 + 0.5
            depth = process_depth(d_raw, c)
            r = photogeo.render(albedo, depth, light, view, c, flip=False)
            return Reconstruction(
                canon_depth=depth, canon_albedo=albedo, canon_normal=r.normal, canon_shading=r.shading,
                canon_image=r.canon_image.clamp(0, 1), view=view, light=light, recon_image=r.recon.clamp(0, 1),
                recon_depth=r.recon_depth, recon_mask=r.mask, fov_deg=c.fov_deg,
                depth_range=photogeo.depth_range(c),
            )
        finally:
            self.train(was)
