"""Procedural skin albedo painted in a mesh's UV layout: tone, lips, brows, eyes, cheeks, hair, noise.

A backend describes *where* the features are with a :class:`FaceLayout` (polygons and polylines in UV space, u right,
v up, both in [0, 1], as in OBJ files); :func:`sample_appearance` draws *what they look like* for one identity
(JSON-able, stored in the shards' metadata); :func:`paint_texture` combines both into a (3, T, T) float texture
(row 0 = v = 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

# sRGB skin tones from light to dark (interpolated; a Fitzpatrick-like range)
_SKIN = np.array(
    [
        [0.96, 0.82, 0.72],
        [0.92, 0.74, 0.62],
        [0.84, 0.64, 0.50],
        [0.74, 0.53, 0.39],
        [0.60, 0.41, 0.29],
        [0.44, 0.29, 0.20],
        [0.32, 0.21, 0.15],
    ]
)
_HAIR = np.array(
    [
        [0.06, 0.05, 0.05],  # black
        [0.17, 0.11, 0.07],  # dark brown
        [0.33, 0.22, 0.13],  # brown
        [0.62, 0.48, 0.30],  # dark blond
        [0.80, 0.68, 0.45],  # blond
        [0.55, 0.25, 0.12],  # red
        [0.60, 0.60, 0.60],  # grey
    ]
)
_HAIR_P = np.array([0.30, 0.25, 0.15, 0.09, 0.07, 0.05, 0.09])
_IRIS = np.array([[0.25, 0.15, 0.08], [0.40, 0.27, 0.14], [0.30, 0.45, 0.62], [0.35, 0.45, 0.30], [0.45, 0.35, 0.20]])
_IRIS_P = np.array([0.45, 0.2, 0.15, 0.1, 0.1])


@dataclass
class FaceLayout:
    """Where the features are, in UV space (arrays of (u, v) points, v up).

    brows: polylines (left, right); eyes: closed polygons (left, right) of the eye openings; lips: closed polygon
    of the outer lip contour; mouth: polyline of the lip seam; cheeks: (2, 2) centres; scale: a typical feature
    length in UV (the inter-ocular distance), used for widths and blurs; hair: optional (T, T) float mask of
    the hair/scalp region at the texture resolution (row 0 = v = 1); painted_eyes: draw sclera/iris/pupil into the
    texture (for meshes without eyeballs); symmetric: mirror every random field about u = 0.5 (a left-right
    symmetric UV layout, e.g. the procedural head's)."""

    brows: list[np.ndarray]
    eyes: list[np.ndarray]
    lips: np.ndarray
    mouth: np.ndarray
    cheeks: np.ndarray
    scale: float
    hair: np.ndarray | None = None
    painted_eyes: bool = False
    symmetric: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def sample_appearance(rng: np.random.Generator) -> dict[str, Any]:
    """One identity's colours and feature styles (JSON-able floats/lists)."""
    t = rng.uniform(0, len(_SKIN) - 1)
    i = int(min(t, len(_SKIN) - 2))
    skin = _SKIN[i] * (1 - (t - i)) + _SKIN[i + 1] * (t - i)
    skin = np.clip(skin * rng.uniform(0.95, 1.05, 3), 0, 1)
    hair = _HAIR[rng.choice(len(_HAIR), p=_HAIR_P)] * rng.uniform(0.85, 1.15)
    iris = _IRIS[rng.choice(len(_IRIS), p=_IRIS_P)] * rng.uniform(0.8, 1.2)
    lip = skin * np.array([0.82, 0.55, 0.55]) + np.array([0.08, 0.0, 0.02]) * rng.uniform(0.5, 1.5)
    brow = np.minimum(hair, skin * 0.5) * rng.uniform(0.7, 1.1)
    return {
        "skin": np.clip(skin, 0, 1).round(4).tolist(),
        "hair": np.clip(hair, 0, 1).round(4).tolist(),
        "iris": np.clip(iris, 0, 1).round(4).tolist(),
        "lip": np.clip(lip, 0, 1).round(4).tolist(),
        "brow": np.clip(brow, 0, 1).round(4).tolist(),
        "brow_width": float(rng.uniform(0.12, 0.2)),  # in inter-ocular distances
        "brow_strength": float(rng.uniform(0.55, 0.95)),
        "lip_strength": float(rng.uniform(0.6, 1.0)),
        "blush": float(rng.uniform(0.0, 0.12)),
        "noise": float(rng.uniform(0.015, 0.04)),
        "bald": bool(rng.uniform() < 0.08),
        "noise_seed": int(rng.integers(0, 2**31 - 1)),
    }


def _to_px(pts: np.ndarray, T: int) -> list[tuple[float, float]]:
    pts = np.asarray(pts, np.float64)
    return [(float(u * T - 0.5), float((1 - v) * T - 0.5)) for u, v in pts]


def _poly_mask(poly: np.ndarray, T: int, ss: int = 2) -> np.ndarray:
    im = Image.new("L", (T * ss, T * ss), 0)
    ImageDraw.Draw(im).polygon([((x + 0.5) * ss - 0.5, (y + 0.5) * ss - 0.5) for x, y in _to_px(poly, T)], fill=255)
    return np.asarray(im.resize((T, T), Image.BILINEAR), np.float32) / 255.0


def _line_mask(line: np.ndarray, width_px: float, T: int, ss: int = 2) -> np.ndarray:
    im = Image.new("L", (T * ss, T * ss), 0)
    pts = [((x + 0.5) * ss - 0.5, (y + 0.5) * ss - 0.5) for x, y in _to_px(line, T)]
    w = max(1, int(round(width_px * ss)))
    ImageDraw.Draw(im).line(pts, fill=255, width=w, joint="curve")
    r = w / 2
    d = ImageDraw.Draw(im)
    for x, y in (pts[0], pts[-1]):
        d.ellipse([x - r, y - r, x + r, y + r], fill=255)
    return np.asarray(im.resize((T, T), Image.BILINEAR), np.float32) / 255.0


def _disc(center: np.ndarray, radius_uv: float, T: int) -> np.ndarray:
    yy, xx = np.mgrid[0:T, 0:T].astype(np.float32)
    cx, cy = _to_px(np.asarray(center)[None], T)[0]
    r = radius_uv * T
    return np.clip(r - np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) + 0.5, 0, 1)


def _resize(x: np.ndarray, T: int) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(x, np.float32), mode="F").resize((T, T), Image.BILINEAR))


def _blur(x: np.ndarray, sigma: float, mode: str = "reflect") -> np.ndarray:
    """Gaussian blur of a (T, T) float map; large sigmas run on a downsampled copy (same look, much faster)."""
    if sigma <= 3.0:
        return gaussian_filter(x, sigma, mode=mode)
    T = x.shape[0]
    k = int(min(sigma / 1.5, T // 8)) or 1
    small = _resize(x, max(T // k, 8))
    return _resize(gaussian_filter(small, sigma / k, mode=mode), T)


def _noise(rng: np.random.Generator, T: int, sigma_px: float, symmetric: bool) -> np.ndarray:
    k = max(1, int(sigma_px / 1.5))
    n = gaussian_filter(rng.standard_normal((max(T // k, 4),) * 2).astype(np.float32), sigma_px / k, mode="wrap")
    if n.shape[0] != T:
        n = _resize(n, T)
    if symmetric:
        n = 0.5 * (n + n[:, ::-1])
    s = n.std()
    return n / s if s > 0 else n


def paint_texture(layout: FaceLayout, app: dict[str, Any], size: int = 512) -> np.ndarray:
    """The albedo texture (3, T, T) float32 in [0, 1] for ``layout`` and appearance ``app``."""
    T = int(size)
    rng = np.random.default_rng(app["noise_seed"])
    skin = np.asarray(app["skin"], np.float32)
    iod_px = layout.scale * T
    tex = np.broadcast_to(skin[:, None, None], (3, T, T)).copy()
    # skin variation: blotches (low frequency, mostly redness/brightness) + fine grain
    low = _noise(rng, T, 0.25 * iod_px, layout.symmetric)
    mid = _noise(rng, T, 0.05 * iod_px, layout.symmetric)
    fine = _noise(rng, T, 0.7, layout.symmetric)
    amp = float(app["noise"])
    tex *= 1 + amp * (0.8 * low + 0.4 * mid)[None]
    tex[0] *= 1 + 0.5 * amp * mid
    tex *= 1 + 0.3 * amp * fine[None]

    def blend(mask: np.ndarray, colour: np.ndarray, strength: float = 1.0) -> None:
        nonlocal tex
        m = np.clip(mask * strength, 0, 1)[None]
        tex = tex * (1 - m) + np.asarray(colour, np.float32)[:, None, None] * m

    # cheeks: a soft red blush
    if app["blush"] > 0:
        m = sum(_disc(c, 0.0, T) for c in layout.cheeks)  # centre points
        m = _blur(np.asarray(m, np.float32), 0.45 * iod_px)
        if m.max() > 0:
            m = m / m.max()
        blush = skin * np.array([1.0, 0.75, 0.75], np.float32)
        blend(m, blush, app["blush"] * 4)
    # hair / scalp
    if layout.hair is not None and not app["bald"]:
        hm = _blur(layout.hair.astype(np.float32), 0.04 * iod_px)
        streaks = 0.6 * _noise(rng, T, 1.0, False) + 0.4 * _noise(rng, T, 0.15 * iod_px, False)
        hair = np.asarray(app["hair"], np.float32)[:, None, None] * (1 + 0.12 * streaks)[None]
        tex = tex * (1 - hm[None]) + hair * hm[None]
    # lips
    lips = _blur(_poly_mask(layout.lips, T), 0.03 * iod_px)
    blend(lips, app["lip"], app["lip_strength"])
    seam = _blur(_line_mask(layout.mouth, 0.025 * iod_px, T), 0.01 * iod_px)
    blend(seam, np.asarray(app["lip"]) * 0.45, 0.8)
    # brows: a thick soft stroke with hair-like streaks
    bw = float(app["brow_width"]) * iod_px
    streak = 0.75 + 0.25 * np.clip(_noise(rng, T, 0.6, layout.symmetric), -2, 2) / 2
    for line in layout.brows:
        m = _blur(_line_mask(line, bw, T), 0.2 * bw) * streak
        blend(m, app["brow"], app["brow_strength"])
    # eyes
    for poly in layout.eyes:
        outline = _blur(_line_mask(np.concatenate([poly, poly[:1]]), 0.02 * iod_px, T), 0.01 * iod_px)
        shadow = _blur(_poly_mask(poly, T), 0.12 * iod_px)
        blend(shadow, skin * 0.75, 0.5)
        if layout.painted_eyes:
            m = _poly_mask(poly, T)
            blend(m, np.array([0.86, 0.84, 0.80], np.float32))
            c = poly.mean(0)
            h = float(poly[:, 1].max() - poly[:, 1].min())
            blend(_disc(c, 0.5 * h, T) * m, app["iris"])
            blend(_disc(c, 0.22 * h, T) * m, np.array([0.03, 0.03, 0.03], np.float32))
        upper = poly[poly[:, 1] >= np.median(poly[:, 1])]
        upper = upper[np.argsort(upper[:, 0])]
        lash = _line_mask(upper, 0.035 * iod_px, T) if len(upper) > 1 else 0 * outline
        blend(np.maximum(outline * 0.6, _blur(lash, 0.01 * iod_px)), np.array([0.08, 0.06, 0.05]), 0.85)
    if layout.symmetric:  # PIL's polygon fill is not exactly mirror-symmetric: make the texture so
        tex = 0.5 * (tex + tex[:, :, ::-1])
    return np.clip(tex, 0, 1).astype(np.float32)


def hair_from_uv_region(mask_fn, T: int) -> np.ndarray:
    """Rasterise a hair-region predicate ``mask_fn(u, v) -> bool array`` at texel centres -> (T, T) float32."""
    v, u = np.mgrid[0:T, 0:T].astype(np.float64)
    u = (u + 0.5) / T
    v = 1 - (v + 0.5) / T
    return mask_fn(u, v).astype(np.float32)


def random_background(rng: np.random.Generator, size: int, mode: str = "random") -> np.ndarray:
    """(S, S, 3) float32 background in [0, 1]: "random" = a two-colour gradient with soft blobs and grain
    (like a blurred room), "gray" = uniform mid gray."""
    S = int(size)
    if mode == "gray":
        return np.full((S, S, 3), 0.5, np.float32)
    def colour() -> np.ndarray:
        grey = rng.uniform(0.1, 0.9)
        return np.clip(grey + rng.uniform(-0.25, 0.25, 3) * rng.uniform(0, 1), 0, 1)

    c0, c1 = colour(), colour()
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / max(S - 1, 1)
    t = np.clip(0.5 + (xx - 0.5) * np.cos(ang) + (yy - 0.5) * np.sin(ang), 0, 1)[..., None]
    bg = c0 * (1 - t) + c1 * t
    small = max(4, S // 16)
    blobs = rng.uniform(-1, 1, (small, small, 3)).astype(np.float32)
    blobs = np.asarray(Image.fromarray(((blobs + 1) * 127.5).astype(np.uint8)).resize((S, S), Image.BICUBIC), np.float32) / 127.5 - 1
    bg = bg + 0.08 * blobs * rng.uniform(0, 1) + 0.01 * rng.standard_normal((S, S, 3))
    return np.clip(bg, 0, 1).astype(np.float32)
