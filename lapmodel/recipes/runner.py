"""Runs a recipe step by step: markers (``OUT/steps/<name>.json``), ``--from``, ``--force``, ``--only``."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from lapdata.core.atomic import write_json
from lapdata.core.config import to_dict
from lapdata.core.errors import LapError
from lapdata.core.logs import get_logger, log_to_file
from lapmodel.recipes.recipe import PipelineConfig, StepConfig, load_pipeline
from lapmodel.recipes.card import run_pack
from lapmodel.recipes.report import run_report
from lapmodel.recipes.steps import (StepContext, jsonable, marker_path, read_marker, run_build_synthetic,
                                    run_evaluate, run_ingest, run_parse_masks, run_reconstruct, run_train,
                                    step_output)

ADAPTERS: dict[str, Callable[[StepConfig, StepContext], dict]] = {
    "build-synthetic": run_build_synthetic,
    "ingest": run_ingest,
    "parse-masks": run_parse_masks,
    "train": run_train,
    "evaluate": run_evaluate,
    "reconstruct": run_reconstruct,
    "report": run_report,
    "pack": run_pack,
}


def run_pipeline(path: str | Path, out: str | Path | None = None, *, start: str | None = None, force: bool = False,
                 only: Sequence[str] = (), progress: bool = True, log: Callable[[str], None] | None = None,
                 environ: Mapping[str, str] | None = None) -> dict[str, dict]:
    """Run the pipeline at ``path`` step by step. Returns {step name: marker document}.

    Every message also goes to ``OUT/pipeline.log`` (plain lines; training runs keep their own train.log)."""
    cfg = load_pipeline(path, out, environ)
    run_out = Path(cfg.out)
    run_out.mkdir(parents=True, exist_ok=True)
    with log_to_file(run_out / "pipeline.log"):
        return _run(cfg, path, run_out, start, force, only, progress, log or get_logger("run").info)


def _run(cfg: PipelineConfig, path: str | Path, run_out: Path, start: str | None, force: bool, only: Sequence[str],
         progress: bool, log: Callable[[str], None]) -> dict[str, dict]:
    names = [s.name for s in cfg.steps]
    if start is not None and start not in names:
        raise LapError(f"--from {start!r}: no such step in {path}; steps: {names}")
    for o in only:
        if o not in names:
            raise LapError(f"--only {o!r}: no such step in {path}; steps: {names}")
    ctx = StepContext(cfg, run_out, progress, log)
    redo = set(names if force else names[names.index(start):] if start else [])
    results: dict[str, dict] = {}
    write_json(run_out / "pipeline.json", {"source": str(path), "config": to_dict(cfg)})
    for i, s in enumerate(cfg.steps):
        if only and s.name not in only:
            continue
        marker = marker_path(run_out, s.name)
        if s.name in redo:
            marker.unlink(missing_ok=True)
            d = step_output(s, ctx)
            if d is not None and d.exists() and _inside(d, run_out):
                log(f"[{s.name}] removing {d} (rerun)")
                shutil.rmtree(d)
        if read_marker(run_out, s.name).get("status") == "done":  # skipped steps are checked again
            results[s.name] = read_marker(run_out, s.name)
            log(f"[{i + 1}/{len(cfg.steps)}] {s.name} ({s.kind}): done, skipped")
            continue
        lacking = [r for r in s.requires if not Path(r).exists()]
        if lacking:
            doc = {"status": "skipped", "reason": f"missing {lacking}", "kind": s.kind}
            log(f"[{i + 1}/{len(cfg.steps)}] {s.name} ({s.kind}): skipped, {lacking[0]} does not exist")
            write_json(marker, doc)
            results[s.name] = doc
            continue
        log(f"[{i + 1}/{len(cfg.steps)}] {s.name} ({s.kind}) ...")
        t0, c0 = time.time(), time.process_time()
        res = ADAPTERS[s.kind](s, ctx)
        doc = {"status": "done", "kind": s.kind, "seconds": round(time.time() - t0, 1),
               "cpu_seconds": round(time.process_time() - c0, 1), "result": jsonable(res)}
        write_json(marker, doc)
        results[s.name] = doc
        log(f"[{i + 1}/{len(cfg.steps)}] {s.name}: done in {doc['seconds']} s")
    return results


def _inside(p: Path, root: Path) -> bool:
    try:
        p.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False
