"""Writing reconstructions to files people open: depth maps, normal maps, pictures, meshes, GIFs and contact sheets.

Pure functions (no model, no state). Arrays are numpy or torch (converted on entry); shapes:

- depth:   (H, W) float, camera units, NaN / masked = no surface
- normal:  (H, W, 3) unit vectors (x right, y down, z away from the camera, as in ``lapmodel.models.outputs``)
- image:   (3, H, W) or (H, W, 3) float in [0, 1], or (H, W, 3) uint8
- mesh:    verts (V, 3) float, faces (F, 3) int, uvs (V, 2) in [0, 1], colours (V, 3) uint8

Every file is written to ``name.tmp`` first and moved into place with ``os.replace`` (nothing half-written).
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lapdata.sample import decode_depth, encode_depth

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------- small helpers


def _np(x: Any) -> np.ndarray:
    """Tensor or array -> numpy array (detached, on CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _atomic_write_bytes(path: PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def to_uint8_image(image: Any) -> np.ndarray:
    """Image (3, H, W) / (1, H, W) / (H, W, 3) / (H, W) float in [0, 1] or uint8 -> (H, W, 3) uint8 RGB."""
    a = _np(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):  # (C, H, W)
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise ValueError(f"expected an image (3,H,W), (H,W,3) or (H,W); got shape {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.dtype != np.uint8:
        a = np.clip(np.nan_to_num(a.astype(np.float64)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


def save_image(path: PathLike, image: Any) -> Path:
    """Write an image (any layout accepted by `to_uint8_image`) as PNG (or JPEG by extension)."""
    path = Path(path)
    img = Image.fromarray(to_uint8_image(image))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=95)
        _atomic_write_bytes(path, buf.getvalue())
    else:
        _atomic_write_bytes(path, _png_bytes(img))
    return path


# --------------------------------------------------------------------------------------------- depth


def save_depth_png(path: PathLike, depth: Any, mask: Any | None = None) -> tuple[Path, Path]:
    """Depth (H, W) -> 16-bit PNG at ``path`` + sidecar ``<path minus .png>.json`` with the range.

    Encoding (same as the shard contract, `lapdata.sample.encode_depth`): ``v = 1 + round((d - lo) / (hi - lo) * 65534)``,
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
    _atomic_write_bytes(path, data)
    doc = {
        "range": rng,
        "encoding": "v = 1 + round((d - lo) / (hi - lo) * 65534); v = 0: no surface",
        "shape": list(d.shape),
    }
    _atomic_write_bytes(side, json.dumps(doc, indent=1).encode())
    return path, side


def load_depth_png(path: PathLike) -> np.ndarray:
    """Inverse of `save_depth_png`: (H, W) float32 with NaN where there is no surface."""
    path = Path(path)
    doc = json.loads(path.with_suffix(".json").read_text())
    return decode_depth(path.read_bytes(), doc["range"])


def save_depth_npy(path: PathLike, depth: Any) -> Path:
    """Depth (H, W) -> float32 .npy (exact)."""
    buf = io.BytesIO()
    np.save(buf, _np(depth).astype(np.float32))
    _atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def depth_to_color(depth: Any, mask: Any | None = None, cmap: str = "turbo", near_bright: bool = True) -> np.ndarray:
    """Depth (H, W) -> (H, W, 3) uint8 coloured picture; range = 1st..99th percentile of the valid pixels.

    ``near_bright``: near surfaces get the colormap's high end. Pixels outside ``mask`` (or NaN) are black.
    """
    import matplotlib

    d = _np(depth).astype(np.float64)
    valid = np.isfinite(d)
    if mask is not None:
        valid &= _np(mask).astype(bool)
    out = np.zeros(d.shape + (3,), dtype=np.uint8)
    if not valid.any():
        return out
    lo, hi = np.percentile(d[valid], [1, 99])
    if hi <= lo:
        hi = lo + 1e-6
    t = np.clip((d - lo) / (hi - lo), 0, 1)
    if near_bright:
        t = 1.0 - t
    rgb = matplotlib.colormaps[cmap](np.nan_to_num(t))[..., :3]
    out[valid] = (rgb[valid] * 255 + 0.5).astype(np.uint8)
    return out


def normal_to_image(normal: Any, mask: Any | None = None) -> np.ndarray:
    """Normals (H, W, 3) (or (3, H, W)) in [-1, 1] -> (H, W, 3) uint8 with rgb = (n + 1) / 2 * 255.

    Pixels outside ``mask`` are black. Same colour code as the shards' ``normal`` field.
    """
    n = _np(normal).astype(np.float64)
    if n.ndim == 3 and n.shape[0] == 3 and n.shape[-1] != 3:
        n = np.moveaxis(n, 0, -1)
    img = np.clip(np.round((np.nan_to_num(n) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    if mask is not None:
        img[~_np(mask).astype(bool)] = 0
    return img


def save_normal_png(path: PathLike, normal: Any, mask: Any | None = None) -> Path:
    return save_image(path, normal_to_image(normal, mask))


# --------------------------------------------------------------------------------------------- meshes


def depth_mesh(
    depth: Any,
    fov_deg: float = 10.0,
    mask: Any | None = None,
    max_jump: float | None = 0.05,
    crop: int = 0,
    frame: str = "y_up",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid mesh from a depth map under the perspective camera of `lapdata.geometry`.

    depth (H, W) -> verts (H*W, 3) float32 points: ``frame="camera"``: camera space (x right, y down, z = depth);
    ``frame="y_up"`` (default, what OBJ/PLY viewers expect): (x, -y, -z), y up and the face looking towards +z
    (a rotation, so triangles keep facing the viewer),
    faces (F, 3) int64 (two triangles per pixel quad, from `lapdata.geometry.grid_faces`, only the kept ones),
    uvs (H*W, 2) float32 texture coordinates = pixel coordinates ((j + 0.5) / W, 1 - (i + 0.5) / H).

    Triangles are dropped when any vertex is outside ``mask`` (or NaN / non-positive depth, or within ``crop``
    pixels of the border), or when the triangle spans a depth discontinuity: max - min of its vertex depths
    > ``max_jump`` x the median valid depth (None keeps them all).
    """
    import torch

    d = _np(depth).astype(np.float64)
    if d.ndim != 2:
        raise ValueError(f"depth must be (H, W), got {d.shape}")
    h, w = d.shape
    valid = np.isfinite(d) & (d > 0)
    if mask is not None:
        valid &= _np(mask).astype(bool)
    if crop > 0:
        border = np.zeros_like(valid)
        border[crop : h - crop, crop : w - crop] = True
        valid &= border
    filled = np.where(valid, d, np.nanmedian(d[valid]) if valid.any() else 1.0)
    verts = _unproject(torch.from_numpy(filled), fov_deg).reshape(h * w, 3).numpy().astype(np.float32)
    if frame == "y_up":
        verts = verts * np.array([1.0, -1.0, -1.0], dtype=np.float32)
    elif frame != "camera":
        raise ValueError(f"frame must be 'y_up' or 'camera', got {frame!r}")
    faces = _grid_faces(h, w)
    vflat = valid.reshape(-1)
    keep = vflat[faces].all(axis=1)
    if max_jump is not None and valid.any():
        zf = filled.reshape(-1)[faces]
        keep &= (zf.max(axis=1) - zf.min(axis=1)) <= max_jump * float(np.median(d[valid]))
    faces = faces[keep]
    jj, ii = np.meshgrid(np.arange(w), np.arange(h))
    uvs = np.stack([(jj + 0.5) / w, 1.0 - (ii + 0.5) / h], axis=-1).reshape(-1, 2).astype(np.float32)
    return verts, faces, uvs


def _unproject(depth, fov_deg: float):
    """(H, W) float64 tensor -> (H, W, 3) camera points (`lapdata.geometry.depth_to_points`, pixel (i, j) at x=j, y=i)."""
    from lapdata import geometry

    h, w = depth.shape
    K = geometry.intrinsics(fov_deg, (h, w), dtype=depth.dtype)
    return geometry.depth_to_points(depth[None], K)[0]


def _grid_faces(h: int, w: int) -> np.ndarray:
    """(F, 3) int64 triangles of an H x W vertex grid (`lapdata.geometry.grid_faces`, vertex i*W + j)."""
    from lapdata import geometry

    return geometry.grid_faces(h, w).cpu().numpy().astype(np.int64)


def compact_mesh(verts: np.ndarray, faces: np.ndarray, *attrs: np.ndarray) -> tuple[np.ndarray, ...]:
    """Drop vertices no face uses; returns (verts, faces, *attrs) re-indexed."""
    used = np.zeros(len(verts), dtype=bool)
    used[faces.reshape(-1)] = True
    remap = np.cumsum(used) - 1
    return (verts[used], remap[faces].astype(np.int64)) + tuple(a[used] for a in attrs)


def write_obj(
    path: PathLike,
    verts: Any,
    faces: Any,
    uvs: Any | None = None,
    texture: Any | None = None,
    normals: Any | None = None,
) -> Path:
    """Wavefront OBJ (+ ``.mtl`` and ``_texture.png`` when a texture is given), 1-based indices.

    verts (V, 3), faces (F, 3) 0-based, uvs (V, 2) (vt index = v index), texture image any layout, normals (V, 3).
    """
    path = Path(path)
    v = _np(verts).astype(np.float64)
    f = _np(faces).astype(np.int64) + 1
    lines = ["# lapmodel depth mesh", f"# {len(v)} vertices, {len(f)} faces"]
    if texture is not None:
        mtl = path.with_suffix(".mtl")
        tex = path.with_name(path.stem + "_texture.png")
        save_image(tex, texture)
        _atomic_write_bytes(
            mtl,
            (f"newmtl face\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {tex.name}\n").encode(),
        )
        lines += [f"mtllib {mtl.name}", "usemtl face"]
    lines += [f"v {a:.6f} {b:.6f} {c:.6f}" for a, b, c in v]
    if uvs is not None:
        lines += [f"vt {a:.6f} {b:.6f}" for a, b in _np(uvs).astype(np.float64)]
    if normals is not None:
        lines += [f"vn {a:.6f} {b:.6f} {c:.6f}" for a, b, c in _np(normals).astype(np.float64)]
    if uvs is not None and normals is not None:
        lines += [f"f {a}/{a}/{a} {b}/{b}/{b} {c}/{c}/{c}" for a, b, c in f]
    elif uvs is not None:
        lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in f]
    elif normals is not None:
        lines += [f"f {a}//{a} {b}//{b} {c}//{c}" for a, b, c in f]
    else:
        lines += [f"f {a} {b} {c}" for a, b, c in f]
    _atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def read_obj(path: PathLike) -> dict[str, np.ndarray | str | None]:
    """Minimal OBJ reader (triangles; v, vt, vn, f, mtllib): {"verts", "faces" (0-based), "uvs", "normals", "mtllib"}."""
    verts, uvs, normals, faces, mtllib = [], [], [], [], None
    for line in Path(path).read_text().splitlines():
        p = line.split()
        if not p or p[0].startswith("#"):
            continue
        if p[0] == "v":
            verts.append([float(x) for x in p[1:4]])
        elif p[0] == "vt":
            uvs.append([float(x) for x in p[1:3]])
        elif p[0] == "vn":
            normals.append([float(x) for x in p[1:4]])
        elif p[0] == "f":
            faces.append([int(x.split("/")[0]) - 1 for x in p[1:4]])
        elif p[0] == "mtllib":
            mtllib = p[1]
    return {
        "verts": np.array(verts, dtype=np.float64).reshape(-1, 3),
        "faces": np.array(faces, dtype=np.int64).reshape(-1, 3),
        "uvs": np.array(uvs, dtype=np.float64).reshape(-1, 2) if uvs else None,
        "normals": np.array(normals, dtype=np.float64).reshape(-1, 3) if normals else None,
        "mtllib": mtllib,
    }


def write_ply(path: PathLike, verts: Any, faces: Any, colors: Any | None = None, binary: bool = True) -> Path:
    """Stanford PLY: verts (V, 3) float32, faces (F, 3), colours (V, 3) uint8 (optional); binary little-endian or ascii."""
    v = _np(verts).astype(np.float32)
    f = _np(faces).astype(np.int32)
    c = None if colors is None else to_uint8_image(_np(colors).reshape(-1, 1, 3)).reshape(-1, 3)
    fmt = "binary_little_endian" if binary else "ascii"
    head = ["ply", f"format {fmt} 1.0", "comment lapmodel depth mesh", f"element vertex {len(v)}",
            "property float x", "property float y", "property float z"]
    if c is not None:
        head += ["property uchar red", "property uchar green", "property uchar blue"]
    head += [f"element face {len(f)}", "property list uchar int vertex_indices", "end_header"]
    out = io.BytesIO()
    out.write(("\n".join(head) + "\n").encode("ascii"))
    if binary:
        if c is not None:
            vdt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
            va = np.empty(len(v), dtype=vdt)
            va["x"], va["y"], va["z"] = v[:, 0], v[:, 1], v[:, 2]
            va["r"], va["g"], va["b"] = c[:, 0], c[:, 1], c[:, 2]
        else:
            va = v.astype("<f4")
        out.write(va.tobytes())
        fdt = np.dtype([("n", "u1"), ("i", "<i4", (3,))])
        fa = np.empty(len(f), dtype=fdt)
        fa["n"] = 3
        fa["i"] = f
        out.write(fa.tobytes())
    else:
        rows = []
        for k in range(len(v)):
            s = f"{v[k, 0]:.6f} {v[k, 1]:.6f} {v[k, 2]:.6f}"
            if c is not None:
                s += f" {c[k, 0]} {c[k, 1]} {c[k, 2]}"
            rows.append(s)
        rows += [f"3 {a} {b} {cc}" for a, b, cc in f]
        out.write(("\n".join(rows) + "\n").encode("ascii"))
    _atomic_write_bytes(path, out.getvalue())
    return Path(path)


def read_ply(path: PathLike) -> dict[str, np.ndarray | None]:
    """Reader for the PLY files `write_ply` writes: {"verts" (V, 3), "faces" (F, 3), "colors" (V, 3) uint8 or None}."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    head = data[:end].decode("ascii").splitlines()
    binary = any(h.startswith("format binary_little_endian") for h in head)
    nv = int(next(h for h in head if h.startswith("element vertex")).split()[-1])
    nf = int(next(h for h in head if h.startswith("element face")).split()[-1])
    has_color = any(h == "property uchar red" for h in head)
    body = data[end:]
    if binary:
        if has_color:
            vdt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
        else:
            vdt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
        va = np.frombuffer(body, dtype=vdt, count=nv)
        fdt = np.dtype([("n", "u1"), ("i", "<i4", (3,))])
        fa = np.frombuffer(body, dtype=fdt, count=nf, offset=nv * vdt.itemsize)
        if nf and not (fa["n"] == 3).all():
            raise ValueError(f"{path}: only triangle faces are supported")
        verts = np.stack([va["x"], va["y"], va["z"]], axis=1).astype(np.float32)
        colors = np.stack([va["r"], va["g"], va["b"]], axis=1) if has_color else None
        faces = fa["i"].astype(np.int64)
    else:
        rows = body.decode("ascii").split("\n")
        vr = np.array([r.split() for r in rows[:nv]], dtype=np.float64).reshape(nv, -1)
        verts = vr[:, :3].astype(np.float32)
        colors = vr[:, 3:6].astype(np.uint8) if has_color else None
        fr = np.array([r.split() for r in rows[nv : nv + nf]], dtype=np.int64).reshape(nf, -1)
        faces = fr[:, 1:4]
    return {"verts": verts, "faces": faces.reshape(-1, 3), "colors": colors}


def export_depth_mesh(
    stem: PathLike,
    depth: Any,
    texture: Any,
    fov_deg: float = 10.0,
    mask: Any | None = None,
    max_jump: float | None = 0.05,
    crop: int = 0,
    binary_ply: bool = True,
    frame: str = "y_up",
) -> dict[str, Path]:
    """Depth (H, W) + texture (3, H, W) -> ``stem.obj`` (+ ``stem.mtl``, ``stem_texture.png``) and ``stem.ply``.

    The OBJ keeps every grid vertex (so uv = pixel coordinates); the PLY drops unused vertices and carries
    per-vertex colours sampled from the texture.
    """
    stem = Path(stem)
    verts, faces, uvs = depth_mesh(depth, fov_deg, mask=mask, max_jump=max_jump, crop=crop, frame=frame)
    tex = to_uint8_image(texture)
    obj = write_obj(stem.with_suffix(".obj"), verts, faces, uvs, tex)
    cols = tex.reshape(-1, 3)
    if len(cols) != len(verts):
        raise ValueError(f"texture size {tex.shape[:2]} does not match depth size {np.shape(_np(depth))}")
    v2, f2, c2 = compact_mesh(verts, faces, cols)
    ply = write_ply(stem.with_suffix(".ply"), v2, f2, c2, binary=binary_ply)
    return {"obj": obj, "mtl": stem.with_suffix(".mtl"), "texture": stem.with_name(stem.name + "_texture.png"), "ply": ply}


# --------------------------------------------------------------------------------------------- animations, grids


def write_gif(path: PathLike, frames: Any, fps: float = 12.0, loop: int = 0) -> Path:
    """Frames (T, 3, H, W) / (T, H, W, 3) float [0, 1] or uint8, or a list of images -> animated GIF."""
    seq = [to_uint8_image(f) for f in (list(frames) if not isinstance(frames, np.ndarray) else frames)]
    if not seq:
        raise ValueError("write_gif: no frames")
    imgs = [Image.fromarray(a) for a in seq]
    buf = io.BytesIO()
    imgs[0].save(
        buf, format="GIF", save_all=True, append_images=imgs[1:], duration=int(round(1000 / fps)), loop=loop,
        disposal=2, optimize=False,
    )
    _atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def gif_frame_count(path: PathLike) -> int:
    with Image.open(path) as im:
        return int(getattr(im, "n_frames", 1))


SHAPE_LIGHT = (0.25, 0.75, 0.4, -0.4)  # [ambient, diffuse, dx, dy] of the grey shape render


def turntable_frames(canon_depth: Any, canon_image: Any, n_frames: int = 24, max_yaw_deg: float = 45.0,
                     fov_deg: float = 10.0, shape: bool = False,
                     depth_range: tuple[float, float] = (0.9, 1.1)) -> np.ndarray:
    """Turntable of one canonical face via `lapmodel.render.renderer.turntable`: (H, W), (3, H, W) -> (T, H, W', 3) uint8.

    Yaws sweep 0 -> +max -> -max -> 0 (a smooth loop), ``n_frames`` in all. ``shape``: each frame also shows the
    bare geometry (grey albedo lit by `SHAPE_LIGHT`) to the right of the textured face (W' = 2W; else W' = W).
    """
    import torch

    from lapmodel.render import renderer
    t = np.linspace(0, 2 * math.pi, n_frames, endpoint=False)
    yaws = [float(math.radians(max_yaw_deg) * math.sin(x)) for x in t]
    d = torch.as_tensor(_np(canon_depth), dtype=torch.float32)[None]
    im = torch.as_tensor(_np(canon_image), dtype=torch.float32)[None]
    with torch.no_grad():
        if shape:
            normal = renderer.depth_to_normal(d, fov_deg)
            light = torch.tensor([SHAPE_LIGHT], dtype=torch.float32)
            _, grey = renderer.shade(torch.full_like(im, 0.8), normal, light)
            d, im = d.expand(2, -1, -1), torch.cat([im, grey.clamp(0, 1)])
        fr = renderer.turntable(d, im, yaws, fov_deg=fov_deg, depth_range=depth_range)  # (B, T, C, H, W)
    fr = torch.cat(list(fr), dim=-1) if shape else fr[0]  # side by side: (T, C, H, B*W)
    return np.stack([to_uint8_image(f) for f in fr.clamp(0, 1)])


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def image_grid(
    rows: Sequence[Sequence[Any]],
    col_labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    cell: int | None = None,
    pad: int = 2,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Contact sheet: rows of images (any layout of `to_uint8_image`, None = blank) -> (H, W, 3) uint8.

    Every cell is resized to ``cell`` x ``cell`` (default: the first image's height). ``col_labels`` are written
    above the columns, ``row_labels`` left of the rows.
    """
    rows = [list(r) for r in rows]
    if not rows or not any(rows):
        raise ValueError("image_grid: no images")
    first = next(to_uint8_image(x) for r in rows for x in r if x is not None)
    cell = int(cell or first.shape[0])
    ncol = max(len(r) for r in rows)
    fs = max(10, min(16, cell // 6))
    font = _font(fs)
    top = fs + 6 if col_labels else 0
    left = 0
    if row_labels:
        left = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(str(s), font=font)) for s in row_labels) + 8
    W = left + ncol * (cell + pad) + pad
    H = top + len(rows) * (cell + pad) + pad
    sheet = Image.new("RGB", (W, H), background)
    draw = ImageDraw.Draw(sheet)
    for c, lab in enumerate(col_labels or []):
        x = left + pad + c * (cell + pad)
        draw.text((x + 2, 2), str(lab), fill=(0, 0, 0), font=font)
    for r, row in enumerate(rows):
        y = top + pad + r * (cell + pad)
        if row_labels and r < len(row_labels):
            draw.text((4, y + cell // 2 - fs // 2), str(row_labels[r]), fill=(0, 0, 0), font=font)
        for c, x_img in enumerate(row):
            if x_img is None:
                continue
            im = Image.fromarray(to_uint8_image(x_img))
            if im.size != (cell, cell):
                im = im.resize((cell, cell), Image.BILINEAR)
            sheet.paste(im, (left + pad + c * (cell + pad), y))
    return np.asarray(sheet)


def save_grid(path: PathLike, rows: Sequence[Sequence[Any]], col_labels: Sequence[str] | None = None,
              row_labels: Sequence[str] | None = None, cell: int | None = None) -> Path:
    return save_image(path, image_grid(rows, col_labels, row_labels, cell))
