"""The photo-geometric core of Unsup3D, shared by both models (``unsup3d.Unsup3D`` and ``lap.LAPModel``).

One definition of each step between the networks' raw outputs and the loss:

* mappings (Unsup3D): ``map_depth`` (raw -> canonical depth in [min_depth, max_depth], border columns pinned),
  ``map_light`` (tanh -> [ambient, diffuse, dx, dy]), ``map_view`` (tanh -> rotations in radians, translations);
* ``render``: canonical albedo + depth + light + view -> shaded canonical image and its re-render in the view, for
  the canonical maps and their mirror images (``lapmodel.render.renderer`` with the config's ``depth_range``);
* ``reconstruction_loss``: Eq. 3 (confidence-calibrated L1) + flip + perceptual + depth smoothness.

Deviations from the official code, kept on purpose (each has a config switch; measured in BENCHMARKS.md, "quality
ladder"):

* **Ellipsoid depth prior** (``model.depth_prior``, GAN2Shape's shape initialisation). The raw depth is offset by
  ``-depth_prior * sqrt(1 - (x/ax)^2 - (y/ay)^2)`` (a cap in the centre of the frame, where the aligned face is)
  before the tanh. A flat canonical depth with a frontal light and the identity view is a stationary point: a yaw
  of a plane about its own centre only foreshortens it (no feature moves), and a frontal light's shading has zero
  derivative with respect to a frontal normal, so neither view nor depth get a first-order signal. Unsup3D leaves
  that point through the noise of its random init over ~30 epochs; the cap gives both a signal at step 0.
* **Flat start** (``model.depth_init: flat``): the depth decoder's last convolution starts at zero, so the start is
  exactly the prior (the default PyTorch init adds ~80 degrees of normal noise at a 10-degree field of view, which
  training then exploits instead of removing).
* **Uncovered pixels count** (``model.uncovered: grey``): a pixel of the photo that the re-render does not reach
  (the canonical frame turned out of view) is compared with grey (0 in [-1, 1]) and the photometric mean runs over
  the whole frame. Unsup3D's mean over the covered pixels only (``ignore``) lowers the loss as the face turns away
  and the covered area shrinks, which drove the views to the +-60 degree limit in our runs ("view collapse").
* **Depth smoothness** (``model.lam_depth_sm``, Unsup3D's own optional term, used in its car experiment): the mean
  absolute first difference of the canonical depth over the depth range. Without it, rows alternating with period
  2 are an exact null space of the central-difference normals under yaw-only view changes, and the depth fills with
  stripes.

A published checkpoint (``lapmodel.io.published``: Unsup3D's releases, the LAP demo) comes with the official config:
every switch above off (``depth_prior: 0``, ``depth_init: default``, ``uncovered: ignore``, ``lam_depth_sm: 0`` but
for syncar) and the official border (``border_columns: 2`` at any size; the demo's ``border_depth: 1.05`` and
``border_corner: [20, 15]``), so its depth, light and view are the official ones exactly (BENCHMARKS.md).

Shapes: B images of side S; depth (B, S, S); albedo / images (B, 3, S, S) in [0, 1]; light (B, 4); view (B, 6).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lapmodel.models import losses

from lapmodel.render import renderer


def depth_range(cfg) -> tuple[float, float]:
    """(min_depth, max_depth) of a ModelConfig: the one place the renderer's depth range comes from."""
    return (float(cfg.min_depth), float(cfg.max_depth))


def border_columns(size: int, cfg=None) -> int:
    """Columns pinned at the border depth on each side: ``cfg.border_columns`` when set (the official code pins 2 at
    any size), else (or without a ``cfg``) S // 32, at least 1 (2 at 64 px as Unsup3D)."""
    k = cfg.border_columns if cfg is not None else None
    return int(k) if k is not None else max(1, size // 32)


def border_depth(cfg) -> float:
    """Depth of the pinned border columns (Unsup3D: 0.7 max + 0.3 min)."""
    return float(cfg.border_depth) if cfg.border_depth is not None else 0.7 * cfg.max_depth + 0.3 * cfg.min_depth


@functools.lru_cache(maxsize=16)
def _prior_cpu(size: int, amplitude: float, ax: float, ay: float) -> Tensor:
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size, dtype=torch.float64),
                            torch.linspace(-1, 1, size, dtype=torch.float64), indexing="ij")
    cap = (1 - (xs / ax) ** 2 - (ys / ay) ** 2).clamp(min=0).sqrt()
    return (-amplitude * cap).float()


def depth_prior(size: int, amplitude: float, axes: tuple[float, float] = (0.75, 0.9), *,
                device=None, dtype=torch.float32) -> Tensor:
    """The ellipsoid cap added to the raw depth: (S, S) = -amplitude * sqrt(max(0, 1 - (x/ax)^2 - (y/ay)^2)), with
    x, y in [-1, 1] over the frame (negative = nearer the camera). Zeros when ``amplitude`` is 0."""
    return _prior_cpu(int(size), float(amplitude), float(axes[0]), float(axes[1])).to(device=device, dtype=dtype)


def map_depth(raw: Tensor, cfg) -> Tensor:
    """Raw depth (B, S, S) or (B, 1, S, S) -> canonical depth (B, S, S) in [min_depth, max_depth].

    d = tanh(r - mean(r)) with r = raw + prior, rescaled to the depth range; ``border_columns`` columns on the
    left and right (and ``cfg.border_corner`` rows x columns at the bottom-left) are pinned at ``border_depth``."""
    r = raw.squeeze(1) if raw.dim() == 4 else raw
    s = r.shape[-1]
    if cfg.depth_prior:
        r = r + depth_prior(s, cfg.depth_prior, tuple(cfg.depth_prior_axes), device=r.device, dtype=r.dtype)
    d = torch.tanh(r - r.mean(dim=(1, 2), keepdim=True))
    lo, hi = depth_range(cfg)
    d = (1 + d) / 2 * hi + (1 - d) / 2 * lo
    k = border_columns(s, cfg)
    pin = torch.zeros(r.shape[-2], s, dtype=torch.bool, device=d.device)
    pin[:, :k] = True
    pin[:, s - k:] = True
    rows, cols = cfg.border_corner
    if rows and cols:  # the LAP demo also pins a bottom-left corner
        pin[-rows:, :cols] = True
    return torch.where(pin, torch.full_like(d, border_depth(cfg)), d)


def map_light(raw: Tensor, cfg) -> Tensor:
    """(B, 4) tanh output -> [ambient, diffuse, dx, dy] with ambient / diffuse rescaled into their ranges."""
    amb = (1 + raw[:, :1]) / 2 * cfg.max_amb_light + (1 - raw[:, :1]) / 2 * cfg.min_amb_light
    dif = (1 + raw[:, 1:2]) / 2 * cfg.max_diff_light + (1 - raw[:, 1:2]) / 2 * cfg.min_diff_light
    return torch.cat([amb, dif, raw[:, 2:4]], 1)


def map_view(raw: Tensor, cfg) -> Tensor:
    """(B, 6) tanh output -> rotations x, y, z (radians, +-xyz_rotation_range degrees) and translations x, y, z."""
    scale = raw.new_tensor([math.radians(cfg.xyz_rotation_range)] * 3
                           + [cfg.xy_translation_range] * 2 + [cfg.z_translation_range])
    return raw * scale


def init_flat_depth(net: nn.Module) -> None:
    """Zero the last convolution of a depth decoder (``model.depth_init: flat``): the raw depth starts at 0."""
    last = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))][-1]
    nn.init.zeros_(last.weight)
    if last.bias is not None:
        nn.init.zeros_(last.bias)


# --------------------------------------------------------------------------------------------------- rendering


@dataclass
class RenderOut:
    """A photo-geometric render of M canonical (albedo, depth) pairs, each into its view.

    albedo (M, 3, S, S) [0, 1]; depth (M, S, S); normal (M, S, S, 3); shading (M, 1, S, S); canon_image (M, 3, S, S);
    recon (M, 3, S, S) the re-render (0 outside ``mask``); recon_depth (M, S, S); mask (M, S, S) 0/1, detached:
    where the re-render (and, with ``flip``, the mirrored one too) has a surface; recon_flip / recon_depth_flip: the
    same from the mirrored canonical maps (None without ``flip``).
    """

    albedo: Tensor
    depth: Tensor
    normal: Tensor
    shading: Tensor
    canon_image: Tensor
    recon: Tensor
    recon_depth: Tensor
    mask: Tensor
    recon_flip: Tensor | None = None
    recon_depth_flip: Tensor | None = None


def render(albedo: Tensor, depth: Tensor, light: Tensor, view: Tensor, cfg, flip: bool = True) -> RenderOut:
    """albedo (M, 3, S, S) in [0, 1], depth (M, S, S), light (M, 4) mapped, view (M, 6) -> RenderOut.

    With ``flip`` the canonical maps and their mirror images are rendered in one batch, and ``mask`` is where both
    re-renders have a surface (Unsup3D). Geometry runs in fp32, outside autocast."""
    m = albedo.shape[0]
    with torch.autocast(device_type=albedo.device.type, enabled=False):
        albedo, depth, light, view = albedo.float(), depth.float(), light.float(), view.float()
        if flip:
            depth2 = torch.cat([depth, depth.flip(-1)], 0)  # (2M, S, S)
            albedo2 = torch.cat([albedo, albedo.flip(-1)], 0)  # (2M, 3, S, S)
            light2, view2 = light.repeat(2, 1), view.repeat(2, 1)
        else:
            depth2, albedo2, light2, view2 = depth, albedo, light, view
        normal = renderer.depth_to_normal(depth2, cfg.fov_deg)  # (2M, S, S, 3)
        shading, canon_image = renderer.shade(albedo2, normal, light2)  # (2M, 1, S, S), (2M, 3, S, S)
        r = renderer.render(depth2, canon_image, view2, cfg.fov_deg, depth_range=depth_range(cfg))
        mask = (r.mask[:m] * r.mask[m:]) if flip else r.mask
        mask = mask.detach()
        recon = r.image * mask.repeat(2 if flip else 1, 1, 1).unsqueeze(1)
    return RenderOut(albedo=albedo, depth=depth, normal=normal[:m], shading=shading[:m], canon_image=canon_image[:m],
                     recon=recon[:m], recon_depth=r.depth[:m], mask=mask,
                     recon_flip=recon[m:] if flip else None, recon_depth_flip=r.depth[m:] if flip else None)


# --------------------------------------------------------------------------------------------------- losses


def depth_smoothness(depth: Tensor, cfg, views: Tensor | None = None) -> Tensor:
    """Mean absolute first difference of depth (B, S, S) in x and y, in units of the depth range, inside the pinned
    border columns (Unsup3D's ``loss_depth_sm``, which is taken before the border is pinned) -> scalar.

    ``views`` (B,) optional 0/1 weights of the images (hard views: 0); the mean is over the weighted images."""
    lo, hi = depth_range(cfg)
    k = border_columns(depth.shape[-1], cfg)
    d = depth[..., k:-k] / (hi - lo)
    per = (d[:, 1:] - d[:, :-1]).abs().flatten(1).mean(1) + (d[:, :, 1:] - d[:, :, :-1]).abs().flatten(1).mean(1)
    if views is None:
        return per.mean()
    views = views.to(per.dtype)
    return (per * views).sum() / views.sum().clamp_min(1.0)


def reconstruction_loss(r: RenderOut, images: Tensor, cfg, *, conf: Tensor | None = None,
                        conf_perc: Tensor | None = None, perceptual: nn.Module | None = None,
                        lam_flip: float = 0.5, weight: Tensor | None = None, prefix: str = ""
                        ) -> tuple[Tensor, dict[str, Tensor]]:
    """Eq. 3 of one RenderOut against the input images, plus its flipped render, perceptual and smoothness terms.

    images (M, 3, S', S') in [0, 1] (resized to the render's side S when they differ); conf (M, 2, S, S) sigmas for
    the render and the flipped render (None: plain L1); conf_perc (M, 2, S/4, S/4); perceptual: frozen feature
    network (None or ``cfg.lam_perc == 0``: off); weight (M, S, S) per-pixel weights (RCL's M_re, hard views).
    Photometric terms are in Unsup3D's [-1, 1] image range. Returns (total, detached logs named ``prefix`` + term).
    """
    s = r.recon.shape[-1]
    if images.shape[-1] != s:
        images = F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        if conf is not None:
            conf = F.interpolate(conf, size=(s, s), mode="bilinear", align_corners=False)
        if conf_perc is not None:
            conf_perc = F.interpolate(conf_perc, size=(s // 4, s // 4), mode="bilinear", align_corners=False)
    if weight is not None and weight.shape[-1] != s:
        weight = F.interpolate(weight[:, None].float(), size=(s, s), mode="nearest")[:, 0]
    x = images.float() * 2 - 1
    sig, sig_f = (conf[:, :1], conf[:, 1:]) if conf is not None else (None, None)
    if cfg.uncovered == "grey":  # uncovered pixels render as 0 in [-1, 1] and count, over the whole frame
        m = r.mask.unsqueeze(1)
        pred = lambda rec: (rec * 2 - 1) * m  # noqa: E731
        region = None
    else:  # Unsup3D: the mean over the covered pixels only
        pred = lambda rec: rec * 2 - 1  # noqa: E731
        region = r.mask
    l1 = losses.photometric_loss(pred(r.recon), x, sig, region, weight)
    total, logs = l1, {f"{prefix}l1": l1.detach()}
    if r.recon_flip is not None:
        l1f = losses.photometric_loss(pred(r.recon_flip), x, sig_f, region, weight)
        total = total + lam_flip * l1f
        logs[f"{prefix}l1_flip"] = l1f.detach()
    if perceptual is not None and cfg.lam_perc > 0:
        sp, sp_f = (conf_perc[:, :1], conf_perc[:, 1:]) if conf_perc is not None else (None, None)
        perc = losses.perceptual_loss(perceptual, r.recon, images, sp, r.mask, weight).float()
        total = total + cfg.lam_perc * perc
        logs[f"{prefix}perc"] = perc.detach()
        if r.recon_flip is not None:
            perc_f = losses.perceptual_loss(perceptual, r.recon_flip, images, sp_f, r.mask, weight).float()
            total = total + cfg.lam_perc * lam_flip * perc_f
            logs[f"{prefix}perc_flip"] = perc_f.detach()
    elif conf_perc is not None:
        # perceptual loss off: keep the quarter-size confidence head in the graph (zero gradient), so that DDP sees
        # every parameter used
        total = total + 0.0 * conf_perc.sum()
    if cfg.lam_depth_sm > 0:
        sm = depth_smoothness(r.depth, cfg, None if weight is None else (weight.flatten(1).amax(1) > 0))
        total = total + cfg.lam_depth_sm * sm
        logs[f"{prefix}depth_sm"] = sm.detach()
    return total, logs


def view_logs(view: Tensor, cfg) -> dict[str, Tensor]:
    """Detached scalars of a batch's views (M, 6) for the log: ``yaw_std_deg``, the spread of the predicted yaw, and
    ``yaw_at_limit``, the fraction of views within 1 % of the +-``xyz_rotation_range`` limit. A spread near 0 on posed
    photos: the views stayed frontal and the albedo took the pose; a fraction near 1: the views collapsed to the
    limit, where the tanh saturates and no gradient brings them back (BENCHMARKS.md "The library defaults on small
    overfits")."""
    yaw = view[:, 1].detach().float()
    limit = math.radians(cfg.xyz_rotation_range)
    return {"yaw_std_deg": torch.rad2deg(yaw.std()) if yaw.numel() > 1 else yaw.new_zeros(()),
            "yaw_at_limit": (yaw.abs() > 0.99 * limit).float().mean()}


def flip_weight(cfg, step: int) -> float:
    """Weight of the flipped-reconstruction terms: 1 before ``lam_flip_start_step``, then ``lam_flip``."""
    return 1.0 if step < cfg.lam_flip_start_step else float(cfg.lam_flip)
