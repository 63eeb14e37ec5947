"""Training-curve plots: `Curve` lines drawn into panels (`curves_png`, matplotlib Agg through
`lapdata.core.pictures.new_figure` / `save_figure`), training logs read (`read_jsonl`) and laid on one step axis
across curriculum phases (`log_panels`), and a run's ``loss.png`` (`loss_curve_png`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from lapdata.core.pictures import new_figure, save_figure

PathLike = str | os.PathLike


@dataclass
class Curve:
    """One line of a plot: y against x, optional error bars (``yerr``), a matplotlib format (``"o-"``, ``"--"``)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    yerr: Sequence[float] | None = None
    fmt: str = "-"
    color: str | None = None
    lw: float = 1.2




def curves_png(path: PathLike, panels: Mapping[str, Sequence[Curve]], *, xlabel: str = "step",
               title: str | None = None, marks: Sequence[tuple[float, str]] = (), xticks: Sequence[float] | None = None,
               legend: bool = True, width: float = 4.2, height: float = 3.2, dpi: int = 100) -> Path | None:
    """One panel per entry of ``panels`` (title -> curves), side by side; ``marks``: (x, label) dotted vertical
    lines on every panel (where a training phase starts). Empty panels are left out; None (no file) if all are."""
    panels = {k: v for k, v in panels.items() if v and any(len(c.x) for c in v)}
    if not panels:
        return None
    fig, axes = new_figure(len(panels), width, height)
    for ax, (name, curves) in zip(axes, panels.items()):
        for c in curves:
            if c.yerr is not None:
                ax.errorbar(c.x, c.y, yerr=c.yerr, fmt=c.fmt, color=c.color, lw=c.lw, capsize=3, label=c.label)
            else:
                ax.plot(c.x, c.y, c.fmt, color=c.color, lw=c.lw, label=c.label)
        for x, _ in marks:  # (the curves' legend names the phases: labels here would overlap)
            ax.axvline(x, color="0.5", ls=":", lw=1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        if xticks is not None:
            ax.set_xticks(list(xticks))
        ax.grid(alpha=0.3)
        if legend and any(c.label for c in curves):
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def read_jsonl(path: PathLike) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (a training ``log.jsonl``); unreadable lines (a log being written) are skipped."""
    rows = []
    for line in Path(path).read_text().splitlines() if Path(path).is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def log_panels(logs: Mapping[str, Sequence[Mapping[str, Any]]], keys: Sequence[str]
               ) -> tuple[dict[str, list[Curve]], list[tuple[float, str]]]:
    """Logs of consecutive runs (name -> rows with ``step`` and numbers: the curriculum phases in order) -> (panels:
    key -> one curve per log, marks: (x, name) where each log starts) on one step axis across the logs: a row's
    ``global_step`` where the log has it, else its step offset by the last step of the logs before."""
    panels: dict[str, list[Curve]] = {k: [] for k in keys}
    marks: list[tuple[float, str]] = []
    offset = 0
    for name, rows in logs.items():
        rows = [r for r in rows if isinstance(r.get("step"), (int, float))]
        if not rows:
            continue
        if isinstance(rows[0].get("global_step"), (int, float)):
            offset = rows[0]["global_step"] - rows[0]["step"]
        marks.append((offset, name))
        for k in keys:
            pts = [(offset + r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
            if pts:
                panels[k].append(Curve(name, [p[0] for p in pts], [p[1] for p in pts]))
        offset += max(r["step"] for r in rows)
    return {k: v for k, v in panels.items() if v}, marks


def loss_curve_png(log_path: PathLike, png: PathLike) -> Path | None:
    """A run's ``log.jsonl`` -> ``png``: every logged ``loss*`` term against step in one panel (None: no rows)."""
    rows = read_jsonl(log_path)
    keys = sorted({k for r in rows for k in r if k.startswith("loss")})
    curves = [Curve(k, [r["step"] for r in rows if k in r], [r[k] for r in rows if k in r],
                    lw=2.0 if k == "loss" else 1.0) for k in keys]
    return curves_png(png, {"loss": curves}, width=7.0, height=4.0)
