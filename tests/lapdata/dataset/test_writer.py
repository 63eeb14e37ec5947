"""lapdata.dataset.writer: plan, write, resume, parts, finalize, read back with webdataset."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lapdata.dataset.sample import decode_sample
from lapdata.dataset.schema import IDENTITIES, PHOTOS, SHARDS, check_schema
from lapdata.dataset.writer import WriteConfig, parse_part, plan_shards, select_part, write_dataset
from lapdata.dataset.reader import iter_samples, shard_urls
from lapdata.dataset.manifests import read_dataset
from tests.builders import REPO, fake_image, make_groups, synth_process


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*")) if p.suffix in (".tar", ".parquet")}


def test_plan_deterministic_and_order_independent():
    g = make_groups()
    a = plan_shards(g, 3)
    b = plan_shards(list(reversed(g)), 3)
    assert a == b
    assert [t.name for t in a][:3] == ["test-000000", "train-000000", "train-000001"]
    assert sum(len(t.items) for t in a) == len(g)
    assert all(len(t.items) <= 3 for t in a)
    # every task holds one split only
    split_of = {i: s for i, s, _ in g}
    assert all(split_of[ident] == t.split for t in a for ident, _ in t.items)


def test_plan_by_bytes():
    g = make_groups(6)  # 6 train identities of 100 estimated bytes each
    tasks = plan_shards(g, 100, max_shard_bytes=250, size_of=lambda p: 100)
    assert [len(t.items) for t in tasks] == [2, 2, 2]  # the byte budget, not the count of 100, closes each shard
    assert sorted(i for t in tasks for i, _ in t.items) == sorted(i for i, _, _ in g)
    big = plan_shards(g, 100, max_shard_bytes=250, size_of=lambda p: 300)
    assert [len(t.items) for t in big] == [1] * 6  # a group over the budget still gets its own shard
    assert [len(t.items) for t in plan_shards(g, 100, size_of=lambda p: 300)] == [6]  # no budget: count only
    with pytest.raises(ValueError):
        plan_shards(g, 0)


def test_parts_disjoint_union():
    tasks = plan_shards(make_groups(20), 2)
    parts = [select_part(tasks, (i, 3)) for i in range(3)]
    names = [t.name for p in parts for t in p]
    assert len(names) == len(set(names)) == len(tasks)
    assert parse_part("1/3") == (1, 3)
    with pytest.raises(ValueError):
        parse_part("3/3")
    with pytest.raises(ValueError):
        parse_part("x")


def test_round_trip_webdataset(tmp_path):
    import webdataset as wds

    tasks = plan_shards(make_groups(), 3)
    stats = write_dataset(tmp_path, tasks, synth_process, WriteConfig(config={"a": 1}, progress=False))
    assert stats["status_counts"] == {"error": 10, "ok": 20}
    assert stats["shards"] == len(tasks) and stats["complete"]
    photos = read_dataset(tmp_path)
    assert not check_schema(photos, PHOTOS, "photos")
    assert not check_schema(pq.read_table(tmp_path / "identities.parquet"), IDENTITIES, "identities")
    assert not check_schema(pq.read_table(tmp_path / "shards.parquet"), SHARDS, "shards")
    rows = {r["photo_id"]: r for r in photos.to_pylist()}
    seen = 0
    for split in ("train", "val", "test"):
        urls = shard_urls(tmp_path, split)
        assert urls
        for d in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            s = decode_sample(d)
            assert s.split == split
            for i, v in enumerate(s.views):
                r = rows[v.meta["photo_id"]]
                assert (r["key"], r["view_index"], r["shard"], r["identity"]) == (
                    d["__key__"], i, Path(d["__url__"]).stem, s.identity)
                want = fake_image(r["photo_id"])
                assert np.abs(v.image.astype(int) - want).mean() < 4  # jpeg
                assert v.meta["image_sha256"] == hashlib.sha256(d[f"{i:03d}.jpg"]).hexdigest()
                seen += 1
    assert seen == 20
    # error rows are kept, not sharded
    assert all(r["shard"] is None for r in rows.values() if r["status"] == "error")
    ids = pq.read_table(tmp_path / "identities.parquet").to_pylist()
    assert len(ids) == 10 and all(r["num_photos"] == 3 and r["num_ok"] == 2 and r["num_samples"] == 1 for r in ids)
    st = json.loads((tmp_path / "stats.json").read_text())
    assert st["config"] == {"a": 1} and st["reason_counts"] == {}
    # iter_samples (tarfile) agrees with webdataset
    assert sum(1 for _ in iter_samples(tmp_path)) == 10


def test_failed_shard_then_resume_identical(tmp_path):
    tasks = plan_shards(make_groups(), 3)
    clean = tmp_path / "clean"
    write_dataset(clean, tasks, synth_process, WriteConfig(progress=False))

    out = tmp_path / "resumed"
    bad = functools.partial(synth_process, fail_on=tasks[1].name)
    st = write_dataset(out, tasks, bad, WriteConfig(progress=False))
    assert [f["shard"] for f in st["failed"]] == [tasks[1].name] and not st["complete"]
    assert not (out / "shards" / f"{tasks[1].name}.json").exists()
    assert not list((out / "shards").glob("*.tmp"))
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.json")}
    st2 = write_dataset(out, tasks, synth_process, WriteConfig(progress=False))
    assert st2["run"]["skipped_finished"] == len(tasks) - 1 and st2["run"]["written"] == 1
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.json") if p.name in mtimes} == mtimes
    assert shard_bytes(out) == shard_bytes(clean)


def test_killed_run_resumes(tmp_path):
    """A process that dies midway (os._exit) leaves no finished marker for the shard it was writing."""
    out = tmp_path / "killed"
    code = textwrap.dedent(f"""
        import functools
        from tests.builders import make_groups, synth_process
        from lapdata.dataset.writer import WriteConfig, plan_shards, write_dataset
        tasks = plan_shards(make_groups(), 3)
        write_dataset({str(out)!r}, tasks, functools.partial(synth_process, exit_on=tasks[2].name), WriteConfig(progress=False))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO)  # REPO: tests.builders
    assert r.returncode == 3, r.stderr.decode()[-2000:]
    tasks = plan_shards(make_groups(), 3)
    done = sorted(p.stem for p in (out / "shards").glob("*.json"))
    assert done == sorted(t.name for t in tasks[:2])
    assert not (out / "photos.parquet").exists()
    st = write_dataset(out, tasks, synth_process, WriteConfig(progress=False))
    assert st["run"]["skipped_finished"] == 2 and st["complete"]
    clean = tmp_path / "clean"
    write_dataset(clean, tasks, synth_process, WriteConfig(progress=False))
    assert shard_bytes(out) == shard_bytes(clean)


def test_parts_and_workers(tmp_path):
    tasks = plan_shards(make_groups(12), 2)
    whole = tmp_path / "whole"
    write_dataset(whole, tasks, synth_process, WriteConfig(progress=False, workers=2))
    names = []
    for i in range(2):
        d = tmp_path / f"part{i}"
        st = write_dataset(d, tasks, synth_process, WriteConfig(part=(i, 2), progress=False))
        assert not st["complete"]
        names += [p.name for p in (d / "shards").glob("*")]
        for n in [p.name for p in (d / "shards").glob("*") if p.suffix != ".json"]:  # json holds timings
            assert (d / "shards" / n).read_bytes() == (whole / "shards" / n).read_bytes()
    assert len(names) == len(set(names))
    assert sorted(names) == sorted(p.name for p in (whole / "shards").glob("*"))


def test_extra_rows_kept(tmp_path):
    tasks = plan_shards(make_groups(3), 3)
    extra = [{"photo_id": "x1", "identity": "few", "status": "skipped", "reason": "min_images"}]
    st = write_dataset(tmp_path, tasks, synth_process, WriteConfig(progress=False), extra_rows=extra)
    assert st["reason_counts"] == {"min_images": 1}
    ids = {r["identity"]: r for r in pq.read_table(tmp_path / "identities.parquet").to_pylist()}
    assert ids["few"]["status"] == "skipped" and ids["few"]["reason"] == "min_images"


def test_rerun_with_other_options_is_refused(tmp_path):
    """A rerun keeps finished shards, so one with other options would silently mix two datasets: refused in one
    line naming the option; options that do not change the data (workers, part, progress, ...) may differ."""
    from lapdata.core.errors import LapError

    tasks = plan_shards(make_groups(), 3)
    write_dataset(tmp_path, tasks, synth_process, WriteConfig(progress=False, config={"fractions": [0.8, 0.1, 0.1], "workers": 1}))
    st = write_dataset(tmp_path, tasks, synth_process, WriteConfig(progress=False, config={"fractions": [0.8, 0.1, 0.1], "workers": 2}))
    assert st["run"]["skipped_finished"] == len(tasks)
    with pytest.raises(LapError, match=r"fractions: \[0\.8, 0\.1, 0\.1\] there, \[0\.5, 0\.25, 0\.25\] now") as e:
        write_dataset(tmp_path, tasks, synth_process, WriteConfig(progress=False, config={"fractions": [0.5, 0.25, 0.25], "workers": 1}))
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)


def test_resume_rule_reads_added_options_as_older_runs_used():
    """One resume rule (lapdata.dataset.resume): an option an older run did not record compares as the value it
    used; resumable options may differ; anything else is named."""
    from lapdata.dataset.resume import ADDED_OPTIONS, changed_options

    old = {"size": 64, "workers": 1}
    assert changed_options(old, {"size": 64, "workers": 8, "max_pixels": ADDED_OPTIONS["max_pixels"]}) == []
    assert changed_options(old, {"size": 64, "max_pixels": 1000}) == ["max_pixels"]
    assert changed_options(old, {"size": 32, "fractions": (0.5, 0.5)}) == ["fractions", "size"]
    assert changed_options({"fractions": [0.5, 0.5]}, {"fractions": (0.5, 0.5)}) == []  # as JSON reads back


def test_a_lost_job_whose_shard_is_finished_counts_as_written(tmp_path):
    """A local pool breaks for every job in flight when one worker dies; a job that had already committed its shard
    (tar + .json) is reported as written with its .json's counts, a job that had not as failed."""
    from lapdata.dataset.writer import ShardJob, _job_lost

    tasks = plan_shards(make_groups(), 3)
    write_dataset(tmp_path, tasks[:1], synth_process, WriteConfig(progress=False))
    done = json.loads((tmp_path / "shards" / f"{tasks[0].name}.json").read_text())
    died = RuntimeError("a worker process died")
    got = _job_lost(ShardJob(tasks[0], str(tmp_path), ".jpg", 95, None), died)
    assert got["ok"] and got["shard"] == tasks[0].name and got["stats"]["num_images"] == done["num_images"] > 0
    lost = _job_lost(ShardJob(tasks[1], str(tmp_path), ".jpg", 95, None), died)
    assert not lost["ok"] and "worker process died" in lost["error"]
