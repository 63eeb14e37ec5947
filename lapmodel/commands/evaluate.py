"""`lapmodel evaluate`: SIDE / MAD / SSIM / depth correlation / identity cosine on shards, set-size curve."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from lapdata.errors import LapError, cli_guard


def _parse_sizes(text: str) -> list[int]:
    if not text:
        return []
    try:
        sizes = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise LapError(f"--set-sizes: expected integers like 1,2,3,4,5,6, got {text!r}") from None
    if any(n < 1 for n in sizes):
        raise LapError(f"--set-sizes: sizes must be >= 1, got {text!r}")
    return sizes


def register(app: typer.Typer) -> None:
    @cli_guard
    def evaluate(
        checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Trained model checkpoint (.pt)."),
        shards: List[str] = typer.Option(..., "--shards", help="Shards: brace pattern, glob, folder (repeatable)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder (eval.json, set_size.png, examples.png)."),
        set_sizes: str = typer.Option("", "--set-sizes", help="Set sizes for the set-size curve, e.g. 1,2,3,4,5,6 "
                                      "(LAP models)."),
        id_model: Optional[Path] = typer.Option(None, "--id-model", help="ArcFace ONNX for identity cosine "
                                                "(default: dlib)."),
        no_identity: bool = typer.Option(False, "--no-identity", help="Skip the identity cosine."),
        baselines: bool = typer.Option(False, "--baselines", help="Add the flat-depth baseline and the gt reference."),
        device: str = typer.Option("cpu", "--device", help="torch device."),
        size: Optional[int] = typer.Option(None, "--size", help="Image side (default: the model's)."),
        max_identities: Optional[int] = typer.Option(None, "--max-identities", help="Stop after this many samples."),
        batch_size: int = typer.Option(32, "--batch-size"),
        erode: int = typer.Option(1, "--erode", help="Pixels eroded from the gt and predicted masks (Unsup3D: 1)."),
    ) -> None:
        """Evaluate a checkpoint on shards (ground-truth depth where the shards carry it)."""
        from rich.console import Console

        from lapmodel.evaluation.evaluate import evaluate_checkpoint, format_table

        res = evaluate_checkpoint(checkpoint, shards, out, set_sizes=_parse_sizes(set_sizes), baselines=baselines,
                                  id_model=id_model, identity=not no_identity, device=device, size=size,
                                  max_identities=max_identities, batch_size=batch_size, erode=erode)
        con = Console() if sys.stdout.isatty() else Console(width=140)  # logs: no wrapped table cells
        con.print(format_table(res, title=f"{checkpoint} on {res.counts['views']} views "
                                          f"({res.counts['views_with_gt']} with gt depth)"))
        for n in res.notes:
            con.print(f"note: {n}")
        con.print(f"results: {out / 'eval.json'}")

    app.command("evaluate")(evaluate)
    app.command("eval", hidden=True)(evaluate)  # the name issue #3 uses
