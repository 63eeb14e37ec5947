"""Pictures for people, made in one place: uint8 images, the one depth colour map, normals as colours, labelled
grids whose labels are never cut, PNG and GIF files (through `lapdata.core.atomic`) and matplotlib figures drawn by
the Agg backend (`new_figure`, `save_figure`).

Both packages draw through this module (``lapmodel.viz.pictures`` adds what needs a model or the renderer,
``lapmodel.viz.curves`` the training-curve plots).
Arrays are numpy or torch (converted on entry); shapes:

- image:  (3, H, W), (1, H, W), (H, W, 3) or (H, W), float in [0, 1] or uint8 -> always (H, W, 3) uint8 out
- depth:  (H, W) float, camera units (larger = farther); NaN or outside ``mask`` = no surface
- normal: (H, W, 3) or (3, H, W) unit vectors, x right, y down, z away from the camera

The one depth colour map is `DEPTH_CMAP` (matplotlib's perceptually uniform ``viridis``): near = bright (yellow),
far = dark (purple), no surface = `BACKGROUND` grey (a colour viridis never takes). Normals are
``rgb = round((n + 1) * 127.5)`` (x = red, y = green, z = blue; the shards' ``normal`` code): a surface facing the
camera, n = (0, 0, -1), is (128, 128, 0); no surface is `BACKGROUND` too.
"""

from __future__ import annotations

import functools
import io
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lapdata.core.atomic import atomic_path, write_bytes

PathLike = str | os.PathLike

DEPTH_CMAP = "viridis"
BACKGROUND = (128, 128, 128)  # pixels with no surface, in depth and normal pictures
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


# --------------------------------------------------------------------------------------------- arrays


def _np(x: Any) -> np.ndarray:
    """Tensor or array -> numpy array (detached, on CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def to_uint8(image: Any) -> np.ndarray:
    """Image (3, H, W) / (1, H, W) / (H, W, 3) / (H, W) float in [0, 1] (clipped, NaN -> 0) or uint8 -> (H, W, 3)
    uint8 RGB."""
    a = _np(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):  # (C, H, W)
        a = np.moveaxis(a, 0, -1)
    a = a[..., None] if a.ndim == 2 else a
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise ValueError(f"expected an image (3,H,W), (H,W,3) or (H,W); got shape {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.dtype != np.uint8:
        a = np.clip(np.nan_to_num(a.astype(np.float64)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


@functools.lru_cache(maxsize=1)
def _depth_lut() -> np.ndarray:
    """(256, 3) uint8: `DEPTH_CMAP` from far (index 0) to near (index 255)."""
    import matplotlib

    rgb = matplotlib.colormaps[DEPTH_CMAP](np.linspace(0.0, 1.0, 256))[:, :3]
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def depth_range(depth: Any, mask: Any | None = None, percentiles: tuple[float, float] = (1, 99)
                ) -> tuple[float, float] | None:
    """(lo, hi) of the valid pixels (finite, in ``mask``) at the given percentiles; None when none is valid."""
    d = _np(depth).astype(np.float64)
    valid = np.isfinite(d) if mask is None else np.isfinite(d) & (_np(mask) > 0.5)
    if not valid.any():
        return None
    lo, hi = np.percentile(d[valid], percentiles)
    return float(lo), float(hi)


def depth_colors(depth: Any, mask: Any | None = None, vrange: tuple[float, float] | None = None) -> np.ndarray:
    """Depth (H, W) -> (H, W, 3) uint8 in `DEPTH_CMAP`: ``vrange`` = (near, far) depths mapped to the bright and the
    dark end (default `depth_range`: 1st..99th percentile of the valid pixels; values beyond are clipped); pixels
    that are NaN or outside ``mask`` are `BACKGROUND` grey."""
    d = _np(depth).astype(np.float64)
    if d.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {d.shape}")
    valid = np.isfinite(d) if mask is None else np.isfinite(d) & (_np(mask) > 0.5)
    out = np.empty(d.shape + (3,), np.uint8)
    out[:] = BACKGROUND
    rng = vrange if vrange is not None else depth_range(d, valid)
    if rng is None:
        return out
    lo, hi = rng
    t = np.clip((hi - d[valid]) / max(hi - lo, 1e-9), 0.0, 1.0)  # near (small depth) -> 1 -> bright
    out[valid] = _depth_lut()[np.round(t * 255).astype(np.int64)]
    return out


def normal_colors(normal: Any, mask: Any | None = None) -> np.ndarray:
    """Normals (H, W, 3) or (3, H, W) in [-1, 1] -> (H, W, 3) uint8 ``round((n + 1) * 127.5)``; pixels outside
    ``mask`` (or with a non-finite normal) are `BACKGROUND` grey."""
    n = _np(normal).astype(np.float64)
    if n.ndim == 3 and n.shape[0] == 3 and n.shape[-1] != 3:
        n = np.moveaxis(n, 0, -1)
    if n.ndim != 3 or n.shape[-1] != 3:
        raise ValueError(f"normals must be (H, W, 3) or (3, H, W), got shape {n.shape}")
    img = np.clip(np.round((np.nan_to_num(n) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    bad = ~np.isfinite(n).all(-1)
    if mask is not None:
        bad |= ~(_np(mask) > 0.5)
    img[bad] = BACKGROUND
    return img


# --------------------------------------------------------------------------------------------- text


@functools.lru_cache(maxsize=16)
def font(size: int = 12) -> ImageFont.ImageFont:
    """Pillow's built-in scalable font at ``size`` px (no font file needed)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


_MEASURE = ImageDraw.Draw(Image.new("RGB", (1, 1)))


def text_width(text: str, fnt: ImageFont.ImageFont) -> int:
    return int(math.ceil(_MEASURE.textlength(text, font=fnt)))


def line_height(fnt: ImageFont.ImageFont) -> int:
    """Pixels from one line of text to the next."""
    return int(sum(fnt.getmetrics()) + 2) if hasattr(fnt, "getmetrics") else 13


def wrap_text(text: str, fnt: ImageFont.ImageFont, width: int) -> list[str]:
    """Lines of ``text`` that are each at most ``width`` px wide: breaks at blanks (and at explicit newlines); a
    word wider than ``width`` is broken between characters. Nothing is dropped."""
    lines: list[str] = []
    for para in str(text).split("\n"):
        cur = ""
        for word in para.split(" "):
            cand = f"{cur} {word}" if cur else word
            if text_width(cand, fnt) <= width:
                cur = cand
                continue
            if cur:
                lines.append(cur)
            cur = ""
            for ch in word:  # the word alone: break it where it must
                if cur and text_width(cur + ch, fnt) > width:
                    lines.append(cur)
                    cur = ""
                cur += ch
        lines.append(cur)
    return lines


def _draw_lines(draw: ImageDraw.ImageDraw, xy: tuple[int, int], lines: Sequence[str], fnt, fill=BLACK,
                width: int | None = None) -> None:
    """Lines from the top-left ``xy``; centred in ``width`` when given."""
    x, y = xy
    for ln in lines:
        dx = (width - text_width(ln, fnt)) // 2 if width else 0
        draw.text((x + max(dx, 0), y), ln, fill=fill, font=fnt)
        y += line_height(fnt)


# --------------------------------------------------------------------------------------------- grids


def image_grid(rows: Sequence[Sequence[Any]], *, col_labels: Sequence[str] | None = None,
               row_labels: Sequence[str] | None = None, captions: Sequence[Sequence[str | None]] | None = None,
               title: str | None = None, cell: int | None = None, pad: int = 2,
               background: tuple[int, int, int] = WHITE, font_size: int | None = None,
               max_label_width: int | None = None) -> np.ndarray:
    """Rows of pictures (any layout of `to_uint8`; None = an empty cell) -> one (H, W, 3) uint8 sheet.

    Every picture is scaled to ``cell`` px high (default: the first picture's height), its aspect kept (nearest
    neighbour when enlarged, so pixels stay crisp); a column is as wide as its widest picture and as the longest
    word of its label and captions. ``col_labels`` go above the columns, wrapped between words to that width; ``row_labels`` left of the rows, as wide as the longest one
    up to ``max_label_width`` (default max(2 cell, 160) px) and wrapped beyond it (a row grows when its label
    needs more lines); ``captions[r][c]`` under each picture, wrapped; ``title`` on top. Labels are measured with
    the font, never cut.
    """
    pics = [[None if p is None else Image.fromarray(to_uint8(p)) for p in r] for r in rows]
    first = next((p for r in pics for p in r if p is not None), None)
    if first is None:
        raise ValueError("image_grid: no pictures")
    cell = int(cell or first.height)
    for r in pics:
        for j, p in enumerate(r):
            if p is not None and p.height != cell:
                w = max(1, round(p.width * cell / p.height))
                r[j] = p.resize((w, cell), Image.NEAREST if cell > p.height else Image.BILINEAR)
    ncol = max(len(r) for r in pics)
    fnt = font(int(font_size or max(11, min(16, cell // 5))))
    lh = line_height(fnt)

    def longest_word(text: str | None) -> int:
        return max((text_width(w, fnt) for w in str(text or "").split()), default=0)

    col_w = [max([p.width for r in pics if j < len(r) and (p := r[j]) is not None] or [cell]) for j in range(ncol)]
    for j in range(ncol):  # a column is at least as wide as the longest word of its label and captions
        words = [col_labels[j]] if col_labels and j < len(col_labels) else []
        words += [r[j] for r in captions or [] if j < len(r) and r[j]]
        col_w[j] = max([col_w[j]] + [longest_word(w) for w in words])
    col_lines = [wrap_text(col_labels[j], fnt, col_w[j]) if col_labels and j < len(col_labels) else []
                 for j in range(ncol)]
    top = max((len(c) for c in col_lines), default=0) * lh + (4 if col_labels else 0)
    left, row_lines = 0, [[] for _ in pics]
    if row_labels:
        limit = int(max_label_width or max(2 * cell, 160))
        row_lines = [wrap_text(row_labels[i], fnt, limit) if i < len(row_labels) else [] for i in range(len(pics))]
        left = max(text_width(ln, fnt) for lines in row_lines for ln in lines or [""]) + 8
    cap_lines = [[wrap_text(c, fnt, col_w[j]) if c else [] for j, c in enumerate(r)] for r in (captions or [])]
    cap_h = [max((len(c) for c in cap_lines[i]), default=0) * lh if i < len(cap_lines) else 0
             for i in range(len(pics))]
    row_h = [max(cell, len(row_lines[i]) * lh) + cap_h[i] for i in range(len(pics))]
    width = left + sum(col_w) + pad * (ncol + 1)
    title_lines = wrap_text(title, fnt, width - 2 * pad) if title else []
    head = len(title_lines) * lh + (4 if title else 0)
    height = head + top + sum(row_h) + pad * (len(pics) + 1)
    sheet = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(sheet)
    _draw_lines(draw, (pad, 2), title_lines, fnt)
    xs = [left + pad + sum(col_w[:j]) + pad * j for j in range(ncol)]
    for j, lines in enumerate(col_lines):
        _draw_lines(draw, (xs[j], head + 2), lines, fnt, width=col_w[j])
    y = head + top + pad
    for i, r in enumerate(pics):
        lines = row_lines[i]
        _draw_lines(draw, (4, y + max(0, (cell - len(lines) * lh) // 2)), lines, fnt)
        for j, p in enumerate(r):
            if p is not None:
                sheet.paste(p, (xs[j] + (col_w[j] - p.width) // 2, y))
            if i < len(cap_lines) and j < len(cap_lines[i]):
                _draw_lines(draw, (xs[j], y + row_h[i] - cap_h[i]), cap_lines[i][j], fnt, width=col_w[j])
        y += row_h[i] + pad
    return np.asarray(sheet)


def depth_colorbar(width: int = 256, height: int = 14, font_size: int = 12) -> np.ndarray:
    """The legend of `depth_colors`: a far -> near gradient ``width`` x ``height`` px, labelled "far" (dark) and
    "near" (bright), then a `BACKGROUND` swatch labelled "no surface"; (H, W, 3) uint8."""
    fnt, swatch = font(font_size), height * 2
    lh = line_height(fnt)
    total = width + 16 + swatch + max(text_width("no surface", fnt), swatch)
    img = Image.new("RGB", (total + 4, height + lh + 4), WHITE)
    bar = np.repeat(_depth_lut()[np.linspace(0, 255, width).round().astype(int)][None], height, 0)
    img.paste(Image.fromarray(bar), (2, 2))
    img.paste(Image.new("RGB", (swatch, height), BACKGROUND), (width + 18, 2))
    draw = ImageDraw.Draw(img)
    draw.text((2, height + 3), "far", fill=BLACK, font=fnt)
    draw.text((width + 2 - text_width("near", fnt), height + 3), "near", fill=BLACK, font=fnt)
    draw.text((width + 18, height + 3), "no surface", fill=BLACK, font=fnt)
    return np.asarray(img)


# --------------------------------------------------------------------------------------------- files


def save_png(path: PathLike, image: Any) -> Path:
    """Write an image (any layout of `to_uint8`) as PNG through `lapdata.core.atomic` (never half-written)."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG")
    return write_bytes(Path(path), buf.getvalue())


def load_png(path: PathLike) -> np.ndarray:
    """A picture file -> (H, W, 3) uint8 RGB."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def write_gif(path: PathLike, frames: Any, fps: float = 12.0, loop: int = 0) -> Path:
    """Frames (T, 3, H, W) / (T, H, W, 3) float [0, 1] or uint8, or a list of images -> animated GIF."""
    seq = [to_uint8(f) for f in (list(frames) if not isinstance(frames, np.ndarray) else frames)]
    if not seq:
        raise ValueError("write_gif: no frames")
    imgs = [Image.fromarray(a) for a in seq]
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], duration=int(round(1000 / fps)),
                 loop=loop, disposal=2, optimize=False)
    return write_bytes(Path(path), buf.getvalue())


def gif_frame_count(path: PathLike) -> int:
    """Frames of a GIF file."""
    with Image.open(path) as im:
        return int(getattr(im, "n_frames", 1))


# --------------------------------------------------------------------------------------------- figures


def new_figure(ncols: int, width: float = 4.2, height: float = 3.2):
    """(Figure, axes row) drawn by the Agg backend (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def save_figure(fig, path: PathLike, dpi: int = 100) -> Path:
    """A matplotlib figure -> PNG at ``path`` through `lapdata.core.atomic`."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)
