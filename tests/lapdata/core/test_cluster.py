"""The Ray engine and object storage, against real components the tests start: a local Ray cluster (2 CPUs) and a
local S3 server (moto's server mode on 127.0.0.1). Every shard command on Ray writes what the local engine writes;
a Ray worker killed mid-job is retried; the whole data path (ingest -> parse-masks -> audit -> training) on s3://
URLs gives the local-disk results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from lapdata.core import storage

from lapdata.core import staging
from lapdata.dataset.audit.run import audit_dataset
from lapdata.ingest.config import IngestConfig
from lapdata.ingest.run import run_ingest
from lapdata.parsing import commit
from lapdata.parsing import parse as P
from lapdata.parsing.base import ParseResult
from tests.builders import BUCKET, make_aligned_folders, tiny_train_cfg, upload_tree

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray", reason="the cluster extra (ray) is not installed")
moto_server = pytest.importorskip("moto.server", reason="moto[server] (a dev dependency) is not installed")

VOLATILE = {"seconds"}  # per-shard timings: the only field two runs of one command may differ in


# ------------------------------------------------------------------------------------------------ fixtures


def download_tree(url: str, local: Path) -> Path:
    fs, base = storage.filesystem(url)
    for rel in storage.list_files(url):
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{base}/{rel}", str(local / rel))
    return local


def _drop(doc, keys):
    if isinstance(doc, dict):
        return {k: _drop(v, keys) for k, v in doc.items() if k not in keys}
    return doc


def assert_same_dataset(a: Path, b: Path) -> None:
    """Every data file byte-identical (tars, every parquet: shard rows, photos, identities, shards, duplicates,
    unsharded); shard jsons equal but for the shard's seconds; run files (stats.json, ingest.json) hold the run's
    options and timings and are not compared."""
    files = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*")  # noqa: E731
                             if p.is_file() and not p.name.startswith("."))
    fa, fb = files(a), files(b)
    assert fa == fb
    shards = 0
    for rel in fa:
        pa_, pb = a / rel, b / rel
        if rel in ("stats.json", "ingest.json", "parse_config.json", "parse_complete.json") or rel.endswith(".png"):
            continue
        if rel.endswith(".json"):
            assert _drop(json.loads(pa_.read_text()), VOLATILE) == _drop(json.loads(pb.read_text()), VOLATILE), rel
        else:
            assert pa_.read_bytes() == pb.read_bytes(), rel
            shards += rel.endswith(".tar")
    assert shards >= 2


def ingest_cfg(src, out, **kw) -> IngestConfig:
    kw.setdefault("progress", False)
    kw.setdefault("samples_per_shard", 1)
    kw.setdefault("min_images", 2)
    return IngestConfig(kind="folders", src=str(src), out=str(out), **kw)


@pytest.fixture(scope="module")
def photos(env):
    return make_aligned_folders(env / "photos", n_ids=5, per_id=4)


@pytest.fixture(scope="module")
def local_ingest(env, photos):
    out = env / "local-ingest"
    run_ingest(ingest_cfg(photos, out))
    return out


# ------------------------------------------------------------------------------------------------ Ray


def test_ray_ingest_equals_local(env, photos, local_ingest, tmp_path):
    stats = run_ingest(ingest_cfg(photos, tmp_path / "ray", engine="ray"))
    assert stats["run"]["engine"] == "ray" and not stats["failed"] and stats["complete"]
    assert_same_dataset(local_ingest, tmp_path / "ray")
    assert audit_dataset(tmp_path / "ray").ok


def test_ray_worker_killed_mid_job_is_retried(env, photos, local_ingest, tmp_path):
    armed = env / "armed"
    armed.mkdir()
    try:
        stats = run_ingest(ingest_cfg(photos, tmp_path / "ray", engine="ray"))
    finally:
        fired = (armed / "fired").exists()
        (armed / "fired").unlink(missing_ok=True)
        armed.rmdir()
    assert fired  # the first job of train-000001 killed its worker process (os._exit)
    assert not stats["failed"] and stats["complete"]  # Ray ran it again
    assert_same_dataset(local_ingest, tmp_path / "ray")


@pytest.mark.parametrize("model", [False, True])
def test_ray_job_lost_after_its_retries_is_a_failed_job(env, model):
    """A job whose worker dies on every try (tasks: 1 + 3 retries; actors: 3 restarts) is reported, not raised."""
    from lapdata.core.engine import EngineConfig, map_unordered

    out = list(map_unordered(os._exit, [7], engine=EngineConfig(engine="ray", ray_actors=1), model=model,
                             on_error=lambda item, e: ("lost", item, type(e).__name__)))
    assert out[0][:2] == ("lost", 7) and out[0][2].endswith("Error")


def test_ray_synthetic_and_parse_equal_local(env, tmp_path):
    """build-synthetic and parse-masks (dlib landmarks) run in Ray actor pools: the same bytes as locally."""
    from lapdata.synthetic.build import SynthConfig, run_synthetic

    outs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        run_synthetic(SynthConfig(backend="procedural", out=str(out), identities=4, poses=3, size=32,
                                  id_filter="none", samples_per_shard=1, progress=False, engine=engine))
        rep = P.parse_masks(out, P.ParseConfig(parser="landmarks", engine=engine, contact_sheet_views=0),
                            progress=False)
        assert rep.swapped and not rep.failed_shards, rep
        outs[engine] = out
    assert_same_dataset(outs["local"], outs["ray"])
    assert audit_dataset(outs["ray"]).ok


def test_ray_merge_equals_local(env, photos, tmp_path):
    from lapdata.core.engine import EngineConfig
    from lapdata.dataset.merge import merge_datasets

    parts = []
    for i in range(2):
        parts.append(tmp_path / f"p{i}")
        run_ingest(ingest_cfg(photos, parts[-1], part=(i, 2), engine="ray"))
    merge_datasets(parts, tmp_path / "local")
    merge_datasets(parts, tmp_path / "ray", engine=EngineConfig(engine="ray"))
    assert_same_dataset(tmp_path / "local", tmp_path / "ray")
    assert audit_dataset(tmp_path / "ray").ok


# ------------------------------------------------------------------------------------------------ S3


def skin_everywhere(images):
    """A deterministic stand-in parser: the face is a centred square (no view is hard)."""
    out = []
    for im in images:
        seg = np.zeros(im.shape[:2], np.uint8)
        h, w = seg.shape
        seg[h // 8 : h - h // 8, w // 8 : w - w // 8] = 1
        out.append(ParseResult(seg))
    return out


class _Parser:
    name = "landmarks"

    def __call__(self, images):
        return skin_everywhere(images)


def _train(tmp: Path, shards: str):

    from lapmodel.io.checkpoint import load_checkpoint
    from lapmodel.training.train import train

    res = train(tiny_train_cfg(tmp, shards, steps=3, batch=2, data={"min_set": 1, "max_set": 2}), progress=False)
    return load_checkpoint(res.checkpoint)


def test_s3_data_path_and_training_equal_local(env, photos, monkeypatch, tmp_path):
    """ingest (s3 photos -> s3 dataset) -> parse-masks (committed on s3) -> audit (s3) -> training on s3 shards."""
    monkeypatch.setattr(P, "get_parser", lambda name, cfg: _Parser())
    src, ds = f"s3://{BUCKET}/photos", f"s3://{BUCKET}/lap/folders"
    upload_tree(photos, src)
    local = tmp_path / "local"
    run_ingest(ingest_cfg(photos, local, size=32))
    stats = run_ingest(ingest_cfg(src, ds, size=32))
    assert not stats["failed"] and stats["complete"]
    assert storage.exists(storage.join(ds, "stats.json")) and storage.exists(storage.join(ds, "ingest.json"))
    pcfg = P.ParseConfig(parser="landmarks", contact_sheet_views=4)
    assert P.parse_masks(local, pcfg, progress=False).swapped
    rep = P.parse_masks(ds, pcfg, progress=False)
    assert rep.swapped and rep.dataset == ds and not rep.audit_faults
    keys = storage.list_files(f"s3://{BUCKET}/lap")
    assert not any(k.startswith("folders.parse-tmp/") or k.endswith(commit.JOURNAL) for k in keys)
    audit = audit_dataset(ds)
    assert audit.ok, audit.faults[:5]
    assert_same_dataset(local, download_tree(ds, tmp_path / "downloaded"))
    # training streams the s3 shards (a dataset URL and a brace pattern) exactly as the local ones
    a = _train(tmp_path / "ta", str(local))
    b = _train(tmp_path / "tb", ds)
    names = sorted(k[:-4] for k in storage.list_files(storage.join(ds, "shards")) if k.endswith(".tar"))
    trains = [n for n in names if n.startswith("train-")]
    pattern = storage.join(ds, "shards", f"train-{{{trains[0][6:]}..{trains[-1][6:]}}}.tar")
    c = _train(tmp_path / "tc", pattern)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]) and torch.equal(a["model"][k], c["model"][k]), k


def test_s3_ingest_on_ray_equals_local(env, photos, local_ingest):
    src, ds = f"s3://{BUCKET}/photos-ray", f"s3://{BUCKET}/lap/ray"
    upload_tree(photos, src)
    stats = run_ingest(ingest_cfg(src, ds, engine="ray"))
    assert not stats["failed"] and stats["complete"]
    assert_same_dataset(local_ingest, download_tree(ds, env / "ray-downloaded"))


def test_s3_synthetic_and_merge_on_ray(env, tmp_path):
    """build-synthetic into a bucket (actor pool) in two parts, merged on the bucket (server-side copies, Ray tasks):
    the bytes of the one-part local build."""
    from lapdata.core.engine import EngineConfig
    from lapdata.dataset.merge import merge_datasets
    from lapdata.synthetic.build import SynthConfig, run_synthetic

    kw = dict(backend="procedural", identities=4, poses=3, size=32, id_filter="none", samples_per_shard=1,
              progress=False)
    run_synthetic(SynthConfig(out=str(tmp_path / "local"), **kw))
    parts = [f"s3://{BUCKET}/lap/synth-part{i}" for i in range(2)]
    for i, url in enumerate(parts):
        run_synthetic(SynthConfig(out=url, part=(i, 2), engine="ray", **kw))
    assert not any(k.startswith("cache/") for k in storage.list_files(parts[0]))
    merged = f"s3://{BUCKET}/lap/synth"
    st = merge_datasets(parts, merged, engine=EngineConfig(engine="ray"))
    assert st["complete"] and audit_dataset(merged).ok
    got = download_tree(merged, tmp_path / "merged")
    assert_same_dataset(tmp_path / "local" / "shards", got / "shards")  # merge adds its own manifests
    a, b = (pq.read_table(d / "photos.parquet").sort_by("photo_id") for d in (tmp_path / "local", got))
    assert a.equals(b)


def test_s3_resume_skips_committed_shards(env, photos, tmp_path):
    """A rerun into an s3 dataset (from a fresh staging folder: another machine) skips the committed shards."""
    ds = f"s3://{BUCKET}/lap/resume"
    first = run_ingest(ingest_cfg(photos, ds))
    assert first["run"]["written"] >= 2
    os.environ["LAPDATA_STAGING"] = str(tmp_path / "other-machine")
    try:
        again = run_ingest(ingest_cfg(photos, ds))
    finally:
        os.environ["LAPDATA_STAGING"] = str(env / "staging")
    assert again["run"]["written"] == 0 and again["run"]["skipped_finished"] == first["run"]["planned_shards"]
    with pytest.raises(Exception, match="other options"):
        run_ingest(ingest_cfg(photos, ds, size=64))


def test_s3_parse_commit_killed_is_rolled_forward(env, photos, monkeypatch, local_ingest):
    """A parse-masks killed after its commit point (the journal) is finished by the next run; audit reports the
    commit in progress meanwhile."""
    monkeypatch.setattr(P, "get_parser", lambda name, cfg: _Parser())
    ds = f"s3://{BUCKET}/lap/commit"
    run_ingest(ingest_cfg(photos, ds))
    real = commit.roll_forward

    def killed(url, doc):
        raise KeyboardInterrupt("killed after the journal")

    monkeypatch.setattr(commit, "roll_forward", killed)
    with pytest.raises(KeyboardInterrupt):
        P.parse_masks(ds, P.ParseConfig(parser="landmarks", contact_sheet_views=0), progress=False)
    assert storage.exists(storage.join(ds, commit.JOURNAL))
    faults = audit_dataset(ds, contents=False).faults
    assert any("commit is in progress" in f for f in faults)
    monkeypatch.setattr(commit, "roll_forward", real)
    rep = P.parse_masks(ds, P.ParseConfig(parser="landmarks", contact_sheet_views=0), progress=False)
    assert not storage.exists(storage.join(ds, commit.JOURNAL))
    assert audit_dataset(ds).ok and rep.dataset == ds
    photos_rows = pq.read_table(staging.mount(ds) / "photos.parquet").to_pylist()
    assert any(r["parser"] == "landmarks" for r in photos_rows)


def test_s3_command_killed_mid_job_then_rerun(env, photos, local_ingest):
    """The command itself dies in the middle of a shard (the fault switch kills its own process, as kill -9 would):
    on the bucket every shard is whole or absent (a json only beside its tar and parquet, sizes as the json says),
    and the same command completes it."""
    import subprocess
    import sys

    ds = f"s3://{BUCKET}/lap/killed"
    cmd = [sys.executable, "-m", "lapdata.cli", "ingest", "folders", str(photos), "--out", ds, "--min-images", "2",
           "--samples-per-shard", "1", "--no-progress"]
    armed = env / "armed"
    armed.mkdir()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    finally:
        (armed / "fired").unlink(missing_ok=True)
        armed.rmdir()
    assert r.returncode == 17, r.stderr[-2000:]  # died inside the job of train-000001
    keys = storage.list_files(storage.join(ds, "shards"))
    done = sorted(k[:-5] for k in keys if k.endswith(".json"))
    assert done and "train-000001" not in done and "stats.json" not in storage.list_files(ds)
    for name in done:
        doc = json.loads(storage.read_bytes(storage.join(ds, "shards", name + ".json")))
        assert keys[name + ".tar"] == doc["bytes"] and name + ".parquet" in keys
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    audit = audit_dataset(ds)
    assert audit.ok, audit.faults[:3]
    assert_same_dataset(local_ingest, download_tree(ds, env / "killed-downloaded"))


def test_cli_on_s3_and_ray(env, photos):
    from typer.testing import CliRunner

    from lapdata.cli import app

    ds = f"s3://{BUCKET}/lap/cli"
    r = CliRunner().invoke(app, ["ingest", "folders", str(photos), "--out", ds, "--min-images", "2",
                                 "--samples-per-shard", "1", "--engine", "ray", "--no-progress"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["audit", ds])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["ingest", "folders", f"s3://{BUCKET}/missing", "--out", ds + "-2"])
    assert r.exit_code == 2 and "no objects under it" in r.output
