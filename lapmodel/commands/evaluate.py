"""`lapmodel evaluate`: SIDE / MAD / SSIM / depth correlation / identity cosine on shards, set-size curve.

Options derive from ``lapmodel.evaluation.evaluate.EvaluateConfig``."""

from __future__ import annotations

import sys

import typer

from lapdata.core.cliconfig import config_parameters, config_values, option, with_parameters
from lapdata.core.errors import cli_guard

EXAMPLES = """Examples:

  lapmodel evaluate --checkpoint runs/lap/finetune/last.pt --shards /data/lap/synth/shards --out runs/lap/eval --baselines

  lapmodel evaluate --checkpoint runs/lap/finetune/last.pt --shards 'd/test-{000000..000003}.tar' --out e --set-sizes 1,2,3,4,5,6

  lapmodel evaluate --checkpoint runs/lap/finetune/last.pt --keypoints kp.npz --photo-root photos/ --out e

  lapmodel evaluate --checkpoint runs/lap/finetune/last.pt --keypoints /data/AFLW2000 --detect --out e
"""


def register(app: typer.Typer) -> None:
    from lapmodel.evaluation.evaluate import EvaluateConfig

    def evaluate(*, progress: bool, **fields) -> None:
        """Evaluate a checkpoint on shards (ground-truth depth) and / or real photos with 3D keypoints."""
        from rich.console import Console

        from lapmodel.evaluation.evaluate import evaluate_checkpoint, format_table
        from lapmodel.evaluation.photos import format_keypoint_table

        cfg = EvaluateConfig(**config_values(EvaluateConfig, fields))
        res = evaluate_checkpoint(cfg, progress=progress)
        con = Console() if sys.stdout.isatty() else Console(width=140)  # logs: no wrapped table cells
        if res.rows:
            con.print(format_table(res, title=f"{cfg.checkpoint} on {res.counts['views']} views "
                                              f"({res.counts['views_with_gt']} with gt depth)"))
        if res.keypoints is not None:
            con.print(format_keypoint_table(res.keypoints, title=f"{cfg.checkpoint} on real photos "
                                                                 f"({cfg.keypoints})"))
        for n in res.notes:
            con.print(f"note: {n}")
        con.print(f"results: {cfg.out}/eval.json")

    params = [*config_parameters(EvaluateConfig, short={"out": "-o"}, flags={"aligned": "--aligned/--detect"}),
              option("progress", bool, True, "--progress/--no-progress", help="progress bar (only on a terminal)")]
    cmd = cli_guard(with_parameters(evaluate, params))
    app.command("evaluate", epilog=EXAMPLES)(cmd)
    app.command("eval", hidden=True, epilog=EXAMPLES)(cmd)  # short alias
