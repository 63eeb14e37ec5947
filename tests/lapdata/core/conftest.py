"""Fixtures of the core tests: ``mem``, a fresh memory:// bucket (``test_storage.py``, ``test_locks.py``), and ``env``,
the cluster tests' local S3 server and local Ray cluster started inside the test process (``test_cluster.py``,
``test_hardening_cluster.py``)."""

from __future__ import annotations

import os

import pytest

from tests.builders import BUCKET


@pytest.fixture
def mem(tmp_path, monkeypatch):
    """A fresh memory:// bucket and a staging folder; mounts made under tmp_path are unmounted after the test."""
    fsspec = pytest.importorskip("fsspec", reason="the cluster extra (fsspec) is not installed")
    from lapdata.core import staging, storage

    monkeypatch.setenv("LAPDATA_STAGING", str(tmp_path / "staging"))
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.append("")
    yield "memory://bucket/ds"
    for root in [r for r in storage.MOUNTS if str(r).startswith(str(tmp_path))]:
        staging.unmount(root)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A local S3 server, its endpoint and dummy credentials in the environment (fsspec/s3fs read them, as on a
    user's machine), a staging folder, and the fault switch (armed by creating its folder); then a local Ray
    cluster, started after the environment is set so its workers see it."""
    ray = pytest.importorskip("ray", reason="the cluster extra (ray) is not installed")
    moto_server = pytest.importorskip("moto.server", reason="moto[server] (a dev dependency) is not installed")
    base = tmp_path_factory.mktemp("cluster")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = dict(os.environ)
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      FSSPEC_S3_ENDPOINT_URL=f"http://{host}:{port}", LAPDATA_STAGING=str(base / "staging"),
                      LAPDATA_FAULT_EXIT=f"train-000001:{base / 'armed' / 'fired'}")
    import fsspec.config

    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = os.environ["FSSPEC_S3_ENDPOINT_URL"]
    fs = fsspec.filesystem("s3")
    if not fs.exists(BUCKET):  # moto keeps its buckets per process: another module may have made it
        fs.mkdir(BUCKET)
    from lapdata.core.engine import init_ray

    init_ray()  # 2 CPUs here: this machine's
    yield base
    ray.shutdown()
    server.stop()
    os.environ.clear()
    os.environ.update(saved)
    fsspec.config.conf.get("s3", {}).pop("endpoint_url", None)
