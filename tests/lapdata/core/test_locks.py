"""One writer per output (issue 21, defect 3): a second writer of a folder or a dataset URL is refused in one line
naming the holder (ingest, train), a lock left by a dead process is not stale or is taken over, a lease on an object
store is created conditionally and taken over only when stale, and a reader never prunes what a writer staged."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from lapdata.core import locks, storage

from lapdata.core import staging
from lapdata.core.errors import LapError
from tests.builders import REPO, make_aligned_folders, tiny_train_cfg

fsspec = pytest.importorskip("fsspec", reason="the cluster extra (fsspec) is not installed")


@contextmanager
def held_elsewhere(out: str | Path, tmp_path: Path):
    """Another process holds the writer lock of ``out`` for the block."""
    ready = tmp_path / f"ready-{time.time_ns()}"
    code = ("import sys, time, pathlib\nfrom lapdata.core.locks import writer_lock\n"
            "with writer_lock(sys.argv[1], 'lapdata ingest'):\n    pathlib.Path(sys.argv[2]).touch()\n"
            "    time.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(out), str(ready)], env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.time() + 60
        while not ready.exists():
            assert p.poll() is None and time.time() < deadline, "the holder did not start"
            time.sleep(0.05)
        yield p.pid
    finally:
        p.kill()
        p.wait()


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_local_writer_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "ds"
    with held_elsewhere(out, tmp_path) as pid:
        with pytest.raises(locks.Busy, match=rf"{out}: another writer is running on it \(lapdata ingest, pid {pid} on "):
            with locks.writer_lock(out, "lapdata merge"):
                pass
    with locks.writer_lock(out, "lapdata merge"):  # the holder is gone (killed): the lock is free, never stale
        with locks.writer_lock(out, "lapdata merge"):  # re-entrant in one process
            pass
    assert not locks.lock_path(out).exists() and locks.lock_path(out).parent == tmp_path


def test_without_flock_a_dead_owner_is_taken_over_a_live_one_is_not(tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "ds"
    lock = locks.lock_path(out)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "boot": locks._boot_id(),
                                "command": "lapdata ingest", "since": "then"}))
    with locks.writer_lock(out, "lapdata ingest"):  # stale: its process is dead
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "boot": locks._boot_id(),
                                "command": "lapmodel train", "since": "now"}))
    with pytest.raises(locks.Busy, match=rf"lapmodel train, pid {os.getppid()}.*remove {lock}"):
        with locks.writer_lock(out, "lapdata ingest"):
            pass


def test_ingest_and_train_take_the_lock(tmp_path):
    """Two writers of one folder both ran (the loser printed the winner's counts; two trainings interleaved
    log.jsonl); the second is now refused before it writes anything."""
    from lapdata.ingest.config import IngestConfig
    from lapdata.ingest.run import run_ingest

    src = make_aligned_folders(tmp_path / "src", n_ids=2, per_id=3, faults=False)
    out = tmp_path / "ds"
    with held_elsewhere(out, tmp_path):
        with pytest.raises(locks.Busy, match="another writer"):
            run_ingest(IngestConfig(kind="folders", src=str(src), out=str(out), min_images=1, progress=False))
        assert not out.exists()
    from lapmodel.training.train import train

    cfg = tiny_train_cfg(tmp_path / "run", str(tmp_path / "nowhere"), steps=1)
    with held_elsewhere(cfg.out, tmp_path):
        with pytest.raises(locks.Busy, match="another writer"):
            train(cfg, progress=False)
    assert not (Path(cfg.out) / "log.jsonl").exists()


def put_lease(url: str, **doc) -> None:
    storage.put_bytes(storage.join(url, locks.LEASE_NAME), json.dumps(doc).encode())


def test_lease_on_an_object_store(mem):
    lease = storage.join(mem, locks.LEASE_NAME)
    with locks.writer_lock(mem, "lapdata ingest"):
        doc = json.loads(storage.read_bytes(lease))
        assert doc["pid"] == os.getpid() and doc["expires"] > time.time() + 500
        assert storage.list_files(mem) == {}  # hidden: not part of the dataset
    assert not storage.exists(lease)  # released
    put_lease(mem, host="other-node", pid=7, command="lapdata ingest", since="t0", expires=time.time() + 300)
    with pytest.raises(locks.Busy, match=r"memory://bucket/ds: another writer is running on it \(lapdata ingest, "
                                         r"pid 7 on other-node since t0\)"):
        with locks.writer_lock(mem, "lapdata merge"):
            pass
    put_lease(mem, host="other-node", pid=7, command="lapdata ingest", expires=time.time() - 1)  # expired
    with locks.writer_lock(mem, "lapdata merge"):
        assert json.loads(storage.read_bytes(lease))["command"] == "lapdata merge"
    put_lease(mem, host=socket.gethostname(), boot=locks._boot_id(), pid=dead_pid(), expires=time.time() + 300)
    with locks.writer_lock(mem, "lapdata ingest"):  # its owner died here (a killed run resumed at once)
        assert json.loads(storage.read_bytes(lease))["pid"] == os.getpid()


def test_a_reader_never_prunes_what_a_writer_staged(mem, tmp_path):
    """audit of a URL pruned the files a running ingest had staged but not committed (one staging folder per
    URL); readers now mirror into their own folder."""
    from lapdata.dataset.audit.run import audit_dataset

    with fsspec.open(mem + "/stats.json", "wb") as f:
        f.write(b"{}")
    with locks.writer_lock(mem, "lapdata ingest"):
        root = staging.mount(mem)
        staged = root / "shards" / "train-000003.parquet"
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_bytes(b"being committed")
        audit_dataset(mem, contents=False)
        assert staged.read_bytes() == b"being committed"
        assert staging.staging_dir(mem, reader=True) != root


def test_hostile_keys_are_refused_counted_and_named(mem, tmp_path):
    """A dataset URL holding keys that lead outside the staging folder wrote files anywhere on the disk (and audit
    printed OK); they are now refused, never written, and audit faults."""
    from lapdata.dataset.audit.run import audit_dataset

    target = tmp_path / "PWNED.json"
    for key in ("stats.json", f"x/../../../../../../../../..{target}", str(target), "a//b.json"):
        with fsspec.open(f"{mem}/{key}", "wb") as f:
            f.write(b"{}")
    rep = audit_dataset(mem, contents=False)
    assert not target.exists() and not (tmp_path / "b.json").exists()
    refused = [f for f in rep.faults if "object key refused" in f]
    assert len(refused) == 3 and any("'..' in the path" in f for f in refused) and \
        any("absolute path" in f for f in refused) and any("empty component" in f for f in refused)
    assert len(staging.refused_keys(staging.staging_dir(mem, reader=True))) == 3


def test_object_store_failures_are_one_line():
    """botocore / s3fs failures at the storage boundary: one LapError naming the URL (was a traceback)."""
    with pytest.raises(LapError, match=r"^s3://b/k: access denied by the object store \(PermissionError"):
        with storage.store_errors("s3://b/k"):
            raise PermissionError("The AWS Access Key Id you provided does not exist in our records.")
    with pytest.raises(LapError, match=r"^s3://nobkt/k: the bucket does not exist"):
        with storage.store_errors("s3://nobkt/k"):
            raise FileNotFoundError("The specified bucket does not exist")
    with pytest.raises(FileNotFoundError):  # a missing key is the caller's to decide
        with storage.store_errors("s3://b/k"):
            raise FileNotFoundError("b/k")
    botocore = pytest.importorskip("botocore.exceptions", reason="botocore is not installed")
    with pytest.raises(LapError, match=r"^s3://b/k: object store not reachable.*EndpointConnectionError"):
        with storage.store_errors("s3://b/k"):
            raise botocore.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
