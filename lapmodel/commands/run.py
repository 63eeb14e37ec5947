"""`lapmodel run pipelines/X.yaml [--out DIR] [--from STEP] [--force]` (thin wrapper over lapmodel.recipes.runner)."""

from __future__ import annotations

from typing import List, Optional

import typer

from lapdata.core.errors import cli_guard


def register(app: typer.Typer) -> None:
    @app.command("run", epilog="Examples:\n\n  lapmodel run quickstart\n\n  lapmodel run pipelines/paper.yaml --out runs/paper --from stage2\n\n  lapmodel run quickstart --only report")
    @cli_guard
    def run_cmd(
        pipeline: str = typer.Argument(..., help="recipe: a YAML path or a packaged name (quickstart, paper, ablation-no-rcl, ...)"),
        out: Optional[str] = typer.Option(None, "--out", "-o", help="output folder (default: out of the pipeline)"),
        start: Optional[str] = typer.Option(None, "--from", help="rerun this step and every step after it"),
        force: bool = typer.Option(False, "--force", help="rerun every step (their outputs are deleted first)"),
        only: Optional[List[str]] = typer.Option(None, "--only", help="run only this step (repeatable)"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Run a recipe step by step (data, masks, the three LAP stages, evaluation, reconstructions, report),
        skipping steps already done; rerun the same command to resume."""
        from lapmodel.recipes.runner import run_pipeline

        res = run_pipeline(pipeline, out, start=start, force=force, only=only or (), progress=progress)
        rep = [d["result"]["report"] for d in res.values() if d.get("kind") == "report" and "result" in d]
        typer.echo(f"pipeline done: {len(res)} step(s)" + (f"; report {rep[-1]}" if rep else ""))
