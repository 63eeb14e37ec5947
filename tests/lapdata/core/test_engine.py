"""The local engine: a worker process killed in the middle of a shard (as the out-of-memory killer would) fails the
jobs that were pending, never hangs the command; the rerun completes the dataset with the same bytes."""

from __future__ import annotations

import hashlib

import pytest

from lapdata.ingest.config import IngestConfig
from lapdata.ingest.run import run_ingest
from tests.builders import make_aligned_folders

pytestmark = pytest.mark.slow


def tars(out):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "shards").glob("*.tar"))}


@pytest.mark.timeout(300)
def test_killed_local_worker_fails_its_jobs_and_the_rerun_completes(tmp_path, monkeypatch):
    src = make_aligned_folders(tmp_path / "src", n_ids=5, per_id=4)
    cfg = dict(kind="folders", src=str(src), min_images=2, samples_per_shard=1, progress=False)
    run_ingest(IngestConfig(out=str(tmp_path / "ref"), **cfg))
    (tmp_path / "armed").mkdir()
    monkeypatch.setenv("LAPDATA_FAULT_EXIT", f"train-000001:{tmp_path / 'armed' / 'fired'}")
    out = tmp_path / "out"
    first = run_ingest(IngestConfig(out=str(out), workers=2, **cfg))
    assert (tmp_path / "armed" / "fired").exists()  # a worker died inside train-000001
    lost = {f["shard"] for f in first["failed"]}
    assert "train-000001" in lost and not first["complete"]
    assert all("worker process died" in f["error"] for f in first["failed"])
    assert not any((out / "shards" / f"{n}.json").exists() for n in lost)  # nothing half-written
    again = run_ingest(IngestConfig(out=str(out), workers=2, **cfg))  # the fault fired once: the rerun completes
    assert not again["failed"] and again["complete"] and again["run"]["written"] == len(lost)
    assert tars(out) == tars(tmp_path / "ref")
