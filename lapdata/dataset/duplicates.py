"""Duplicates across identities and the split rule: what counts as leakage, and how a dataset is made free of it.

The rule, defined once here (ingest and merge apply it, ``lapdata audit`` checks it):

* two ok photos of different identities are duplicates when their source bytes are identical (sha256) or their
  perceptual hashes are within ``phash_distance`` bits (``lapdata.faces.idfilter.DuplicateIndex``);
* duplicates in two splits are leakage (a held-out photo seen in training). Splits rank in ``SPLIT_ORDER`` (train,
  val, test, then other names in order); a photo that duplicates a kept photo of an earlier split is removed from
  its shard: its row becomes skipped, reason ``duplicate_other_split``, ``dup_of`` the kept photo. Training photos are
  never removed. An identity left with fewer than the run's ``min_images`` ok photos loses its other photos too
  (reason ``min_images``, as ingest decides per identity);
* duplicates inside one split are label noise (one person under two names): listed, kept.

Ingest workers see one identity at a time, so this runs after the shards are written, dataset-wide
(``record_duplicates``: whole ingest runs and ``lapdata merge``, whose parts cannot see each other): the shards that
hold a removed photo are rewritten without it (image bytes copied, ``lapdata.dataset.writer.write_shard``; the shard's json
goes first, so a run killed meanwhile redoes that shard), the manifests rebuilt, and every pair written to
OUT/duplicates.parquet (``DUPLICATES``; ``decision`` ``removed`` or ``kept``) with the counts in stats.json
``cross_identity_duplicates`` (``pairs``, ``exact``, ``cross_split``: leaks left, ``removed``). A rerun finds
nothing more to remove (removed photos are no longer ok), so it is idempotent.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lapdata.core import atomic, storage

from lapdata.core import staging
from lapdata.dataset.manifests import DUPLICATES as DUPLICATES_FILE
from lapdata.dataset.manifests import (write_json, finalize_dataset, manifest_checksums, read_dataset,
                        read_shard_json)
from lapdata.dataset.schema import PHOTOS, SECONDS, SHARD_DIR, SHARD_SPLIT, STATUS_OK, STATUS_SKIPPED

DUPLICATES = pa.schema([
    ("photo_id", pa.string()), ("identity", pa.string()), ("split", pa.string()), ("dup_of", pa.string()),
    ("dup_identity", pa.string()), ("dup_split", pa.string()), ("kind", pa.string()), ("distance", pa.int32()),
    ("decision", pa.string())])
DUPLICATES_SCHEMA_COLUMNS = tuple(DUPLICATES.names)
SPLIT_ORDER = ("train", "val", "test")  # a duplicate across splits is kept in the earliest, removed from the others
REASON_OTHER_SPLIT = "duplicate_other_split"
REMOVED, KEPT = "removed", "kept"
_COLUMNS = ["photo_id", "identity", "split", "path", "sha256", "phash", "status", "reason", "dup_of", "shard"]


def split_rank(split: str | None) -> tuple[int, str]:
    """Where a split stands in SPLIT_ORDER (other names after, by name)."""
    return (SPLIT_ORDER.index(split), "") if split in SPLIT_ORDER else (len(SPLIT_ORDER), split or "")


def is_leak(split: str | None, dup_split: str | None) -> bool:
    """Whether a duplicate pair between these splits is leakage."""
    return split != dup_split


def _pair(t: dict, i: int, j: int, decision: str) -> dict:
    """The DUPLICATES row of photo row i duplicating photo row j."""
    from lapdata.faces.idfilter import hamming

    exact = bool(t["sha256"][i]) and t["sha256"][i] == t["sha256"][j]
    dist = 0 if exact else hamming(int(t["phash"][i], 16), int(t["phash"][j], 16))
    return {"photo_id": t["photo_id"][i], "identity": t["identity"][i], "split": t["split"][i],
            "dup_of": t["photo_id"][j], "dup_identity": t["identity"][j], "dup_split": t["split"][j],
            "kind": "exact" if exact else "near", "distance": dist, "decision": decision}


def _ok_order(t: dict) -> list[int]:
    return sorted((i for i, st in enumerate(t["status"]) if st == STATUS_OK and t["phash"][i]),
                  key=lambda i: (split_rank(t["split"][i]), t["identity"][i], t["path"][i] or "", t["photo_id"][i]))


def cross_split_removals(t: dict, max_distance: int, min_images: int = 1) -> dict[str, dict]:
    """The photos to remove from the dataset of photo columns ``t`` (the module's rule): {photo_id: the row's
    update (status, reason, dup_of)}. Splits are decided in SPLIT_ORDER, each against the photos kept before it."""
    from lapdata.faces.idfilter import DuplicateIndex

    kept = DuplicateIndex(max_distance)
    ok_count = Counter(t["identity"][i] for i, st in enumerate(t["status"]) if st == STATUS_OK)
    by_split: dict[str, list[int]] = defaultdict(list)
    for i in _ok_order(t):
        by_split[t["split"][i]].append(i)
    out: dict[str, dict] = {}
    for split in sorted(by_split, key=split_rank):
        rows = by_split[split]
        lost: Counter = Counter()
        for i in rows:
            m = kept.query(t["sha256"][i], int(t["phash"][i], 16), t["identity"][i])
            if m.dup_of is not None:
                out[t["photo_id"][i]] = {"status": STATUS_SKIPPED, "reason": REASON_OTHER_SPLIT, "dup_of": m.dup_of}
                lost[t["identity"][i]] += 1
        short = {k for k, n in lost.items() if ok_count[k] - n < min_images}
        for i, st in enumerate(t["status"]):  # the rest of an identity left under min_images (phash or not)
            if st == STATUS_OK and t["identity"][i] in short and t["photo_id"][i] not in out:
                out[t["photo_id"][i]] = {"status": STATUS_SKIPPED, "reason": "min_images", "dup_of": None}
        for i in rows:
            if t["photo_id"][i] not in out:
                kept.add(t["photo_id"][i], t["sha256"][i], int(t["phash"][i], 16), t["identity"][i])
    return out


def rewrite_shard(out: Path, name: str, drops: dict[str, dict], quality: int = 95) -> None:
    """Shard ``name`` of ``out`` (a folder or a mounted dataset URL) without the views of ``drops``' photos (their
    rows updated with the drop, out of the shard); other views keep their image bytes. Its json is deleted first:
    a run killed before the new json is written redoes the shard."""
    from lapdata.dataset.sample import EXTRA_FIELDS, decode_sample, image_member
    from lapdata.dataset.reader import iter_tar_samples
    from lapdata.dataset.writer import ShardResult, ShardTask, write_shard

    shard_dir = out / SHARD_DIR
    doc = read_shard_json(shard_dir / f"{name}.json")
    rows = pq.read_table(shard_dir / f"{name}.parquet", schema=PHOTOS).to_pylist()
    samples = []
    for raw in iter_tar_samples(shard_dir / f"{name}.tar", verify=True):
        s = decode_sample(raw, fields=EXTRA_FIELDS)  # extra fields re-encoded by the writer, images kept as bytes
        for i, v in enumerate(s.views):
            ext = v.meta.get("image_ext", "jpg")
            v.encoded = (ext, raw[image_member(i, ext)])
        s.views = [v for v in s.views if str(v.meta.get("photo_id")) not in drops]
        if s.views:
            samples.append(s)
    for r in rows:
        if r["photo_id"] in drops:
            r.update(drops[r["photo_id"]], shard=None, key=None, view_index=None)
    remote = storage.remote_of(out)
    (shard_dir / f"{name}.json").unlink()
    if remote:
        storage.remove(storage.join(remote, SHARD_DIR, f"{name}.json"))
    write_shard(out, ShardTask(name, doc[SHARD_SPLIT], ()), ShardResult(samples, rows), quality=quality,
                seconds=float(doc.get(SECONDS) or 0.0))
    staging.push(out, [f"{SHARD_DIR}/{name}{ext}" for ext in (".tar", ".parquet", ".json")])


def duplicate_pairs(t: dict, max_distance: int) -> list[dict]:
    """Every pair of the dataset: the removed photos (from their rows: reason duplicate_other_split, dup_of) and the
    ok photos that duplicate an earlier ok photo of another identity (decision kept; a cross-split one is a leak)."""
    from lapdata.faces.idfilter import DuplicateIndex

    where = {p: i for i, p in enumerate(t["photo_id"])}
    rows = [_pair(t, i, where[t["dup_of"][i]], REMOVED) for i, r in enumerate(t["reason"])
            if r == REASON_OTHER_SPLIT and t["dup_of"][i] in where]
    index = DuplicateIndex(max_distance)
    for i in _ok_order(t):
        m = index.add(t["photo_id"][i], t["sha256"][i], int(t["phash"][i], 16), t["identity"][i])
        if m.dup_of is not None and not m.same_identity:
            rows.append(_pair(t, i, where[m.dup_of], KEPT))
    return rows


def record_duplicates(out: str | Path, stats: dict, max_distance: int = 4, min_images: int = 1, *,
                      quality: int = 95) -> dict:
    """Apply the rule to the finalized dataset ``out``: rewrite the shards holding removed photos and finalize again
    (``stats``' config and run kept), write duplicates.parquet and stats.json (``cross_identity_duplicates``, the
    refreshed manifest checksums); returns the updated stats (without the in-memory ``failed`` list)."""
    out = Path(out)
    t = read_dataset(out, _COLUMNS).to_pydict()
    drops = cross_split_removals(t, max_distance, min_images)
    if drops:
        by_shard: dict[str, dict[str, dict]] = defaultdict(dict)
        for i, pid in enumerate(t["photo_id"]):
            if pid in drops:
                by_shard[t["shard"][i]][pid] = drops[pid]
        for name in sorted(by_shard):
            rewrite_shard(out, name, by_shard[name], quality)
        keep = {k: v for k, v in stats.items() if k in ("input", "seconds", "failed")}
        stats = {**finalize_dataset(out, config=stats.get("config"), run=stats.get("run")), **keep}
        t = read_dataset(out, _COLUMNS).to_pydict()
    pairs = duplicate_pairs(t, max_distance)
    atomic.write_table(out / DUPLICATES_FILE, pa.Table.from_pylist(pairs, schema=DUPLICATES))
    stats = dict(stats)
    stats["cross_identity_duplicates"] = {
        "pairs": len(pairs), "exact": sum(r["kind"] == "exact" for r in pairs),
        "cross_split": sum(r["decision"] == KEPT and is_leak(r["split"], r["dup_split"]) for r in pairs),
        "removed": sum(r["decision"] == REMOVED for r in pairs)}
    stats["manifests"] = manifest_checksums(out)
    doc = {k: v for k, v in stats.items() if k != "failed"}
    write_json(out / "stats.json", json.loads(json.dumps(doc, default=str)))
    return stats
