"""`lapmodel reconstruct`: depth, normals, albedo, shading, re-render, meshes and a turntable per photo.

Options derive from ``lapmodel.inference.reconstruct.ReconstructConfig``."""

from __future__ import annotations

import typer

from lapdata.core.cliconfig import argument, config_parameters, config_values, option, with_parameters
from lapdata.core.errors import cli_guard

EXAMPLES = """Examples:

  lapmodel reconstruct photos/ --checkpoint runs/lap/finetune/last.pt --out recon

  lapmodel reconstruct person_a/*.jpg --checkpoint runs/lap/finetune/last.pt --out recon_a --as-set
"""


def register(app: typer.Typer) -> None:
    from typing import List

    from lapmodel.inference.reconstruct import ReconstructConfig

    def reconstruct(paths: List[str], *, progress: bool, **fields) -> None:
        """Reconstruct 3D faces from photos with a trained checkpoint."""
        from lapmodel.inference.reconstruct import reconstruct_paths

        cfg = ReconstructConfig(paths=tuple(paths), **config_values(ReconstructConfig, fields))
        rep = reconstruct_paths(cfg, progress=progress)
        typer.echo(f"reconstructed {rep['done']} photo(s), skipped {rep['skipped']}; outputs in {cfg.out} "
                   f"(summary: {rep['summary']})")
        if rep["done"] == 0:
            raise typer.Exit(1)

    params = [argument("paths", List[str], "photos and/or folders of photos"),
              *config_parameters(ReconstructConfig, skip=("paths",), short={"out": "-o"},
                                 flags={"aligned": "--aligned/--detect", "turntable": "--turntable-frames"}),
              option("progress", bool, True, "--progress/--no-progress", help="progress bar (only on a terminal)")]
    app.command("reconstruct", epilog=EXAMPLES)(cli_guard(with_parameters(reconstruct, params)))
