"""parse-masks' commit: on disk two renames, on an object store (no rename) a journal, then a roll-forward copy.

On disk (``swap_paths``/``finish_swap``/``drop_old``): ``DIR -> DIR.parse-old``, ``DIR.parse-tmp -> DIR``, then
DIR.parse-old is removed (or kept as DIR.pre-parse-<time>); an interrupted swap is completed by the next run. An
object store has no rename,
so the new version URL.parse-tmp/ (written, finalized and audited like the local one) is committed in three steps:

1. ``URL/parse_commit.json`` is written: the journal naming the version (its URL and every key with its size).
   This single PUT is the commit point: before it, URL is the old version untouched; after it, the new version
   is decided.
2. Roll forward: every key of the version is copied server-side into URL (shard tars first, then their parquets,
   then their jsons, the manifests, stats.json last), then the keys of URL the version does not have are deleted
   (with ``keep_old`` the old version is first copied to URL.pre-parse-<time>/).
3. The journal is deleted, then URL.parse-tmp/.

A run killed after step 1 is finished by the next ``parse-masks`` of URL (``finish_commit``: the copy is
idempotent, the source stays until the journal is gone); ``lapdata audit`` reports a dataset whose journal is
present as a commit in progress. Readers that must never see a half-committed dataset read a version that has no
journal (e.g. audit first).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from lapdata.core import storage
from lapdata.dataset.schema import SHARD_DIR

JOURNAL = "parse_commit.json"
TMP_SUFFIX = ".parse-tmp"
OLD_SUFFIX = ".parse-old"
COMPLETE_FILE = "parse_complete.json"


def swap_paths(root: Path) -> tuple[Path, Path]:
    return root.with_name(root.name + TMP_SUFFIX), root.with_name(root.name + OLD_SUFFIX)


def drop_old(root: Path, keep_old: bool) -> None:
    """Remove DIR.parse-old, or keep it as DIR.pre-parse-<UTC time>."""
    _, old = swap_paths(root)
    if keep_old:
        os.replace(old, root.with_name(root.name + time.strftime(".pre-parse-%Y%m%d-%H%M%S", time.gmtime())))
    else:
        shutil.rmtree(old)


def finish_swap(root: Path, keep_old: bool) -> bool:
    """Complete an interrupted swap (DIR missing or old/tmp left over); True when something was done."""
    tmp, old = swap_paths(root)
    if not root.exists() and old.exists() and tmp.is_dir() and (tmp / COMPLETE_FILE).exists():
        os.replace(tmp, root)
        drop_old(root, keep_old)
        return True
    if root.exists() and old.exists() and not tmp.exists() and (root / COMPLETE_FILE).exists():
        drop_old(root, keep_old)
        return True
    return False


def _order(key: str) -> tuple:
    """Copy order: shard tars, shard parquets, shard jsons, other files, stats.json last."""
    if key.startswith(SHARD_DIR + "/"):
        return (0, {".tar": 0, ".parquet": 1}.get(key[key.rfind("."):], 2), key)
    return (1, key == "stats.json", key)


def commit(url: str, version: str, *, keep_old: bool = False) -> None:
    """Commit the audited version at ``version`` (URL.parse-tmp) into ``url`` (steps above)."""
    keys = storage.list_files(version)
    if keep_old:
        old = storage.list_files(url)
        dst = url + time.strftime(".pre-parse-%Y%m%d-%H%M%S", time.gmtime())
        for k in sorted(old, key=_order):
            storage.copy(storage.join(url, k), storage.join(dst, k))
    doc = {"version": version, "keys": keys, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    fs_url = storage.join(url, JOURNAL)
    _put_json(fs_url, doc)
    roll_forward(url, doc)


def _put_json(url: str, doc: dict) -> None:
    import fsspec

    with fsspec.open(url, "wb") as f:
        f.write((json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def roll_forward(url: str, doc: dict) -> None:
    """Step 2 and 3 for the journal ``doc`` (idempotent)."""
    version, keys = doc["version"], dict(doc["keys"])
    have = storage.list_files(url)
    for k in sorted(keys, key=_order):
        if k == JOURNAL:
            continue
        storage.copy(storage.join(version, k), storage.join(url, k))
    for k in sorted(set(have) - set(keys) - {JOURNAL}):
        storage.remove(storage.join(url, k))
    storage.remove(storage.join(url, JOURNAL))
    storage.remove(version, recursive=True)


def finish_commit(url: str) -> bool:
    """Roll forward a commit a killed run left (its journal in ``url``); True when there was one."""
    j = storage.join(url, JOURNAL)
    if not storage.exists(j):
        return False
    roll_forward(url, json.loads(storage.read_bytes(j)))
    return True
