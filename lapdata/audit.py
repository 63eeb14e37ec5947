"""`lapdata audit DIR`: check that a dataset's shards and manifests agree (any lapdata step's output).

Checks (each failure is one fault line naming the file/shard/photo):

* manifests: photos/identities/shards parquet and stats.json exist and have the schemas of lapdata.schema (extra
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
  (duplicates.parquet, exact or near) across two splits;
* min-images: no written identity has fewer ok photos than the run's ``min_images`` (from stats.json config);
* integrity (``lapdata.audit_integrity``): the run is complete (no failed shards); the manifests' checksums
  (stats.json ``manifests``, shard json ``parquet_sha256``) match; photos.parquet equals the shard parquets +
  unsharded.parquet; every path read from a manifest stays inside the dataset (never read when it does not).

A folder that holds none of a dataset's files is a LapError (not a dataset), so is a path that is not a folder.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from . import audit_integrity as integrity
from . import storage
from .errors import LapError
from .schema import IDENTITIES, PHOTOS, SHARDS, STATUS_OK, STATUSES, check_schema
from .shards import (
    EXTRA_FIELDS,
    JSON,
    KEY,
    NUM_IMAGES,
    NUM_SAMPLES,
    SHARD,
    SHARD_BYTES,
    SHARD_DIR,
    SHARD_PATH,
    SHARD_SHA256,
    SHARD_SPLIT,
    field_member,
    image_member,
    iter_tar_samples,
)
from .writer import sha256_file

NUM_CLASSES = 19


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


def audit_dataset(root: str | Path, contents: bool = True, max_faults: int = 1000) -> AuditReport:
    """Audit the dataset at ``root``: a folder, or a URL (``s3://...``: its small files are mirrored, the tars
    streamed; ``lapdata.storage``)."""
    where = str(root)
    root = storage.mount(where) if storage.is_url(where) else Path(root)
    if not root.exists():
        raise LapError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise LapError(f"{root}: not a folder (lapdata audit takes a dataset folder)")
    if not any((root / n).exists() for n in ("photos.parquet", "shards.parquet", "stats.json", SHARD_DIR)):
        raise LapError(f"{root}: not a lapdata dataset (no photos.parquet, shards.parquet, stats.json or {SHARD_DIR}/)")
    rep = AuditReport(where)
    faults = rep.faults

    def fault(msg: str) -> None:
        if len(faults) < max_faults:
            faults.append(msg)
        elif len(faults) == max_faults:
            faults.append(f"... more faults not listed (limit {max_faults})")

    if (root / "parse_commit.json").exists():  # lapdata.parsing.commit: a version is being copied in
        fault(f"{where}: parse_commit.json is there, a parse-masks commit is in progress; rerun parse-masks on it")

    # ------------------------------------------------------------------ manifests
    tables = {}
    for name, schema in (("photos", PHOTOS), ("identities", IDENTITIES), ("shards", SHARDS)):
        p = root / f"{name}.parquet"
        if not p.exists():
            fault(f"{p}: missing")
            continue
        try:
            t = pq.read_table(p)
        except Exception as e:
            fault(f"{p}: unreadable parquet ({type(e).__name__}: {str(e)[:160]})")
            continue
        bad = check_schema(t, schema, p.name)
        for f in bad:
            fault(f)
        if not bad:  # a table without the contract's columns is not read further (its faults are listed)
            tables[name] = t
    stats = None
    if (root / "stats.json").exists():
        try:
            stats = json.loads((root / "stats.json").read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            fault(f"{root / 'stats.json'}: not valid JSON ({str(e)[:160]})")
        if stats is not None and not isinstance(stats, dict):
            fault(f"{root / 'stats.json'}: not a JSON object")
            stats = None
    else:
        fault(f"{root / 'stats.json'}: missing")
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
    if "photos" not in tables or "shards" not in tables:
        rep.summary = {"photos": None}
        return rep
    integrity.check_photo_rows(root, tables["photos"], sorted(shard_docs), fault)
    photos = tables["photos"].to_pydict()
    cols = set(photos)
    n = tables["photos"].num_rows

    def col(c):
        return photos[c] if c in cols else [None] * n

    pid, ident, split, status, shard, key, vidx = (col(c) for c in ("photo_id", "identity", "split", "status",
                                                                     "shard", "key", "view_index"))
    sha, parser, ccounts, reason = col("sha256"), col("parser"), col("class_counts"), col("reason")
    by_pid: dict[str, int] = {}
    for i, p in enumerate(pid):
        if p in by_pid:
            fault(f"photos.parquet: photo_id {p} appears twice (rows {by_pid[p]} and {i})")
        else:
            by_pid[p] = i
    for i, s in enumerate(status):
        if s not in STATUSES:
            fault(f"photos.parquet: photo {pid[i]} has status {s!r}")
        if s != STATUS_OK and shard[i] is not None:
            fault(f"photos.parquet: photo {pid[i]} has status {s} but is in shard {shard[i]}")
        if s == STATUS_OK and shard[i] is None:
            fault(f"photos.parquet: photo {pid[i]} ({ident[i]}) is ok but in no shard")

    # ------------------------------------------------------------------ shards
    srows = tables["shards"].to_pylist()
    listed = {r[SHARD] for r in srows}
    on_disk = {p.stem for p in (root / SHARD_DIR).glob("*.json")} if (root / SHARD_DIR).is_dir() else set()
    for s in sorted(on_disk - listed):
        fault(f"{SHARD_DIR}/{s}: finished on disk but not in shards.parquet (rerun the command to finalize)")
    found: set[int] = set()  # photo rows found in a tar
    keys_seen: dict[str, str] = {}
    n_images = n_samples = 0
    for r in srows:
        name = r[SHARD]
        tar = integrity.tar_of(root, name, r[SHARD_PATH], fault)
        if tar is None:
            continue
        if not storage.exists(tar):
            fault(f"{storage.remote_of(tar) or tar}: shard in shards.parquet is missing")
            continue
        for ext in (".json", ".parquet"):
            if not tar.with_suffix(ext).exists():
                fault(f"{tar.with_suffix(ext)}: missing")
        size = storage.size(tar)
        if r[SHARD_BYTES] is not None and size != r[SHARD_BYTES]:
            fault(f"{tar}: {size} bytes, shards.parquet says {r[SHARD_BYTES]}")
        digest = sha256_file(tar)
        if r[SHARD_SHA256] is not None and digest != r[SHARD_SHA256]:
            fault(f"{tar}: sha256 does not match shards.parquet (tampered or rewritten)")
        if not contents:
            continue
        ns = ni = 0

        def bad_sample(e: Exception) -> bool:  # a member over the size limit: that sample is skipped
            fault(str(e))
            return True

        try:
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
                if doc.get("split") != r[SHARD_SPLIT]:
                    fault(f"{where}: split {doc.get('split')!r} in a {r[SHARD_SPLIT]} shard")
                expected = {JSON}
                for i, vm in enumerate(views):
                    ni += 1
                    ext = vm.get("image_ext", "jpg")
                    img_field = image_member(i, ext)
                    expected.add(img_field)
                    data = d.get(img_field)
                    if data is None:
                        fault(f"{where}: view {i} image {img_field} missing")
                        continue
                    if vm.get("image_sha256") and hashlib.sha256(data).hexdigest() != vm["image_sha256"]:
                        fault(f"{where}: view {i} image bytes do not match its image_sha256")
                    for fname in vm.get("fields", []):
                        if fname not in EXTRA_FIELDS:
                            fault(f"{where}: view {i} lists unknown field {fname!r}")
                            continue
                        fk = field_member(i, fname)
                        expected.add(fk)
                        if fk not in d:
                            fault(f"{where}: view {i} field {fname} listed but {fk} missing")
                        elif fname in ("depth", "cdepth") and f"{fname}_range" not in vm:
                            fault(f"{where}: view {i} has {fname} but no {fname}_range")
                        elif fname == "seg":
                            ssz, isz = _png_size(d[fk]), _png_size(data)
                            if ssz is None or ssz != isz:
                                fault(f"{where}: view {i} seg size {ssz} differs from image size {isz}")
                    p = vm.get("photo_id")
                    if p is None:
                        fault(f"{where}: view {i} has no photo_id")
                        continue
                    row = by_pid.get(str(p))
                    if row is None:
                        fault(f"{where}: view {i} photo {p} has no row in photos.parquet")
                        continue
                    found.add(row)
                    if (shard[row], key[row], vidx[row]) != (name, k, i):
                        fault(f"{where}: view {i} photo {p}: manifest says shard={shard[row]} key={key[row]} "
                              f"view_index={vidx[row]}")
                    if ident[row] != doc.get("identity"):
                        fault(f"{where}: photo {p} identity {ident[row]!r} but the sample is {doc.get('identity')!r}")
                    if split[row] != r[SHARD_SPLIT]:
                        fault(f"{where}: photo {p} split {split[row]!r} in a {r[SHARD_SPLIT]} shard")
                    if parser[row] is not None and "seg" not in vm.get("fields", []):
                        fault(f"{where}: photo {p} was parsed ({parser[row]}) but its view has no seg")
                extra = sorted(set(f for f in d if not f.startswith("__")) - expected)
                if extra:
                    fault(f"{where}: fields not described by its json: {extra}")
        except LapError as e:  # damaged tar (lapdata.shards names the file and the fault)
            fault(str(e))
            continue
        except Exception as e:
            fault(f"{tar}: unreadable ({type(e).__name__}: {e})")
            continue
        if r[NUM_SAMPLES] is not None and ns != r[NUM_SAMPLES]:
            fault(f"{tar}: {ns} samples, shards.parquet says {r[NUM_SAMPLES]}")
        if r[NUM_IMAGES] is not None and ni != r[NUM_IMAGES]:
            fault(f"{tar}: {ni} images, shards.parquet says {r[NUM_IMAGES]}")
        n_images += ni
        n_samples += ns
    if contents:
        for i in range(n):
            if shard[i] is not None and i not in found and shard[i] in listed and storage.exists(root / SHARD_DIR / f"{shard[i]}.tar"):
                fault(f"photos.parquet: photo {pid[i]} says {shard[i]}/{key[i]} view {vidx[i]} but it is not there")
            if shard[i] is not None and shard[i] not in listed:
                fault(f"photos.parquet: photo {pid[i]} is in shard {shard[i]}, which shards.parquet does not list")
            cc = ccounts[i]
            if cc is not None and len(cc) != NUM_CLASSES:
                fault(f"photos.parquet: photo {pid[i]} class_counts has {len(cc)} entries, expected {NUM_CLASSES}")

    # ------------------------------------------------------------------ leakage
    id_splits: dict[str, set] = defaultdict(set)
    sha_splits: dict[str, set] = defaultdict(set)
    for i in range(n):
        if split[i] is not None:
            id_splits[ident[i]].add(split[i])
        if status[i] == STATUS_OK and sha[i] and split[i] is not None:
            sha_splits[sha[i]].add(split[i])
    leaked = sorted(k for k, v in id_splits.items() if len(v) > 1)
    for k in leaked[:50]:
        fault(f"split leakage: identity {k!r} is in {sorted(id_splits[k])}")
    if len(leaked) > 50:
        fault(f"split leakage: {len(leaked) - 50} more identities in several splits")
    dup_imgs = sorted(k for k, v in sha_splits.items() if len(v) > 1)
    for k in dup_imgs[:50]:
        fault(f"split leakage: image sha256 {k[:16]}... is in {sorted(sha_splits[k])}")

    # ------------------------------------------------------------------ counts
    sc = Counter(status)
    ok_by_id = Counter(ident[i] for i in range(n) if status[i] == STATUS_OK)
    if stats is not None:
        if stats.get("photos") is not None and stats["photos"] != n:
            fault(f"stats.json: photos {stats['photos']} but photos.parquet has {n} rows")
        if stats.get("status_counts") is not None and stats["status_counts"] != dict(sorted(sc.items())):
            fault(f"stats.json: status_counts {stats['status_counts']} but photos.parquet has {dict(sc)}")
        mi = (stats.get("config") or {}).get("min_images")
        if isinstance(mi, int):
            for k, v in sorted(ok_by_id.items()):
                if v < mi:
                    fault(f"identity {k!r} has {v} ok photos, under min_images {mi}")
    if "identities" in tables:
        id_rows = {r["identity"]: r for r in tables["identities"].to_pylist()}
        all_ids = set(ident)
        for k in sorted(all_ids - set(id_rows))[:50]:
            fault(f"identities.parquet: identity {k!r} of photos.parquet missing")
        for k in sorted(set(id_rows) - all_ids)[:50]:
            fault(f"identities.parquet: identity {k!r} has no photo rows")
        n_by_id = Counter(ident)
        for k, r in id_rows.items():
            if k not in all_ids:
                continue
            if r["num_photos"] is not None and r["num_photos"] != n_by_id[k]:
                fault(f"identities.parquet: {k!r} num_photos {r['num_photos']}, photos.parquet has {n_by_id[k]}")
            if r["num_ok"] is not None and r["num_ok"] != ok_by_id.get(k, 0):
                fault(f"identities.parquet: {k!r} num_ok {r['num_ok']}, photos.parquet has {ok_by_id.get(k, 0)}")
            if r["split"] is not None and r["split"] not in id_splits.get(k, {r['split']}):
                fault(f"identities.parquet: {k!r} split {r['split']} differs from its photos' {sorted(id_splits[k])}")

    rep.summary = {
        "photos": n,
        "status_counts": dict(sorted(sc.items())),
        "reason_counts": dict(sorted(Counter(x for x in reason if x).items())),
        "identities": len(set(ident)),
        "identities_with_ok": len(ok_by_id),
        "identities_by_split": {s: len({k for k, v in id_splits.items() if s in v and ok_by_id.get(k)})
                                for s in sorted({x for v in id_splits.values() for x in v})},
        "shards": len(srows),
        "shards_by_split": dict(sorted(Counter(r[SHARD_SPLIT] for r in srows).items())),
        "samples": n_samples if contents else sum(r[NUM_SAMPLES] or 0 for r in srows),
        "images": n_images if contents else sum(r[NUM_IMAGES] or 0 for r in srows),
        "bytes": sum(r[SHARD_BYTES] or 0 for r in srows),
        "contents_checked": contents,
        **dup_summary,
    }
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
