"""Recipes as data (the YAML and its variables): `lapmodel run pipelines/X.yaml` runs a list of steps, skipping those already done.

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
(lapdata.synthetic), ``ingest`` (lapdata.ingest.run.run_ingest), ``parse-masks`` (lapdata.parsing), ``train``
(:func:`train_stage`: one LAP stage with its curriculum phases, or a plain ``lapmodel.training.train.train`` for a non-LAP
model), ``evaluate`` (lapmodel.evaluation.evaluate.evaluate_checkpoint), ``reconstruct`` (held-out identities of a shard set
reconstructed from the whole set and from one photo, lapmodel.inference.reconstruct.reconstruct_images), ``report``
(``OUT/report/index.html``, lapmodel.viz.report) and ``pack`` (a checkpoint slimmed for shipping with its model card,
lapmodel.recipes.card).

Markers: a finished step writes ``OUT/steps/<name>.json``; a rerun skips it. Resume *inside* a step relies on the
step's own resume (finished shards are kept by the shard writer, training continues from ``last.pt``, a finished
curriculum phase has ``done.json``). ``--from STEP`` reruns STEP and everything after it, ``--force`` every step:
their markers are dropped and their output folders (when inside OUT) deleted first, so they really run again.

``${NAME}`` in any string of the YAML is replaced by: ``OUT`` (the output folder), ``REPO`` (the current folder),
the environment, then ``vars`` (whose defaults may themselves name ``REPO``, the environment or another var). An unset variable stops the run before any step with one line naming it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from lapdata.core.config import flatten, from_dict, load_config, read_yaml
from lapdata.core.errors import LapError
from lapdata.core.paths import plain_name
from lapmodel.recipes.catalog import find_config

STEP_KINDS = ("build-synthetic", "ingest", "parse-masks", "train", "evaluate", "reconstruct", "report", "pack")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class StepConfig:
    name: str                            # unique; the marker is OUT/steps/<name>.json
    kind: Literal["build-synthetic", "ingest", "parse-masks", "train", "evaluate", "reconstruct", "report", "pack"]
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
    path = find_config(path)
    raw = read_yaml(path)
    environ = dict(os.environ if environ is None else environ)
    vars_ = dict(raw.get("vars") or {})
    out_dir = str(out if out is not None else raw.get("out", "runs/pipeline"))
    env: dict[str, Any] = {**vars_, **environ, "REPO": str(Path.cwd())}
    missing: set[str] = set()
    for k, v in vars_.items():  # a default may name another variable (${REPO}/../data); the environment wins
        if k not in environ:
            env[k] = substitute(v, {**env, k: f"${{{k}}}"}, missing)
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
    odd = [n for n in names if plain_name(n) != n]
    if odd:
        raise LapError(f"{path}: step name {odd[0]!r} is not a plain name (letters, digits, '_', '.', '-'; it names "
                       f"OUT/steps/<name>.json and the step's folders)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LapError(f"{path}: step names must be unique, repeated: {dup}")
    return cfg


def pipeline_train_config(cfg: PipelineConfig, overrides: Mapping[str, Any] | None = None):
    """The TrainConfig the pipeline's train steps share (``train`` + ``train_set`` + step overrides)."""
    from lapmodel.config import TrainConfig

    base: Mapping[str, Any] | str | None = cfg.train
    data = read_yaml(find_config(base)) if isinstance(base, str) else dict(base or {})
    return load_config(TrainConfig, data, {**flatten(cfg.train_set), **flatten(overrides or {})})
