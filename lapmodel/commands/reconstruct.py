"""`lapmodel reconstruct`: depth, normals, albedo, shading, re-render, meshes and a turntable per photo."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from lapdata.errors import cli_guard


def register(app: typer.Typer) -> None:
    @app.command("reconstruct")
    @cli_guard
    def reconstruct(
        paths: List[Path] = typer.Argument(..., help="Photos and/or folders of photos."),
        checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Trained model checkpoint (.pt)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder (one subfolder per photo)."),
        as_set: bool = typer.Option(False, "--set", help="All photos are one identity: aggregate them (LAP models)."),
        size: Optional[int] = typer.Option(None, "--size", help="Crop side in pixels (default: the model's size)."),
        device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu, cuda, cuda:1."),
        aligned: Optional[bool] = typer.Option(
            None, "--aligned/--detect",
            help="Inputs are aligned face crops / photos to detect and align (default: square images are crops).",
        ),
        batch_size: int = typer.Option(16, "--batch-size", help="Images per model call."),
        turntable: int = typer.Option(24, "--turntable-frames", help="Frames of the turntable GIF (0: none)."),
        mesh: bool = typer.Option(True, "--mesh/--no-mesh", help="Write OBJ+MTL+texture and PLY meshes."),
    ) -> None:
        """Reconstruct 3D faces from photos with a trained checkpoint."""
        from lapmodel.inference.reconstruct import reconstruct_paths

        rep = reconstruct_paths(paths, checkpoint, out, as_set=as_set, size=size, device=device, aligned=aligned,
                                batch_size=batch_size, turntable=turntable, mesh=mesh)
        print(f"reconstructed {rep['done']} photo(s), skipped {rep['skipped']}; outputs in {out} "
              f"(summary: {rep['summary']})")
        if rep["done"] == 0:
            raise typer.Exit(1)
