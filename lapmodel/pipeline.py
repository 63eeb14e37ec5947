"""Recipes as data: `lapmodel run pipelines/X.yaml` runs a list of steps, skipping those already done.

A pipeline YAML (:class:`PipelineConfig`)::

    name: quickstart
    out: runs/quickstart                  # --out overrides; ${OUT} in the steps
    vars: {SYN_IDS: 24}                   # defaults of ${NAME}; the environment wins
    train: pipelines/lap.yaml             # the TrainConfig of every train step (a path, or the mapping inline)
    train_set: {steps: 40}                # dotted or nested overrides applied on top of it
    steps:
      - {name: synthetic, kind: build-synthetic, args: {...}}
      - {name: stage1, kind: train, args: {stage: aggregate}}
      ...

Step kinds (each calls the typed Python function of its module, no subprocess): ``build-synthetic``
(lapdata.synthetic), ``ingest`` (lapdata.ingest.run_ingest), ``parse-masks`` (lapdata.parsing), ``train``
(:func:`train_stage`: one LAP stage with its curriculum phases, or a plain ``lapmodel.train.train`` for a non-LAP
model), ``evaluate`` (lapmodel.evaluate.evaluate_checkpoint), ``reconstruct`` (held-out identities of a shard set
reconstructed from the whole set and from one photo, lapmodel.reconstruct.reconstruct_images) and ``report``
(``OUT/report/index.html``, lapmodel.report).

Markers: a finished step writes ``OUT/steps/<name>.json``; a rerun skips it. Resume *inside* a step relies on the
step's own resume (finished shards are kept by the shard writer, training continues from ``last.pt``, a finished
curriculum phase has ``done.json``). ``--from STEP`` reruns STEP and everything after it, ``--force`` every step:
their markers are dropped and their output folders (when inside OUT) deleted first, so they really run again.

``${NAME}`` in any string of the YAML is replaced by: ``OUT`` (the output folder), ``REPO`` (the current folder),
the environment, then ``vars``. An unset variable stops the run before any step with one line naming it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import yaml

from lapdata.config import from_dict, load_config, read_yaml, to_dict
from lapdata.errors import LapError

STEP_KINDS = ("build-synthetic", "ingest", "parse-masks", "train", "evaluate", "reconstruct", "report")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class StepConfig:
    name: str                            # unique; the marker is OUT/steps/<name>.json
    kind: Literal["build-synthetic", "ingest", "parse-masks", "train", "evaluate", "reconstruct", "report"]
    args: dict[str, Any] = field(default_factory=dict)  # the step's arguments (see the adapter of its kind)
    requires: tuple[str, ...] = ()       # paths that must exist, else the step is skipped (recorded, not an error)
    description: str = ""


@dataclass(frozen=True)
class PipelineConfig:
    name: str = "pipeline"
    description: str = ""
    out: str = "runs/pipeline"
    vars: dict[str, Any] = field(default_factory=dict)
    train: Any = None                    # TrainConfig for the train steps: YAML path or mapping (None = defaults)
    train_set: dict[str, Any] = field(default_factory=dict)  # overrides on top of `train` (dotted keys allowed)
    steps: tuple[StepConfig, ...] = ()


# --------------------------------------------------------------------------------------------- variables


def substitute(value: Any, env: Mapping[str, str], missing: set[str]) -> Any:
    """Replace ``${NAME}`` in every string of a nested value; names not in ``env`` go to ``missing``."""
    if isinstance(value, str):
        def rep(m: re.Match) -> str:
            k = m.group(1)
            if k not in env:
                missing.add(k)
                return m.group(0)
            return str(env[k])

        full = _VAR.fullmatch(value)
        if full and full.group(1) in env:  # a whole-string variable keeps its YAML type (numbers, booleans)
            v = env[full.group(1)]
            if isinstance(v, str):
                try:
                    parsed = yaml.safe_load(v)
                except yaml.YAMLError:
                    parsed = v
                v = parsed if isinstance(parsed, (int, float, bool)) else v
            return v
        return _VAR.sub(rep, value)
    if isinstance(value, Mapping):
        return {k: substitute(v, env, missing) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [substitute(v, env, missing) for v in value]
    return value


def load_pipeline(path: str | Path, out: str | Path | None = None,
                  environ: Mapping[str, str] | None = None) -> PipelineConfig:
    """Read a pipeline YAML, substitute variables, validate. LapError naming the file on any fault."""
    raw = read_yaml(path)
    environ = dict(os.environ if environ is None else environ)
    vars_ = dict(raw.get("vars") or {})
    out_dir = str(out if out is not None else raw.get("out", "runs/pipeline"))
    env: dict[str, Any] = {**vars_, **environ, "REPO": str(Path.cwd())}
    missing: set[str] = set()
    out_dir = substitute(out_dir, env, missing)
    env["OUT"] = out_dir
    body = {k: v for k, v in raw.items() if k not in ("vars", "out")}
    body = substitute(body, env, missing)
    if missing:
        names = ", ".join(sorted(missing))
        raise LapError(f"{path}: variable(s) {names} not set: export them (e.g. export {sorted(missing)[0]}=/path) "
                       f"or give them under vars:")
    cfg = from_dict(PipelineConfig, {**body, "out": out_dir, "vars": vars_}, str(path))
    names = [s.name for s in cfg.steps]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LapError(f"{path}: step names must be unique, repeated: {dup}")
    return cfg


def pipeline_train_config(cfg: PipelineConfig, overrides: Mapping[str, Any] | None = None):
    """The TrainConfig the pipeline's train steps share (``train`` + ``train_set`` + step overrides)."""
    from .config import TrainConfig

    base: Mapping[str, Any] | str | None = cfg.train
    data = read_yaml(base) if isinstance(base, str) else dict(base or {})
    merged = _deep_merge(data, _undot(cfg.train_set))
    merged = _deep_merge(merged, _undot(overrides or {}))
    return load_config(TrainConfig, merged)


def _undot(d: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        cur = out
        keys = k.split(".")
        for kk in keys[:-1]:
            cur = cur.setdefault(kk, {})
        cur[keys[-1]] = _undot(v) if isinstance(v, Mapping) else v
    return out


def _deep_merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


# --------------------------------------------------------------------------------------------- LAP training


def _write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    os.replace(tmp, path)


def stage_dir(out: str | Path, stage: str) -> Path:
    return Path(out) / stage


def train_stage(cfg, stage: str, *, resume: bool = True, progress: bool = True,
                log: Callable[[str], None] = print):
    """Train one LAP stage of ``cfg`` (a TrainConfig with ``model.kind: lap``): its curriculum phases in order.

    Phase k trains into ``cfg.out/<stage>/<phase name>/`` (``lapmodel.train.train``, resumed from its last.pt
    whenever one exists, whatever ``resume`` says: rerunning a curriculum continues it),
    initialised from phase k-1 (phase 1 from ``cfg.init``); a finished phase has ``done.json`` and is skipped. The
    stage's result is copied to ``cfg.out/<stage>/last.pt`` (what the next stage's ``--init`` names).
    Per-stage settings (``stages.<stage>``): batch, lr, max_set override the top-level ones.
    Returns the last phase's ``TrainResult`` (with ``checkpoint`` = the stage's last.pt).
    """
    from .config import LAP_STAGES
    from .train import TrainResult, train

    if stage not in LAP_STAGES:
        raise LapError(f"unknown LAP stage {stage!r}: use one of {list(LAP_STAGES)}")
    if cfg.model.kind != "lap":
        raise LapError(f"--stage {stage} needs model.kind: lap (the config has {cfg.model.kind!r})")
    sc = getattr(cfg.stages, stage)
    if not sc.phases:
        raise LapError(f"stages.{stage}.phases is empty")
    sdir = stage_dir(cfg.out, stage)
    init = cfg.init
    res = None
    names = [p.name for p in sc.phases]
    if len(set(names)) != len(names):
        raise LapError(f"stages.{stage}.phases: phase names must be unique, got {names}")
    if stage != "aggregate" and not init and not (sdir / "last.pt").exists():
        log(f"note: stage {stage} starts without --init: the aggregation networks are untrained")
    for i, ph in enumerate(sc.phases):
        pout = sdir / ph.name
        done = pout / "done.json"
        if done.exists():
            log(f"{stage}/{ph.name}: done, skipped ({done})")
            init = str(pout / "last.pt")
            res = TrainResult(step=json.loads(done.read_text()).get("step", 0), out=pout, checkpoint=pout / "last.pt",
                              last_logs={})
            continue
        model = replace(cfg.model, lap=replace(cfg.model.lap, stage=stage))
        data = replace(cfg.data, shards=tuple(ph.shards) or cfg.data.shards,
                       max_set=sc.max_set or cfg.data.max_set,
                       min_set=min(cfg.data.min_set, sc.max_set or cfg.data.max_set))
        if not data.shards:
            raise LapError(f"stages.{stage}.phases[{i}] ({ph.name}): no shards (give phase shards, data.shards or "
                           "--shards)")
        optim = replace(cfg.optim, lr=sc.lr) if sc.lr is not None else cfg.optim
        steps, epochs = (ph.steps, None) if ph.steps is not None else (
            (cfg.steps, cfg.epochs) if ph.epochs is None else (cfg.steps, ph.epochs))
        pcfg = replace(cfg, model=model, data=data, optim=optim, steps=steps, epochs=epochs,
                       batch=sc.batch or cfg.batch, out=str(pout), init=init)
        log(f"LAP stage {stage}, phase {i + 1}/{len(sc.phases)} ({ph.name}): {len(data.shards)} shard pattern(s), "
            + (f"{steps} steps" if epochs is None else f"{epochs} epochs") + f", out {pout}")
        res = train(pcfg, resume=(pout / "last.pt").exists(), stage=stage, progress=progress, log=log)
        _write_json(done, {"stage": stage, "phase": ph.name, "step": res.step, "finished": time.time(),
                           "last_logs": res.last_logs})
        init = str(pout / "last.pt")
    final = sdir / "last.pt"
    if init and Path(init) != final and Path(init).exists():
        tmp = final.with_name("last.pt.tmp")
        shutil.copyfile(init, tmp)
        os.replace(tmp, final)
    assert res is not None
    return TrainResult(step=res.step, out=sdir, checkpoint=final, last_logs=res.last_logs)


# --------------------------------------------------------------------------------------------- step adapters


@dataclass
class StepContext:
    cfg: PipelineConfig
    out: Path
    progress: bool = True
    log: Callable[[str], None] = print


def _out_of(step: StepConfig, ctx: StepContext, default: str) -> Path:
    return Path(step.args.get("out", str(ctx.out / default)))


def step_output(step: StepConfig, ctx: StepContext) -> Path | None:
    """The folder a step writes (deleted before a forced rerun when inside OUT)."""
    defaults = {"build-synthetic": f"data/{step.name}", "ingest": f"data/{step.name}", "parse-masks": None,
                "train": None, "evaluate": f"eval/{step.name}", "reconstruct": f"reconstruct/{step.name}",
                "report": "report"}
    if step.kind == "train":
        tc = pipeline_train_config(ctx.cfg, step.args.get("set"))
        st = step.args.get("stage")
        return stage_dir(tc.out, st) if st else Path(tc.out)
    d = defaults.get(step.kind)
    return _out_of(step, ctx, d) if d else None


def run_build_synthetic(step: StepConfig, ctx: StepContext) -> dict:
    """args: lapdata.synthetic.build.SynthConfig fields (backend, identities, poses, size, ...; ``out`` defaults to
    OUT/data/<step name>)."""
    from lapdata.synthetic.build import SynthConfig, run_synthetic

    args = {"out": str(ctx.out / "data" / step.name), "progress": ctx.progress, **step.args}
    return _jsonable(run_synthetic(load_config(SynthConfig, args)))


def run_ingest(step: StepConfig, ctx: StepContext) -> dict:
    """args: lapdata.ingest.IngestConfig fields (kind, src, out, size, ...)."""
    from lapdata.ingest import IngestConfig, run_ingest as _run

    args = {"out": str(ctx.out / "data" / step.name), "progress": ctx.progress, **step.args}
    return _jsonable(_run(load_config(IngestConfig, args)))


def run_parse_masks(step: StepConfig, ctx: StepContext) -> dict:
    """args: ``dataset`` (the shard dataset folder to parse in place) + lapdata.parsing.parse.ParseConfig fields
    (parser: auto | ground-truth | landmarks | bisenet, weights, min_face_fraction, ...)."""
    from lapdata.parsing.parse import ParseConfig, parse_masks

    a = dict(step.args)
    root = a.pop("dataset")
    return _jsonable(parse_masks(root, load_config(ParseConfig, a), progress=ctx.progress))


def run_train(step: StepConfig, ctx: StepContext) -> dict:
    """args: ``stage`` (aggregate | personalize | finetune; absent for a non-LAP model), ``init`` (checkpoint),
    ``set`` (overrides of the pipeline's train config)."""
    from .train import train

    tc = pipeline_train_config(ctx.cfg, step.args.get("set"))
    if step.args.get("init"):
        tc = replace(tc, init=str(step.args["init"]))
    stage = step.args.get("stage")
    if stage:
        res = train_stage(tc, stage, resume=True, progress=ctx.progress, log=ctx.log)
    else:
        res = train(tc, resume=(Path(tc.out) / "last.pt").exists(), progress=ctx.progress, log=ctx.log)
    return {"checkpoint": str(res.checkpoint), "step": res.step, "last_logs": res.last_logs}


def run_evaluate(step: StepConfig, ctx: StepContext) -> dict:
    """args: checkpoint, shards, set_sizes, baselines, max_identities, identity, id_model, device, out."""
    from .evaluate import evaluate_checkpoint

    a = dict(step.args)
    out = _out_of(step, ctx, f"eval/{step.name}")
    a.pop("out", None)
    res = evaluate_checkpoint(a.pop("checkpoint"), a.pop("shards"), out, progress=ctx.progress, **a)
    return {"out": str(out), "rows": res.rows, "notes": res.notes, "counts": res.counts}


def run_reconstruct(step: StepConfig, ctx: StepContext) -> dict:
    """args: checkpoint, shards (held-out identities), identities (how many, default 2), views (max per set,
    default 6), device, out. Writes OUT/reconstruct/<step>/{set,single}/ and compare.png."""
    from .checkpoint import load_model
    from .reconstruct import reconstruct_images

    a = step.args
    out = _out_of(step, ctx, f"reconstruct/{step.name}")
    model = load_model(a["checkpoint"], device=a.get("device", "cpu"))
    sets = load_identity_sets(a["shards"], int(a.get("identities", 2)), int(a.get("views", 6)), model.cfg.image_size)
    doc: dict[str, Any] = {"identities": [], "out": str(out)}
    rows, labels = [], []
    for ident, images, gt in sets:
        slug = re.sub(r"[^A-Za-z0-9_-]+", "_", ident)[:40]
        names = [f"{slug}_{i}" for i in range(len(images))]
        reconstruct_images(model, images, out / "set" / slug, names, as_set=True, progress=False,
                           turntable=int(a.get("turntable", 12)))
        reconstruct_images(model, images[:1], out / "single" / slug, names[:1], as_set=False, progress=False,
                           turntable=int(a.get("turntable", 12)))
        r, lab = compare_rows(model, images, gt)
        rows += r
        labels += lab
        doc["identities"].append({"identity": ident, "views": len(images)})
    if rows:
        from .report import image_grid, save_png

        cols = [f"view {i}" for i in range(max(len(r) for r in rows))]
        save_png(image_grid(rows, labels, cols, cell=max(64, model.cfg.image_size)), out / "compare.png")
        doc["compare"] = str(out / "compare.png")
    return doc


def load_identity_sets(shards: str | Sequence[str], identities: int, views: int, size: int):
    """The first ``identities`` samples of the shards: [(identity, images (K, 3, S, S) in [0, 1], gt depth
    (K, S, S) or None)] with K <= ``views``."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from lapdata.sample import decode_sample

    from .data import expand_shards

    import webdataset as wds

    urls = expand_shards(shards)
    out = []
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    for raw in ds:
        s = decode_sample(raw)
        vs = s.views[:views]
        imgs = torch.from_numpy(np.stack([v.image for v in vs])).permute(0, 3, 1, 2).float() / 255.0
        imgs = F.interpolate(imgs, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        gt = None
        if all(v.depth is not None for v in vs):
            d = torch.from_numpy(np.stack([v.depth for v in vs])).float()[:, None]
            gt = F.interpolate(d, size=(size, size), mode="nearest")[:, 0]
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

    from .report import depth_picture, normal_picture

    with torch.no_grad():
        rs = model.reconstruct(images, as_set=True) if _accepts_sets(model) else model.reconstruct(images)
        r1 = model.reconstruct(images, as_set=False) if _accepts_sets(model) else model.reconstruct(images)
    k = images.shape[0]
    np_ = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
    rows = [[np_(images[i]) for i in range(k)],
            [np_(rs.recon_image[i]) for i in range(k)],
            [np_(r1.recon_image[i]) for i in range(k)],
            [depth_picture(np_(rs.recon_depth[i]), np_(rs.recon_mask[i])) for i in range(k)],
            [depth_picture(np_(r1.recon_depth[i]), np_(r1.recon_mask[i])) for i in range(k)]]
    labels = ["input", "recon set", "recon single", "depth set", "depth single"]
    if gt is not None:
        rows.append([depth_picture(np_(gt[i])) for i in range(k)])
        labels.append("depth gt")
    rows += [[normal_picture(np_(rs.canon_normal[i])) for i in range(k)],
             [normal_picture(np_(r1.canon_normal[i])) for i in range(k)]]
    labels += ["normal set", "normal single"]
    return rows, labels


def _accepts_sets(model) -> bool:
    import inspect

    try:
        return "as_set" in inspect.signature(model.reconstruct).parameters
    except (TypeError, ValueError):
        return False


def run_report(step: StepConfig, ctx: StepContext) -> dict:
    """args: out (default OUT/report), title. Gathers the run's pictures and numbers into index.html."""
    out = _out_of(step, ctx, "report")
    path = build_report(ctx.cfg, ctx.out, out, title=step.args.get("title"))
    return {"report": str(path)}


ADAPTERS: dict[str, Callable[[StepConfig, StepContext], dict]] = {
    "build-synthetic": run_build_synthetic,
    "ingest": run_ingest,
    "parse-masks": run_parse_masks,
    "train": run_train,
    "evaluate": run_evaluate,
    "reconstruct": run_reconstruct,
    "report": run_report,
}


def _jsonable(x: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _jsonable(dataclasses.asdict(x))
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


# --------------------------------------------------------------------------------------------- the report


def build_report(cfg: PipelineConfig, run_out: Path, out: Path, title: str | None = None) -> Path:
    """Collect loss curves, training pictures, a contact sheet of the data, reconstructions, depth/normal pictures,
    meshes and the metrics table of a pipeline run into ``out/index.html``."""
    from .report import Section, image_grid, loss_curves_png, read_jsonl, save_png, write_report

    out.mkdir(parents=True, exist_ok=True)
    sections: list[Section] = []
    markers = {s.name: _read_marker(run_out, s.name) for s in cfg.steps}

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


# --------------------------------------------------------------------------------------------- the runner


def _marker(out: Path, name: str) -> Path:
    return out / "steps" / f"{name}.json"


def _read_marker(out: Path, name: str) -> dict:
    p = _marker(out, name)
    try:
        return json.loads(p.read_text()) if p.exists() else {}
    except json.JSONDecodeError:
        return {}


def run_pipeline(path: str | Path, out: str | Path | None = None, *, start: str | None = None, force: bool = False,
                 only: Sequence[str] = (), progress: bool = True, log: Callable[[str], None] = print,
                 environ: Mapping[str, str] | None = None) -> dict[str, dict]:
    """Run the pipeline at ``path`` step by step. Returns {step name: marker document}."""
    cfg = load_pipeline(path, out, environ)
    run_out = Path(cfg.out)
    run_out.mkdir(parents=True, exist_ok=True)
    names = [s.name for s in cfg.steps]
    if start is not None and start not in names:
        raise LapError(f"--from {start!r}: no such step in {path}; steps: {names}")
    for o in only:
        if o not in names:
            raise LapError(f"--only {o!r}: no such step in {path}; steps: {names}")
    ctx = StepContext(cfg, run_out, progress, log)
    redo = set(names if force else names[names.index(start):] if start else [])
    results: dict[str, dict] = {}
    _write_json(run_out / "pipeline.json", {"source": str(path), "config": to_dict(cfg)})
    for i, s in enumerate(cfg.steps):
        if only and s.name not in only:
            continue
        marker = _marker(run_out, s.name)
        if s.name in redo:
            marker.unlink(missing_ok=True)
            d = step_output(s, ctx)
            if d is not None and d.exists() and _inside(d, run_out):
                log(f"[{s.name}] removing {d} (rerun)")
                shutil.rmtree(d)
        if _read_marker(run_out, s.name).get("status") == "done":  # skipped steps are checked again
            results[s.name] = _read_marker(run_out, s.name)
            log(f"[{i + 1}/{len(cfg.steps)}] {s.name} ({s.kind}): done, skipped")
            continue
        lacking = [r for r in s.requires if not Path(r).exists()]
        if lacking:
            doc = {"status": "skipped", "reason": f"missing {lacking}", "kind": s.kind}
            log(f"[{i + 1}/{len(cfg.steps)}] {s.name} ({s.kind}): skipped, {lacking[0]} does not exist")
            _write_json(marker, doc)
            results[s.name] = doc
            continue
        log(f"[{i + 1}/{len(cfg.steps)}] {s.name} ({s.kind}) ...")
        t0 = time.time()
        res = ADAPTERS[s.kind](s, ctx)
        doc = {"status": "done", "kind": s.kind, "seconds": round(time.time() - t0, 1), "result": _jsonable(res)}
        _write_json(marker, doc)
        results[s.name] = doc
        log(f"[{i + 1}/{len(cfg.steps)}] {s.name}: done in {doc['seconds']} s")
    return results


def _inside(p: Path, root: Path) -> bool:
    try:
        p.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False
