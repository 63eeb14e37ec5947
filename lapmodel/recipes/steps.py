"""The step adapters of a recipe: each step kind calls the typed Python function of its module (no subprocess)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from lapdata.core.config import load_config
from lapdata.core.errors import LapError
from lapdata.core.logs import get_logger
from lapdata.core.paths import plain_name
from lapmodel.recipes.recipe import PipelineConfig, StepConfig, pipeline_train_config
from lapmodel.training.curriculum import stage_dir, train_stage


@dataclass
class StepContext:
    cfg: PipelineConfig
    out: Path
    progress: bool = True
    log: Callable[[str], None] = field(default_factory=lambda: get_logger("run").info)


def marker_path(out: Path, name: str) -> Path:
    """``OUT/steps/<name>.json``: written when a step is done (or skipped), read to skip it on a rerun."""
    return out / "steps" / f"{name}.json"


def read_marker(out: Path, name: str) -> dict:
    p = marker_path(out, name)
    try:
        return json.loads(p.read_text()) if p.exists() else {}
    except json.JSONDecodeError:
        return {}


def out_of(step: StepConfig, ctx: StepContext, default: str) -> Path:
    return Path(step.args.get("out", str(ctx.out / default)))


def step_output(step: StepConfig, ctx: StepContext) -> Path | None:
    """The folder a step writes (deleted before a forced rerun when inside OUT)."""
    defaults = {"build-synthetic": f"data/{step.name}", "ingest": f"data/{step.name}", "parse-masks": None,
                "train": None, "evaluate": f"eval/{step.name}", "reconstruct": f"reconstruct/{step.name}",
                "report": "report", "pack": "pack"}
    if step.kind == "train":
        tc = pipeline_train_config(ctx.cfg, step.args.get("set"))
        st = step.args.get("stage")
        return stage_dir(tc.out, st) if st else Path(tc.out)
    d = defaults.get(step.kind)
    return out_of(step, ctx, d) if d else None


def run_build_synthetic(step: StepConfig, ctx: StepContext) -> dict:
    """args: lapdata.synthetic.build.SynthConfig fields (backend, identities, poses, size, ...; ``out`` defaults to
    OUT/data/<step name>)."""
    from lapdata.synthetic.build import SynthConfig, run_synthetic

    args = {"out": str(ctx.out / "data" / step.name), "progress": ctx.progress, **step.args}
    return jsonable(run_synthetic(load_config(SynthConfig, args)))


def run_ingest(step: StepConfig, ctx: StepContext) -> dict:
    """args: lapdata.ingest.run.IngestConfig fields (kind, src, out, size, ...)."""
    from lapdata.ingest.config import IngestConfig
    from lapdata.ingest.run import run_ingest as _run

    args = {"out": str(ctx.out / "data" / step.name), "progress": ctx.progress, **step.args}
    return jsonable(_run(load_config(IngestConfig, args)))


def run_parse_masks(step: StepConfig, ctx: StepContext) -> dict:
    """args: ``dataset`` (the shard dataset folder to parse in place) + lapdata.parsing.parse.ParseConfig fields
    (parser: auto | ground-truth | landmarks | bisenet, weights, min_face_fraction, ...)."""
    from lapdata.parsing.parse import ParseConfig, parse_masks

    a = dict(step.args)
    root = a.pop("dataset")
    return jsonable(parse_masks(root, load_config(ParseConfig, a), progress=ctx.progress))


def run_train(step: StepConfig, ctx: StepContext) -> dict:
    """args: ``stage`` (aggregate | personalize | finetune; absent for a non-LAP model), ``init`` (checkpoint),
    ``set`` (overrides of the pipeline's train config)."""
    from lapmodel.training.train import train

    tc = pipeline_train_config(ctx.cfg, step.args.get("set"))
    if step.args.get("init"):
        tc = replace(tc, init=str(step.args["init"]))
    stage = step.args.get("stage")
    if stage:
        res = train_stage(tc, stage, resume=True, progress=ctx.progress, log=ctx.log)
    else:
        res = train(tc, resume=(Path(tc.out) / "last.pt").exists(), progress=ctx.progress, log=ctx.log)
    return {"checkpoint": str(res.checkpoint), "step": res.step, "last_logs": res.last_logs,
            "cpu_seconds_total": res.cpu_seconds}


def run_evaluate(step: StepConfig, ctx: StepContext) -> dict:
    """args: the fields of lapmodel.evaluation.evaluate.EvaluateConfig (``out`` defaults to OUT/eval/<step name>)."""
    from lapmodel.evaluation.evaluate import EvaluateConfig, evaluate_checkpoint

    out = out_of(step, ctx, f"eval/{step.name}")
    cfg = load_config(EvaluateConfig, {**step.args, "out": str(out)})
    res = evaluate_checkpoint(cfg, progress=ctx.progress)
    return {"out": str(out), "rows": res.rows, "notes": res.notes, "counts": res.counts}


def run_reconstruct(step: StepConfig, ctx: StepContext) -> dict:
    """args: checkpoint, shards (held-out identities), identities (how many, default 2), views (max per set,
    default 6), device, out. Writes OUT/reconstruct/<step>/{set,single}/ and compare.png."""
    from lapmodel.io.checkpoint import load_model
    from lapmodel.inference.reconstruct import reconstruct_images

    a = step.args
    out = out_of(step, ctx, f"reconstruct/{step.name}")
    model = load_model(a["checkpoint"], device=a.get("device", "cpu"))
    sets = load_identity_sets(a["shards"], int(a.get("identities", 2)), int(a.get("views", 6)), model.cfg.image_size)
    doc: dict[str, Any] = {"identities": [], "out": str(out)}
    rows, labels = [], []
    for ident, images, gt in sets:
        slug = plain_name(ident, 40)  # distinct identities never share a folder, none leads out of OUT
        names = [f"{slug}_{i}" for i in range(len(images))]
        reconstruct_images(model, images, out / "set" / slug, names, as_set=True, progress=False,
                           turntable=int(a.get("turntable", 12)))
        reconstruct_images(model, images[:1], out / "single" / slug, names[:1], as_set=False, progress=False,
                           turntable=int(a.get("turntable", 12)))
        r, lab = compare_rows(model, images, gt)
        rows += r
        labels += [f"{ident}: {lab[0]}"] + lab[1:]
        doc["identities"].append({"identity": ident, "views": len(images)})
    if rows:
        from lapdata.core.pictures import image_grid, save_png

        cols = [f"view {i}" for i in range(max(len(r) for r in rows))]
        save_png(out / "compare.png", image_grid(rows, row_labels=labels, col_labels=cols,
                                                 cell=max(64, model.cfg.image_size)))
        doc["compare"] = str(out / "compare.png")
    return doc


def load_identity_sets(shards: str | Sequence[str], identities: int, views: int, size: int):
    """The first ``identities`` samples of the shards: [(identity, images (K, 3, S, S) in [0, 1], gt depth
    (K, S, S) or None)] with K <= ``views``; read and resized with ``lapdata.dataset.reader`` (the pixels training and
    evaluation see)."""
    import numpy as np
    import torch

    from lapdata.dataset.sample import decode_sample, num_views
    from lapdata.dataset.reader import preprocess_field, preprocess_image, tar_samples

    from lapmodel.io.data import expand_shards

    out = []
    for raw in tar_samples(expand_shards(shards)):
        s = decode_sample(raw, views=range(min(num_views(raw), views)), fields=("image", "depth"))
        imgs = torch.from_numpy(np.stack([preprocess_image(v.image, size) for v in s.views]))
        gt = None
        if all(v.depth is not None for v in s.views):
            gt = torch.from_numpy(np.stack([preprocess_field(v.depth, size) for v in s.views]))
        out.append((s.identity, imgs, gt))
        if len(out) >= identities:
            break
    if not out:
        raise LapError(f"{shards}: no samples to reconstruct")
    return out


def compare_rows(model, images, gt):
    """Picture rows for one identity: inputs; re-render from the set; from each photo alone; view depth from the
    set / alone / ground truth; canonical normals from the set / alone."""
    import torch

    from lapdata.core.pictures import depth_colors, normal_colors

    with torch.no_grad():
        rs = model.reconstruct(images, as_set=model.accepts_sets)
        r1 = model.reconstruct(images)
    k = images.shape[0]
    np_ = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
    rows = [[np_(images[i]) for i in range(k)],
            [np_(rs.recon_image[i]) for i in range(k)],
            [np_(r1.recon_image[i]) for i in range(k)],
            [depth_colors(rs.recon_depth[i], rs.recon_mask[i]) for i in range(k)],
            [depth_colors(r1.recon_depth[i], r1.recon_mask[i]) for i in range(k)]]
    labels = ["input", "recon set", "recon single", "depth set", "depth single"]
    if gt is not None:
        rows.append([depth_colors(gt[i]) for i in range(k)])
        labels.append("depth gt")
    rows += [[normal_colors(rs.canon_normal[i]) for i in range(k)],
             [normal_colors(r1.canon_normal[i]) for i in range(k)]]
    labels += ["normal set", "normal single"]
    return rows, labels




def jsonable(x: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return jsonable(dataclasses.asdict(x))
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)
