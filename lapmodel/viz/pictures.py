"""The model-specific pictures: training picture panels of a model's output and turntable frames (they need the
renderer). Everything they draw goes through `lapdata.core.pictures` (the one depth colour map, normal colours, grids).

`picture_panels(model, output)` -> named panels (k, 3, S, S) in [0, 1], one per column of the training picture
grid (`picture_grid`, also sent to TensorBoard), chosen by the output's type: the LAP model's (``LAPOutput``) or
Unsup3D-re's (``Unsup3DOutput``). Depth panels are coloured like every depth picture
(`lapdata.core.pictures.depth_colors`: each spans its own 1st..99th percentile, near = bright).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lapdata.core import pictures
from lapmodel.models.lap import LAPOutput
from lapmodel.models.model import Model
from lapmodel.models.unsup3d import Unsup3DOutput

SHAPE_LIGHT = (0.25, 0.75, 0.4, -0.4)  # [ambient, diffuse, dx, dy] of the grey shape render
YAWS = (-60, -30, 0, 30, 60)           # turntable columns of the training pictures, degrees


def depth_panel(depth: Tensor) -> Tensor:
    """(k, S, S) depth -> (k, 3, S, S) in [0, 1] coloured by `lapdata.core.pictures.depth_colors`."""
    d = depth.detach().float().cpu().numpy()
    pics = np.stack([pictures.depth_colors(x) for x in d])
    return torch.from_numpy(pics).permute(0, 3, 1, 2).float() / 255.0


def normal_panel(normal: Tensor) -> Tensor:
    """(k, S, S, 3) normals -> (k, 3, S, S) in [0, 1] coloured by `lapdata.core.pictures.normal_colors`."""
    n = normal.detach().float().cpu().numpy()
    return torch.from_numpy(np.stack([pictures.normal_colors(x) for x in n])).permute(0, 3, 1, 2).float() / 255.0


def _rgb(t: Tensor, k: int, s: int) -> Tensor:
    """(B, C, H, W) or (B, H, W) -> the first k as (k, 3, S, S) in [0, 1] on the CPU."""
    t = t[:k].detach().float()
    if t.dim() == 3:
        t = t[:, None]
    if t.shape[-1] != s:
        t = F.interpolate(t, size=(s, s), mode="bilinear", align_corners=False)
    return (t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t).clamp(0, 1).cpu()


def _turntable(depth: Tensor, image: Tensor, yaws, fov_deg: float, depth_range) -> list[tuple[str, Tensor]]:
    from lapmodel.render import renderer

    try:
        with torch.no_grad(), torch.autocast(device_type=depth.device.type, enabled=False):
            tt = renderer.turntable(depth.float(), image.float(), [math.radians(y) for y in yaws], fov_deg,
                                    depth_range=depth_range)  # (k, T, 3, S, S)
        return [(f"yaw {y:+d}", tt[:, i]) for i, y in enumerate(yaws)]
    except Exception as e:  # noqa: BLE001 - a picture must never stop training
        warnings.warn(f"turntable failed: {e}", stacklevel=2)
        return []


@torch.no_grad()
def lap_panels(model: Model, out: LAPOutput, n: int = 6, yaws: tuple[float, ...] = YAWS) -> list[tuple[str, Tensor]]:
    """LAP (``LAPOutput``): input, re-render of the identity (a_c, d_c) and its flip, a_c, d_c, normals, shading,
    refined re-render / albedo / depth (stages personalize, finetune), a turntable of the shaded canonical identity."""
    from lapmodel.models import photogeo

    c = model.cfg
    k, s = min(n, out.images.shape[0]), out.images.shape[-1]
    def dpic(d: Tensor) -> Tensor:
        return _rgb(depth_panel(d[:k]), k, s)

    panels = [("input", _rgb(out.images, k, s))]
    r = out.agg
    if r is not None:
        panels += [("recon set", _rgb(r.recon, k, s)),
                   ("recon flip", _rgb(r.recon_flip if r.recon_flip is not None else r.recon, k, s)),
                   ("albedo set", _rgb(r.albedo, k, s)), ("depth set", dpic(r.depth)),
                   ("normal set", _rgb(normal_panel(r.normal[:k]), k, s)), ("shading", _rgb(r.shading / 2, k, s))]
    if out.ref is not None:
        t = out.ref
        panels += [("recon pers.", _rgb(t.recon, k, s)), ("albedo pers.", _rgb(t.albedo, k, s)),
                   ("depth pers.", dpic(t.depth))]
    if r is not None:
        tt = _turntable(r.depth[:k], r.canon_image[:k], yaws, c.fov_deg, photogeo.depth_range(c))
        panels += [(name, _rgb(x, k, s)) for name, x in tt]
    return panels


@torch.no_grad()
def unsup3d_panels(model: Model, out: Unsup3DOutput, n: int = 6, yaws: tuple[float, ...] = YAWS
                   ) -> list[tuple[str, Tensor]]:
    """Unsup3D-re (``Unsup3DOutput``): input, reconstruction, flipped reconstruction, canonical albedo, depth,
    normals, shading, shaded canonical image, and a turntable (yaw in degrees)."""
    cfg = model.cfg
    k, s = min(n, out.images.shape[0]), out.images.shape[-1]
    depth = out.canon_depth[:k].detach().float()
    panels = [("input", out.images[:k]), ("recon", out.recon_image[:k]), ("flip", out.recon_image_flip[:k]),
              ("albedo", out.canon_albedo[:k]), ("depth", depth_panel(depth)),
              ("normal", normal_panel(out.canon_normal[:k])), ("shading", out.canon_shading[:k]),
              ("canon", out.canon_image[:k])]
    panels += _turntable(depth, out.canon_image[:k].detach(), yaws, cfg.fov_deg, (cfg.min_depth, cfg.max_depth))
    return [(name, _rgb(t, k, s)) for name, t in panels]


def picture_panels(model: Model, out: LAPOutput | Unsup3DOutput, n: int = 6, yaws: tuple[float, ...] = YAWS
                   ) -> list[tuple[str, Tensor]]:
    """Named panels (k, 3, S, S) in [0, 1] of the first ``n`` images of a model's training output (what its
    ``forward`` returned): `lap_panels` of a ``LAPOutput``, `unsup3d_panels` of an ``Unsup3DOutput``."""
    if isinstance(out, LAPOutput):
        return lap_panels(model, out, n, yaws)
    if isinstance(out, Unsup3DOutput):
        return unsup3d_panels(model, out, n, yaws)
    raise TypeError(f"no training pictures for a {type(out).__name__} (lapmodel.viz.pictures.picture_panels)")


def picture_grid(panels: list[tuple[str, Tensor]]) -> np.ndarray:
    """Panels -> (H, W, 3) uint8: one row per image, one column per panel, the panel names above (wrapped)."""
    k = panels[0][1].shape[0]
    rows = [[t[i] for _, t in panels] for i in range(k)]
    return pictures.image_grid(rows, col_labels=[name for name, _ in panels], font_size=11)


def training_picture(model: Model, out: LAPOutput | Unsup3DOutput) -> np.ndarray:
    """The training picture grid of one step (`picture_grid` of `picture_panels`)."""
    return picture_grid(picture_panels(model, out))


def turntable_frames(canon_depth: Any, canon_image: Any, n_frames: int = 24, max_yaw_deg: float = 45.0,
                     fov_deg: float = 10.0, shape: bool = False,
                     depth_range: tuple[float, float] = (0.9, 1.1)) -> np.ndarray:
    """Turntable of one canonical face via `lapmodel.render.renderer.turntable`: (H, W), (3, H, W) -> (T, H, W', 3) uint8.

    Yaws sweep 0 -> +max -> -max -> 0 (a smooth loop), ``n_frames`` in all. ``shape``: each frame also shows the
    bare geometry (grey albedo lit by `SHAPE_LIGHT`) to the right of the textured face (W' = 2W; else W' = W).
    """
    from lapmodel.render import renderer

    t = np.linspace(0, 2 * math.pi, n_frames, endpoint=False)
    yaws = [float(math.radians(max_yaw_deg) * math.sin(x)) for x in t]
    d = torch.as_tensor(canon_depth, dtype=torch.float32).detach().cpu()[None]
    im = torch.as_tensor(canon_image, dtype=torch.float32).detach().cpu()[None]
    with torch.no_grad():
        if shape:
            normal = renderer.depth_to_normal(d, fov_deg)
            light = torch.tensor([SHAPE_LIGHT], dtype=torch.float32)
            _, grey = renderer.shade(torch.full_like(im, 0.8), normal, light)
            d, im = d.expand(2, -1, -1), torch.cat([im, grey.clamp(0, 1)])
        fr = renderer.turntable(d, im, yaws, fov_deg=fov_deg, depth_range=depth_range)  # (B, T, C, H, W)
    fr = torch.cat(list(fr), dim=-1) if shape else fr[0]  # side by side: (T, C, H, B*W)
    return np.stack([pictures.to_uint8(f) for f in fr.clamp(0, 1)])

