"""`lapdata ingest KIND SRC --out DIR` and `lapdata merge DIR... --out DIR` (options derived from IngestConfig)."""

from __future__ import annotations

from typing import List, Literal

import typer

from lapdata.core.cliconfig import argument, config_parameters, config_values, option, with_parameters
from lapdata.core.errors import cli_guard

EXAMPLES = """Examples:

  lapdata ingest celeba /data/celeba --out /data/lap/celeba --split-manifest manifests/celeba_split.parquet

  lapdata ingest folders ../shared/data/faces/celebrity-sets --out /tmp/lap/celeb --id-filter

  lapdata ingest casia /data/CASIA-WebFace --out /data/lap/casia --workers 16 --part 0/4
"""

MERGE_EXAMPLES = """Example:

  lapdata merge /data/lap/casia-part0 /data/lap/casia-part1 --out /data/lap/casia
"""


def register(app: typer.Typer) -> None:
    from lapdata.ingest.config import IngestConfig

    def ingest_cmd(kind: str, src: str, **fields) -> None:
        """Photos -> identity-grouped WebDataset shards + Parquet manifests (resumable: rerun the same command)."""
        from lapdata.ingest.run import run_ingest
        from lapdata.ingest.config import summary_line

        cfg = IngestConfig(kind=kind, src=src, **config_values(IngestConfig, fields))
        stats = run_ingest(cfg)
        typer.echo(f"ingest: {summary_line(stats, cfg.out)}")
        if stats.get("failed"):
            raise SystemExit(1)

    kinds = Literal["celeba", "casia", "folders", "csv", "celebamask-hq", "rec"]
    params = [argument("kind", kinds, "source layout"), argument("src", str, "source folder, CSV file or .rec file"),
              *config_parameters(IngestConfig, skip=("kind", "src"), short={"out": "-o"})]
    app.command("ingest", epilog=EXAMPLES)(cli_guard(with_parameters(ingest_cmd, params)))

    from lapdata.core.engine import EngineConfig

    def merge_cmd(dirs: List[str], out: str, link: bool = False, workers: int = 1, **fields) -> None:
        """Join part outputs into one dataset (shards copied, manifests rebuilt)."""
        from lapdata.ingest.config import summary_line
        from lapdata.dataset.merge import merge_datasets

        engine = EngineConfig(**config_values(EngineConfig, fields))
        stats = merge_datasets(dirs, out, link=link, engine=engine, workers=workers)
        typer.echo(f"merge: {summary_line(stats, out)}")

    merge_params = [
        argument("dirs", List[str], "part output folders or URLs (lapdata ingest --part I/N)"),
        option("out", str, ..., "--out", "-o", help="merged dataset folder or URL"),
        option("link", bool, False, "--link/--no-link", help="hard-link shard files instead of copying (local parts)"),
        option("workers", int, 1, "--workers", help="copy processes (local engine)"),
        *config_parameters(EngineConfig),
    ]
    app.command("merge", epilog=MERGE_EXAMPLES)(cli_guard(with_parameters(merge_cmd, merge_params)))
