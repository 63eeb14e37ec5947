"""`lapmodel train`: train the model of a config from lapdata shards (options derived from ``TrainConfig``).

Works under torchrun: `torchrun --nproc-per-node 8 -m lapmodel train ...` (DDP, one rank per GPU).
"""

from __future__ import annotations

import os
from typing import List, Optional

import typer

from lapdata.core.cliconfig import config_parameters, option, with_parameters
from lapdata.core.errors import cli_guard

EXAMPLES = """Examples:

  lapmodel train --config unsup3d --shards '/data/lap/celeba/shards/train-{000000..000099}.tar' --out runs/u3d

  lapmodel train --config lap --stage aggregate --out runs/lap --set optim.lr=2e-4 --set data.max_set=6

  lapmodel train --config unsup3d --out runs/u3d --resume
"""

# top-level TrainConfig fields a user sets on the command line; the nested ones go through --set KEY=VALUE
TOP_LEVEL = ("out", "init", "device", "steps", "epochs", "batch", "precision", "compile", "seed", "log_every",
             "picture_every", "ckpt_every", "keep_every", "perceptual", "vgg_weights", "mobilenet_weights")


def register(app: typer.Typer) -> None:
    from lapmodel.config import LAPStage, TrainConfig

    def train_cmd(*, config: str, shards: Optional[List[str]], resume: bool, stage: Optional[str],
                  sets: Optional[List[str]], progress: bool, **fields) -> None:
        """Train the model of a config from lapdata shards (checkpoints, pictures, TensorBoard, log.jsonl under
        --out). Every option but --config/--shards/--resume/--stage overrides the config's field of that name."""
        from lapdata.core.config import load_config, parse_overrides
        from lapmodel.recipes.catalog import find_config
        from lapmodel.training.curriculum import train_stage
        from lapmodel.training.train import train

        overrides: dict = parse_overrides(sets or [])
        given = {k: v for k, v in fields.items() if v is not None}
        if shards:
            given["data.shards"] = list(shards)
        twice = sorted(set(overrides) & set(given))
        if twice:  # one value would be dropped without a word
            from lapdata.core.errors import LapError

            k = twice[0]
            raise LapError(f"--set {k}={overrides[k]} and --{'shards' if k == 'data.shards' else k.replace('_', '-')} "
                           f"both set {k}: give it once")
        overrides.update(given)
        cfg = load_config(TrainConfig, find_config(config), overrides)
        if cfg.model.kind == "lap":  # a LAP stage runs its curriculum phases
            res = train_stage(cfg, stage or cfg.model.lap.stage, resume=resume, progress=progress)
        else:
            if stage is not None:
                from lapdata.core.errors import LapError

                raise LapError(f"--stage {stage}: the config's model.kind is {cfg.model.kind!r}, which has no stages")
            res = train(cfg, resume=resume, progress=progress)
        if os.environ.get("RANK", "0") == "0":
            typer.echo(f"trained {res.step} steps; checkpoint {res.checkpoint}; pictures {res.out / 'pictures'}")

    params = [
        option("config", str, "unsup3d", "--config", "-c",
               help="training config: a YAML path or a packaged name (lapmodel/recipes/pipelines: unsup3d, lap, "
                    "paper, quickstart ...)"),
        option("shards", Optional[List[str]], None, "--shards",
               help="shards: paths, brace patterns ('d/train-{000000..000099}.tar'), globs or a dataset folder "
                    "(repeatable; default: data.shards of the config)"),
        option("resume", bool, False, "--resume", help="continue from OUT/last.pt (reproduces the run)"),
        option("stage", Optional[LAPStage], None, "--stage",
               help="LAP training stage (default: model.lap.stage of the config)"),
        option("sets", Optional[List[str]], None, "--set", help="override any config field: KEY=VALUE, dotted keys "
               "(repeatable), e.g. --set optim.lr=2e-4"),
        option("progress", bool, True, "--progress/--no-progress", help="progress bar (only on a terminal)"),
        *config_parameters(TrainConfig, include=TOP_LEVEL, override=True, short={"out": "-o"}),
    ]
    app.command("train", epilog=EXAMPLES)(cli_guard(with_parameters(train_cmd, params)))
