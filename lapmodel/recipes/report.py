"""The report step of a recipe: gathers a run's curves, pictures, meshes and metrics into ``OUT/report/``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

from lapdata.errors import LapError
from lapmodel.recipes.recipe import PipelineConfig, StepConfig, pipeline_train_config
from lapmodel.recipes.steps import StepContext, out_of, load_identity_sets, read_marker, step_output
from lapmodel.training.curriculum import stage_dir


def run_report(step: StepConfig, ctx: StepContext) -> dict:
    """args: out (default OUT/report), title. Gathers the run's pictures and numbers into index.html."""
    out = out_of(step, ctx, "report")
    path = build_report(ctx.cfg, ctx.out, out, title=step.args.get("title"))
    return {"report": str(path)}



def build_report(cfg: PipelineConfig, run_out: Path, out: Path, title: str | None = None) -> Path:
    """Collect loss curves, training pictures, a contact sheet of the data, reconstructions, depth/normal pictures,
    meshes and the metrics table of a pipeline run into ``out/index.html``."""
    from lapmodel.viz.report import Section, image_grid, loss_curves_png, read_jsonl, save_png, write_report

    out.mkdir(parents=True, exist_ok=True)
    sections: list[Section] = []
    markers = {s.name: read_marker(run_out, s.name) for s in cfg.steps}

    # training: loss curves (phases in order) + latest picture grid of each stage
    logs: dict[str, list] = {}
    pics: list[tuple[Path, str]] = []
    for s in cfg.steps:
        if s.kind != "train":
            continue
        tc = pipeline_train_config(cfg, s.args.get("set"))
        st = s.args.get("stage")
        if st:
            phase_dirs = [(f"{st}/{p.name}", stage_dir(tc.out, st) / p.name) for p in getattr(tc.stages, st).phases]
        else:
            phase_dirs = [(s.name, Path(tc.out))]
        for name, d in phase_dirs:
            rows = read_jsonl(d / "log.jsonl")
            if rows:
                logs[name] = rows
            grids = sorted((d / "pictures").glob("step-*.png"))
            if grids:
                pics.append((grids[-1], f"{name}: training pictures at the last step ({grids[-1].stem})"))
    if logs:
        keys = ["loss"] + sorted({k for rows in logs.values() for r in rows for k in r
                                  if k.endswith("l1") and isinstance(r.get(k), (int, float))})
        p = loss_curves_png(logs, out / "loss_curves.png", keys=keys[:4])
        imgs = [(p, "loss per logged step; phases/stages follow each other on the x axis")] if p else []
        sections.append(Section("Training", "Loss curves of every stage and curriculum phase, and each stage's "
                                "picture grid (input, reconstructions, canonical albedo/depth/normals, turntable).",
                                imgs + pics))

    # data: contact sheet of the first dataset step
    for s in cfg.steps:
        if s.kind in ("build-synthetic", "ingest") and markers.get(s.name, {}).get("status") == "done":
            d = step_output(s, StepContext(cfg, run_out))
            try:
                sets = load_identity_sets(str(d), 6, 6, 64)
            except LapError:
                continue
            rows = [[im.numpy() for im in imgs] for _, imgs, _ in sets]
            p = save_png(image_grid(rows, [i[-12:] for i, _, _ in sets]), out / f"contact_{s.name}.png")
            sections.append(Section(f"Data: {s.name}", f"First identities of {d} (one row per identity, its views).",
                                    [(p, f"contact sheet of {s.name}")]))

    # reconstructions
    for s in cfg.steps:
        if s.kind != "reconstruct":
            continue
        d = step_output(s, StepContext(cfg, run_out))
        imgs = []
        if (d / "compare.png").exists():
            imgs.append((d / "compare.png", "per identity: inputs, re-render from the whole set and from each photo "
                         "alone, view depth (set / single / ground truth), canonical normals (set / single)"))
        for sub, what in (("set", "from the set"), ("single", "from one photo")):
            for summ in sorted((d / sub).glob("*/summary.png"))[:4]:
                imgs.append((summ, f"{what}: {summ.parent.name} (input | recon | albedo | depth | normals | shading)"))
        meshes = sorted(d.glob("*/*/*/mesh.obj"))[:8]
        gifs = sorted(d.glob("*/*/*/turntable.gif"))[:4]
        imgs += [(g, f"turntable {g.parent.parent.parent.name}/{g.parent.name}") for g in gifs]
        sections.append(Section(f"Reconstructions: {s.name}", "Held-out identities reconstructed by the final model.",
                                imgs, links=[(m, f"mesh {m.parent.parent.parent.name}/{m.parent.name}")
                                             for m in meshes]))

    # metrics
    table = []
    eval_imgs = []
    for s in cfg.steps:
        if s.kind != "evaluate":
            continue
        d = step_output(s, StepContext(cfg, run_out))
        ej = d / "eval.json"
        if not ej.exists():
            continue
        doc = json.loads(ej.read_text())
        for rowname, summ in doc.get("rows", {}).items():
            row: dict[str, Any] = {"evaluation": s.name, "row": rowname}
            for metric, st in summ.items():
                if isinstance(st, Mapping) and "mean" in st:
                    row[metric] = st["mean"]
            table.append(row)
        for png, cap in (("set_size.png", "quality against set size N (paper Fig. 7a)"),
                         ("examples.png", "input | re-render | predicted depth | ground-truth depth")):
            if (d / png).exists():
                eval_imgs.append((d / png, f"{s.name}: {cap}"))
    if table or eval_imgs:
        sections.append(Section("Metrics", "SIDE (x1e-2) and MAD (degrees) on ground-truth depth (Unsup3D "
                                "protocol), SSIM of the re-render on the face, identity cosine; 'flat' is a constant-"
                                "depth baseline, 'gt' the ground truth itself (sanity: 0).", eval_imgs, table=table))

    # steps
    steps_table = [{"step": s.name, "kind": s.kind,
                    "status": markers.get(s.name, {}).get("status", "this page" if s.kind == "report" else "not run"),
                    "seconds": markers.get(s.name, {}).get("seconds", "")} for s in cfg.steps]
    sections.append(Section("Steps", f"Pipeline {cfg.name}: {cfg.description}", table=steps_table))
    return write_report(out, title or f"LAP toolkit: {cfg.name}", sections,
                        meta=f"run folder {run_out.resolve()} - generated {time.strftime('%Y-%m-%d %H:%M:%S')}")
