"""Object storage for every path the toolkit reads or writes: local paths, or fsspec URLs (``s3://``, ``gs://``, ...).

Credentials and endpoints come from the filesystem library's own environment and config, never from our flags
(s3fs: ``AWS_ACCESS_KEY_ID`` / ``AWS_PROFILE`` / ``~/.aws``; an S3-compatible server: ``FSSPEC_S3_ENDPOINT_URL``;
gcsfs: ``GOOGLE_APPLICATION_CREDENTIALS``). fsspec is imported only when a URL is used.

Datasets on an object store are *mounted* (``lapdata.core.staging.mount(url)``): the small files (shard jsons and parquets, manifests,
run files, pictures) are mirrored into a local staging folder and the unchanged local code runs on it; shard tars are
never mirrored whole: every tar reader opens them through ``open_read``, which streams the remote object when the
local file is absent. Writers commit a shard with ``staging.push``: the tar, then its parquet, then its json (the json's key
marks the shard finished, as its file does on disk; an object PUT is atomic, so a killed upload leaves no partial
object). Staging: ``$LAPDATA_STAGING`` or ``~/.cache/lapdata/staging``, one folder per dataset URL for its writer
(the holder of its lease, ``lapdata.core.locks``) and one for its readers (``mount(url, reader=True)``: audit, merge's
parts), so a reader never prunes the files a running writer has staged and not committed yet.

A listed key that would not land inside its staging folder (``a/../../x``, ``a//x``, an absolute path) is refused:
never written, counted and named (a warning; ``staging.refused_keys(root)``, an audit fault). Hidden keys (a component
starting with a dot, e.g. the lease ``.lapdata-lease``) are not part of the dataset: never listed nor mirrored.

Failures of the object store itself (wrong credentials, a missing bucket, an unreachable endpoint: the PermissionError,
botocore/aiohttp exception families) are turned into one-line LapErrors naming the URL at this boundary
(``store_errors``); a missing key stays a FileNotFoundError for the caller to decide.

    root = staging.mount("s3://bucket/lap/celeba")    # Path of the staging folder
    open_read(root / "shards/train-000000.tar")       # streams s3://bucket/lap/celeba/shards/train-000000.tar
    staging.push(root, ["stats.json"])                # uploads the named files to the remote
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from lapdata.core.atomic import atomic_path
from lapdata.core.errors import LapError, require

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
MOUNTS: dict[Path, str] = {}  # staging folder -> dataset URL (this process; lapdata.core.staging.mount adds)
READ_BLOCK = 8 << 20  # fsspec read-ahead block: a few shard members per request


def is_url(p: str | os.PathLike) -> bool:
    """True for an fsspec URL other than file:// (``s3://b/k``, ``gs://b/k``, ``memory://x``)."""
    m = _SCHEME.match(str(p))
    return bool(m) and m.group(1).lower() not in ("file",)


def strip_file(p: str | os.PathLike) -> str:
    s = str(p)
    return s[len("file://"):] if s.startswith("file://") else s


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a URL or a path."""
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def filesystem(url: str):
    fsspec = require("fsspec", "cluster")
    if url.startswith(("s3://", "s3a://")):
        require("s3fs", "cluster")  # fsspec's s3:// filesystem (a plugin: fsspec imports it by name)
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise LapError(f"{url}: no filesystem for this URL ({type(e).__name__}: {e}); install its fsspec package "
                       f"(s3fs for s3://, gcsfs for gs://)") from None
    # other processes (workers, other machines) write the same keys: never answer from a stale listing cache
    fs.invalidate_cache(path)
    return fs, path


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The exception families of the object-store clients that are loaded (botocore, aiohttp, google-auth): a
    client that is not imported cannot have raised."""
    found: list[type[BaseException]] = []
    for mod, names in (("botocore.exceptions", ("BotoCoreError", "ClientError")), ("aiohttp", ("ClientError",)),
                       ("google.auth.exceptions", ("GoogleAuthError",))):
        m = sys.modules.get(mod)
        found += [getattr(m, n) for n in names if m is not None and isinstance(getattr(m, n, None), type)]
    return tuple(found)


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"


def missing_bucket(e: BaseException) -> bool:
    """True for the FileNotFoundError of a bucket that does not exist (not of a missing key)."""
    text = str(e).lower()
    return isinstance(e, FileNotFoundError) and ("bucket does not exist" in text or "nosuchbucket" in text)


@contextmanager
def store_errors(url: str) -> Iterator[None]:
    """Object-store failures inside the block -> one LapError naming ``url``: access denied (wrong or missing
    credentials), a missing bucket, an unreachable endpoint or any other client/transport error. A missing key
    (FileNotFoundError) and everything else pass through."""
    try:
        yield
    except LapError:
        raise
    except PermissionError as e:
        raise LapError(f"{url}: access denied by the object store ({_first_line(e)}); check the credentials "
                       f"(AWS_PROFILE / AWS_ACCESS_KEY_ID, ~/.aws; GOOGLE_APPLICATION_CREDENTIALS)") from None
    except FileNotFoundError as e:
        if missing_bucket(e):
            raise LapError(f"{url}: the bucket does not exist ({_first_line(e)}); create it or fix the URL") from None
        raise
    except _transport_errors() as e:
        raise LapError(f"{url}: object store not reachable or refused the request ({_first_line(e)}); check the "
                       f"endpoint (FSSPEC_S3_ENDPOINT_URL), the network and the credentials") from None


def remote_of(path: str | os.PathLike) -> str | None:
    """The URL of a file under a mounted staging folder (None when not mounted)."""
    p = Path(path).absolute()
    for root, url in MOUNTS.items():
        if p == root or root in p.parents:
            rel = p.relative_to(root).as_posix()
            return url if rel == "." else join(url, rel)
    return None


def _where(path: str | os.PathLike) -> str:
    """A URL, or the local path, or (absent locally, under a mount) the remote URL."""
    s = strip_file(path)
    if is_url(s) or os.path.exists(s):
        return s
    return remote_of(s) or s


def open_read(path: str | os.PathLike) -> IO[bytes]:
    """A seekable binary reader: a local file, or the remote object (streamed). FileNotFoundError when absent."""
    where = _where(path)
    if not is_url(where):
        return open(where, "rb")
    fs, p = filesystem(where)
    try:
        with store_errors(where):
            return fs.open(p, "rb", block_size=READ_BLOCK)
    except (FileNotFoundError, LapError):
        raise
    except OSError as e:
        raise OSError(f"{where}: {type(e).__name__}: {e}") from None


def read_bytes(path: str | os.PathLike) -> bytes:
    with open_read(path) as f:
        return f.read()


def exists(path: str | os.PathLike) -> bool:
    where = _where(path)
    if not is_url(where):
        return os.path.exists(where)
    fs, p = filesystem(where)
    with store_errors(where):
        return bool(fs.exists(p))


def size(path: str | os.PathLike) -> int:
    where = _where(path)
    if not is_url(where):
        return os.path.getsize(where)
    fs, p = filesystem(where)
    with store_errors(where):
        return int(fs.size(p))


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a local or remote file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open_read(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hidden(key: str) -> bool:
    """A key that is not part of a dataset: a component starting with a dot (``.lapdata-lease``; ``..`` is not
    hidden, it is refused as leaving the dataset)."""
    return any(c.startswith(".") and c not in (".", "..") for c in key.split("/"))


def list_files(url: str) -> dict[str, int]:
    """Every object under ``url`` (recursive), hidden keys excepted: {relative key: size}."""
    return {k: n for k, (n, _) in listing(url).items() if not hidden(k)}


def listing(url: str) -> dict[str, tuple[int, str]]:
    """{relative key: (size, version signature)}: the signature (ETag, else modification time) changes when the
    object is rewritten, even with the same size."""
    fs, p = filesystem(url)
    p = p.rstrip("/")
    try:
        with store_errors(url):
            found = fs.find(p, detail=True)
    except FileNotFoundError:
        return {}
    out = {}
    for k, v in found.items():
        if k.startswith(p + "/"):
            sig = v.get("ETag") or v.get("etag") or v.get("md5Hash") or v.get("LastModified") or v.get("mtime") \
                or v.get("created")
            out[k[len(p) + 1:]] = (int(v.get("size") or 0), str(sig))
    return out


def glob(pattern: str) -> list[str]:
    """The URLs matching a glob pattern (``s3://b/ds/shards/train-*.tar``), sorted."""
    fs, p = filesystem(pattern)
    first = min(i for i in (pattern.find(c) for c in "*?[") if i >= 0)
    base = pattern[: pattern.rfind("/", 0, first)]  # the pattern's folder before its first wildcard, as given
    _, base_path = filesystem(base)
    with store_errors(pattern):
        return sorted(base + k[len(base_path.rstrip("/")):] for k in fs.glob(p))


def upload(local: str | os.PathLike, url: str) -> None:
    fs, p = filesystem(url)
    with store_errors(url):
        fs.put_file(str(local), p)


class Conflict(Exception):
    """A conditional write lost: the object exists (``create``) or is not the version given (``if_match``)."""


def put_bytes(url: str, data: bytes, *, create: bool = False, if_match: str | None = None) -> None:
    """Write one object. ``create``: only if it does not exist (S3: a conditional PUT, ``If-None-Match: *``);
    ``if_match``: only if its current version signature (``signature``) is this one (S3: ``If-Match``; other
    filesystems: compared, then written: best effort). Conflict when the condition fails."""
    fs, p = filesystem(url)
    s3 = url.startswith(("s3://", "s3a://"))
    with store_errors(url):
        if if_match is not None:
            if not s3:
                if signature(url) != if_match:
                    raise Conflict(url)
            else:
                try:
                    fs.pipe_file(p, data, IfMatch=if_match)
                except (FileNotFoundError, OSError) as e:
                    if isinstance(e, PermissionError) or missing_bucket(e):
                        raise
                    raise Conflict(f"{url}: {_first_line(e)}") from None
                return
        try:
            fs.pipe_file(p, data, mode="create" if create else "overwrite")
        except FileExistsError:
            raise Conflict(url) from None


def signature(url: str) -> str | None:
    """The version signature of one object (its ETag, else its modification time); None when it does not exist."""
    fs, p = filesystem(url)
    with store_errors(url):
        try:
            v = fs.info(p)
        except FileNotFoundError:
            return None
    sig = v.get("ETag") or v.get("etag") or v.get("md5Hash") or v.get("LastModified") or v.get("mtime") \
        or v.get("created")
    return str(sig)


def transfer(src: str, dst: str, link: bool = False) -> None:
    """Copy one file between any two places: to a local path atomically (``link``: a hard link between local
    paths), between objects of one filesystem server-side, otherwise streamed (an object PUT is atomic: nothing
    half-written either way)."""
    if not is_url(dst):
        with atomic_path(dst) as tmp:
            if link and not is_url(src):
                os.link(src, tmp)
            else:
                with open_read(src) as f, open(tmp, "wb") as g:
                    shutil.copyfileobj(f, g, 1 << 20)
    elif not is_url(src):
        upload(src, dst)
    elif src.split("://")[0] == dst.split("://")[0]:
        copy(src, dst)
    else:
        fs, p = filesystem(dst)
        with store_errors(dst), open_read(src) as f, fs.open(p, "wb") as g:
            shutil.copyfileobj(f, g, 1 << 20)


def remove(url: str, recursive: bool = False) -> None:
    fs, p = filesystem(url)
    try:
        with store_errors(url):
            fs.rm(p, recursive=recursive)
    except FileNotFoundError:
        pass


def copy(src: str, dst: str) -> None:
    """Server-side copy of one object (same filesystem)."""
    fs, s = filesystem(src)
    _, d = filesystem(dst)
    with store_errors(dst):
        fs.copy(s, d)
