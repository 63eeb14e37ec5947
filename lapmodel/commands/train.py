"""`lapmodel train --shards URLS --config pipelines/unsup3d.yaml --out runs/u3d [--resume] ...` (thin wrapper).

Works under torchrun: `torchrun --nproc-per-node 8 -m lapmodel train ...` (DDP, one rank per GPU).
"""

from __future__ import annotations

import os
from typing import List, Optional

import typer

from lapdata.errors import LapError, cli_guard


def parse_sets(items: list[str]) -> dict[str, str]:
    """["optim.lr=2e-4", ...] -> {"optim.lr": "2e-4"} (values parsed as YAML by load_config)."""
    out = {}
    for it in items:
        if "=" not in it:
            raise LapError(f"--set {it!r}: expected KEY=VALUE (e.g. --set optim.lr=2e-4)")
        k, v = it.split("=", 1)
        out[k.strip()] = v
    return out


def register(app: typer.Typer) -> None:
    @app.command("train")
    @cli_guard
    def train_cmd(
        config: str = typer.Option("unsup3d", "--config", "-c", help="training config: a YAML path or a packaged name (unsup3d, lap, paper, ...)"),
        shards: Optional[List[str]] = typer.Option(
            None, "--shards", help="shards: paths, brace patterns ('d/train-{000000..000099}.tar'), globs or a "
            "dataset folder (repeatable; default: data.shards of the config)"),
        out: Optional[str] = typer.Option(None, "--out", "-o", help="output folder (default: out of the config)"),
        resume: bool = typer.Option(False, "--resume", help="continue from OUT/last.pt (reproduces the run)"),
        init: Optional[str] = typer.Option(None, "--init", help="initialise the model weights from this checkpoint"),
        stage: Optional[str] = typer.Option(None, "--stage", help="training stage (models with stages, e.g. LAP)"),
        sets: Optional[List[str]] = typer.Option(None, "--set", help="override a config field: KEY=VALUE (repeatable)"),
        device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda (default: device of config)"),
        steps: Optional[int] = typer.Option(None, "--steps", help="number of optimizer steps"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Train the model of a config from lapdata shards (checkpoints, pictures, TensorBoard under --out)."""
        from lapdata.config import load_config

        from lapmodel.config import TrainConfig
        from lapmodel.training.train import train

        overrides: dict = parse_sets(sets or [])
        if shards:
            overrides["data.shards"] = list(shards)
        for key, val in (("out", out), ("init", init), ("device", device), ("steps", steps)):
            if val is not None:
                overrides[key] = val
        from lapmodel.recipes.catalog import find_config

        cfg = load_config(TrainConfig, find_config(config), overrides)
        if cfg.model.kind == "lap":  # LAP engineer (additive): a LAP stage runs its curriculum phases
            from lapmodel.training.curriculum import train_stage

            res = train_stage(cfg, stage or cfg.model.lap.stage, resume=resume, progress=progress)
        else:
            res = train(cfg, resume=resume, stage=stage, progress=progress)
        if os.environ.get("RANK", "0") == "0":
            typer.echo(f"trained {res.step} steps; checkpoint {res.checkpoint}; pictures {res.out / 'pictures'}")
