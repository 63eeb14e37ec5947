"""The toolkit's one mesh writer (on ``trimesh``): grid meshes from depth maps, OBJ + MTL + PNG, PLY, GLB.

Pure functions over one small value type, `Mesh`. Arrays are numpy or torch (converted on entry); shapes:

- depth:    (H, W) float; NaN or <= 0 = no surface
- points:   (H, W, 3) float, the 3D position of each pixel (e.g. the renderer's depth-to-3D)
- texture:  (H, W, 3) float in [0, 1] or uint8, the image the grid was seen in
- colors:   (H, W, 3) or (V, 3), float in [0, 1] or uint8
- mesh:     verts (V, 3) float32, faces (F, 3) int64, uvs (V, 2) float32, colors (V, 3) uint8, texture (H, W, 3) uint8

Conventions (those of ``lapmodel.io.export`` and ``lapdata.geometry.camera``): grid vertex ``i * W + j`` is pixel (i, j);
two triangles per pixel quad in `lapdata.geometry.camera.grid_faces` order, (top-left, bottom-left, top-right) then
(top-right, bottom-left, bottom-right), which face the camera of ``lapdata.geometry.camera`` (x right, y down, z away);
uv of pixel (i, j) = ((j + 0.5) / W, 1 - (i + 0.5) / H) (OBJ convention, v up; trimesh flips it for glTF).
OBJ, PLY and GLB viewers expect y up: pass camera points through `camera_to_y_up` first (a rotation: triangles
keep facing the viewer, now at +z). Every file is written through `lapdata.core.atomic.write_bytes` (a temporary file in
its folder, then ``os.replace``); the same mesh gives the same bytes (no timestamps, no random names).
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lapdata.core.atomic import write_bytes
from lapdata.core.errors import LapError

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh: verts (V, 3) float32, faces (F, 3) int64 (0-based), uvs (V, 2) float32 or None,
    colors (V, 3) uint8 or None (per-vertex colour), texture (H, W, 3) uint8 or None (needs uvs)."""

    verts: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray | None = None
    colors: np.ndarray | None = None
    texture: np.ndarray | None = None


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _uint8(x: Any, name: str) -> np.ndarray:
    """Colours float in [0, 1] (clipped, NaN -> 0) or uint8 -> uint8, same shape."""
    a = _np(x)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if not np.issubdtype(a.dtype, np.number):
        raise LapError(f"{name} must be numbers (float in [0, 1] or uint8), got dtype {a.dtype}")
    return np.clip(np.nan_to_num(a.astype(np.float64)) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def make_mesh(verts: Any, faces: Any, uvs: Any | None = None, colors: Any | None = None,
              texture: Any | None = None) -> Mesh:
    """Check and convert arrays into a `Mesh` (shapes above); a fault is one LapError naming the array."""
    v = _np(verts).astype(np.float32)
    f = _np(faces)
    if v.ndim != 2 or v.shape[1] != 3:
        raise LapError(f"mesh verts must be (V, 3), got shape {v.shape}")
    if not np.isfinite(v).all():
        raise LapError(f"mesh verts hold {int((~np.isfinite(v)).any(1).sum())} non-finite vertices")
    if f.ndim != 2 or f.shape[1] != 3 or not (np.issubdtype(f.dtype, np.integer) or f.size == 0):
        raise LapError(f"mesh faces must be (F, 3) integers, got shape {f.shape} dtype {f.dtype}")
    f = f.astype(np.int64)
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise LapError(f"mesh faces index vertices {f.min()}..{f.max()}, but there are {len(v)} vertices")
    uv = None if uvs is None else _np(uvs).astype(np.float32)
    if uv is not None and uv.shape != (len(v), 2):
        raise LapError(f"mesh uvs must be (V, 2) = ({len(v)}, 2), got shape {uv.shape}")
    c = None if colors is None else _uint8(colors, "mesh colors")
    if c is not None and c.shape != (len(v), 3):
        raise LapError(f"mesh colors must be (V, 3) = ({len(v)}, 3), got shape {c.shape}")
    t = None if texture is None else _uint8(texture, "texture")
    if t is not None and (t.ndim != 3 or t.shape[2] != 3):
        raise LapError(f"texture must be (H, W, 3), got shape {t.shape}")
    if t is not None and uv is None:
        raise LapError("a textured mesh needs uvs")
    return Mesh(v, f, uv, c, t)


def grid_faces(h: int, w: int) -> np.ndarray:
    """(2 (H-1) (W-1), 3) int64 triangles of an H x W vertex grid, in `lapdata.geometry.camera.grid_faces` order."""
    idx = np.arange(h * w, dtype=np.int64).reshape(h, w)
    tl, tr, bl, br = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    return np.concatenate([np.stack([tl, bl, tr], -1).reshape(-1, 3), np.stack([tr, bl, br], -1).reshape(-1, 3)])


def grid_uvs(h: int, w: int) -> np.ndarray:
    """(H * W, 2) float32 uv of each pixel centre: ((j + 0.5) / W, 1 - (i + 0.5) / H)."""
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([(jj + 0.5) / w, 1.0 - (ii + 0.5) / h], -1).reshape(-1, 2).astype(np.float32)


def camera_to_y_up(points: Any) -> np.ndarray:
    """Camera points (..., 3) (x right, y down, z away) -> (x, -y, -z): y up, the face looking towards +z."""
    return _np(points).astype(np.float32) * np.array([1.0, -1.0, -1.0], dtype=np.float32) + np.float32(0.0)  # no -0


def grid_mesh(depth: Any, points: Any, texture: Any | None = None, colors: Any | None = None,
              mask: Any | None = None, max_jump: float | None = None) -> Mesh:
    """Grid mesh of a depth map: depth (H, W), points (H, W, 3) -> `Mesh` with V = H * W (vertex i * W + j).

    A triangle is kept when its three pixels have a surface (finite depth > 0, finite point, ``mask`` (H, W) true)
    and, with ``max_jump``, when max - min of its depths <= max_jump x the median valid depth (no triangle across a
    depth discontinuity). texture (H, W, 3) gives uvs (`grid_uvs`) and, unless ``colors`` is given, the vertex
    colours; colors (H, W, 3) or (H * W, 3). Unused vertices with a non-finite point are put at the centroid of
    the valid ones (files never hold NaN); drop them with `compact`.
    """
    d = _np(depth).astype(np.float64)
    if d.ndim != 2:
        raise LapError(f"depth must be (H, W), got shape {d.shape}")
    h, w = d.shape
    p = _np(points).astype(np.float32)
    if p.shape != (h, w, 3):
        raise LapError(f"points must be (H, W, 3) = ({h}, {w}, 3) like the depth, got shape {p.shape}")
    valid = np.isfinite(d) & (d > 0) & np.isfinite(p).all(-1)
    if mask is not None:
        m = _np(mask)
        if m.shape != (h, w):
            raise LapError(f"mask must be (H, W) = ({h}, {w}) like the depth, got shape {m.shape}")
        valid &= m.astype(bool)
    if texture is not None and _np(texture).shape != (h, w, 3):
        raise LapError(f"texture must be (H, W, 3) = ({h}, {w}, 3) like the depth, got shape {_np(texture).shape}")
    if colors is not None and _np(colors).shape not in ((h, w, 3), (h * w, 3)):
        raise LapError(f"colors must be (H, W, 3) or (H * W, 3) with H, W = {h}, {w}, got {_np(colors).shape}")
    verts = p.reshape(-1, 3).copy()
    vflat = valid.reshape(-1)
    verts[~vflat] = verts[vflat].mean(0) if vflat.any() else 0.0
    faces = grid_faces(h, w)
    keep = vflat[faces].all(1)
    if max_jump is not None and vflat.any():
        zf = np.where(vflat, d.reshape(-1), 0.0)[faces]
        keep &= zf.max(1) - zf.min(1) <= max_jump * float(np.median(d[valid]))
    tex = None if texture is None else _uint8(texture, "texture")
    cols = colors if colors is not None else tex
    return make_mesh(verts, faces[keep], None if tex is None else grid_uvs(h, w),
                     None if cols is None else _uint8(cols, "colors").reshape(-1, 3), tex)


def compact(mesh: Mesh) -> Mesh:
    """Drop the vertices no face uses (order of the others kept) and re-index the faces."""
    used = np.zeros(len(mesh.verts), dtype=bool)
    used[mesh.faces.reshape(-1)] = True
    remap = np.cumsum(used) - 1
    pick = lambda a: None if a is None else a[used]  # noqa: E731
    return Mesh(mesh.verts[used], remap[mesh.faces], pick(mesh.uvs), pick(mesh.colors), mesh.texture)


def to_trimesh(mesh: Mesh):
    """`Mesh` -> ``trimesh.Trimesh`` (process=False: vertex order kept) with the texture when there is one, else
    the vertex colours when there are some, else no visual."""
    import trimesh
    from PIL import Image

    if mesh.texture is not None:
        mat = trimesh.visual.material.PBRMaterial(
            name="texture", baseColorTexture=Image.fromarray(mesh.texture), baseColorFactor=[255, 255, 255, 255],
            metallicFactor=0.0, roughnessFactor=1.0, doubleSided=True)
        visual = trimesh.visual.TextureVisuals(uv=mesh.uvs, material=mat)
    elif mesh.colors is not None:
        visual = trimesh.visual.ColorVisuals(vertex_colors=mesh.colors)
    else:
        visual = None
    return trimesh.Trimesh(mesh.verts, mesh.faces, visual=visual, process=False, validate=False)


def write_obj(path: PathLike, mesh: Mesh) -> dict[str, Path]:
    """Wavefront OBJ, 1-based indices, vt index = v index; with a texture also ``<stem>.mtl`` and
    ``<stem>_texture.png`` (as ``lapmodel.io.export``: material ``face``, Ka Kd 1, Ks 0, map_Kd); with colours and
    no texture ``v x y z r g b`` lines (colours in [0, 1]). -> {"obj": path} (+ "mtl", "texture"), OBJ written last."""
    from PIL import Image
    from trimesh.exchange.obj import export_obj

    path = Path(path)
    out = {"obj": path}
    if mesh.texture is not None:
        stem = re.sub(r"\s", "_", path.stem)  # no blanks in the mtllib / map_Kd names
        mtl, tex = path.with_name(stem + ".mtl"), path.with_name(stem + "_texture.png")
        text, _ = export_obj(to_trimesh(mesh), include_normals=False, return_texture=True, mtl_name=mtl.name,
                             digits=8, header="lapmodel mesh")
        text = re.sub(r"^usemtl .*$", "usemtl face", text, count=1, flags=re.M)
        buf = io.BytesIO()
        Image.fromarray(mesh.texture).save(buf, format="PNG")
        write_bytes(tex, buf.getvalue())
        write_bytes(mtl, f"newmtl face\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {tex.name}\n".encode())
        out.update(mtl=mtl, texture=tex)
    else:
        text = export_obj(to_trimesh(mesh), include_normals=False, include_color=True, digits=8, header="lapmodel mesh")
    write_bytes(path, text.encode())
    return out


def write_ply(path: PathLike, mesh: Mesh, binary: bool = True) -> Path:
    """Stanford PLY (binary little-endian or ascii): float x y z, uchar red green blue alpha (alpha 255) when the
    mesh has colours, faces as uchar-int lists. A texture is not written (use the colours)."""
    from trimesh.exchange.ply import export_ply

    m = Mesh(mesh.verts, mesh.faces, None, mesh.colors, None)
    return write_bytes(Path(path), export_ply(to_trimesh(m), encoding="binary" if binary else "ascii"))


def write_glb(path: PathLike, mesh: Mesh) -> Path:
    """Binary glTF 2.0 of `compact` (mesh): one node "mesh", unit vertex normals, the texture embedded as PNG
    (double-sided, matte: metallic 0, roughness 1) or vertex colours COLOR_0, for web viewers
    (``<model-viewer>``, three.js). glTF is y up: pass `camera_to_y_up` points."""
    import trimesh
    from trimesh.exchange.gltf import export_glb

    scene = trimesh.Scene()
    scene.add_geometry(to_trimesh(compact(mesh)), geom_name="mesh", node_name="mesh")
    return write_bytes(Path(path), export_glb(scene, include_normals=True))


def glb_json(data: bytes) -> dict:
    """The JSON chunk of GLB bytes, after checking the 12-byte header (magic 'glTF', version 2, length)."""
    if len(data) < 20:
        raise LapError(f"not a GLB file: {len(data)} bytes")
    magic, version, length = struct.unpack("<4sII", data[:12])
    if magic != b"glTF" or version != 2 or length != len(data):
        raise LapError(f"not a GLB 2.0 file: magic {magic!r}, version {version}, length {length} of {len(data)}")
    n, kind = struct.unpack("<I4s", data[12:20])
    if kind != b"JSON":
        raise LapError(f"GLB: first chunk is {kind!r}, not JSON")
    return json.loads(data[20 : 20 + n])
