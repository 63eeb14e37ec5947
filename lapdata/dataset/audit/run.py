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

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from lapdata.dataset.audit import integrity as integrity
from lapdata.dataset.audit import rows as rows
from lapdata.core import storage
from lapdata.core.errors import LapError
from lapdata.dataset.schema import IDENTITIES, PHOTOS, SHARDS, check_schema
from lapdata.dataset.sample import EXTRA_FIELDS, JSON, KEY, field_member, image_fault, image_member
from lapdata.dataset.schema import NUM_IMAGES, NUM_SAMPLES, SHARD, SHARD_BYTES, SHARD_DIR, SHARD_PATH, SHARD_SHA256, SHARD_SPLIT
from lapdata.dataset.reader import iter_tar_samples
from lapdata.dataset.manifests import sha256_file



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


def _png_size(data: bytes) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:
        return None


def _open(where: str) -> Path:
    """The dataset folder of ``where`` (a URL: its readers' staging mirror); LapError when it is no dataset."""
    root = storage.mount(where, reader=True) if storage.is_url(where) else Path(where)
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


def audit_dataset(root: str | Path, contents: bool = True, max_faults: int = 1000) -> AuditReport:
    """Audit the dataset at ``root``: a folder, or a URL (``s3://...``: its small files are mirrored into the
    readers' staging folder, the tars streamed; ``lapdata.core.storage``)."""
    where = str(root)
    root = _open(where)
    rep = AuditReport(where)
    faults = rep.faults

    def fault(msg: str) -> None:
        if len(faults) < max_faults:
            faults.append(msg)
        elif len(faults) == max_faults:
            faults.append(f"... more faults not listed (limit {max_faults})")

    if (root / "parse_commit.json").exists():  # lapdata.parsing.commit: a version is being copied in
        fault(f"{where}: parse_commit.json is there, a parse-masks commit is in progress; rerun parse-masks on it")
    for key, why in storage.refused_keys(root):  # a hostile or damaged bucket: never mirrored
        fault(f"{where.rstrip('/')}/{key}: object key refused, it leads outside the dataset ({why})")

    # ------------------------------------------------------------------ manifests
    r, tables = _tables(root, fault)
    stats = _stats(root, fault)
    if stats is not None:
        integrity.check_run(stats, fault)
        integrity.check_checksums(root, stats, fault)
    shard_docs: dict[str, Any] = {}
    for js in sorted((root / SHARD_DIR).glob("*.json")) if (root / SHARD_DIR).is_dir() else []:
        try:
            doc = json.loads(js.read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            fault(f"{js}: not valid JSON ({str(e)[:160]})")
            continue
        if integrity.check_shard_json(root, js, doc, fault):
            shard_docs[js.stem] = doc
    dup_summary = integrity.check_duplicates(root, fault)
    if r is None or "shards" not in tables:
        rep.summary = {"photos": None}
        return rep
    integrity.check_photo_rows(root, root / "photos.parquet", sorted(shard_docs), fault)
    rows.row_faults(r, fault)

    # ------------------------------------------------------------------ shards
    srows = tables["shards"].to_pylist()
    listed = {x[SHARD] for x in srows}
    on_disk = {p.stem for p in (root / SHARD_DIR).glob("*.json")} if (root / SHARD_DIR).is_dir() else set()
    for s in sorted(on_disk - listed):
        fault(f"{SHARD_DIR}/{s}: finished on disk but not in shards.parquet (rerun the command to finalize)")
    found = np.zeros(r.n, dtype=bool)  # photo rows found in a tar
    n_images, n_samples = _check_shards(root, srows, r, contents, found, fault)
    if contents:
        per_shard = rows.ShardRows(r)
        for name in sorted(listed):
            if isinstance(name, str) and storage.exists(root / SHARD_DIR / f"{name}.tar"):
                for i in [i for i in per_shard.rows(name) if not found[i]][:rows.LISTED]:
                    fault(f"photos.parquet: photo {r.pid(i)} says {name}/{r.value('key', i)} view "
                          f"{r.view_index[int(i)].as_py()} but it is not there")
        unlisted = (r.codes["shard"] >= 0) & ~np.isin(r.codes["shard"], [r.code("shard", x) for x in listed])
        for i in np.flatnonzero(unlisted)[:rows.LISTED]:
            fault(f"photos.parquet: photo {r.pid(i)} is in shard {r.value('shard', i)}, which shards.parquet does "
                  f"not list")
        rows.class_count_faults(root / "photos.parquet", fault)

    # ------------------------------------------------------------------ leakage, counts
    splits = rows.leakage_faults(r, fault)
    ok_by_id = rows.ok_per_identity(r)
    sc = rows.count_faults(r, stats, ok_by_id, fault)
    if "identities" in tables:
        rows.identity_faults(r, tables["identities"], splits, ok_by_id, fault)
    reasons = Counter({r.values["reason"][i]: int(k) for i, k in enumerate(
        np.bincount(r.codes["reason"][r.codes["reason"] >= 0], minlength=len(r.values["reason"])).tolist()) if k})
    rep.summary = {
        "photos": r.n,
        "status_counts": dict(sorted(sc.items())),
        "reason_counts": dict(sorted((k, v) for k, v in reasons.items() if k)),
        "identities": len(r.values["identity"]),
        "identities_with_ok": len(ok_by_id),
        "identities_by_split": {s: sum(1 for k, v in splits.items() if s in v and ok_by_id.get(k))
                                for s in sorted({x for v in splits.values() for x in v})},
        "shards": len(srows),
        "shards_by_split": dict(sorted(Counter(x[SHARD_SPLIT] for x in srows).items())),
        "samples": n_samples if contents else sum(x[NUM_SAMPLES] or 0 for x in srows),
        "images": n_images if contents else sum(x[NUM_IMAGES] or 0 for x in srows),
        "bytes": sum(x[SHARD_BYTES] or 0 for x in srows),
        "contents_checked": contents,
        **dup_summary,
    }
    return rep


def _check_shards(root: Path, srows: list[dict], r: rows.Rows, contents: bool, found: np.ndarray, fault
                  ) -> tuple[int, int]:
    """Every shards.parquet row's tar: present with its json and parquet, its bytes and sha256; with ``contents``
    every sample against the photo rows (``_check_tar``). Returns (images, samples) read."""
    n_images = n_samples = 0
    per_shard = rows.ShardRows(r) if contents else None
    keys_seen: dict[str, str] = {}
    for x in srows:
        name = x[SHARD]
        tar = integrity.tar_of(root, name, x[SHARD_PATH], fault)
        if tar is None:
            continue
        if not storage.exists(tar):
            fault(f"{storage.remote_of(tar) or tar}: shard in shards.parquet is missing")
            continue
        for ext in (".json", ".parquet"):
            if not tar.with_suffix(ext).exists():
                fault(f"{tar.with_suffix(ext)}: missing")
        size = storage.size(tar)
        if x[SHARD_BYTES] is not None and size != x[SHARD_BYTES]:
            fault(f"{tar}: {size} bytes, shards.parquet says {x[SHARD_BYTES]}")
        if x[SHARD_SHA256] is not None and sha256_file(tar) != x[SHARD_SHA256]:
            fault(f"{tar}: sha256 does not match shards.parquet (tampered or rewritten)")
        if per_shard is None:
            continue
        try:
            ns, ni = _check_tar(tar, name, x[SHARD_SPLIT], r, per_shard.by_pid(name), keys_seen, found, fault)
        except LapError as e:  # damaged tar (lapdata.dataset.reader names the file and the fault)
            fault(str(e))
            continue
        except Exception as e:  # noqa: BLE001 - any unreadable tar is one fault
            fault(f"{tar}: unreadable ({type(e).__name__}: {e})")
            continue
        if x[NUM_SAMPLES] is not None and ns != x[NUM_SAMPLES]:
            fault(f"{tar}: {ns} samples, shards.parquet says {x[NUM_SAMPLES]}")
        if x[NUM_IMAGES] is not None and ni != x[NUM_IMAGES]:
            fault(f"{tar}: {ni} images, shards.parquet says {x[NUM_IMAGES]}")
        n_images += ni
        n_samples += ns
    return n_images, n_samples


def _check_tar(tar: Path, name: str, shard_split: str, r: rows.Rows, here: dict[str, int], keys_seen: dict[str, str],
               found: np.ndarray, fault) -> tuple[int, int]:
    """The samples of one tar against the rows of its shard (``here``: photo_id -> row). Returns (samples, views)."""
    ns = ni = 0

    def bad_sample(e: Exception) -> bool:  # a member over the size limit: that sample is skipped
        fault(str(e))
        return True

    for d in iter_tar_samples(tar, handler=bad_sample):
        ns += 1
        k = d[KEY]
        where = f"{name}/{k}"
        if "." in k:
            fault(f"{where}: key contains a dot")
        if k in keys_seen:
            fault(f"{where}: sample key also in shard {keys_seen[k]}")
        keys_seen[k] = name
        if JSON not in d:
            fault(f"{where}: no json")
            continue
        try:
            doc = json.loads(d[JSON])
            views = doc["views"]
        except (ValueError, KeyError) as e:
            fault(f"{where}: bad json ({e})")
            continue
        if doc.get("split") != shard_split:
            fault(f"{where}: split {doc.get('split')!r} in a {shard_split} shard")
        expected = {JSON}
        for i, vm in enumerate(views):
            ni += 1
            expected |= _check_view(d, where, i, vm, fault)
            p = vm.get("photo_id")
            if p is None:
                fault(f"{where}: view {i} has no photo_id")
                continue
            row = here.get(str(p))
            if row is None:
                row = r.find(str(p))
                if row is None:
                    fault(f"{where}: view {i} photo {p} has no row in photos.parquet")
                    continue
            found[row] = True
            if (r.value("shard", row), r.value("key", row), r.view_index[row].as_py()) != (name, k, i):
                fault(f"{where}: view {i} photo {p}: manifest says shard={r.value('shard', row)} "
                      f"key={r.value('key', row)} view_index={r.view_index[row].as_py()}")
            if r.value("identity", row) != doc.get("identity"):
                fault(f"{where}: photo {p} identity {r.value('identity', row)!r} but the sample is "
                      f"{doc.get('identity')!r}")
            if r.value("split", row) != shard_split:
                fault(f"{where}: photo {p} split {r.value('split', row)!r} in a {shard_split} shard")
            if r.value("parser", row) is not None and "seg" not in vm.get("fields", []):
                fault(f"{where}: photo {p} was parsed ({r.value('parser', row)}) but its view has no seg")
        extra = sorted(set(f for f in d if not f.startswith("__")) - expected)
        if extra:
            fault(f"{where}: fields not described by its json: {extra}")
    return ns, ni


def _check_view(d: dict, where: str, i: int, vm: dict, fault) -> set[str]:
    """View ``i`` of a sample: its image (bytes = image_sha256) and listed fields present; returns its members."""
    ext = vm.get("image_ext", "jpg")
    img_field = image_member(i, ext)
    members = {img_field}
    data = d.get(img_field)
    bad = image_fault(d, i, vm)
    if bad is not None:
        fault(f"{where}: {bad}")
    if data is None:
        return members
    for fname in vm.get("fields", []):
        if fname not in EXTRA_FIELDS:
            fault(f"{where}: view {i} lists unknown field {fname!r}")
            continue
        fk = field_member(i, fname)
        members.add(fk)
        if fk not in d:
            fault(f"{where}: view {i} field {fname} listed but {fk} missing")
        elif fname in ("depth", "cdepth") and f"{fname}_range" not in vm:
            fault(f"{where}: view {i} has {fname} but no {fname}_range")
        elif fname == "seg":
            ssz, isz = _png_size(d[fk]), _png_size(data)
            if ssz is None or ssz != isz:
                fault(f"{where}: view {i} seg size {ssz} differs from image size {isz}")
    return members


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
