"""Issue 21's fault campaign against the object store and the Ray engine, on the local S3 server and Ray cluster of
the ``env`` fixture (tests/lapdata/core/conftest.py): hostile bucket keys (defect 1), ``--ray-address`` (2), the lease of a
bucket (3) and object-store failures (5), through the real command lines where the user meets them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from lapdata.core import locks, storage
from tests.builders import BUCKET, REPO, auth_s3_server, make_aligned_folders

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray", reason="the cluster extra (ray) is not installed")
pytest.importorskip("moto.server", reason="moto[server] (a dev dependency) is not installed")


def cli(*args: str, env_extra: dict | None = None, prog: str = "lapdata", timeout: float = 240
        ) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    environ.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", prog, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=environ)


def one_line(r: subprocess.CompletedProcess, want: str) -> bool:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    return r.returncode == 2 and "Traceback" not in r.stderr and lines[-1].startswith("error: ") and want in lines[-1]


@pytest.fixture(scope="module")
def photos(env):
    return make_aligned_folders(env / "hardening-photos", n_ids=3, per_id=3, faults=False)


def ingest_args(src, out, *extra):
    return ["ingest", "folders", src, "--out", out, "--min-images", "1", "--samples-per-shard", "1",
            "--no-progress", *extra]


# ------------------------------------------------------------------------------------------------ 1: hostile keys


def test_hostile_bucket_keys_are_refused_by_audit_merge_and_parse(env, photos, tmp_path):
    """Keys like ds1/x/../../../../tmp/PWNED.json or ds1//tmp/PWNED.json made audit print OK and create the files
    outside the staging folder (merge and parse-masks too)."""
    ds = f"s3://{BUCKET}/hostile/ds1"
    assert cli(*ingest_args(photos, ds)).returncode == 0
    fs, _ = storage.filesystem(ds)
    victims = [tmp_path / "PWNED.json", tmp_path / "PWNED2.json"]
    fs.pipe_file(f"{BUCKET}/hostile/ds1/x/{'../' * 12}{str(victims[0]).lstrip('/')}", b"{}")
    fs.pipe_file(f"{BUCKET}/hostile/ds1/{victims[1]}", b"{}")  # ds1//tmp/...
    a = cli("audit", ds, "--json")
    faults = json.loads(a.stdout)["faults"]
    assert a.returncode == 1 and sum("object key refused" in f for f in faults) == 2, faults
    m = cli("merge", ds, "--out", f"s3://{BUCKET}/hostile/merged")
    p = cli("parse-masks", ds, "--parser", "ground-truth", "--no-progress")
    assert m.returncode == 0 and p.returncode == 0, m.stderr + p.stderr
    assert "object key(s) refused" in m.stderr and "object key(s) refused" in p.stderr
    assert not any(v.exists() for v in victims)


# ------------------------------------------------------------------------------------------------ 2: Ray address


def test_ray_address_is_honoured_with_a_local_out(photos, tmp_path):
    """--ray-address was ignored whenever --out was local (a private one-machine Ray started first: exit 0 with no
    cluster); an address that refuses, or answers but is no Ray, is now one line in bounded time."""
    r = cli(*ingest_args(photos, tmp_path / "o", "--engine", "ray", "--ray-address", "127.0.0.1:1"))
    assert one_line(r, "--ray-address 127.0.0.1:1: cannot connect to 127.0.0.1:1"), r.stderr[-2000:]
    assert not (tmp_path / "o" / "stats.json").exists()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    t0 = time.time()
    try:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        r = cli(*ingest_args(photos, tmp_path / "o", "--engine", "ray", "--ray-address", address),
                env_extra={"LAPDATA_RAY_CONNECT_SECONDS": "3"})
    finally:
        silent.close()
    assert one_line(r, "answers, but not as a Ray cluster"), r.stderr[-2000:]
    assert time.time() - t0 < 60


def test_a_ray_head_passes_the_probe(env):
    from lapdata.core.engine import _probe, init_ray

    _probe(init_ray().get_runtime_context().gcs_address)  # the module's cluster answers as gRPC


# ------------------------------------------------------------------------------------------------ 3: the lease


def test_bucket_lease_is_a_conditional_put(env, photos):
    """Two writers of one URL both ran (the loser printed the winner's counts and its data was never written); the
    lease object is created with If-None-Match: * (the server refuses the second) and a running writer's lease
    refuses a second command in one line."""
    url = f"s3://{BUCKET}/leased/ds"
    key = storage.join(url, locks.LEASE_NAME)
    storage.put_bytes(key, b"{}", create=True)
    with pytest.raises(storage.Conflict):
        storage.put_bytes(key, b"{}", create=True)
    storage.remove(key)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom lapdata.core.locks import writer_lock\n"
                               "with writer_lock(sys.argv[1], 'lapdata ingest'):\n    print('held', flush=True)\n"
                               "    time.sleep(120)\n", url], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        r = cli(*ingest_args(photos, url))
        assert one_line(r, f"{url}: another writer is running on it (lapdata ingest, pid {holder.pid}"), r.stderr
        assert not storage.exists(storage.join(url, "stats.json"))
    finally:
        holder.kill()
        holder.wait()
    r = cli(*ingest_args(photos, url))  # its owner died on this machine: the lease is stale, taken over
    assert r.returncode == 0, r.stderr[-2000:]
    assert not storage.exists(key) and cli("audit", url).returncode == 0


# ------------------------------------------------------------------------------------------------ 5: store failures


def test_object_store_failures_are_one_line(env, photos, tmp_path):
    """Wrong credentials (audit, ingest, train), a missing bucket on ingest and an unreachable endpoint printed
    86-174-line tracebacks."""
    server, endpoint = auth_s3_server()
    try:
        wrong = {"FSSPEC_S3_ENDPOINT_URL": endpoint}
        url = f"s3://{BUCKET}/lap/ds"
        runs = [cli("audit", url, env_extra=wrong), cli(*ingest_args(photos, url), env_extra=wrong),
                cli("train", "--shards", url, "--out", tmp_path / "t", "--steps", "1", env_extra=wrong,
                    prog="lapmodel")]
    finally:
        server.kill()
        server.wait()
    for r in runs:  # the URL it failed on: the dataset's, or for ingest its lease (the first object it writes)
        assert one_line(r, ": access denied by the object store (PermissionError") and url in r.stderr, \
            r.stderr[-2000:]
    r = cli(*ingest_args(photos, "s3://no-such-bucket/ds"))
    assert one_line(r, "s3://no-such-bucket/ds/.lapdata-lease: the bucket does not exist"), r.stderr[-2000:]
    r = cli("audit", url, env_extra={"FSSPEC_S3_ENDPOINT_URL": "http://127.0.0.1:1"})
    assert one_line(r, f"{url}: object store not reachable or refused the request (EndpointConnectionError"), \
        r.stderr[-2000:]
