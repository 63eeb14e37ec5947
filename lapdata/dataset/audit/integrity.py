"""Audit checks of a dataset's integrity beyond shards-vs-manifests agreement (called by ``lapdata.dataset.audit.run``).

* run: stats.json ``complete`` is not false and ``run.failed_shards`` is empty (a part output says so: merge it);
* checksums: every file in stats.json ``manifests`` exists with that sha256, and every checksummed manifest present
  is listed; every shard json's ``parquet_sha256`` matches its .parquet;
* paths: a shard json describes only itself (``shard`` = its name, ``path`` = ``shards/NAME.tar``); every path
  read from a manifest stays inside the dataset (no absolute path, no ``..``, no symlink out: ``lapdata.core.paths``);
* rows: photos.parquet holds exactly the rows of the shard parquets + unsharded.parquet, column for column (an
  edited sha256, path, reason or id_score is a fault even when the checksums were rewritten too);
* duplicates (the rule is ``lapdata.dataset.duplicates``'): a pair in duplicates.parquet whose photos are in different splits
  is split leakage (a fault: a re-encoded copy of one person under two identities lets a test identity be seen in
  training) unless its held-out photo was removed from the shards (decision ``removed``, checked against its row);
  pairs inside one split are counted (``cross_identity_duplicates_same_split``, a warning: label noise, no leakage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from lapdata.dataset.manifests import CHECKSUMMED, DUPLICATES, UNSHARDED, sha256_file
from lapdata.core.paths import SHARD_NAME, escape_reason
from lapdata.dataset.schema import PARQUET_SHA256, PHOTOS, SHARD, SHARD_DIR, SHARD_PATH

Fault = Callable[[str], None]
MAX_LISTED = 50


def check_run(stats: dict, fault: Fault) -> None:
    run = stats.get("run") if isinstance(stats.get("run"), dict) else {}
    failed = run.get("failed_shards") or []
    for f in failed[:MAX_LISTED]:
        name = f.get("shard") if isinstance(f, dict) else f
        why = f.get("error") if isinstance(f, dict) else ""
        fault(f"stats.json: shard {name} failed in the last run ({why}); rerun the command to retry it")
    if stats.get("complete") is False:
        part = run.get("part") or [0, 1]
        if isinstance(part, list) and len(part) == 2 and part[1] != 1:
            fault(f"stats.json: incomplete: part {part[0]}/{part[1]} of a job (join the parts with lapdata merge)")
        else:
            fault(f"stats.json: incomplete: {run.get('planned_shards')} shards planned, "
                  f"{stats.get('shards')} finished, {len(failed)} failed; rerun the command to finish it")


def check_checksums(root: Path, stats: dict, fault: Fault) -> None:
    listed = stats.get("manifests")
    if listed is None:
        return  # a dataset written before manifests were checksummed
    if not isinstance(listed, dict):
        fault("stats.json: manifests is not a mapping of file -> sha256")
        return
    for name, digest in sorted(listed.items()):
        if name not in CHECKSUMMED:
            fault(f"stats.json: manifests lists {name!r}, not a manifest")
            continue
        p = root / name
        if not p.is_file():
            fault(f"{p}: listed in stats.json manifests but missing")
        elif sha256_file(p) != digest:
            fault(f"{p}: sha256 does not match stats.json manifests (edited after it was written)")
    for name in CHECKSUMMED:
        if name not in listed and (root / name).is_file():
            fault(f"{root / name}: not covered by stats.json manifests (added after the dataset was written)")


def check_shard_json(root: Path, p: Path, doc: Any, fault: Fault) -> bool:
    """Faults of one shard json (``doc``, already parsed); True when its shard may be read."""
    if not isinstance(doc, dict):
        fault(f"{p}: shard stats are not a JSON object")
        return False
    ok = True
    if not SHARD_NAME.match(p.stem):
        fault(f"{p}: not a shard name ({{split}}-{{index:06d}})")
        ok = False
    if doc.get(SHARD) != p.stem:
        fault(f"{p}: field shard {doc.get(SHARD)!r} is not this file's name (a shard json may only describe itself)")
        ok = False
    path = doc.get(SHARD_PATH)
    why = escape_reason(root, path) if isinstance(path, str) else "not a string"
    if why is not None:
        fault(f"{p}: field path {path!r} leaves the dataset ({why})")
        ok = False
    elif path != f"{SHARD_DIR}/{p.stem}.tar":
        fault(f"{p}: field path {path!r} is not {SHARD_DIR}/{p.stem}.tar")
    want = doc.get(PARQUET_SHA256)
    pp = p.with_suffix(".parquet")
    if want is not None and pp.is_file() and sha256_file(pp) != want:
        fault(f"{pp}: sha256 does not match its shard json's parquet_sha256 (edited after it was written)")
    return ok


def tar_of(root: Path, name: Any, path: Any, fault: Fault) -> Path | None:
    """The tar of a shards.parquet row when its path stays inside the dataset (else a fault and None)."""
    rel = path if path else f"{SHARD_DIR}/{name}.tar"
    why = escape_reason(root, rel) if isinstance(rel, str) else "not a string"
    if why is not None:
        fault(f"shards.parquet: shard {name!r} path {rel!r} leaves the dataset ({why}); not read")
        return None
    if not isinstance(name, str) or not SHARD_NAME.match(name) or rel != f"{SHARD_DIR}/{name}.tar":
        fault(f"shards.parquet: shard {name!r} has path {rel!r}, expected {SHARD_DIR}/{name}.tar")
    return root / rel


def check_photo_rows(root: Path, photos_path: Path, shard_names: list[str], fault: Fault) -> None:
    """photos.parquet = the shard parquets + unsharded.parquet, row for row (by photo_id), column for column.

    First streamed, one shard's rows at a time, in the order finalize writes them (memory flat in the rows); only
    when that differs are the whole tables compared, sorted by photo_id, to name the photos that differ."""
    sources = [root / SHARD_DIR / f"{n}.parquet" for n in shard_names]
    if (root / UNSHARDED).is_file():
        sources.append(root / UNSHARDED)
    if _same_rows(photos_path, [p for p in sources if p.is_file()]):
        return
    _compare_rows(pq.read_table(photos_path), sources, fault)


def _same_rows(photos_path: Path, sources: list[Path]) -> bool:
    """True when photos.parquet holds exactly the rows of ``sources``, in their order (streamed)."""
    pf = pq.ParquetFile(photos_path, pre_buffer=False)
    cols = [c for c in PHOTOS.names if c in pf.schema_arrow.names]
    batches = pf.iter_batches(columns=cols, batch_size=16384)
    buf: list[pa.RecordBatch] = []
    have = 0
    for p in sources:
        try:
            want = pq.read_table(p, schema=PHOTOS).select(cols)
        except Exception:  # noqa: BLE001 - named by the full comparison
            return False
        while have < want.num_rows:
            b = next(batches, None)
            if b is None:
                return False
            buf.append(b)
            have += b.num_rows
        got = pa.Table.from_batches(buf)
        head, rest = got.slice(0, want.num_rows), got.slice(want.num_rows)
        buf, have = rest.to_batches(), rest.num_rows
        try:
            if not head.cast(want.schema).equals(want):
                return False
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
            return False
    return have == 0 and next(batches, None) is None


def _compare_rows(photos: pa.Table, sources: list[Path], fault: Fault) -> None:
    """The full comparison, sorted by photo_id, naming what differs."""
    import pyarrow.compute as pc

    cols = [c for c in PHOTOS.names if c in photos.column_names]
    parts, origin = [], []
    for p in sources:
        if not p.is_file():
            continue  # reported by the shard checks
        try:
            t = pq.read_table(p, schema=PHOTOS).select(cols)
        except Exception as e:  # noqa: BLE001 - any unreadable parquet is one fault
            fault(f"{p}: unreadable parquet ({type(e).__name__}: {str(e)[:120]})")
            continue
        parts.append(t)
        origin += [p.name] * t.num_rows
    if not parts:
        return
    want = pa.concat_tables(parts)
    try:
        got = photos.select(cols).cast(want.schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
        fault(f"photos.parquet: columns differ in type from the shard parquets ({str(e)[:120]})")
        return
    wi = pc.sort_indices(want, [("photo_id", "ascending")])
    gi = pc.sort_indices(got, [("photo_id", "ascending")])
    want, got = want.take(wi), got.take(gi)
    origin = [origin[k] for k in wi.to_pylist()]
    w_ids, g_ids = want.column("photo_id").to_pylist(), got.column("photo_id").to_pylist()
    if w_ids != g_ids:
        extra, missing = sorted(set(g_ids) - set(w_ids)), sorted(set(w_ids) - set(g_ids))
        for pid in extra[:MAX_LISTED]:
            fault(f"photos.parquet: photo {pid} is in no shard parquet nor {UNSHARDED}")
        for pid in missing[:MAX_LISTED]:
            fault(f"photos.parquet: photo {pid} of the shard parquets is missing")
        if not extra and not missing:
            fault("photos.parquet: a photo_id appears a different number of times than in the shard parquets")
        return
    diffs: dict[str, list[str]] = {}  # photo_id -> differing columns
    for c in cols:
        if got.column(c).equals(want.column(c)):
            continue
        for k, (a, b) in enumerate(zip(got.column(c).to_pylist(), want.column(c).to_pylist())):
            if a != b and not _both_nan(a, b):
                diffs.setdefault(g_ids[k], []).append(c)
    where = dict(zip(w_ids, origin))
    for pid in sorted(diffs)[:MAX_LISTED]:
        fault(f"photos.parquet: photo {pid} differs from {where[pid]} in {', '.join(diffs[pid])} (edited manifest)")
    if len(diffs) > MAX_LISTED:
        fault(f"photos.parquet: {len(diffs) - MAX_LISTED} more rows differ from the shard parquets")


def _both_nan(a: Any, b: Any) -> bool:
    return isinstance(a, float) and isinstance(b, float) and a != a and b != b


def check_duplicates(root: Path, fault: Fault) -> dict:
    """The pairs of duplicates.parquet under ``lapdata.dataset.duplicates``' rule: a pair across splits is leakage (a fault)
    unless its photo was removed (decision ``removed``: its row must be out of the shards, reason
    duplicate_other_split); returns the counts for the audit summary."""
    from lapdata.dataset.duplicates import REASON_OTHER_SPLIT, REMOVED, is_leak

    p = root / DUPLICATES
    if not p.is_file():
        return {}
    try:
        rows = pq.read_table(p).to_pylist()
    except Exception as e:  # noqa: BLE001
        fault(f"{p}: unreadable parquet ({type(e).__name__}: {str(e)[:120]})")
        return {}
    removed = [r for r in rows if r.get("decision") == REMOVED]
    if removed and (root / "photos.parquet").is_file():
        import pyarrow.compute as pc

        t = pq.read_table(root / "photos.parquet", columns=["photo_id", "status", "reason"])
        t = t.filter(pc.is_in(t.column("photo_id"), value_set=pa.array([r.get("photo_id") for r in removed])))
        state = {pid: (st, why) for pid, st, why in zip(*(t.column(c).to_pylist() for c in t.column_names))}
        for r in removed[:MAX_LISTED]:
            if state.get(r.get("photo_id"), (None, REASON_OTHER_SPLIT))[1] != REASON_OTHER_SPLIT:
                fault(f"{p}: photo {r.get('photo_id')} is recorded as removed (a duplicate of {r.get('dup_of')} of "
                      f"another split) but its row says {state[r.get('photo_id')]}")
    cross = [r for r in rows if r.get("decision") != REMOVED and is_leak(r.get("split"), r.get("dup_split"))]
    for r in cross[:MAX_LISTED]:
        fault(f"split leakage: photo {r.get('photo_id')} of {r.get('identity')!r} ({r.get('split')}) is an "
              f"{r.get('kind')} duplicate (phash distance {r.get('distance')}) of photo {r.get('dup_of')} of "
              f"{r.get('dup_identity')!r} ({r.get('dup_split')}): one person under two identities? see {DUPLICATES}; "
              f"rerun the ingest (or merge) that wrote it: it removes the held-out photo")
    if len(cross) > MAX_LISTED:
        fault(f"split leakage: {len(cross) - MAX_LISTED} more cross-split duplicates in {DUPLICATES}")
    return {"cross_identity_duplicates": len(rows) - len(removed), "cross_identity_duplicates_cross_split": len(cross),
            "cross_identity_duplicates_same_split": len(rows) - len(removed) - len(cross),
            "cross_split_duplicates_removed": len(removed)}
