"""A static HTML report of a pipeline run: pictures (PNG, relative paths) and tables a person can open in a browser.

Building blocks are pure functions: pictures from arrays (:func:`save_png`, :func:`image_grid`, :func:`depth_picture`,
:func:`normal_picture`), loss curves from ``log.jsonl`` files (:func:`loss_curves_png`), and :func:`write_report`,
which writes ``DIR/index.html`` from a list of :class:`Section`. ``lapmodel.recipes.report`` gathers the run's content.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw


# --------------------------------------------------------------------------------------------- pictures


def to_uint8(img: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 3) or (3, H, W) float in [0, 1] (or uint8) -> (H, W, 3) uint8."""
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.dtype != np.uint8:
        a = np.clip(np.nan_to_num(a.astype(np.float64)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return a


def save_png(img: np.ndarray, path: str | Path) -> Path:
    """Write a picture atomically (``path.tmp`` then ``os.replace``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    Image.fromarray(to_uint8(img)).save(tmp, format="PNG")
    os.replace(tmp, p)
    return p


def depth_picture(depth: np.ndarray, mask: np.ndarray | None = None, cmap: str = "viridis") -> np.ndarray:
    """(H, W) depth -> (H, W, 3) uint8 colour map, near = bright, normalised over ``mask`` (or the finite pixels)."""
    import matplotlib

    d = np.asarray(depth, dtype=np.float64)
    m = np.isfinite(d) if mask is None else (np.asarray(mask) > 0.5) & np.isfinite(d)
    if not m.any():
        return np.zeros(d.shape + (3,), np.uint8)
    lo, hi = np.percentile(d[m], 1), np.percentile(d[m], 99)
    t = 1.0 - np.clip((d - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = matplotlib.colormaps[cmap](t)[..., :3]
    rgb[~m] = 0
    return to_uint8(rgb)


def normal_picture(normal: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) unit normals -> (H, W, 3) uint8 as (n + 1) / 2 (x right = red, y down = green, z = blue)."""
    n = (np.asarray(normal, dtype=np.float64) + 1.0) / 2.0
    if mask is not None:
        n = n * (np.asarray(mask)[..., None] > 0.5)
    return to_uint8(n)


def image_grid(rows: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str] | None = None,
               col_labels: Sequence[str] | None = None, pad: int = 2, cell: int | None = None) -> np.ndarray:
    """Rows of pictures -> one (H, W, 3) uint8 grid (pictures resized to ``cell`` px, default the first one's
    side), with optional text labels on the left and on top. Empty cells (None) stay white."""
    pics = [[None if p is None else to_uint8(p) for p in r] for r in rows]
    first = next(p for r in pics for p in r if p is not None)
    cell = cell or first.shape[0]
    ncol = max(len(r) for r in pics)
    left = 90 if row_labels else 0
    top = 16 if col_labels else 0
    h = top + len(pics) * (cell + pad) + pad
    w = left + ncol * (cell + pad) + pad
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, r in enumerate(pics):
        y = top + pad + i * (cell + pad)
        if row_labels:
            draw.text((3, y + cell // 2 - 6), str(row_labels[i])[:14], fill=(0, 0, 0))
        for j, p in enumerate(r):
            if p is None:
                continue
            x = left + pad + j * (cell + pad)
            im = Image.fromarray(p)
            if im.size != (cell, cell):
                im = im.resize((cell, cell), Image.BILINEAR)
            canvas.paste(im, (x, y))
    if col_labels:
        for j, t in enumerate(col_labels):
            draw.text((left + pad + j * (cell + pad) + 2, 2), str(t)[: max(4, cell // 6)], fill=(0, 0, 0))
    return np.asarray(canvas)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; unreadable lines are skipped (a log being written)."""
    rows = []
    p = Path(path)
    if not p.is_file():
        return rows
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def loss_curves_png(logs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path,
                    keys: Sequence[str] = ("loss",)) -> Path | None:
    """One panel per key: each named log (e.g. a training phase) plotted against a global step that continues
    from one log to the next. ``logs``: name -> rows with ``step`` and the keys. None when nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {k: [] for k in keys}
    offset = 0
    for name, rows in logs.items():
        rows = [r for r in rows if "step" in r]
        if not rows:
            continue
        for k in keys:
            pts = [(offset + r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
            if pts:
                series[k].append((name, pts))
        offset += max(r["step"] for r in rows)
    keys = [k for k in keys if series[k]]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys):
        for name, pts in series[k]:
            x, y = zip(*pts)
            ax.plot(x, y, label=name, lw=1.2)
        ax.set_title(k)
        ax.set_xlabel("step (all phases)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, p)
    return p


# --------------------------------------------------------------------------------------------- HTML


@dataclass
class Section:
    """One section of the report: a title, a paragraph, pictures (path, caption) and an optional table."""

    title: str
    text: str = ""
    images: list[tuple[str | Path, str]] = field(default_factory=list)
    table: list[dict[str, Any]] | None = None
    links: list[tuple[str | Path, str]] = field(default_factory=list)


_CSS = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
figure{display:inline-block;margin:.5em;vertical-align:top}figcaption{font-size:.85em;color:#555;max-width:600px}
img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.meta{color:#666;font-size:.9em}"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def table_html(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p class=meta>(no rows)</p>"
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(out_dir: str | Path, title: str, sections: Sequence[Section], meta: str = "") -> Path:
    """Write ``out_dir/index.html`` (atomically); picture paths are made relative to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def rel(p: str | Path) -> str:
        return html.escape(os.path.relpath(Path(p).resolve(), out.resolve()).replace(os.sep, "/"))

    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if meta:
        parts.append(f"<p class=meta>{html.escape(meta)}</p>")
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{html.escape(s.text)}</p>")
        for p, cap in s.images:
            parts.append(f"<figure><a href='{rel(p)}'><img src='{rel(p)}' alt='{html.escape(cap)}'></a>"
                         f"<figcaption>{html.escape(cap)}</figcaption></figure>")
        if s.table is not None:
            parts.append(table_html(s.table))
        if s.links:
            parts.append("<ul>" + "".join(f"<li><a href='{rel(p)}'>{html.escape(t)}</a></li>" for p, t in s.links)
                         + "</ul>")
    parts.append("</body></html>")
    path = out / "index.html"
    tmp = out / "index.html.tmp"
    tmp.write_text("\n".join(parts))
    os.replace(tmp, path)
    return path
