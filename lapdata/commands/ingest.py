"""`lapdata ingest KIND SRC --out DIR` and `lapdata merge DIR... --out DIR` (options derived from IngestConfig)."""

from __future__ import annotations

from typing import List, Literal

import typer

from ..cliconfig import argument, config_parameters, config_values, with_parameters
from ..errors import cli_guard

EXAMPLES = """Examples:

  lapdata ingest celeba /data/celeba --out /data/lap/celeba --split-manifest manifests/celeba_split.parquet

  lapdata ingest folders ../shared/data/faces/celebrity-sets --out /tmp/lap/celeb --id-filter

  lapdata ingest casia /data/CASIA-WebFace --out /data/lap/casia --workers 16 --part 0/4
"""

MERGE_EXAMPLES = """Example:

  lapdata merge /data/lap/casia-part0 /data/lap/casia-part1 --out /data/lap/casia
"""


def register(app: typer.Typer) -> None:
    from ..ingest import IngestConfig

    def ingest_cmd(kind: str, src: str, **fields) -> None:
        """Photos -> identity-grouped WebDataset shards + Parquet manifests (resumable: rerun the same command)."""
        from ..ingest import run_ingest, summary_line

        cfg = IngestConfig(kind=kind, src=src, **config_values(IngestConfig, fields))
        stats = run_ingest(cfg)
        typer.echo(f"ingest: {summary_line(stats, cfg.out)}")
        if stats.get("failed"):
            raise SystemExit(1)

    kinds = Literal["celeba", "casia", "folders", "csv", "celebamask-hq", "rec"]
    params = [argument("kind", kinds, "source layout"), argument("src", str, "source folder, CSV file or .rec file"),
              *config_parameters(IngestConfig, skip=("kind", "src"), short={"out": "-o"})]
    app.command("ingest", epilog=EXAMPLES)(cli_guard(with_parameters(ingest_cmd, params)))

    @app.command("merge", epilog=MERGE_EXAMPLES)
    @cli_guard
    def merge_cmd(
        dirs: List[str] = typer.Argument(..., help="part output folders (lapdata ingest --part I/N)"),
        out: str = typer.Option(..., "--out", "-o", help="merged dataset folder"),
        link: bool = typer.Option(False, "--link", help="hard-link shard files instead of copying"),
    ) -> None:
        """Join part outputs into one dataset (shards copied, manifests rebuilt)."""
        from ..ingest import summary_line
        from ..merge import merge_datasets

        stats = merge_datasets(dirs, out, link=link)
        typer.echo(f"merge: {summary_line(stats, out)}")
