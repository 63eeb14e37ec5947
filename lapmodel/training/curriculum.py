"""The LAP curriculum: one training stage as a sequence of phases (synthetic multi-pose sets first, then real
collections), each a plain ``lapmodel.training.train.train`` run initialised from the phase before."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from lapdata.core.atomic import copy_file, write_json
from lapdata.core.errors import LapError
from lapdata.core.logs import get_logger


def stage_dir(out: str | Path, stage: str) -> Path:
    return Path(out) / stage


def train_stage(cfg, stage: str, *, resume: bool = True, progress: bool = True,
                log: Callable[[str], None] | None = None):
    """Train one LAP stage of ``cfg`` (a TrainConfig with ``model.kind: lap``): its curriculum phases in order.

    Phase k trains into ``cfg.out/<stage>/<phase name>/`` (``lapmodel.training.train.train``, resumed from its last.pt
    whenever one exists, whatever ``resume`` says: rerunning a curriculum continues it),
    initialised from phase k-1 (phase 1 from ``cfg.init``); a finished phase has ``done.json`` and is skipped. The
    stage's result is copied to ``cfg.out/<stage>/last.pt`` (what the next stage's ``--init`` names).
    Per-stage settings (``stages.<stage>``): batch, lr, max_set override the top-level ones.
    Returns the last phase's ``TrainResult`` (with ``checkpoint`` = the stage's last.pt).
    """
    from lapmodel.config import LAP_STAGES

    log = log or get_logger("train").info
    from lapmodel.training.train import TrainResult, train

    if stage not in LAP_STAGES:
        raise LapError(f"unknown LAP stage {stage!r}: use one of {list(LAP_STAGES)}")
    if cfg.model.kind != "lap":
        raise LapError(f"--stage {stage} needs model.kind: lap (the config has {cfg.model.kind!r})")
    sc = getattr(cfg.stages, stage)
    if not sc.phases:
        raise LapError(f"stages.{stage}.phases is empty")
    sdir = stage_dir(cfg.out, stage)
    init = cfg.init
    res, cpu = None, 0.0  # cpu: the phases' CPU-seconds (resumes included), summed
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
            doc = json.loads(done.read_text())
            res = TrainResult(step=doc.get("step", 0), out=pout, checkpoint=pout / "last.pt", last_logs={})
            cpu += float(doc.get("cpu_seconds", 0.0))
            continue
        model = replace(cfg.model, lap=replace(cfg.model.lap, stage=stage))
        max_set = ph.max_set or sc.max_set or cfg.data.max_set
        data = replace(cfg.data, shards=tuple(ph.shards) or cfg.data.shards, max_set=max_set,
                       min_set=min(cfg.data.min_set, max_set))
        if not data.shards:
            raise LapError(f"stages.{stage}.phases[{i}] ({ph.name}): no shards (give phase shards, data.shards or "
                           "--shards)")
        optim = replace(cfg.optim, lr=sc.lr) if sc.lr is not None else cfg.optim
        steps, epochs = (ph.steps, None) if ph.steps is not None else (
            (cfg.steps, cfg.epochs) if ph.epochs is None else (cfg.steps, ph.epochs))
        pcfg = replace(cfg, model=model, data=data, optim=optim, steps=steps, epochs=epochs,
                       batch=ph.batch or sc.batch or cfg.batch, out=str(pout), init=init)
        log(f"LAP stage {stage}, phase {i + 1}/{len(sc.phases)} ({ph.name}): {len(data.shards)} shard pattern(s), "
            + (f"{steps} steps" if epochs is None else f"{epochs} epochs") + f", out {pout}")
        res = train(pcfg, resume=(pout / "last.pt").exists(), stage=stage, progress=progress, log=log)
        write_json(done, {"stage": stage, "phase": ph.name, "step": res.step, "finished": time.time(),
                           "last_logs": res.last_logs, "cpu_seconds": res.cpu_seconds})
        cpu += res.cpu_seconds
        init = str(pout / "last.pt")
    final = sdir / "last.pt"
    if init and Path(init) != final and Path(init).exists():
        copy_file(init, final)
    assert res is not None
    return TrainResult(step=res.step, out=sdir, checkpoint=final, last_logs=res.last_logs, cpu_seconds=round(cpu, 1))
