"""`lapdata ingest KIND SRC --out DIR` and `lapdata merge DIR... --out DIR` (thin wrappers over lapdata.ingest/merge)."""

from __future__ import annotations

from enum import Enum
from typing import List, Optional

import typer

from ..errors import LapError, cli_guard


class Kind(str, Enum):
    celeba = "celeba"
    casia = "casia"
    folders = "folders"
    csv = "csv"
    celebamask_hq = "celebamask-hq"
    rec = "rec"


class Detector(str, Enum):
    dlib = "dlib"
    insightface = "insightface"


def register(app: typer.Typer) -> None:
    import dataclasses

    from ..ingest import IngestConfig

    D = {f.name: f.default for f in dataclasses.fields(IngestConfig)}  # defaults are defined once, in IngestConfig

    @app.command("ingest")
    @cli_guard
    def ingest_cmd(
        kind: Kind = typer.Argument(..., help="source layout: celeba | casia | folders | csv | celebamask-hq | rec"),
        src: str = typer.Argument(..., help="source folder, CSV file or .rec file"),
        out: str = typer.Option(..., "--out", "-o", help="output dataset folder (rerun the same command to resume)"),
        size: int = typer.Option(D["size"], help="output face size in pixels"),
        min_images: int = typer.Option(D["min_images"], help="keep identities with at least this many (good) photos"),
        max_per_sample: int = typer.Option(D["max_per_sample"], help="photos per WebDataset sample (larger identities are chunked)"),
        id_filter: bool = typer.Option(False, "--id-filter", help="drop photos far from their identity's robust centre"),
        id_model: Optional[str] = typer.Option(None, help="ArcFace .onnx for --id-filter (default: dlib 128-D)"),
        id_threshold: Optional[float] = typer.Option(None, help="cosine-to-centre threshold (default: the embedder's)"),
        detector: Detector = typer.Option(Detector.dlib, help="face detector for unaligned photos"),
        det_model: Optional[str] = typer.Option(None, help="insightface SCRFD .onnx (with --detector insightface)"),
        aligned: Optional[bool] = typer.Option(
            None, "--aligned/--detect",
            help="force the pre-aligned crop rule / force detection (default: by source layout and image size)"),
        dedup: bool = typer.Option(True, "--dedup/--no-dedup", help="skip exact and near duplicates inside an identity"),
        workers: int = typer.Option(D["workers"], help="worker processes"),
        part: str = typer.Option("0/1", help="build part I of N (disjoint, deterministic); join with lapdata merge"),
        seed: int = typer.Option(D["seed"], help="split seed"),
        split_manifest: Optional[str] = typer.Option(None, help="identity->split parquet, e.g. manifests/celeba_split.parquet"),
        samples_per_shard: int = typer.Option(D["samples_per_shard"], help="identities per shard"),
        shard_bytes: int = typer.Option(D["shard_bytes"], help="estimated bytes per shard"),
        identity_file: Optional[str] = typer.Option(None, help="identity_CelebA.txt (celeba, celebamask-hq)"),
        path_column: str = typer.Option(D["path_column"], help="csv: column with the photo path"),
        identity_column: str = typer.Option(D["identity_column"], help="csv: column with the identity"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Photos -> identity-grouped WebDataset shards + Parquet manifests (resumable)."""
        from ..ingest import IngestConfig, run_ingest, summary_line
        from ..writer import parse_part

        try:
            part_t = parse_part(part)
        except ValueError as e:
            raise LapError(str(e)) from None
        cfg = IngestConfig(
            kind=kind.value, src=src, out=out, size=size, min_images=min_images, max_per_sample=max_per_sample,
            mode="auto" if aligned is None else ("aligned" if aligned else "detect"), detector=detector.value,
            det_model=det_model, id_filter=id_filter, id_model=id_model, id_threshold=id_threshold, dedup=dedup,
            seed=seed, split_manifest=split_manifest, samples_per_shard=samples_per_shard, shard_bytes=shard_bytes,
            workers=workers, part=part_t, identity_file=identity_file, path_column=path_column,
            identity_column=identity_column, progress=progress,
        )
        stats = run_ingest(cfg)
        typer.echo(f"ingest: {summary_line(stats, out)}")
        if stats.get("failed"):
            raise SystemExit(1)

    @app.command("merge")
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
