"""The HTML report page: ONE self-contained folder a person can zip and open anywhere.

`write_report` writes ``DIR/index.html`` from a list of `Section` (text, pictures, tables, interactive 3D meshes,
links, collapsible text blocks). Every file the page shows or links must lie inside ``DIR`` (`ReportFolder.add`
copies files in under readable names) and is linked by a relative path; a path outside is an error. When a section
has meshes, the vendored ``<model-viewer>`` script (``viz/assets/model-viewer.min.js``, @google/model-viewer, a
single ES module with three.js inside) is copied beside index.html, so the 3D views work offline. Pictures are made
by `lapdata.core.pictures`; ``lapmodel.recipes.report`` gathers a run's content.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from lapdata.core import atomic

ASSETS = Path(__file__).resolve().parent / "assets"
VIEWER_JS = "model-viewer.min.js"


@dataclass
class Mesh3D:
    """One interactive 3D view: a GLB inside the report folder, a caption, downloads (path, label) of other formats."""

    glb: str | Path
    caption: str
    downloads: list[tuple[str | Path, str]] = field(default_factory=list)


@dataclass
class Section:
    """One section of the report: a title, a paragraph, pictures (path, caption), tables (caption, rows), 3D meshes,
    links (path, text) and collapsed text blocks (summary, preformatted text)."""

    title: str
    text: str = ""
    images: list[tuple[str | Path, str]] = field(default_factory=list)
    tables: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    meshes: list[Mesh3D] = field(default_factory=list)
    links: list[tuple[str | Path, str]] = field(default_factory=list)
    blocks: list[tuple[str, str]] = field(default_factory=list)


class ReportFolder:
    """The report's folder: `add` copies a file in (``sub/name``, made unique), so that nothing links outside."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.taken: set[str] = set()

    def path(self, sub: str, name: str) -> Path:
        """A fresh path ``root/sub/name`` (``-2``, ``-3``, ... before the suffix when the name is taken)."""
        stem, suffix = os.path.splitext(re.sub(r"[^A-Za-z0-9._-]+", "_", name))
        base = f"{sub.strip('/')}/" if sub.strip("/") else ""
        rel, k = f"{base}{stem}{suffix}", 1
        while rel in self.taken:
            k += 1
            rel = f"{base}{stem}-{k}{suffix}"
        self.taken.add(rel)
        return self.root / rel

    def add(self, src: str | Path, sub: str, name: str | None = None) -> Path:
        """Copy ``src`` to `path` (sub, name or its file name) through `lapdata.core.atomic`; returns the copy."""
        return atomic.copy_file(src, self.path(sub, name or Path(src).name))

    def text(self, sub: str, name: str, text: str) -> Path:
        return atomic.write_text(self.path(sub, name), text)


_CSS = """body{font-family:sans-serif;max-width:1240px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
nav{font-size:.9em}nav a{margin-right:1em}
figure{display:inline-block;margin:.5em;vertical-align:top}figcaption{font-size:.85em;color:#555;max-width:600px}
img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.4em 0 1em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}caption{text-align:left;
font-weight:bold;padding:.3em 0}.meta{color:#666;font-size:.9em}
.meshes{display:flex;flex-wrap:wrap;gap:.4em}.mesh{margin:0}.mesh figcaption{max-width:220px}
model-viewer{width:220px;height:220px;background:#e8e8e8;display:block}
pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.8em;max-height:40em}"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def table_html(rows: Sequence[Mapping[str, Any]], caption: str = "") -> str:
    if not rows:
        return "<p class=meta>(no rows)</p>"
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table>{cap}<tr>{head}</tr>{body}</table>"


def _width(p: Path) -> str:
    """`` width=N`` enlarging a small picture 2-3x on the page (crisp: pixelated), else ""."""
    from PIL import Image

    try:
        with Image.open(p) as im:
            w = im.width
    except Exception:  # noqa: BLE001 - not a picture the page can size
        return ""
    k = max(1, min(3, round(560 / max(w, 1))))
    return f" width={w * k}" if k > 1 else ""


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


def write_report(out_dir: str | Path, title: str, sections: Sequence[Section], meta: str = "") -> Path:
    """Write ``out_dir/index.html`` (atomically). Every path in ``sections`` must be inside ``out_dir`` (a
    ValueError names one that is not); links are relative. Copies the model-viewer script in when there are meshes."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)

    def rel(p: str | Path) -> str:
        q = Path(p).resolve()
        if out not in q.parents:
            raise ValueError(f"{p}: outside the report folder {out} (copy it in with ReportFolder.add)")
        return html.escape(q.relative_to(out).as_posix(), quote=True)

    has_meshes = any(s.meshes for s in sections)
    head = f"<meta charset=utf-8><title>{html.escape(title)}</title><style>{_CSS}</style>"
    if has_meshes:
        atomic.copy_file(ASSETS / VIEWER_JS, out / VIEWER_JS)
        atomic.copy_file(ASSETS / "LICENSE", out / "model-viewer.LICENSE.txt")
        head += f'<script type="module" src="{VIEWER_JS}"></script>'
    anchors = [_anchor(s.title) for s in sections]
    parts = [f"<!doctype html><html><head>{head}</head><body><h1>{html.escape(title)}</h1>"]
    if meta:
        parts.append(f"<p class=meta>{html.escape(meta)}</p>")
    parts.append("<nav>" + "".join(f"<a href='#{a}'>{html.escape(s.title)}</a>" for a, s in zip(anchors, sections))
                 + "</nav>")
    for a, s in zip(anchors, sections):
        parts.append(f"<h2 id='{a}'>{html.escape(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{html.escape(s.text)}</p>")
        for cap, rows in s.tables:
            parts.append(table_html(rows, cap))
        if s.meshes:
            figs = []
            for m in s.meshes:
                dl = "".join(f" <a href='{rel(p)}' download>{html.escape(t)}</a>" for p, t in m.downloads)
                figs.append(f"<figure class=mesh><model-viewer src='{rel(m.glb)}' alt='{html.escape(m.caption)}' "
                            "camera-controls loading='eager' reveal='auto' interaction-prompt='none' "
                            "camera-orbit='-30deg 75deg auto' shadow-intensity='0'>"
                            "<div slot='progress-bar'></div></model-viewer>"
                            f"<figcaption>{html.escape(m.caption)}{dl}</figcaption></figure>")
            parts.append("<div class=meshes>" + "".join(figs) + "</div>")
        for p, cap in s.images:
            parts.append(f"<figure><a href='{rel(p)}'><img src='{rel(p)}'{_width(p)} alt='{html.escape(cap)}'></a>"
                         f"<figcaption>{html.escape(cap)}</figcaption></figure>")
        if s.links:
            parts.append("<ul>" + "".join(f"<li><a href='{rel(p)}'>{html.escape(t)}</a></li>" for p, t in s.links)
                         + "</ul>")
        for summary, text in s.blocks:
            parts.append(f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>")
    parts.append("</body></html>")
    return atomic.write_text(out / "index.html", "\n".join(parts))
