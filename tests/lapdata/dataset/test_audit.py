"""lapdata audit: a clean dataset passes; tampered / deleted shards, leaked identities and bad counts are caught."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lapdata.dataset.audit.run import audit_dataset
from lapdata.core.errors import LapError
from lapdata.ingest.run import run_ingest
from lapdata.dataset.sample import IdentitySample, View, sample_key
from lapdata.dataset.writer import ShardResult, WriteConfig, plan_shards, write_dataset
from tests.builders import ingest_cfg, make_aligned_folders


@pytest.fixture
def dataset(tmp_path):
    src = make_aligned_folders(tmp_path / "src")
    out = tmp_path / "out"
    run_ingest(ingest_cfg(src, out, samples_per_shard=2))
    return out


def faults_of(out) -> list[str]:
    rep = audit_dataset(out)
    return rep.faults


def test_clean_dataset_passes(dataset):
    rep = audit_dataset(dataset)
    assert rep.ok, rep.faults
    assert rep.summary["images"] == 42 and rep.summary["status_counts"]["ok"] == 42
    assert audit_dataset(dataset, contents=False).ok


def test_tampered_shard(dataset):
    tar = sorted((dataset / "shards").glob("*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[2000] ^= 0xFF
    tar.write_bytes(bytes(data))
    f = faults_of(dataset)
    assert any("sha256 does not match" in x for x in f), f


def test_rewritten_shard_with_matching_manifest(dataset):
    """Replace one image inside a tar and 'fix' the shard checksum: the per-image hash still catches it."""
    tar = sorted((dataset / "shards").glob("*.tar"))[0]
    members = []
    with tarfile.open(tar) as tf:
        for m in tf:
            members.append((m, tf.extractfile(m).read()))
    buf = io.BytesIO()
    Image.new("RGB", (128, 128), (1, 2, 3)).save(buf, format="JPEG")
    with tarfile.open(tar, "w") as tf:
        replaced = False
        for m, d in members:
            if not replaced and m.name.endswith(".000.jpg"):
                d, replaced = buf.getvalue(), True
                m.size = len(d)
            tf.addfile(m, io.BytesIO(d))
    import hashlib

    t = pq.read_table(dataset / "shards.parquet").to_pylist()
    for r in t:
        if r["shard"] == tar.stem:
            r["sha256"] = hashlib.sha256(tar.read_bytes()).hexdigest()
            r["bytes"] = tar.stat().st_size
    from lapdata.dataset.schema import SHARDS, table_from_rows

    pq.write_table(table_from_rows(t, SHARDS), dataset / "shards.parquet")
    f = faults_of(dataset)
    assert any("do not match its image_sha256" in x for x in f), f


def test_deleted_shard(dataset):
    tar = sorted((dataset / "shards").glob("*.tar"))[-1]
    tar.unlink()
    f = faults_of(dataset)
    assert any("is missing" in x for x in f), f


def test_leaked_identity(dataset):
    t = pq.read_table(dataset / "photos.parquet")
    rows = t.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    victim = ok[0]["identity"]
    other = next(s for s in ("train", "val", "test") if s != ok[0]["split"])
    # a skipped photo of the identity claims another split
    for r in rows:
        if r["identity"] == victim and r["status"] != "ok":
            r["split"] = other
            break
    else:
        rows.append({**{k: None for k in t.column_names}, "photo_id": "leak1", "identity": victim, "split": other,
                     "status": "skipped", "reason": "duplicate"})
    pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), dataset / "photos.parquet")
    f = faults_of(dataset)
    assert any("split leakage: identity" in x and victim in x for x in f), f


def test_leaked_image_across_identities(tmp_path):
    """The same photo filed under two identities in different splits: ingest wrote it and then the audit failed on
    it (issue 21, defect 0). Ingest now removes the held-out copy (duplicate_other_split, dup_of the training
    photo, out of its shard) and its dataset passes the audit; the same image left in two splits is still a fault."""
    src = make_aligned_folders(tmp_path / "src", n_ids=8, faults=False)
    out = tmp_path / "out"
    run_ingest(ingest_cfg(src, out))
    photos = pq.read_table(out / "photos.parquet").to_pylist()
    a = next(r for r in photos if r["split"] == "train")
    b = next(r for r in photos if r["split"] not in ("train", None))
    (src / b["path"]).write_bytes((src / a["path"]).read_bytes())
    out2 = tmp_path / "out2"
    st = run_ingest(ingest_cfg(src, out2))
    assert st["cross_identity_duplicates"]["cross_split"] == 0 and st["cross_identity_duplicates"]["removed"] == 1
    rows = {r["path"]: r for r in pq.read_table(out2 / "photos.parquet").to_pylist()}
    gone, kept = rows[b["path"]], rows[a["path"]]
    assert (gone["status"], gone["reason"], gone["dup_of"], gone["shard"]) == \
        ("skipped", "duplicate_other_split", kept["photo_id"], None)
    assert kept["status"] == "ok" and kept["shard"] is not None
    dups = pq.read_table(out2 / "duplicates.parquet").to_pylist()
    assert [(d["photo_id"], d["dup_of"], d["kind"], d["distance"], d["decision"]) for d in dups] == \
        [(gone["photo_id"], kept["photo_id"], "exact", 0, "removed")]
    rep = audit_dataset(out2)
    assert rep.ok, rep.faults
    assert rep.summary["images"] == sum(r["status"] == "ok" for r in rows.values())
    t = pq.read_table(out2 / "photos.parquet")  # undo the removal by hand: the identical image is in two splits
    vals = t.column("status").to_pylist()
    vals[t.column("photo_id").to_pylist().index(gone["photo_id"])] = "ok"
    pq.write_table(t.set_column(t.schema.get_field_index("status"), "status", pa.array(vals)), out2 / "photos.parquet")
    f = faults_of(out2)
    assert any("split leakage: image sha256" in x for x in f), f


def test_count_and_missing_manifest_faults(dataset):
    st = json.loads((dataset / "stats.json").read_text())
    st["photos"] += 1
    (dataset / "stats.json").write_text(json.dumps(st))
    assert any("stats.json: photos" in x for x in faults_of(dataset))
    (dataset / "identities.parquet").unlink()
    assert any("identities.parquet: missing" in x for x in faults_of(dataset))
    with pytest.raises(LapError):
        audit_dataset(dataset / "nope")


def test_min_images_and_seg_checks(tmp_path):
    """A writer-level dataset (like synthetic/parse outputs) with seg views; min_images from its config."""

    def proc(task):
        samples, rows = [], []
        for ident, n in task.items:
            views = []
            for j in range(n):
                pid = f"{ident}-{j}"
                img = np.full((32, 32, 3), 10 * j, np.uint8)
                seg = np.zeros((16, 16) if (ident == "b" and j == 0) else (32, 32), np.uint8)
                views.append(View(image=img, seg=seg, meta={"photo_id": pid}))
                rows.append({"photo_id": pid, "identity": ident, "split": task.split, "status": "ok",
                             "parser": "ground-truth", "class_counts": [0] * 19})
            samples.append(IdentitySample(sample_key(ident), ident, task.split, views))
        return ShardResult(samples, rows)

    tasks = plan_shards([("a", "train", 3), ("b", "train", 2)], 4)
    write_dataset(tmp_path, tasks, proc, WriteConfig(config={"min_images": 3}, progress=False, image_ext="png"))
    f = faults_of(tmp_path)
    assert any("'b' has 2 ok photos, under min_images 3" in x for x in f), f
    assert any("seg size (16, 16) differs from image size (32, 32)" in x for x in f), f
    assert not any("'a'" in x for x in f), f


def test_cli_exit_codes(dataset):
    from typer.testing import CliRunner

    from lapdata.cli import app

    r = CliRunner().invoke(app, ["audit", str(dataset)])
    assert r.exit_code == 0 and "OK" in r.output
    sorted((dataset / "shards").glob("*.tar"))[0].unlink()
    r = CliRunner().invoke(app, ["audit", str(dataset), "--json"])
    assert r.exit_code == 1
    doc = json.loads(r.output)
    assert doc["ok"] is False and doc["num_faults"] == len(doc["faults"]) >= 1
    assert any("is missing" in f for f in doc["faults"]), doc["faults"]  # the deleted shard is the fault reported
