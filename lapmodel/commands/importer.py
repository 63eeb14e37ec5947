"""`lapmodel import`: a weight file published with Unsup3D or the LAP demo -> a lapmodel checkpoint + its config.

(``--checkpoint`` / ``--init`` also read those files directly; importing declares the Unsup3D experiment and writes
the official config for fine-tuning.) Options derive from ``lapmodel.io.published.ImportConfig``."""

from __future__ import annotations

import typer

from lapdata.core.cliconfig import argument, config_parameters, config_values, with_parameters
from lapdata.core.errors import cli_guard

EXAMPLES = """Examples:

  lapmodel import pretrained_celeba/checkpoint030.pth --out runs/unsup3d-celeba.pt

  lapmodel import downloads/checkpoint030.pth --experiment cat --out runs/unsup3d-cat.pt

  lapmodel train --config runs/unsup3d-celeba.yaml --init runs/unsup3d-celeba.pt --shards ... --out runs/ft
"""


def register(app: typer.Typer) -> None:
    from lapmodel.io.published import ImportConfig

    def import_(path: str, **fields) -> None:
        """Import Unsup3D's released checkpoints or LAP's demo weights as a lapmodel checkpoint."""
        from lapmodel.io.checkpoint import import_published

        rep = import_published(ImportConfig(path=path, **config_values(ImportConfig, fields)))
        typer.echo(f"{path}: {rep['layout']} ({rep['experiment']}) -> {rep['checkpoint']} (config: {rep['config']})")

    params = [argument("path", str, "the published weight file (.pth)"),
              *config_parameters(ImportConfig, skip=("path",), short={"out": "-o"})]
    app.command("import", epilog=EXAMPLES)(cli_guard(with_parameters(import_, params)))
