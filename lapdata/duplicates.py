"""Cross-identity duplicates of a dataset: OUT/duplicates.parquet and stats.json ``cross_identity_duplicates``.

Ingest workers see one identity at a time (its own duplicates are skipped there, reason ``duplicate``), so photos
that duplicate a photo of *another* identity are found after the shards are written, dataset-wide: exact (same
source sha256) or near (perceptual hashes within ``phash_distance`` bits). The shards are not changed; the pairs
are listed in duplicates.parquet (``DUPLICATES``) and counted in stats.json (``pairs``, ``exact``, ``cross_split``:
pairs whose identities are in different splits, which ``lapdata audit`` reports as split leakage). Written by
whole ingest runs and by ``lapdata merge`` (the parts cannot see each other's photos).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from .manifests import DUPLICATES as DUPLICATES_FILE
from .manifests import _atomic_write_json, _atomic_write_table, manifest_checksums, read_dataset
from .schema import STATUS_OK

DUPLICATES = pa.schema([
    ("photo_id", pa.string()), ("identity", pa.string()), ("split", pa.string()), ("dup_of", pa.string()),
    ("dup_identity", pa.string()), ("dup_split", pa.string()), ("kind", pa.string()), ("distance", pa.int32())])
DUPLICATES_SCHEMA_COLUMNS = tuple(DUPLICATES.names)


def cross_identity_duplicates(out: str | Path, max_distance: int = 4) -> dict:
    """Find the written photos that duplicate another identity's, write OUT/duplicates.parquet; returns the counts
    (``pairs``, ``exact``, ``cross_split``)."""
    from .idfilter import DuplicateIndex

    t = read_dataset(out, ["photo_id", "identity", "split", "path", "sha256", "phash", "status"]).to_pydict()
    order = sorted((i for i, st in enumerate(t["status"]) if st == STATUS_OK and t["phash"][i]),
                   key=lambda i: (t["identity"][i], t["path"][i] or "", t["photo_id"][i]))
    index = DuplicateIndex(max_distance)
    where = {}
    rows = []
    for i in order:
        pid = t["photo_id"][i]
        where[pid] = i
        m = index.add(pid, t["sha256"][i], int(t["phash"][i], 16), t["identity"][i])
        if m.dup_of is not None and not m.same_identity:
            j = where[m.dup_of]
            rows.append({"photo_id": pid, "identity": t["identity"][i], "split": t["split"][i], "dup_of": m.dup_of,
                         "dup_identity": t["identity"][j], "dup_split": t["split"][j],
                         "kind": "exact" if m.kind and "exact" in m.kind else "near", "distance": m.distance})
    _atomic_write_table(Path(out) / DUPLICATES_FILE, pa.Table.from_pylist(rows, schema=DUPLICATES))
    return {"pairs": len(rows), "exact": sum(r["kind"] == "exact" for r in rows),
            "cross_split": sum(r["split"] != r["dup_split"] for r in rows)}


def record_duplicates(out: str | Path, stats: dict, max_distance: int = 4) -> dict:
    """``cross_identity_duplicates`` + stats.json: its counts (``cross_identity_duplicates``) and the refreshed
    manifest checksums; returns the updated stats (without the in-memory ``failed`` list)."""
    stats = dict(stats)
    stats["cross_identity_duplicates"] = cross_identity_duplicates(out, max_distance)
    stats["manifests"] = manifest_checksums(out)
    doc = {k: v for k, v in stats.items() if k != "failed"}
    _atomic_write_json(Path(out) / "stats.json", json.loads(json.dumps(doc, default=str)))
    return stats
