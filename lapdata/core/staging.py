"""Mounts: a dataset URL's small files mirrored into a local staging folder, so the local code runs on it.

``mount(url)`` mirrors the shard jsons and parquets, manifests, run files and pictures into the staging folder
(``$LAPDATA_STAGING`` or ``~/.cache/lapdata/staging``; one folder per dataset URL for its writer, the holder of its
lease, ``lapdata.core.locks``, and one for its readers, ``reader=True``: audit, merge's parts) and registers it
(``lapdata.core.storage.MOUNTS``: ``storage.open_read`` of an absent staged tar streams the remote object). A writer
commits with ``push`` (a shard's tar, parquet, then json: the json key marks it finished) and ``push_tree``
(manifests, stats.json last); ``sync_down`` fetches what the remote has newer. A listed key that would land outside
the staging folder is refused, counted and named (``refused_keys``); hidden keys (the lease) are skipped. The
module doc of ``lapdata.core.storage`` says why a dataset URL is mounted rather than re-implemented.

    root = mount("s3://bucket/lap/celeba")    # Path of the staging folder
    push(root, ["stats.json"])                # uploads the named files to the remote
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Iterable

from lapdata.core import storage
from lapdata.core.atomic import atomic_path
from lapdata.core.paths import escape_reason

_REFUSED: dict[Path, list[tuple[str, str]]] = {}  # staging folder -> [(key, why refused)] of its last sync


def staging_dir(url: str, reader: bool = False) -> Path:
    """The local staging folder of a dataset URL (``$LAPDATA_STAGING``/<hash>-<name>): its writer's, or with
    ``reader`` its readers' (``...-<name>.read``), which never holds a file a writer staged."""
    base = Path(os.environ.get("LAPDATA_STAGING") or Path.home() / ".cache" / "lapdata" / "staging")
    name = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/").rsplit("/", 1)[-1])[:40] or "root"
    folder = f"{hashlib.sha256(url.rstrip('/').encode()).hexdigest()[:12]}-{name}" + (".read" if reader else "")
    return (base / folder).absolute()


def mount(url: str, staging: str | os.PathLike | None = None, *, pull: bool = True, reader: bool = False) -> Path:
    """Mirror the small files of the dataset at ``url`` into a staging folder (tars are read remotely) and register
    it; returns the staging folder. Local files the remote no longer has are removed (the remote is the truth).
    A writer mounts under its lease (``lapdata.core.locks.writer_lock``); a command that only reads mounts with
    ``reader`` (its own folder: the prune never touches what a running writer staged)."""
    url = url.rstrip("/")
    root = Path(staging).absolute() if staging else staging_dir(url, reader)
    root.mkdir(parents=True, exist_ok=True)
    storage.MOUNTS[root] = url
    if pull:
        sync_down(root, prune=True)
    return root


def unmount(root: str | os.PathLike) -> None:
    storage.MOUNTS.pop(Path(root).absolute(), None)


STATE = ".lapdata-sync.json"  # in a staging folder: {relative name: [local stamp, remote signature] as last synced}


def _state(root: Path) -> dict[str, list]:
    import json

    try:
        return json.loads((root / STATE).read_text())
    except (OSError, ValueError):
        return {}


def _save_state(root: Path, state: dict[str, list]) -> None:
    import json

    with atomic_path(root / STATE) as tmp:
        tmp.write_text(json.dumps(state, sort_keys=True))


def _local_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _stamp(p: Path) -> str:
    """A local file's version (size and modification time): compared, never hashed, so a mount of a large dataset
    does not read its files."""
    st = p.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def key_escape(root: Path, key: str) -> str | None:
    """Why a listed key would not be a file inside the staging folder ``root`` (``lapdata.core.paths.escape_reason``:
    absolute, ``..``, symlinked out; here also an empty component, ``a//b`` or ``a/``), or None."""
    if any(c == "" for c in key.split("/")[1:]) or key.endswith("/"):
        return "empty component in the key"
    return escape_reason(root, key)


def refused_keys(root: str | os.PathLike) -> list[tuple[str, str]]:
    """The keys the last sync of the mount at ``root`` refused: [(key, why)] (never written anywhere)."""
    return list(_REFUSED.get(Path(root).absolute(), []))


def sync_down(root: str | os.PathLike, prune: bool = False) -> int:
    """Download the non-tar objects of the mount at ``root`` that are missing locally or differ from what was last
    seen; with ``prune`` (when mounting) delete local files the remote lacks (tars excepted: a local tar is a
    staged shard being committed). Keys that would land outside ``root`` are refused (``refused_keys``, one
    warning naming the first), hidden keys skipped. Returns files fetched."""
    root = Path(root).absolute()
    url = storage.MOUNTS[root]
    listing = storage.listing(url)
    refused = [(k, why) for k in sorted(listing) if (why := key_escape(root, k)) is not None]
    _REFUSED[root] = refused
    if refused:
        from lapdata.core.logs import get_logger, warn_once

        warn_once(get_logger("lapdata.core.staging"),
                  f"{url}: {len(refused)} object key(s) refused, they would be written outside the staging folder "
                  f"(e.g. {url}/{refused[0][0]}: {refused[0][1]}); the dataset is damaged or tampered with")
    bad = {k for k, _ in refused}
    remote = {k: v for k, v in listing.items() if k not in bad and not storage.hidden(k)}
    state = _state(root)
    fetched = 0
    fs, base = storage.filesystem(url)
    for rel, (n, sig) in sorted(remote.items()):
        if rel.endswith(".tar"):
            continue
        dst = root / rel
        seen = state.get(rel)
        if dst.is_file() and dst.stat().st_size == n and seen and seen[1] == sig and _stamp(dst) == seen[0]:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        with storage.store_errors(storage.join(url, rel)), atomic_path(dst) as tmp:
            fs.get_file(f"{base.rstrip('/')}/{rel}", str(tmp))
        state[rel] = [_stamp(dst), sig]
        fetched += 1
    for rel in _local_files(root) if prune else []:
        if rel not in remote and not rel.endswith(".tar"):
            (root / rel).unlink()
            state.pop(rel, None)
    _save_state(root, {k: v for k, v in state.items() if k in remote or not prune})
    return fetched


def push(root: str | os.PathLike, names: Iterable[str], *, drop_tars: bool = True, url: str | None = None) -> None:
    """Upload the named files (relative to ``root``) to its remote, in the given order; with ``drop_tars`` a
    pushed tar's local copy is deleted (staging keeps only the small files). ``url`` for a process that did not
    mount ``root`` (a worker: it records nothing)."""
    root = Path(root).absolute()
    mounted = storage.MOUNTS.get(root)
    url = url or mounted
    if url is None:
        return
    state = _state(root) if mounted else None
    for rel in names:
        local = root / rel
        storage.upload(local, storage.join(url, rel))
        if rel.endswith(".tar"):
            if drop_tars:
                local.unlink()
        elif state is not None:  # its new remote signature is unknown here: the next sync fetches it once
            state[rel] = [_stamp(local), None]
    if state is not None:
        _save_state(root, state)


def push_tree(root: str | os.PathLike, last: Iterable[str] = ("stats.json",), skip: Iterable[str] = ()) -> int:
    """Upload every local file of the mount at ``root`` that differs from its remote copy as last seen (tars always:
    a staged tar is not committed yet), the ``last`` names after all others (stats.json: a finished dataset's last
    key); names starting with a ``skip`` prefix stay local (e.g. a backend's cache). Returns files pushed."""
    root = Path(root).absolute()
    if root not in storage.MOUNTS:
        return 0
    state = _state(root)
    files = [n for n in _local_files(root) if not n.startswith(tuple(skip))]
    changed = [n for n in files if n.endswith(".tar") or (state.get(n) or [None])[0] != _stamp(root / n)]
    late = [n for n in last if n in changed]
    push(root, [n for n in changed if n not in late] + late)
    return len(changed)
