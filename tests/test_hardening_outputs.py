"""Issue 21's fault campaign, the cases outside clusters and buckets: reconstruction names (defect 4), empty paths
(6), unbounded numbers (7) and the smaller ones (8). Each test reproduces its case and failed before the fix."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from lapdata.dataset.audit.run import audit_dataset
from lapdata.core.errors import LapError
from lapdata.ingest.run import run_ingest
from tests.builders import StandIn, ingest_cfg, make_aligned_folders


@pytest.fixture
def dataset(tmp_path) -> Path:
    out = tmp_path / "ds"
    run_ingest(ingest_cfg(make_aligned_folders(tmp_path / "src", n_ids=6, per_id=3, faults=False), out, samples_per_shard=1,
                   min_images=1))
    return out


# ------------------------------------------------------------------------------------------------ 4: output names


def test_reconstruct_names_are_distinct_and_never_leave_out(tmp_path):
    """x.png was named x_1 beside x_1.jpg (one overwrote the other) and '...jpg' (stem '..') wrote its outputs into
    the parent of --out."""
    from lapmodel.inference.faces import unique_names
    from lapmodel.inference.reconstruct import ReconstructConfig, reconstruct_paths

    names = unique_names([Path(p) for p in ("x.png", "x.jpg", "x_1.jpg", "...jpg", "a b.jpg", "X.png", "set.jpg")])
    assert names[:3] == ["x", "x_1", "x_1_1"] and len({n.casefold() for n in names}) == 7
    assert all("/" not in n and n not in (".", "..", "set") and not n.startswith(".") for n in names)
    from PIL import Image

    src = tmp_path / "photos"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name in ("...png", "x.png", "x_1.png", "x.jpg"):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(src / name, format="PNG")
    out = tmp_path / "deep" / "out"
    rep = reconstruct_paths(ReconstructConfig((str(src),), "unused.pt", str(out), turntable=0, mesh=False),
                            model=StandIn(), progress=False)
    assert rep["done"] == 4 and len(rep["outputs"]) == 4
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["out"]  # nothing beside --out
    assert all((out / n / "depth.npy").is_file() for n in rep["outputs"])


def test_recipe_names_cannot_merge_identities_or_traverse(tmp_path):
    """Recipes cut identity names to 40 characters (two people, one folder and one mesh in the report); a step name
    led anywhere."""
    from lapdata.core.paths import plain_name
    from lapmodel.recipes.recipe import load_pipeline

    a, b = "Sir " + "x" * 40 + " the elder", "Sir " + "x" * 40 + " the younger"
    assert plain_name(a, 40) != plain_name(b, 40) and len(plain_name(a, 40)) <= 49
    assert plain_name("a b", 40) != plain_name("a_b", 40) and plain_name("a_b", 40) == "a_b"
    y = tmp_path / "r.yaml"
    y.write_text("out: o\nsteps:\n  - {name: ../../escape, kind: report}\n")
    with pytest.raises(LapError, match=r"step name '../../escape' is not a plain name"):
        load_pipeline(y)
    from lapdata.core.config import load_config
    from lapmodel.config import TrainConfig

    with pytest.raises(LapError, match=r"phase: name '../x' is not a plain name"):  # a phase's name is its folder
        load_config(TrainConfig, None, {"stages.aggregate.phases": [{"name": "../x", "steps": 1}]})


# ------------------------------------------------------------------------------------------------ 6: empty paths


@pytest.mark.parametrize("prog,args", [
    ("lapdata", ["ingest", "folders", "SRC", "--out", ""]),
    ("lapdata", ["ingest", "folders", "", "--out", "OUT"]),
    ("lapdata", ["audit", ""]),
    ("lapmodel", ["evaluate", "--checkpoint", "x.pt", "--shards", "", "--out", "OUT"]),
    ("lapmodel", ["train", "--out", ""]),
])
def test_an_empty_path_is_refused(tmp_path, monkeypatch, prog, args):
    """``--out ""`` wrote into the current folder, ``ingest folders ""`` ingested it, ``evaluate --shards ""``
    evaluated whatever was there."""
    import importlib

    src = make_aligned_folders(tmp_path / "src", n_ids=2, per_id=2, faults=False)
    cwd = tmp_path / "cwd"
    make_aligned_folders(cwd, n_ids=2, per_id=2, faults=False)
    monkeypatch.chdir(cwd)
    before = sorted(p.relative_to(cwd) for p in cwd.rglob("*"))
    args = [str(src) if a == "SRC" else str(tmp_path / "o") if a == "OUT" else a for a in args]
    r = CliRunner().invoke(importlib.import_module(f"{prog}.cli").app, args)
    assert r.exit_code == 2 and "'': empty (an empty path would mean the current folder)" in r.output, r.output
    assert sorted(p.relative_to(cwd) for p in cwd.rglob("*")) == before and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ 7: numbers


def test_numbers_out_of_range_are_one_line(tmp_path):
    """--phash-distance 99 was a traceback, --size 100000 made every photo an error row ("allocate 149 GiB"),
    model.nf=0 a traceback, min_depth > max_depth and data.fields=[bogus] were accepted."""
    from lapdata.core.config import load_config
    from lapmodel.config import TrainConfig
    from lapmodel.inference.reconstruct import ReconstructConfig

    src = tmp_path / "src"
    with pytest.raises(LapError, match=r"--phash-distance 99: must be in 0\.\.15"):
        ingest_cfg(src, tmp_path / "o", phash_distance=99)
    with pytest.raises(LapError, match=r"--size 100000: must be in 16\.\.4096"):
        ingest_cfg(src, tmp_path / "o", size=100000)
    with pytest.raises(LapError, match=r"size in 8\.\.4096 \(100000\)"):
        ReconstructConfig(("a.jpg",), "x.pt", str(tmp_path / "r"), size=100000)
    for sets, want in ((["model.nf=0"], "model: nf 0 must be >= 1"),
                       (["model.min_depth=1.2"], "model: min_depth 1.2 must be < max_depth 1.1"),
                       (["model.fov_deg=0"], "model: fov_deg 0.0 must be in"),
                       (["data.fields=[image, bogus]"], r"data: fields \['image', 'bogus'\]: each one of"),
                       (["model.lap.refine_nf=0"], "model.lap: refine_nf 0 must be >= 1"),
                       (["stages.aggregate.lr=-1"], "stage: lr -1.0 must be >= 0")):
        with pytest.raises(LapError, match=want):
            load_config(TrainConfig, None, dict(s.split("=", 1) for s in sets))


def test_set_beside_its_option_is_refused(tmp_path):
    """``--set steps=abc`` beside ``--steps 1`` was dropped without a word."""
    from lapmodel.cli import app

    r = CliRunner().invoke(app, ["train", "--steps", "1", "--set", "steps=abc", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--set steps=abc and --steps both set steps: give it once" in r.output, r.output


# ------------------------------------------------------------------------------------------------ 8: smaller ones


def test_a_zero_byte_shard_json_is_written_again(dataset):
    """A 0-byte shard json told the user to rerun the command that wrote it, and that rerun refused too."""
    from lapdata.dataset.manifests import read_shard_json

    js = sorted((dataset / "shards").glob("*.json"))[0]
    js.write_bytes(b"")
    with pytest.raises(LapError, match=r"unreadable shard stats \(0 bytes\); rerun the command that wrote the"):
        read_shard_json(js)
    src = dataset.parent / "src"
    st = run_ingest(ingest_cfg(src, dataset, samples_per_shard=1, min_images=1))
    assert st["run"]["written"] == 1 and json.loads(js.read_text())["shard"] == js.stem
    assert audit_dataset(dataset).ok


def test_out_inside_the_source_is_refused(tmp_path):
    """An --out inside the source folder could never be resumed (the rerun read the dataset as photos)."""
    src = make_aligned_folders(tmp_path / "src", n_ids=2, per_id=2, faults=False)
    with pytest.raises(LapError, match="--out is inside the source folder"):
        run_ingest(ingest_cfg(src, src / "lap", min_images=1))
    assert not (src / "lap").exists()


def test_training_warns_on_an_unfinished_dataset_and_an_empty_tar(dataset, caplog):
    """Training on a dataset whose ingest had not finished, or with an all-zero tar among its shards, said
    nothing."""
    from lapmodel.config import DataConfig
    from lapmodel.io.data import ShardStream, expand_shards

    (dataset / "stats.json").unlink()
    tars = sorted((dataset / "shards").glob("train-*.tar"))
    tars[0].write_bytes(bytes(tars[0].stat().st_size))  # zeroed: its json still says 1 sample
    caplog.set_level(logging.WARNING)
    urls = expand_shards(str(dataset))
    assert any("the dataset is not finished (no stats.json" in r.getMessage() for r in caplog.records)
    stream = iter(ShardStream(urls, DataConfig(workers=0, shuffle_buffer=0, fields=("image",)), 16))
    for _ in range(2):
        next(stream)
    assert any(f"{tars[0]}: its stats say 1 samples but the tar holds none" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_audit_row_checks_name_the_rows(dataset):
    """The audit reads photos.parquet column-wise now (BENCHMARKS.md: memory); its row checks still name rows."""
    t = pq.read_table(dataset / "photos.parquet")
    ids = t.column("photo_id").to_pylist()
    ids[1] = ids[0]
    counts = [None] * t.num_rows
    counts[2] = [1, 2, 3]
    t = t.set_column(0, "photo_id", pa.array(ids)).set_column(
        t.schema.get_field_index("class_counts"), "class_counts", pa.array(counts, pa.list_(pa.int64())))
    pq.write_table(t, dataset / "photos.parquet")
    faults = audit_dataset(dataset).faults
    assert f"photos.parquet: photo_id {ids[0]} appears twice (rows 0 and 1)" in faults, faults
    assert any("class_counts has 3 entries, expected 19" in f for f in faults), faults
