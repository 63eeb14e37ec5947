"""`lapdata audit DIR`: check that a dataset's shards and manifests agree (any lapdata step's output).

Checks (each failure is one fault line naming the file/shard/photo):

* manifests: photos/identities/shards parquet and stats.json exist and have the schemas of lapdata.dataset.schema (extra
  columns are allowed); photo_id unique;
* shards: every shards.parquet row's tar (and its .json/.parquet) exists, its bytes and sha256 match; no finished
  shard on disk is missing from shards.parquet;
* contents (unless ``contents=False``): every sample's key is unique and dot-free, its json's identity/split match
  the photo rows, each view's image exists (and matches the ``image_sha256`` recorded by the writer), each extra field
  listed in the view's ``fields`` (depth, cdepth, normal, mask, seg) exists, a depth field has its range, a seg map
  has the image's size; each view's ``photo_id`` row points at this shard/key/view index; per-shard sample and image
  counts match shards.parquet; every photo row that names a shard was found there; every ok row is in a shard;
  parse-masks columns consistent (a row with ``parser`` has a seg view, class_counts has 19 entries);
* counts: stats.json photos and status counts, identities.parquet vs the photo rows;
* leakage: no identity and no identical image (same source sha256) in two splits; no cross-identity duplicate
  (duplicates.parquet, exact or near) across two splits that was not resolved (``lapdata.dataset.duplicates``' rule: the
  held-out photo removed); object keys of a dataset URL that would lead outside it (refused, never mirrored);
* min-images: no written identity has fewer ok photos than the run's ``min_images`` (from stats.json config);
* integrity (``lapdata.dataset.audit.integrity``): the run is complete (no failed shards); the manifests' checksums
  (stats.json ``manifests``, shard json ``parquet_sha256``) match; photos.parquet equals the shard parquets +
  unsharded.parquet; every path read from a manifest stays inside the dataset (never read when it does not).

A folder that holds none of a dataset's files is a LapError (not a dataset), so is a path that is not a folder.
photos.parquet is checked column-wise (``lapdata.dataset.audit.rows``: its memory is tens of bytes per row, not a Python
object per row) and the tars one shard at a time. ``carried_faults`` are the faults no later step repairs (leakage,
min-images): a step that ends with an audit (parse-masks) checks them first.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.parquet as pq

from lapdata.dataset.audit import integrity as integrity
from lapdata.dataset.audit import rows as rows
from lapdata.dataset.audit import shards as shard_checks
from lapdata.core import storage
from lapdata.core import staging
from lapdata.core.errors import LapError
from lapdata.dataset.schema import IDENTITIES, PHOTOS, SHARDS, check_schema
from lapdata.dataset.schema import NUM_IMAGES, NUM_SAMPLES, SHARD, SHARD_BYTES, SHARD_DIR, SHARD_SPLIT


@dataclass
class AuditReport:
    root: str
    faults: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.faults

    def to_json(self) -> dict:
        return {"dataset": self.root, "ok": self.ok, "num_faults": len(self.faults), "faults": self.faults,
                "summary": self.summary}


def _open(where: str) -> Path:
    """The dataset folder of ``where`` (a URL: its readers' staging mirror); LapError when it is no dataset."""
    root = staging.mount(where, reader=True) if storage.is_url(where) else Path(where)
    if not root.exists():
        raise LapError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise LapError(f"{root}: not a folder (lapdata audit takes a dataset folder)")
    if not any((root / n).exists() for n in ("photos.parquet", "shards.parquet", "stats.json", SHARD_DIR)):
        raise LapError(f"{root}: not a lapdata dataset (no photos.parquet, shards.parquet, stats.json or {SHARD_DIR}/)")
    return root


def _stats(root: Path, fault) -> dict | None:
    if not (root / "stats.json").exists():
        fault(f"{root / 'stats.json'}: missing")
        return None
    try:
        stats = json.loads((root / "stats.json").read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        fault(f"{root / 'stats.json'}: not valid JSON ({str(e)[:160]})")
        return None
    if not isinstance(stats, dict):
        fault(f"{root / 'stats.json'}: not a JSON object")
        return None
    return stats


def _tables(root: Path, fault) -> tuple[rows.Rows | None, dict[str, Any]]:
    """photos.parquet as the audited columns (``audit_rows.Rows``) and the small manifests as tables, each when
    it has the contract's columns (else its faults)."""
    out: dict[str, Any] = {}
    photo_rows = None
    for name, schema in (("photos", PHOTOS), ("identities", IDENTITIES), ("shards", SHARDS)):
        p = root / f"{name}.parquet"
        if not p.exists():
            fault(f"{p}: missing")
            continue
        try:
            t = pq.read_schema(p).empty_table() if name == "photos" else pq.read_table(p)
            bad = check_schema(t, schema, p.name)
            if not bad and name == "photos":
                photo_rows = r = rows.Rows(p)
                nulls = {"photo_id": r.photo_id.null_count, "identity": int((r.codes["identity"] < 0).sum()),
                         "status": int((r.codes["status"] < 0).sum())}
                bad = [f"{p.name}: column {c} has nulls" for c, n in nulls.items() if n]
        except Exception as e:  # noqa: BLE001 - any unreadable parquet is one fault
            fault(f"{p}: unreadable parquet ({type(e).__name__}: {str(e)[:160]})")
            continue
        for f in bad:
            fault(f)
        if not bad:  # a table without the contract's columns is not read further (its faults are listed)
            out[name] = t
    return (photo_rows if "photos" in out else None), out


def carried_faults(root: str | Path) -> list[str]:
    """The faults of a dataset that no later step repairs, so the audit at that step's end must fail on them:
    split leakage (identities, identical images, cross-split duplicates under ``lapdata.dataset.duplicates``' rule) and
    identities under min_images. Cheap (photos.parquet's columns, duplicates.parquet): parse-masks checks them
    before parsing."""
    root = Path(root)
    faults: list[str] = []
    integrity.check_duplicates(root, faults.append)
    if not (root / "photos.parquet").is_file():
        return faults
    r = rows.Rows(root / "photos.parquet")
    rows.leakage_faults(r, faults.append)
    try:
        config = json.loads((root / "stats.json").read_text()).get("config") or {}
    except (OSError, ValueError, AttributeError):
        config = {}
    rows.min_images_faults(rows.ok_per_identity(r), config.get("min_images"), faults.append)
    return faults


@dataclass
class _Audit:
    """What the checks of one audit share: the dataset, the fault sink, and what earlier checks read."""
    root: Path
    where: str
    contents: bool
    fault: Callable[[str], None]
    rows: rows.Rows | None = None
    tables: dict[str, Any] = field(default_factory=dict)
    stats: dict | None = None
    shard_docs: dict[str, Any] = field(default_factory=dict)
    duplicates: dict[str, Any] = field(default_factory=dict)
    found: np.ndarray | None = None  # photo rows found in a tar
    images: int = 0
    samples: int = 0


def _check_in_progress(a: _Audit) -> None:
    """No parse-masks commit half done (``lapdata.parsing.commit``); no object key refused by the mirror."""
    if (a.root / "parse_commit.json").exists():
        a.fault(f"{a.where}: parse_commit.json is there, a parse-masks commit is in progress; rerun parse-masks on it")
    for key, why in staging.refused_keys(a.root):  # a hostile or damaged bucket: never mirrored
        a.fault(f"{a.where.rstrip('/')}/{key}: object key refused, it leads outside the dataset ({why})")


def _check_manifests(a: _Audit) -> None:
    """The parquet manifests' schemas, stats.json, the run complete and the manifests' checksums."""
    a.rows, a.tables = _tables(a.root, a.fault)
    a.stats = _stats(a.root, a.fault)
    if a.stats is not None:
        integrity.check_run(a.stats, a.fault)
        integrity.check_checksums(a.root, a.stats, a.fault)


def _check_shard_jsons(a: _Audit) -> None:
    """Every shard json reads and describes its own shard."""
    for js in sorted((a.root / SHARD_DIR).glob("*.json")) if (a.root / SHARD_DIR).is_dir() else []:
        try:
            doc = json.loads(js.read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            a.fault(f"{js}: not valid JSON ({str(e)[:160]})")
            continue
        if integrity.check_shard_json(a.root, js, doc, a.fault):
            a.shard_docs[js.stem] = doc


def _check_duplicates(a: _Audit) -> None:
    """Cross-split duplicates under ``lapdata.dataset.duplicates``' rule."""
    a.duplicates = integrity.check_duplicates(a.root, a.fault)


def _check_photo_rows(a: _Audit) -> None:
    """photos.parquet = the shard parquets; its rows column-wise (``rows.row_faults``)."""
    integrity.check_photo_rows(a.root, a.root / "photos.parquet", sorted(a.shard_docs), a.fault)
    rows.row_faults(a.rows, a.fault)


def _check_shards(a: _Audit) -> None:
    """Finished shards all listed; each listed shard's files, bytes, checksum and (``contents``) samples."""
    listed = {x[SHARD] for x in a.tables["shards"].to_pylist()}
    on_disk = {p.stem for p in (a.root / SHARD_DIR).glob("*.json")} if (a.root / SHARD_DIR).is_dir() else set()
    for s in sorted(on_disk - listed):
        a.fault(f"{SHARD_DIR}/{s}: finished on disk but not in shards.parquet (rerun the command to finalize)")
    a.found = np.zeros(a.rows.n, dtype=bool)
    a.images, a.samples = shard_checks.check_shards(a.root, a.tables["shards"].to_pylist(), a.rows, a.contents,
                                                    a.found, a.fault)


def _check_rows_found(a: _Audit) -> None:
    """(``contents``) every photo row that names a listed shard was found in its tar; no row names an unlisted
    shard; class_counts well formed."""
    if not a.contents:
        return
    r, listed = a.rows, {x[SHARD] for x in a.tables["shards"].to_pylist()}
    per_shard = rows.ShardRows(r)
    for name in sorted(listed):
        if isinstance(name, str) and storage.exists(a.root / SHARD_DIR / f"{name}.tar"):
            for i in [i for i in per_shard.rows(name) if not a.found[i]][:rows.LISTED]:
                a.fault(f"photos.parquet: photo {r.pid(i)} says {name}/{r.value('key', i)} view "
                        f"{r.view_index[int(i)].as_py()} but it is not there")
    unlisted = (r.codes["shard"] >= 0) & ~np.isin(r.codes["shard"], [r.code("shard", x) for x in listed])
    for i in np.flatnonzero(unlisted)[:rows.LISTED]:
        a.fault(f"photos.parquet: photo {r.pid(i)} is in shard {r.value('shard', i)}, which shards.parquet does "
                f"not list")
    rows.class_count_faults(a.root / "photos.parquet", a.fault)


def _summary(a: _Audit) -> dict[str, Any]:
    """Leakage, counts and identities (their faults), and the report's summary."""
    r, srows = a.rows, a.tables["shards"].to_pylist()
    splits = rows.leakage_faults(r, a.fault)
    ok_by_id = rows.ok_per_identity(r)
    sc = rows.count_faults(r, a.stats, ok_by_id, a.fault)
    if "identities" in a.tables:
        rows.identity_faults(r, a.tables["identities"], splits, ok_by_id, a.fault)
    reasons = Counter({r.values["reason"][i]: int(k) for i, k in enumerate(
        np.bincount(r.codes["reason"][r.codes["reason"] >= 0], minlength=len(r.values["reason"])).tolist()) if k})
    return {
        "photos": r.n,
        "status_counts": dict(sorted(sc.items())),
        "reason_counts": dict(sorted((k, v) for k, v in reasons.items() if k)),
        "identities": len(r.values["identity"]),
        "identities_with_ok": len(ok_by_id),
        "identities_by_split": {s: sum(1 for k, v in splits.items() if s in v and ok_by_id.get(k))
                                for s in sorted({x for v in splits.values() for x in v})},
        "shards": len(srows),
        "shards_by_split": dict(sorted(Counter(x[SHARD_SPLIT] for x in srows).items())),
        "samples": a.samples if a.contents else sum(x[NUM_SAMPLES] or 0 for x in srows),
        "images": a.images if a.contents else sum(x[NUM_IMAGES] or 0 for x in srows),
        "bytes": sum(x[SHARD_BYTES] or 0 for x in srows),
        "contents_checked": a.contents,
        **a.duplicates,
    }


# the audit, in order: the checks of any dataset folder, then those that need readable photos and shards manifests
DATASET_CHECKS = (_check_in_progress, _check_manifests, _check_shard_jsons, _check_duplicates)
ROW_CHECKS = (_check_photo_rows, _check_shards, _check_rows_found)


def audit_dataset(root: str | Path, contents: bool = True, max_faults: int = 1000) -> AuditReport:
    """Audit the dataset at ``root``: a folder, or a URL (``s3://...``: its small files are mirrored into the
    readers' staging folder, the tars streamed; ``lapdata.core.storage``). Runs ``DATASET_CHECKS``, then, when
    photos.parquet and shards.parquet are readable, ``ROW_CHECKS`` and the summary."""
    where = str(root)
    rep = AuditReport(where)

    def fault(msg: str) -> None:
        if len(rep.faults) < max_faults:
            rep.faults.append(msg)
        elif len(rep.faults) == max_faults:
            rep.faults.append(f"... more faults not listed (limit {max_faults})")

    a = _Audit(_open(where), where, contents, fault)
    for check in DATASET_CHECKS:
        check(a)
    if a.rows is None or "shards" not in a.tables:
        rep.summary = {"photos": None}
        return rep
    for check in ROW_CHECKS:
        check(a)
    rep.summary = _summary(a)
    return rep


def print_report(rep: AuditReport, max_lines: int = 40) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    s = rep.summary
    t = Table(title=f"lapdata audit {rep.root}", show_header=True)
    t.add_column("what")
    t.add_column("value", overflow="fold")
    for k in ("photos", "status_counts", "reason_counts", "identities", "identities_with_ok", "identities_by_split",
              "shards", "shards_by_split", "samples", "images", "bytes"):
        if k in s:
            v = s[k]
            if isinstance(v, dict):
                v = ", ".join(f"{a} {b}" for a, b in v.items()) or "-"
            elif k == "bytes":
                v = f"{v / 2**20:.1f} MiB"
            t.add_row(k.replace("_", " "), str(v))
    con.print(t)
    same = s.get("cross_identity_duplicates_same_split")
    if same:
        con.print(f"[yellow]warning[/yellow]: {same} photo(s) duplicate another identity's in the same split "
                  f"(label noise, no leakage; see duplicates.parquet)")
    if rep.ok:
        con.print("[green]OK[/green]: shards and manifests agree")
    else:
        con.print(f"[red]{len(rep.faults)} fault(s)[/red]:")
        for f in rep.faults[:max_lines]:
            con.print(f"  - {f}", markup=False, highlight=False)
        if len(rep.faults) > max_lines:
            con.print(f"  ... and {len(rep.faults) - max_lines} more (use --json for all)")
