"""Depth and mesh files of a reconstruction: 16-bit depth PNG + range sidecar, exact .npy, and the depth-grid mesh
(OBJ + MTL + texture, PLY, GLB) written through `lapmodel.io.mesh`, the one mesh writer.

Pictures (colour maps, normals as colours, grids, GIFs) are `lapdata.core.pictures`; turntables are
`lapmodel.viz.pictures`. Arrays are numpy or torch (converted on entry); shapes:

- depth:   (H, W) float, camera units, NaN / masked = no surface
- texture: (3, H, W) or (H, W, 3) float in [0, 1], or (H, W, 3) uint8, the same H, W as the depth

Every file is written through `lapdata.core.atomic` (a temporary sibling, then ``os.replace``: nothing half-written).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from lapdata.core.atomic import write_bytes, write_json
from lapdata.core.pictures import to_uint8
from lapdata.dataset.sample import decode_depth, encode_depth
from lapmodel.io import mesh as M

PathLike = str | os.PathLike


def _np(x: Any) -> np.ndarray:
    """Tensor or array -> numpy array (detached, on CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------------------------- depth


def save_depth_png(path: PathLike, depth: Any, mask: Any | None = None) -> tuple[Path, Path]:
    """Depth (H, W) -> 16-bit PNG at ``path`` + sidecar ``<path minus .png>.json`` with the range.

    Encoding (same as the shard contract, `lapdata.dataset.sample.encode_depth`): ``v = 1 + round((d - lo) / (hi - lo) * 65534)``,
    ``v = 0`` where there is no surface (NaN or mask false). The sidecar holds ``{"range": [lo, hi], ...}``.
    The round-trip error is at most (hi - lo) / 65534 / 2 per pixel.
    """
    d = _np(depth).astype(np.float64).copy()
    if d.ndim != 2:
        raise ValueError(f"depth must be (H, W), got {d.shape}")
    if mask is not None:
        d[~_np(mask).astype(bool)] = np.nan
    data, rng = encode_depth(d)
    path = Path(path)
    side = path.with_suffix(".json")
    write_bytes(path, data)
    write_json(side, {"range": rng, "encoding": "v = 1 + round((d - lo) / (hi - lo) * 65534); v = 0: no surface",
                      "shape": list(d.shape)}, indent=1)
    return path, side


def load_depth_png(path: PathLike) -> np.ndarray:
    """Inverse of `save_depth_png`: (H, W) float32 with NaN where there is no surface."""
    import json

    path = Path(path)
    doc = json.loads(path.with_suffix(".json").read_text())
    return decode_depth(path.read_bytes(), doc["range"])


def save_depth_npy(path: PathLike, depth: Any) -> Path:
    """Depth (H, W) -> float32 .npy (exact)."""
    buf = io.BytesIO()
    np.save(buf, _np(depth).astype(np.float32))
    return write_bytes(Path(path), buf.getvalue())


# --------------------------------------------------------------------------------------------- meshes


def depth_points(depth: Any, fov_deg: float) -> np.ndarray:
    """(H, W) depth -> (H, W, 3) float32 camera points (`lapdata.geometry.camera.depth_to_points`, pixel (i, j) at x=j,
    y=i; x right, y down, z = depth). Non-finite depths give non-finite points."""
    import torch

    from lapdata.geometry import camera as geometry

    d = torch.from_numpy(_np(depth).astype(np.float64))
    h, w = d.shape
    K = geometry.intrinsics(fov_deg, (h, w), dtype=d.dtype)
    return geometry.depth_to_points(d[None], K)[0].numpy().astype(np.float32)


def depth_mesh(depth: Any, fov_deg: float = 10.0, mask: Any | None = None, max_jump: float | None = 0.05,
               crop: int = 0, frame: str = "y_up", texture: Any | None = None) -> M.Mesh:
    """Grid mesh (`lapmodel.io.mesh.grid_mesh`) of a depth map under the perspective camera of `lapdata.geometry.camera`.

    depth (H, W) -> `Mesh` with V = H * W (vertex i * W + j = pixel (i, j)): ``frame="camera"``: camera points
    (x right, y down, z = depth); ``frame="y_up"`` (default, what OBJ/PLY/GLB viewers expect): (x, -y, -z), y up
    and the face looking towards +z (a rotation, so triangles keep facing the viewer). ``texture`` (any layout of
    `lapdata.core.pictures.to_uint8`, H x W) gives uvs = pixel coordinates and the vertex colours.

    Triangles are dropped when any vertex is outside ``mask`` (or NaN / non-positive depth, or within ``crop``
    pixels of the border), or when the triangle spans a depth discontinuity: max - min of its vertex depths
    > ``max_jump`` x the median valid depth (None keeps them all).
    """
    d = _np(depth).astype(np.float64)
    if d.ndim != 2:
        raise ValueError(f"depth must be (H, W), got {d.shape}")
    if frame not in ("y_up", "camera"):
        raise ValueError(f"frame must be 'y_up' or 'camera', got {frame!r}")
    h, w = d.shape
    valid = np.isfinite(d) & (d > 0)
    if mask is not None:
        valid &= _np(mask).astype(bool)
    if crop > 0:
        border = np.zeros_like(valid)
        border[crop : h - crop, crop : w - crop] = True
        valid &= border
    filled = np.where(valid, d, np.median(d[valid]) if valid.any() else 1.0)
    points = depth_points(filled, fov_deg)
    if frame == "y_up":
        points = M.camera_to_y_up(points)
    tex = None if texture is None else to_uint8(texture)
    return M.grid_mesh(d, points, texture=tex, mask=valid, max_jump=max_jump)


def export_depth_mesh(stem: PathLike, depth: Any, texture: Any, fov_deg: float = 10.0, mask: Any | None = None,
                      max_jump: float | None = 0.05, crop: int = 0, binary_ply: bool = True,
                      frame: str = "y_up") -> dict[str, Path]:
    """Depth (H, W) + texture (3, H, W) -> ``stem.obj`` (+ ``stem.mtl``, ``stem_texture.png``), ``stem.ply`` (vertex
    colours sampled from the texture) and ``stem.glb`` (texture embedded, for web viewers), all of the same
    `depth_mesh` with its unused vertices dropped (`lapmodel.io.mesh.compact`).
    Returns {"obj", "mtl", "texture", "ply", "glb"}: paths."""
    stem = Path(stem)
    tex = to_uint8(texture)
    if tex.shape[:2] != _np(depth).shape:
        raise ValueError(f"texture size {tex.shape[:2]} does not match depth size {_np(depth).shape}")
    mesh = M.compact(depth_mesh(depth, fov_deg, mask=mask, max_jump=max_jump, crop=crop, frame=frame, texture=tex))
    out = M.write_obj(stem.with_suffix(".obj"), mesh)
    out["ply"] = M.write_ply(stem.with_suffix(".ply"), mesh, binary=binary_ply)
    out["glb"] = M.write_glb(stem.with_suffix(".glb"), mesh)
    return out
