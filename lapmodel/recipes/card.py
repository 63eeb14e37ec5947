"""The ``pack`` step of a recipe: a trained checkpoint slimmed for shipping (``io.pretrained.pack_checkpoint``) and
its model card, written from the run itself (what was trained, on what, for how long, and what it scores).

    - {name: pack, kind: pack, args: {checkpoint: "${OUT}/train/finetune/last.pt", evaluations: [eval-real, eval-synthetic],
       data: ["ICT-FaceKit synthetic identities (MIT)", ...], licence: "research use only (...)"}}

writes ``OUT/pack/default.pt`` and ``OUT/pack/MODEL_CARD.md``; the project's packaged model
(``lapmodel/weights/``) is a copy of them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lapdata.core.atomic import write_text
from lapmodel.io.checkpoint import checkpoint_config, load_checkpoint
from lapmodel.io.pretrained import pack_checkpoint
from lapmodel.recipes.recipe import StepConfig
from lapmodel.recipes.steps import StepContext, out_of, read_marker, step_output


def run_pack(step: StepConfig, ctx: StepContext) -> dict:
    """args: checkpoint, evaluations (evaluate step names whose eval.json the card quotes), train_steps (the train
    steps that made this checkpoint; default all), data (lines: the training data and their licences), licence (of
    the weights), title, why (a paragraph: why this checkpoint); out (default OUT/pack)."""
    a = step.args
    out = out_of(step, ctx, "pack")
    dst = pack_checkpoint(a["checkpoint"], out / "default.pt")
    card = model_card(ctx, a, dst)
    write_text(out / "MODEL_CARD.md", card)
    return {"checkpoint": str(dst), "card": str(out / "MODEL_CARD.md"), "mb": round(dst.stat().st_size / 2**20, 2)}


def _training_rows(ctx: StepContext, names: list[str] | None) -> tuple[list[str], float]:
    rows, cpu = [], 0.0
    for s in ctx.cfg.steps:
        m = read_marker(ctx.out, s.name)
        if s.kind != "train" or m.get("status") != "done" or (names is not None and s.name not in names):
            continue
        c = float(m["result"].get("cpu_seconds_total", m.get("cpu_seconds", 0.0)))  # resumes included
        cpu += c
        rows.append(f"| {s.name} | {s.args.get('stage', '-')} | {m['result'].get('step', '?')} | {c / 3600:.2f} |")
    return rows, cpu


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def _under_out(path: str, out: Path) -> str:
    """``path`` shown as OUT/... when it lies in the run's folder."""
    p, o = Path(path).resolve(), Path(out).resolve()
    return f"OUT/{p.relative_to(o)}" if p.is_relative_to(o) else str(path)


def _eval_lines(ctx: StepContext, names: list[str]) -> list[str]:
    lines = []
    for name in names:
        s = next((x for x in ctx.cfg.steps if x.name == name), None)
        ej = step_output(s, ctx) / "eval.json" if s is not None else None
        if ej is None or not ej.is_file():
            lines.append(f"- `{name}`: not run")
            continue
        doc = json.loads(ej.read_text())
        rows = doc.get("rows") or {}
        name = f"{name}` of `{_under_out(s.args.get('checkpoint', '?'), ctx.out)}"
        if rows.get("model", {}).get("side", {}).get("n"):
            m, f, mf = rows["model"], rows["flat"], rows.get("mean_face", {})
            lines.append(f"- `{name}` (synthetic, held-out identities, {m['side']['n']} views): SIDE "
                         f"{m['side']['mean']:.3f} x1e-2 ({_ratio(m['side']['mean'], f['side']['mean'])} flat), MAD "
                         f"{m['mad']['mean']:.2f} deg ({_ratio(m['mad']['mean'], f['mad']['mean'])} flat); mean face "
                         f"{mf.get('side', {}).get('mean', float('nan')):.3f} / {mf.get('mad', {}).get('mean', float('nan')):.2f}")
        kp = doc.get("keypoints")
        if kp:
            r = kp["rows"]
            lines.append(f"- `{name}` (real photos, {kp['counts']['scored']} photos of {kp['counts']['identities']} "
                         f"held-out identities, {Path(kp['source']).name}): keypoint depth correlation "
                         f"**{r['model']['kp_corr']['mean']:.3f}** mean / {r['model']['kp_corr']['median']:.3f} median "
                         f"(mean template {r['mean_template']['kp_corr']['mean']:.3f}, untrained prior "
                         f"{r['prior']['kp_corr']['mean']:.3f}); DepthNet score {r['model']['depthnet']['table3_scale']:.1f}"
                         f" on Table 3's scale of 66; canonical depth spread across identities "
                         f"{kp['canon_spread']['identities']:.3f}")
    return lines


def model_card(ctx: StepContext, a: dict[str, Any], packed: Path) -> str:
    doc = load_checkpoint(packed)
    cfg = checkpoint_config(doc)
    m = cfg.model
    rows, cpu = _training_rows(ctx, a.get("train_steps"))
    n_params = sum(v.numel() for v in doc["model"].values())
    return "\n".join([
        f"# {a.get('title', 'lapmodel default model')}",
        "",
        f"A `{m.kind}` model at {m.image_size} px (nf {m.nf}, zdim {m.zdim}; {n_params / 1e6:.1f} M weights stored in "
        f"fp16, {packed.stat().st_size / 2**20:.1f} MB), used by `lapmodel reconstruct` / `lapmodel evaluate` when no "
        "`--checkpoint` is given. Input: a face photo (detected and aligned, or an aligned crop); output: canonical "
        "depth, albedo, light, view, normals, a mesh and a turntable.",
        "",
        f"**Licence of the weights: {a.get('licence', 'see the data below')}.**",
        "",
        *([a["why"], ""] if a.get("why") else []),
        "## Data",
        *[f"- {d}" for d in a.get("data", [])],
        "",
        f"## Training (recipe `{ctx.cfg.name}`, `lapmodel run` of the recipe in `pipelines/`; {cpu / 3600:.2f} "
        "CPU-hours on a 2-core x86-64 VM)",
        "",
        "| step | stage | steps | CPU-hours |",
        "|---|---|---|---|",
        *rows,
        "",
        "## Scores",
        *_eval_lines(ctx, list(a.get("evaluations", []))),
        "",
        f"Packed {time.strftime('%Y-%m-%d')} from `{a['checkpoint']}` (step {doc['step']}).",
        "",
    ])
