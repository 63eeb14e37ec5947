"""The dataset-level manifests: finalize (photos/identities/shards parquet + stats.json from the finished shards),
their checksums, the checked shard-json reader, and the manifest readers (layout in lapdata.dataset.schema / SCHEMA.md).

``finalize_dataset`` streams the shard parquets (and unsharded.parquet) into photos.parquet, derives
identities.parquet, lists the shard jsons in shards.parquet and writes stats.json with ``manifests`` {file: sha256}
of the parquet manifests present (``lapdata audit`` verifies them). ``read_shard_json`` refuses a shard json whose
``shard``/``path`` fields are not its own name (no field may lead outside the dataset). Called by
``lapdata.dataset.writer`` (after each run), ``lapdata.dataset.merge`` and the readers.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from lapdata.core import atomic, storage
from lapdata.core.errors import LapError
from lapdata.core.paths import check_shard_name, inside
from lapdata.dataset.schema import (IDENTITIES, NUM_IMAGES, NUM_SAMPLES, PHOTOS, SECONDS, SHARD, SHARD_BYTES, SHARD_DIR, SHARD_PATH,
                     SHARD_SPLIT, SHARDS, STATUS_OK, table_from_rows)

UNSHARDED = "unsharded.parquet"
DUPLICATES = "duplicates.parquet"
MANIFESTS = ("photos.parquet", "identities.parquet", "shards.parquet", "stats.json")
CHECKSUMMED = ("photos.parquet", "identities.parquet", "shards.parquet", UNSHARDED, DUPLICATES)  # stats "manifests"


def write_json(path: Path, doc: Any) -> Path:
    """A manifest json (stats.json, a shard's json): sorted keys, one-space indent, atomically."""
    return atomic.write_json(path, doc, indent=1, sort_keys=True)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (local, or the remote object of a mounted dataset), read in 1 MiB blocks."""
    return storage.sha256(path)


# ------------------------------------------------------------------------------------------------------ finalize


def read_shard_json(p: Path) -> dict:
    """One shard's stats json, checked: a mapping whose ``shard`` is its file name and ``path`` its tar
    (``shards/NAME.tar``, not symlinked out of the dataset), so nothing read through it lies outside the dataset;
    LapError naming the file otherwise."""
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        what = "0 bytes" if isinstance(e, ValueError) and p.stat().st_size == 0 else f"{type(e).__name__}: {str(e)[:120]}"
        raise LapError(f"{p}: unreadable shard stats ({what}); rerun the command that wrote the dataset (it writes "
                       f"that shard again)") from None
    if not isinstance(doc, dict):
        raise LapError(f"{p}: shard stats must be a JSON object")
    check_shard_name(p.stem, f"{p}: file name")
    if doc.get(SHARD) != p.stem:
        raise LapError(f"{p}: field shard {doc.get(SHARD)!r} is not this file's name {p.stem!r} (a shard json may "
                       f"only describe itself); the dataset is damaged or tampered with: rewrite it")
    if doc.get(SHARD_PATH) != f"{SHARD_DIR}/{p.stem}.tar":
        raise LapError(f"{p}: field path {doc.get(SHARD_PATH)!r} is not {SHARD_DIR}/{p.stem}.tar; the dataset is "
                       f"damaged or tampered with: rewrite it")
    inside(p.parent.parent, doc[SHARD_PATH], f"{p}: shard")  # a tar (or shards/) symlinked out of the dataset
    return doc


def shard_stats(out_dir: str | Path) -> list[dict]:
    """Stats of every finished shard of DIR (sorted by name), each checked by ``read_shard_json``."""
    shard_dir = Path(out_dir) / SHARD_DIR
    return [read_shard_json(p) for p in sorted(shard_dir.glob("*.json"))]


def manifest_checksums(out_dir: str | Path) -> dict[str, str]:
    """{file: sha256} of the dataset-level parquet manifests present in DIR (stats.json ``manifests``)."""
    out = Path(out_dir)
    return {name: sha256_file(out / name) for name in CHECKSUMMED if (out / name).is_file()}


def _identity_rows(photos: pa.Table) -> list[dict]:
    """IDENTITIES rows derived from photo rows."""
    cols = photos.select(["identity", "split", "status", "reason", "shard", "key"]).to_pydict()
    acc: dict[str, dict] = {}
    for ident, split, status, reason, shard, key in zip(*(cols[c] for c in ("identity", "split", "status",
                                                                              "reason", "shard", "key"))):
        a = acc.get(ident)
        if a is None:
            a = acc[ident] = {"split": None, "n": 0, "ok": 0, "keys": set(), "shards": set(), "reasons": Counter()}
        a["n"] += 1
        if split is not None and a["split"] is None:
            a["split"] = split
        if status == STATUS_OK and shard is not None:
            a["ok"] += 1
            a["keys"].add(key)
            a["shards"].add(shard)
        elif reason:
            a["reasons"][reason] += 1
    rows = []
    for ident in sorted(acc):
        a = acc[ident]
        ok = a["ok"] > 0
        rows.append({
            "identity": ident,
            "split": a["split"],
            "num_photos": a["n"],
            "num_ok": a["ok"],
            NUM_SAMPLES: len(a["keys"]),
            "status": "ok" if ok else "skipped",
            "reason": None if ok else (a["reasons"].most_common(1)[0][0] if a["reasons"] else "no_photos"),
            "shards": sorted(a["shards"]),
        })
    return rows


def finalize_dataset(
    out_dir: str | Path, config: Mapping | None = None, extra_rows: Sequence[dict] = (), run: Mapping | None = None,
) -> dict:
    """Write photos/identities/shards parquet + stats.json from the finished shards (and the unsharded rows).

    ``extra_rows`` replace DIR/unsharded.parquet when given (non-empty); otherwise the existing file is kept.
    Photo rows are streamed shard by shard into photos.parquet; the identity table is derived from them.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    shard_dir = out / SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    if extra_rows:
        atomic.write_table(out / UNSHARDED, table_from_rows(extra_rows, PHOTOS))
    sstats = shard_stats(out)
    shard_rows = [{k: s.get(k) for k in SHARDS.names} for s in sstats]
    atomic.write_table(out / "shards.parquet", table_from_rows(shard_rows, SHARDS))

    # photos: stream the per-shard tables (memory flat in the number of shards)
    sources = [shard_dir / f"{s[SHARD]}.parquet" for s in sstats]
    if (out / UNSHARDED).exists():
        sources.append(out / UNSHARDED)
    with atomic.atomic_path(out / "photos.parquet") as tmp, pq.ParquetWriter(tmp, PHOTOS) as writer:
        for p in sources:
            writer.write_table(pq.read_table(p, schema=PHOTOS))

    photos = pq.read_table(out / "photos.parquet", columns=["identity", "split", "status", "reason", "shard", "key"])
    id_rows = _identity_rows(photos)
    atomic.write_table(out / "identities.parquet", table_from_rows(id_rows, IDENTITIES))

    status = Counter(photos.column("status").to_pylist())
    reason = Counter(r for r in photos.column("reason").to_pylist() if r)
    by_split = Counter(s[SHARD_SPLIT] for s in sstats)
    prev = previous_stats(out)
    stats = {
        "photos": photos.num_rows,
        "status_counts": dict(sorted(status.items())),
        "reason_counts": dict(sorted(reason.items())),
        "identities": len(id_rows),
        "identities_ok": sum(r["status"] == "ok" for r in id_rows),
        "identities_by_split": dict(sorted(Counter(r["split"] for r in id_rows if r["status"] == "ok").items())),
        "shards": len(sstats),
        "shards_by_split": dict(sorted(by_split.items())),
        "samples": sum(s[NUM_SAMPLES] for s in sstats),
        "images": sum(s[NUM_IMAGES] for s in sstats),
        "bytes": sum(s[SHARD_BYTES] for s in sstats),
        "timings": {
            "shard_seconds_total": round(sum(s.get(SECONDS, 0.0) for s in sstats), 3),
            "finalize_seconds": round(time.perf_counter() - t0, 3),
        },
        "config": dict(config) if config is not None else prev.get("config"),
        "run": dict(run) if run is not None else prev.get("run"),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "manifests": manifest_checksums(out),
    }
    if run is not None:
        stats["timings"]["run_seconds"] = run.get("seconds")
        planned = run.get("planned_shards")
        stats["complete"] = (not run.get("failed_shards") and run.get("part", [0, 1])[1] == 1
                             and (planned is None or planned == len(sstats)))
    write_json(out / "stats.json", stats)
    return stats


# ------------------------------------------------------------------------------------------------------ reading


def read_dataset(out_dir: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """The photos table of a finalized dataset (all rows, ok/skipped/error)."""
    p = Path(out_dir) / "photos.parquet"
    if not p.exists():

        raise LapError(f"{p}: no photos manifest (not a finalized lapdata dataset)")
    return pq.read_table(p, columns=list(columns) if columns else None)


def read_table(out_dir: str | Path, name: str) -> pa.Table:
    """One dataset-level manifest: name in photos / identities / shards."""
    return pq.read_table(Path(out_dir) / f"{name}.parquet")


def read_stats(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / "stats.json").read_text())


def previous_stats(out_dir: str | Path) -> dict:
    """A local dataset's stats.json as an earlier run left it, or {} when it is missing or not JSON (a new run
    rewrites it)."""
    path = Path(out_dir) / "stats.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


def unfinished(dataset: str | Path) -> str | None:
    """Why the dataset at ``dataset`` (a folder or a URL) is not a finished run (its stats.json missing, a run
    with failed or missing shards, one part of a job), or None when it is finished."""
    try:
        stats = json.loads(storage.read_bytes(storage.join(str(dataset), "stats.json") if storage.is_url(dataset)
                                              else Path(dataset) / "stats.json"))
    except FileNotFoundError:
        return "no stats.json: the command that writes it has not finished (or was killed)"
    except (OSError, ValueError) as e:
        return f"stats.json unreadable ({type(e).__name__})"
    if not isinstance(stats, dict) or stats.get("complete") is not False:
        return None
    run = stats.get("run") if isinstance(stats.get("run"), dict) else {}
    part = run.get("part") or [0, 1]
    if isinstance(part, list) and len(part) == 2 and part[1] != 1:
        return f"part {part[0]}/{part[1]} of a job (join the parts with lapdata merge)"
    return (f"incomplete: {stats.get('shards')} of {run.get('planned_shards')} shards finished, "
            f"{len(run.get('failed_shards') or [])} failed (rerun the command that wrote it)")
