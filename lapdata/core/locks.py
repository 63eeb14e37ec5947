"""One writer per output: a lock file on disk, a lease object on an object store; a second writer is refused.

Every command that writes a dataset or a run folder (ingest, merge, build-synthetic, parse-masks, ``lapmodel
train``) holds ``writer_lock(OUT)`` for its whole run, before it reads or prunes anything of OUT::

    with writer_lock(cfg.out, "lapdata ingest"):
        ...                                  # a second writer of OUT: one LapError naming the holder

On disk: ``.OUT.lapdata-lock`` beside OUT (outside it: OUT may not exist yet, parse-masks renames it) locked with
``flock`` (the kernel releases it when the process dies, ``kill -9``
included, so a lock file left behind is never stale: the next writer takes it; on NFS, flock is the server's lock).
The file holds the owner (host, pid, command, since), named in the refusal. A filesystem without locks (ENOLCK /
EOPNOTSUPP) falls back to creating the file with ``O_EXCL``: a file whose owner is a dead process of this host is
stale and taken over; one of another host must be removed by hand once that run is known to be gone.

On an object store there is no lock, so ``URL/.lapdata-lease`` is a lease, as S3 commit protocols do: created with a
conditional PUT (``If-None-Match: *``: exactly one of two racing writers gets it), renewed by a heartbeat thread
every quarter of its term (``If-Match`` on its last version: a writer that lost it finds out) and deleted at the
end. A lease is stale, and taken over with ``If-Match`` (one winner), when its term is over (``LAPDATA_LEASE_SECONDS``,
default 600 s after its last renewal, by the clocks of the machines) or when its owner is a dead process of this host
(a killed run resumed on the same machine at once). Filesystems without conditional PUTs get the same protocol best
effort (check, then write). Hidden keys are not part of the dataset (``lapdata.core.storage.hidden``).

Locks are re-entrant within a process (a recipe step calling a writer that locks the same OUT). Readers (audit) take
no lock; on an object store they mirror into their own staging folder (``staging.mount(url, reader=True)``).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lapdata.core import storage

from lapdata.core.errors import LapError

LOCK_SUFFIX = ".lapdata-lock"  # on disk: .NAME.lapdata-lock beside the folder NAME
LEASE_NAME = ".lapdata-lease"  # on an object store: URL/.lapdata-lease
_HELD: dict[str, int] = {}     # lock key -> depth (re-entrant in one process)


class Busy(LapError):
    """Another writer holds OUT."""


def lease_seconds() -> float:
    return float(os.environ.get("LAPDATA_LEASE_SECONDS") or 600)


def _owner(command: str, token: str) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "command": command, "token": token,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "boot": _boot_id()}


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _dead_here(doc: dict) -> bool:
    """True when the owner ``doc`` names a process of this machine (same host and boot) that no longer runs."""
    if doc.get("host") != socket.gethostname() or doc.get("boot", "") != _boot_id() or not isinstance(doc.get("pid"), int):
        return False
    try:
        os.kill(doc["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _describe(doc: dict | None) -> str:
    if not doc:
        return "owner unknown"
    return f"{doc.get('command', '?')}, pid {doc.get('pid', '?')} on {doc.get('host', '?')} since {doc.get('since', '?')}"


def _busy(out: str, doc: dict | None, how: str) -> Busy:
    return Busy(f"{out}: another writer is running on it ({_describe(doc)}); two writers would mix their files: wait "
                f"for it to finish{how}")


@contextmanager
def writer_lock(out: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold the writer lock of OUT (a folder or a dataset URL) for the block; Busy when another writer holds it."""
    url = storage.is_url(out)
    key = str(out).rstrip("/") if url else str(Path(out).expanduser().resolve())
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    with (_lease(key, command) if url else _file_lock(Path(key), command)):
        _HELD[key] = 1
        try:
            yield
        finally:
            _HELD.pop(key, None)


# ------------------------------------------------------------------------------------------------------ on disk


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of folder OUT: ``.NAME.lapdata-lock`` in its (resolved) parent."""
    p = Path(out).expanduser().resolve()
    return p.parent / f".{p.name}{LOCK_SUFFIX}"


def _read(p: Path) -> dict | None:
    try:
        doc = json.loads(p.read_text())
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None


@contextmanager
def _file_lock(out: Path, command: str) -> Iterator[None]:
    import fcntl

    out.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(out)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(str(out), _read(path), "") from None
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            with _exclusive_file(out, path, command):
                yield
            return
        try:  # the previous holder may have unlinked the file between our open and our flock: lock the new one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(_owner(command, uuid.uuid4().hex)) + "\n").encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked: a waiting opener sees another inode and retries
        os.close(fd)


@contextmanager
def _exclusive_file(out: Path, path: Path, command: str) -> Iterator[None]:
    """The fallback without flock: the lock file created with O_EXCL; a dead local owner's file is taken over."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            doc = _read(path)
            if doc is None or not _dead_here(doc):
                raise _busy(str(out), doc, f", or (if that run is gone) remove {path}") from None
            path.unlink(missing_ok=True)  # stale: its process is dead
    else:
        raise _busy(str(out), _read(path), "")
    try:
        os.write(fd, (json.dumps(_owner(command, uuid.uuid4().hex)) + "\n").encode())
        os.close(fd)
        yield
    finally:
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------------ object store


class _Lease:
    """The lease object of one URL held by this process, renewed by a heartbeat thread."""

    def __init__(self, url: str, command: str) -> None:
        self.key = storage.join(url, LEASE_NAME)
        self.url = url
        self.doc = _owner(command, uuid.uuid4().hex)
        self.version: str | None = None
        self.lost: str | None = None
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def body(self) -> bytes:
        return json.dumps({**self.doc, "expires": time.time() + lease_seconds()}).encode()

    def acquire(self) -> None:
        try:
            storage.put_bytes(self.key, self.body(), create=True)
        except storage.Conflict:
            self.take_over()
        self.version = storage.signature(self.key)

    def take_over(self) -> None:
        """The lease exists: take it when it is stale (expired, or its owner died on this machine), else Busy."""
        version = storage.signature(self.key)
        try:
            doc = json.loads(storage.read_bytes(self.key)) if version is not None else None
        except (FileNotFoundError, ValueError):
            doc = None
        if version is None:  # released meanwhile: one more conditional create
            try:
                storage.put_bytes(self.key, self.body(), create=True)
            except storage.Conflict:
                raise _busy(self.url, None, " (another writer took the lease first)") from None
            return
        stale = doc is None or not isinstance(doc.get("expires"), (int, float)) or doc["expires"] < time.time() \
            or _dead_here(doc)
        if not stale:
            raise _busy(self.url, doc, f" (its lease {self.key} expires {lease_seconds():.0f} s after its last "
                                       f"renewal if that run died elsewhere)")
        try:
            storage.put_bytes(self.key, self.body(), if_match=version)
        except storage.Conflict:
            raise _busy(self.url, None, " (another writer took the stale lease first)") from None

    def renew(self) -> None:
        while not self.stop.wait(lease_seconds() / 4):
            with self.lock:
                try:
                    storage.put_bytes(self.key, self.body(), if_match=self.version or "")
                    self.version = storage.signature(self.key)
                except (storage.Conflict, LapError, OSError) as e:
                    self.lost = f"{type(e).__name__}: {e}"
                    return

    def release(self) -> None:
        self.stop.set()
        with self.lock:
            try:
                cur = json.loads(storage.read_bytes(self.key))
            except (FileNotFoundError, ValueError, LapError):
                return
            if isinstance(cur, dict) and cur.get("token") == self.doc["token"]:
                storage.remove(self.key)


@contextmanager
def _lease(url: str, command: str) -> Iterator[None]:
    lease = _Lease(url, command)
    lease.acquire()
    beat = threading.Thread(target=lease.renew, name="lapdata-lease", daemon=True)
    beat.start()
    try:
        yield
    finally:
        lease.release()
        beat.join(timeout=5)
    if lease.lost:
        raise LapError(f"{url}: this run lost its writer lease ({lease.lost}); another writer may have written "
                       f"too: run lapdata audit on it")
