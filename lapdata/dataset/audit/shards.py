"""audit's shard checks: each shards.parquet row's tar present with its json and parquet, its bytes and sha256; with
``contents``, every sample against the photo rows (keys unique and dot-free, identity and split, each view's image
against its ``image_sha256``, the fields its json lists, a seg map the image's size). Called by
``lapdata.dataset.audit.run``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from lapdata.core import storage
from lapdata.core.errors import LapError
from lapdata.dataset.audit import integrity as integrity
from lapdata.dataset.audit import rows as rows
from lapdata.dataset.manifests import sha256_file
from lapdata.dataset.reader import iter_tar_samples
from lapdata.dataset.sample import EXTRA_FIELDS, JSON, KEY, field_member, image_fault, image_member
from lapdata.dataset.schema import NUM_IMAGES, NUM_SAMPLES, SHARD, SHARD_BYTES, SHARD_PATH, SHARD_SHA256, SHARD_SPLIT


def _png_size(data: bytes) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:
        return None


def check_shards(root: Path, srows: list[dict], r: rows.Rows, contents: bool, found: np.ndarray, fault
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
