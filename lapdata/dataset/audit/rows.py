"""Audit's checks of photos.parquet, column by column (called by ``lapdata.dataset.audit.run``).

A manifest of millions of rows is read as the few columns the checks need (``ROW_COLUMNS``; the repetitive ones
dictionary-encoded) and checked with numpy / Arrow on whole columns: no Python object per row, so the audit's memory
is a few tens of bytes per row (BENCHMARKS.md). Only rows that are faults become Python values.

* rows: photo_id unique, known statuses, a status other than ok in no shard, an ok row in a shard;
* leakage: no identity and no identical image (same source sha256, ok rows) in two splits (cross-identity near
  duplicates are ``lapdata.dataset.duplicates``' rule, checked on duplicates.parquet by ``lapdata.dataset.audit.integrity``);
* counts: status counts, ok photos per identity (min_images), identities.parquet against the rows;
* ``ShardRows``: the rows of one shard at a time, for the contents check of its tar.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lapdata.dataset.schema import STATUS_OK, STATUSES

Fault = Callable[[str], None]
ROW_COLUMNS = ("photo_id", "identity", "split", "status", "shard", "key", "view_index", "sha256", "parser", "reason")
CODED = ("identity", "split", "status", "shard", "key", "parser", "reason")  # few distinct values: integer codes
LISTED = 50
NUM_CLASSES = 19


class Rows:
    """The audited columns of photos.parquet, read batch by batch: ``codes[c]`` int32 (-1 = null) and ``values[c]``
    for the CODED columns, ``photo_id`` / ``sha256`` / ``view_index`` as Arrow (chunked) arrays."""

    def __init__(self, path: Path) -> None:
        pf = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering would hold whole column chunks
        cols = [c for c in ROW_COLUMNS if c in pf.schema_arrow.names]
        coded = [c for c in CODED if c in cols]
        codes: dict[str, list[np.ndarray]] = {c: [] for c in coded}
        index: dict[str, dict[Any, int]] = {c: {} for c in coded}
        plain: dict[str, list[pa.Array]] = {c: [] for c in ("photo_id", "sha256", "view_index") if c in cols}
        self.n = 0
        for b in pf.iter_batches(columns=cols, batch_size=16384):  # streamed: one batch of raw columns at a time
            self.n += b.num_rows
            for c in coded:
                enc = pc.dictionary_encode(b.column(c))
                lut = np.array([index[c].setdefault(v, len(index[c])) for v in enc.dictionary.to_pylist()] + [-1],
                               dtype=np.int32)
                codes[c].append(lut[pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False)])
            for c in plain:
                plain[c].append(b.column(c))
        self.codes: dict[str, np.ndarray] = {}
        self.values: dict[str, list] = {}
        for c in CODED:
            self.codes[c] = np.concatenate(codes[c]) if codes.get(c) else np.full(self.n, -1, np.int32)
            self.values[c] = list(index.get(c, {}))
        arrays = {c: pa.chunked_array(v, type=pf.schema_arrow.field(c).type) for c, v in plain.items()}
        self.photo_id = arrays.get("photo_id", pa.chunked_array([pa.nulls(self.n, pa.string())]))
        self.sha256 = arrays.get("sha256", pa.chunked_array([pa.nulls(self.n, pa.string())]))
        self.view_index = arrays.get("view_index", pa.chunked_array([pa.nulls(self.n, pa.int32())]))
        self._by_pid: np.ndarray | None = None

    def value(self, col: str, i: int) -> Any:
        k = int(self.codes[col][i])
        return None if k < 0 else self.values[col][k]

    def code(self, col: str, value: Any) -> int:
        try:
            return self.values[col].index(value)
        except ValueError:
            return -2  # no row has it

    def mask(self, col: str, value: Any) -> np.ndarray:
        return self.codes[col] == self.code(col, value)

    def pid(self, i: int) -> str:
        return self.photo_id[int(i)].as_py()

    def sorted_ids(self) -> np.ndarray:
        """The rows in photo_id order (computed once)."""
        if self._by_pid is None:
            self._by_pid = pc.sort_indices(self.photo_id).to_numpy()
        return self._by_pid

    def find(self, pid: str) -> int | None:
        """The row of photo ``pid`` (binary search over the sorted ids)."""
        keys = _Sorted(self.photo_id, self.sorted_ids())
        k = bisect_left(keys, pid)
        if k < len(keys) and keys[k] == pid:
            return int(self._by_pid[k])
        return None


class _Sorted:
    """photo ids in sorted order, read one at a time (for bisect)."""

    def __init__(self, ids: pa.ChunkedArray, order: np.ndarray) -> None:
        self.ids, self.order = ids, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int) -> str:
        return self.ids[int(self.order[k])].as_py()


def row_faults(r: Rows, fault: Fault) -> None:
    """photo_id unique; statuses known; non-ok rows in no shard, ok rows in a shard."""
    order = r.sorted_ids()
    ids = r.photo_id.take(pa.array(order))
    same = pc.equal(ids.slice(1), ids.slice(0, max(0, len(ids) - 1))) if len(ids) > 1 else pa.array([], pa.bool_())
    for k in np.flatnonzero(pc.fill_null(same, False).to_numpy(zero_copy_only=False))[:LISTED]:
        a, b = sorted((int(order[k]), int(order[k + 1])))
        fault(f"photos.parquet: photo_id {r.pid(a)} appears twice (rows {a} and {b})")
    status = r.codes["status"]
    known = {r.code("status", s) for s in STATUSES}
    for i in np.flatnonzero(~np.isin(status, list(known)))[:LISTED]:
        fault(f"photos.parquet: photo {r.pid(i)} has status {r.value('status', i)!r}")
    ok, in_shard = status == r.code("status", STATUS_OK), r.codes["shard"] >= 0
    for i in np.flatnonzero(~ok & in_shard)[:LISTED]:
        fault(f"photos.parquet: photo {r.pid(i)} has status {r.value('status', i)} but is in shard "
              f"{r.value('shard', i)}")
    for i in np.flatnonzero(ok & ~in_shard)[:LISTED]:
        fault(f"photos.parquet: photo {r.pid(i)} ({r.value('identity', i)}) is ok but in no shard")


def id_splits(r: Rows) -> dict[str, list[str]]:
    """identity -> its splits (sorted), over rows with a split."""
    ident, split = r.codes["identity"], r.codes["split"]
    has = split >= 0
    pairs = np.unique(ident[has].astype(np.int64) * (len(r.values["split"]) + 1) + split[has])
    out: dict[str, list[str]] = {}
    for p in pairs.tolist():
        i, s = divmod(p, len(r.values["split"]) + 1)
        out.setdefault(r.values["identity"][i], []).append(r.values["split"][s])
    return {k: sorted(v) for k, v in out.items()}


def leakage_faults(r: Rows, fault: Fault) -> dict[str, list[str]]:
    """No identity in two splits; no identical source image (sha256 of an ok row) in two splits. Returns the
    identities' splits (for the counts)."""
    splits = id_splits(r)
    leaked = sorted(k for k, v in splits.items() if len(v) > 1)
    for k in leaked[:LISTED]:
        fault(f"split leakage: identity {k!r} is in {splits[k]}")
    if len(leaked) > LISTED:
        fault(f"split leakage: {len(leaked) - LISTED} more identities in several splits")
    ok = (r.codes["status"] == r.code("status", STATUS_OK)) & (r.codes["split"] >= 0)
    keys = np.concatenate([_hex_prefix(c) for c in r.sha256.chunks]) if r.sha256.num_chunks else np.zeros(0, np.uint64)
    ok &= keys != 0
    g = pa.table({"k": keys[ok], "split": r.codes["split"][ok]}).group_by("k").aggregate([("split", "count_distinct")])
    suspects = g.filter(pc.greater(g.column("split_count_distinct"), 1)).column("k").to_numpy()
    rows_of = np.flatnonzero(ok & np.isin(keys, suspects))  # few: verified on the whole sha256
    by_sha: dict[str, set] = {}
    for i in rows_of.tolist():
        by_sha.setdefault(r.sha256[i].as_py(), set()).add(r.value("split", i))
    for k in sorted(k for k, v in by_sha.items() if len(v) > 1)[:LISTED]:
        fault(f"split leakage: image sha256 {k[:16]}... is in {sorted(by_sha[k])}")
    return splits


def _hex_prefix(a: pa.Array) -> np.ndarray:
    """The first 16 hex digits of each sha256 as a uint64 (0 for a null or a value that is not 64 hex digits): a
    64-bit key to group a million digests by, 8 bytes a row."""
    n = len(a)
    out = np.zeros(n, np.uint64)
    good = pc.fill_null(pc.and_(pc.equal(pc.utf8_length(a), 64), pc.match_substring_regex(a, "^[0-9a-f]+$")), False)
    idx = np.flatnonzero(good.to_numpy(zero_copy_only=False))
    if len(idx):
        head = pc.utf8_slice_codeunits(a.take(pa.array(idx)), 0, 16).cast(pa.large_binary())
        raw = np.frombuffer(pa.concat_arrays([head]).buffers()[2], np.uint8)[: 16 * len(idx)].reshape(-1, 16)
        digits = np.where(raw >= 97, raw - 87, raw - 48).astype(np.uint64)
        out[idx] = (digits << (np.arange(15, -1, -1, dtype=np.uint64) * np.uint64(4))).sum(axis=1, dtype=np.uint64)
    return out


def ok_per_identity(r: Rows) -> Counter:
    ok = r.codes["status"] == r.code("status", STATUS_OK)
    counts = np.bincount(r.codes["identity"][ok], minlength=len(r.values["identity"]))
    return Counter({r.values["identity"][i]: int(n) for i, n in enumerate(counts.tolist()) if n})


def min_images_faults(ok_by_id: Counter, min_images: Any, fault: Fault) -> None:
    if isinstance(min_images, int):
        for k, v in sorted(ok_by_id.items()):
            if v < min_images:
                fault(f"identity {k!r} has {v} ok photos, under min_images {min_images}")


def count_faults(r: Rows, stats: dict | None, ok_by_id: Counter, fault: Fault) -> Counter:
    """stats.json photos and status counts against the rows; min_images (from the run's config). Returns the
    status counts."""
    sc = Counter({r.values["status"][i]: int(n) for i, n in
                  enumerate(np.bincount(r.codes["status"][r.codes["status"] >= 0],
                                        minlength=len(r.values["status"])).tolist()) if n})
    if stats is not None:
        if stats.get("photos") is not None and stats["photos"] != r.n:
            fault(f"stats.json: photos {stats['photos']} but photos.parquet has {r.n} rows")
        if stats.get("status_counts") is not None and stats["status_counts"] != dict(sorted(sc.items())):
            fault(f"stats.json: status_counts {stats['status_counts']} but photos.parquet has {dict(sc)}")
        min_images_faults(ok_by_id, (stats.get("config") or {}).get("min_images"), fault)
    return sc


def identity_faults(r: Rows, identities: pa.Table, splits: dict[str, list[str]], ok_by_id: Counter,
                    fault: Fault) -> None:
    """identities.parquet against the photo rows (one row per identity, its photos, ok photos and split)."""
    id_rows = {x["identity"]: x for x in identities.to_pylist()}
    n_by_id = Counter({r.values["identity"][i]: int(n) for i, n in
                       enumerate(np.bincount(r.codes["identity"], minlength=len(r.values["identity"])).tolist())
                       if n})
    all_ids = set(n_by_id)
    for k in sorted(all_ids - set(id_rows))[:LISTED]:
        fault(f"identities.parquet: identity {k!r} of photos.parquet missing")
    for k in sorted(set(id_rows) - all_ids)[:LISTED]:
        fault(f"identities.parquet: identity {k!r} has no photo rows")
    for k, x in id_rows.items():
        if k not in all_ids:
            continue
        if x["num_photos"] is not None and x["num_photos"] != n_by_id[k]:
            fault(f"identities.parquet: {k!r} num_photos {x['num_photos']}, photos.parquet has {n_by_id[k]}")
        if x["num_ok"] is not None and x["num_ok"] != ok_by_id.get(k, 0):
            fault(f"identities.parquet: {k!r} num_ok {x['num_ok']}, photos.parquet has {ok_by_id.get(k, 0)}")
        if x["split"] is not None and x["split"] not in splits.get(k, [x["split"]]):
            fault(f"identities.parquet: {k!r} split {x['split']} differs from its photos' {splits.get(k)}")


def class_count_faults(path: Path, fault: Fault) -> None:
    """Every parse-masks class_counts has NUM_CLASSES entries (streamed: the lists are never all in memory)."""
    pf = pq.ParquetFile(path, pre_buffer=False)
    if "class_counts" not in pf.schema_arrow.names:
        return
    listed = 0
    for b in pf.iter_batches(columns=["photo_id", "class_counts"], batch_size=65536):
        n = pc.list_value_length(b.column(1))
        bad = pc.and_(pc.is_valid(n), pc.not_equal(n, NUM_CLASSES))
        for pid, k in zip(b.column(0).filter(bad).to_pylist(), n.filter(bad).to_pylist()):
            if listed < LISTED:
                fault(f"photos.parquet: photo {pid} class_counts has {k} entries, expected {NUM_CLASSES}")
            listed += 1


class ShardRows:
    """The rows of one shard at a time: {photo_id: row} for the views of its tar (rows grouped by shard once)."""

    def __init__(self, r: Rows) -> None:
        self.r = r
        self.order = np.argsort(r.codes["shard"], kind="stable")
        self.sorted = r.codes["shard"][self.order]

    def rows(self, shard: str) -> np.ndarray:
        c = self.r.code("shard", shard)
        return self.order[np.searchsorted(self.sorted, c):np.searchsorted(self.sorted, c, side="right")]

    def by_pid(self, shard: str) -> dict[str, int]:
        rows = self.rows(shard)
        return dict(zip(self.r.photo_id.take(pa.array(rows)).to_pylist(), rows.tolist()))
