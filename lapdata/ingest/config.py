"""What an ingest run is: ``IngestConfig``, the options of ``lapdata ingest`` (CLI flags are derived from its fields,
help from the comments) with their range checks; ``CONTENT_KEYS``, the options that change what is written (a resumed run
must use the same ones: ``lapdata.dataset.resume.check_same_source``); ``config_doc`` and ``source_doc`` (the
source's resolved path and record fingerprint), what ingest.json records; ``summary_line``. Used by
``lapdata.ingest.run`` and ``lapdata.commands.ingest``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from lapdata.core import storage
from lapdata.core.engine import EngineConfig
from lapdata.core.errors import LapError
from lapdata.faces.align import MAX_CROP_SIZE
from lapdata.faces.idfilter import MAX_PHASH_DISTANCE
from lapdata.sources.photos import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class IngestConfig(EngineConfig):
    kind: Literal["celeba", "casia", "folders", "csv", "celebamask-hq", "rec"]  # source layout
    src: str                            # source folder, CSV file or .rec file
    out: str                            # output dataset folder (rerun the same command to resume)
    size: int = 128                     # output face size in pixels
    min_images: int = 6                 # keep identities with at least this many (good) photos
    max_per_sample: int = 64            # photos per WebDataset sample; larger identities become several samples
    mode: Literal["auto", "aligned", "detect"] = "auto"  # auto: by source layout and image size; aligned; detect
    detector: Literal["dlib", "insightface"] = "dlib"  # face detector for unaligned photos
    det_model: str | None = None        # insightface SCRFD .onnx (with --detector insightface)
    id_filter: bool = False             # drop photos far from their identity's robust centre
    id_model: str | None = None         # ArcFace .onnx for --id-filter (default: dlib 128-D)
    id_threshold: float | None = None   # cosine-to-centre threshold (default: the embedder's)
    dedup: bool = True                  # skip exact and near duplicates inside an identity
    phash_distance: int = 4             # near-duplicate: perceptual hashes within this many bits
    seed: int = 0                       # split seed
    fractions: tuple[float, float, float] = (0.75, 0.125, 0.125)  # train,val,test fractions of the identities
    split_manifest: str | None = None   # identity -> split parquet, e.g. manifests/celeba_split.parquet
    samples_per_shard: int = 64         # identity samples per shard
    shard_bytes: int = 512 * 2**20      # estimated bytes per shard (estimated before encoding)
    workers: int = 1                    # worker processes (local engine; Ray uses the cluster's CPUs)
    part: tuple[int, int] = (0, 1)      # build part I/N (disjoint, deterministic); join the parts with lapdata merge
    quality: int = 95                   # JPEG quality of the stored faces
    identity_file: str | None = None    # identity_CelebA.txt (celeba, celebamask-hq)
    path_column: str = "file"           # csv: the column with the photo path
    identity_column: str = "identity"   # csv: the column with the identity
    csv_root: str | None = None         # csv: folder every photo path must stay inside (default: the CSV's folder)
    max_pixels: int = DEFAULT_MAX_PIXELS  # photos with more pixels (width x height) are skipped unread (too_large)
    progress: bool = True               # progress bar (only on a terminal)

    def __post_init__(self) -> None:
        super().__post_init__()
        i, n = self.part
        checks = [(self.src != "" and self.out != "", "SRC/--out: empty (an empty path would mean the current folder)"),
                  (16 <= self.size <= MAX_CROP_SIZE, f"--size {self.size}: must be in 16..{MAX_CROP_SIZE} pixels"),
                  (self.min_images >= 1, f"--min-images {self.min_images}: must be >= 1"),
                  (self.max_per_sample >= 1, f"--max-per-sample {self.max_per_sample}: must be >= 1"),
                  (self.samples_per_shard >= 1, f"--samples-per-shard {self.samples_per_shard}: must be >= 1"),
                  (self.shard_bytes >= 1, f"--shard-bytes {self.shard_bytes}: must be >= 1"),
                  (self.workers >= 1, f"--workers {self.workers}: must be >= 1"),
                  (0 <= i < n, f"--part {i}/{n}: need 0 <= I < N"),
                  (1 <= self.quality <= 100, f"--quality {self.quality}: must be in 1..100"),
                  (0 <= self.phash_distance <= MAX_PHASH_DISTANCE,
                   f"--phash-distance {self.phash_distance}: must be in 0..{MAX_PHASH_DISTANCE} bits of 64 (different "
                   f"photos differ in about 32)"),
                  (self.id_threshold is None or -1.0 <= self.id_threshold <= 1.0,
                   f"--id-threshold {self.id_threshold}: a cosine, must be in [-1, 1]"),
                  (len(self.fractions) == 3 and all(f >= 0 for f in self.fractions) and sum(self.fractions) > 0,
                   f"--fractions {self.fractions}: three non-negative numbers, not all 0"),
                  (self.max_pixels >= 256, f"--max-pixels {self.max_pixels}: must be >= 256")]
        for ok, msg in checks:
            if not ok:
                raise LapError(msg)


# options that change the shards' content: a resumed run must use the same ones
CONTENT_KEYS = ("kind", "size", "min_images", "max_per_sample", "mode", "detector", "det_model", "id_filter",
                "id_model", "id_threshold", "dedup", "phash_distance", "seed", "fractions", "split_manifest",
                "samples_per_shard", "shard_bytes", "quality", "identity_file", "path_column", "identity_column",
                "max_pixels", "csv_root")

def config_doc(cfg: IngestConfig) -> dict:
    """The run's options as ingest.json and stats.json record them."""
    d = dataclasses.asdict(cfg)
    d["fractions"] = list(cfg.fractions)
    d["part"] = list(cfg.part)
    return d


def check_out(cfg: IngestConfig) -> None:
    """--out must be a folder (or not exist yet) and must not lie inside a source folder: the next run would read
    the dataset as photos (another source: never resumable)."""
    if storage.is_url(cfg.out):
        out, src = cfg.out.rstrip("/"), cfg.src.rstrip("/")
        if storage.is_url(src) and (out == src or out.startswith(src + "/")):
            raise LapError(f"{cfg.out}: --out is inside the source {cfg.src}; write the dataset elsewhere")
        return
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise LapError(f"{out}: --out exists and is not a folder")
    src = Path(cfg.src).expanduser()
    if not storage.is_url(cfg.src) and src.is_dir():
        o, s = out.resolve(), src.resolve()
        if o == s or s in o.parents:
            raise LapError(f"{out}: --out is inside the source folder {src}; the next run would read the dataset as "
                           f"photos (never resumable): write it elsewhere")


def source_doc(cfg: IngestConfig, groups, extra: Sequence[dict], counts: dict) -> dict:
    """The source of a run: its resolved path and a fingerprint (sha256 of every record's identity and photo_id,
    the planned ones and the unsharded ones) that a resumed run must match."""
    h = hashlib.sha256()
    for ident, split, recs in groups:
        for r in recs:
            h.update(f"{ident}\t{split}\t{r.photo_id}\n".encode("utf-8"))
    for r in extra:
        h.update(f"{r['identity']}\t-\t{r['photo_id']}\n".encode("utf-8"))
    src = cfg.src if storage.is_url(cfg.src) else str(Path(cfg.src).resolve())
    return {"src": src, "photos": counts["photos"], "identities": counts["identities"],
            "fingerprint": h.hexdigest()}


def summary_line(stats: dict, out: str | Path) -> str:
    """One line: photos by status (skip reasons), identities by split, shards, time, failed shards."""
    sc, rc = stats.get("status_counts", {}), stats.get("reason_counts", {})
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(rc.items(), key=lambda kv: -kv[1]))
    parts = [f"{stats.get('photos', 0)} photos: {sc.get('ok', 0)} ok, {sc.get('skipped', 0)} skipped"
             + (f" ({reasons})" if reasons else "") + f", {sc.get('error', 0)} error"]
    bys = stats.get("identities_by_split", {})
    parts.append(f"{stats.get('identities_ok', 0)} identities ("
                 + ", ".join(f"{k} {v}" for k, v in bys.items()) + f") in {stats.get('shards', 0)} shards -> {out}")
    line = "; ".join(parts)
    cd = stats.get("cross_identity_duplicates") or {}
    kept, removed = cd.get("pairs", 0) - cd.get("removed", 0), cd.get("removed", 0)
    if kept:
        line += (f"; {kept} photos duplicate another identity's ({cd.get('cross_split', 0)} across splits,"
                 f" see duplicates.parquet)")
    if removed:
        line += (f"; {removed} held-out photo(s) removed as duplicates of another split's (duplicate_other_split,"
                 f" see duplicates.parquet)")
    failed = stats.get("failed") or []
    if failed:
        line += f"; {len(failed)} shard(s) FAILED (first: {failed[0]['shard']}: {failed[0]['error']}) - rerun to retry"
    if "seconds" in stats:
        line += f" [{stats['seconds']:.1f} s]"
    return line
