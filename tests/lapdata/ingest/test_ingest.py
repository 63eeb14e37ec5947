"""lapdata ingest: fixtures -> shards; round trip through webdataset; faults recorded; resume; parts + merge; CLI."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lapdata.core.errors import LapError
from lapdata.ingest.config import summary_line
from lapdata.faces.idfilter import hamming, phash
from lapdata.ingest.run import run_ingest
from lapdata.dataset.sample import decode_image, decode_sample
from lapdata.dataset.reader import iter_samples, shard_urls
from lapdata.dataset.manifests import read_dataset
from tests.builders import ingest_cfg, make_aligned_folders, make_celeba, pattern, save_jpeg, tiny_rec_writer


def test_phash_distinguishes():
    a, b = pattern(1), pattern(2)
    assert hamming(phash(a), phash(a)) == 0
    assert hamming(phash(a), phash(np.clip(a.astype(int) + 3, 0, 255).astype(np.uint8))) <= 4
    assert hamming(phash(a), phash(b)) > 8


def test_round_trip_and_faults(tmp_path):
    import webdataset as wds

    src = make_aligned_folders(tmp_path / "src")
    out = tmp_path / "out"
    st = run_ingest(ingest_cfg(src, out, max_per_sample=4))
    photos = read_dataset(out).to_pylist()
    by_path = {r["path"]: r for r in photos}
    assert len(photos) == 6 * 7 + 3 + 3
    assert by_path["person0/truncated.jpg"]["status"] == "error"
    assert "not a readable image" in by_path["person0/notes.jpg"]["error"]
    cp = by_path["person1/copy.jpg"]
    assert cp["status"] == "skipped" and cp["reason"] == "duplicate" and cp["dup_of"] == by_path["person1/3.jpg"]["photo_id"]
    assert all(by_path[f"few/{j}.jpg"]["reason"] == "min_images" and by_path[f"few/{j}.jpg"]["split"] is None
               for j in range(3))
    assert st["status_counts"] == {"error": 2, "ok": 42, "skipped": 4}
    line = summary_line(st, out)
    assert "42 ok" in line and "2 error" in line and "duplicate 1" in line
    ok = [r for r in photos if r["status"] == "ok"]
    assert all(r["crop_rule"].startswith("prealigned:arcface112") and r["size"] == 128 and r["num_faces"] == 1
               for r in ok)
    # read back with webdataset: every image and its metadata agree with the manifest
    by_id = {r["photo_id"]: r for r in ok}
    seen = 0
    for split in ("train", "val", "test"):
        for d in wds.WebDataset(shard_urls(out, split), shardshuffle=False, empty_check=False):
            s = decode_sample(d)
            assert 1 <= len(s.views) <= 4 and s.split == split and "." not in d["__key__"]
            for i, v in enumerate(s.views):
                r = by_id[v.meta["photo_id"]]
                assert (r["identity"], r["split"], r["key"], r["view_index"], r["shard"]) == (
                    s.identity, split, d["__key__"], i, Path(d["__url__"]).stem)
                assert v.image.shape == (128, 128, 3)
                assert v.meta["path"] == r["path"] and v.meta["crop_rule"] == r["crop_rule"]
                assert hashlib.sha256(d[f"{i:03d}.jpg"]).hexdigest() == v.meta["image_sha256"]
                assert r["sha256"] == hashlib.sha256((src / r["path"]).read_bytes()).hexdigest()
                seen += 1
    assert seen == 42
    ids = {r["identity"]: r for r in pq.read_table(out / "identities.parquet").to_pylist()}
    assert ids["person2"]["num_samples"] == 2 and ids["few"]["status"] == "skipped"
    # splits: an identity in one split only
    sp = {}
    for r in ok:
        assert sp.setdefault(r["identity"], r["split"]) == r["split"]


def test_resume_and_option_change(tmp_path):
    src = make_aligned_folders(tmp_path / "src", faults=False)
    out = tmp_path / "out"
    run_ingest(ingest_cfg(src, out))
    before = {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")}
    # simulate a killed run: one shard's finished marker and tar gone
    victim = sorted((out / "shards").glob("*.json"))[0]
    victim.unlink()
    victim.with_suffix(".tar").unlink()
    st = run_ingest(ingest_cfg(src, out))
    assert st["run"]["written"] == 1 and st["run"]["skipped_finished"] == len(before) - 1
    assert {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")} == before
    with pytest.raises(LapError, match="other options"):
        run_ingest(ingest_cfg(src, out, size=64))


def test_parts_merge(tmp_path):
    from lapdata.dataset.merge import merge_datasets

    src = make_aligned_folders(tmp_path / "src")
    whole = tmp_path / "whole"
    run_ingest(ingest_cfg(src, whole, samples_per_shard=1))
    for i in range(3):
        run_ingest(ingest_cfg(src, tmp_path / f"p{i}", samples_per_shard=1, part=(i, 3)))
    merged = tmp_path / "merged"
    st = merge_datasets([tmp_path / f"p{i}" for i in range(3)], merged)
    a = read_dataset(whole).sort_by("photo_id")
    b = read_dataset(merged).sort_by("photo_id")
    assert a.equals(b)
    assert st["status_counts"] == json.loads((whole / "stats.json").read_text())["status_counts"]
    assert st["complete"]
    assert not merge_datasets([tmp_path / "p0", tmp_path / "p1"], tmp_path / "m2")["complete"]
    from lapdata.dataset.audit.run import audit_dataset

    assert audit_dataset(merged).ok


def test_celeba_fixture_ingest(tmp_path):

    root = make_celeba(tmp_path / "celeba", n_ids=3, per_id=6, header=False)
    # distinct content per photo (the helper's photos are flat colours = near duplicates)
    for k, p in enumerate(sorted((root / "img_align_celeba").glob("*.jpg"))):
        save_jpeg(p, pattern(k, 178)[:, :].repeat(2, 0)[:218])
    st = run_ingest(ingest_cfg(root, tmp_path / "out", kind="celeba"))
    assert st["status_counts"] == {"ok": 18}
    rows = read_dataset(tmp_path / "out").to_pylist()
    assert {r["orig_width"] for r in rows} == {178} and all("celeba-align" in r["crop_rule"] for r in rows)
    assert Counter(r["identity"] for r in rows) == {"100": 6, "101": 6, "102": 6}


def test_rec_fixture_ingest(tmp_path):

    items = []
    for i in range(12):
        buf = io.BytesIO()
        Image.fromarray(pattern(i)).save(buf, format="JPEG")
        items.append((i // 6, buf.getvalue()))
    items.append((2, b"garbage, not a jpeg"))
    tiny_rec_writer(tmp_path / "train.rec", tmp_path / "train.idx", items)
    st = run_ingest(ingest_cfg(tmp_path / "train.rec", tmp_path / "out", kind="rec", min_images=1))
    assert st["status_counts"] == {"error": 1, "ok": 12}
    rows = read_dataset(tmp_path / "out").to_pylist()
    assert {r["identity"] for r in rows if r["status"] == "ok"} == {"0", "1"}
    assert [r["path"] for r in rows if r["status"] == "error"] == ["train.rec#13"]


def test_fatal_faults(tmp_path):
    with pytest.raises(LapError, match="does not exist"):
        run_ingest(ingest_cfg(tmp_path / "missing", tmp_path / "o"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LapError, match="no photos found"):
        run_ingest(ingest_cfg(tmp_path / "empty", tmp_path / "o"))
    src = make_aligned_folders(tmp_path / "src", n_ids=1, per_id=3, faults=False)
    with pytest.raises(LapError, match="lower --min-images"):
        run_ingest(ingest_cfg(src, tmp_path / "o"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(LapError, match="bad.onnx"):
        run_ingest(ingest_cfg(src, tmp_path / "o", min_images=1, id_filter=True, id_model=str(bad)))
    with pytest.raises(LapError, match="does not exist"):
        run_ingest(ingest_cfg(src, tmp_path / "o", min_images=1, detector="insightface", det_model=str(tmp_path / "no.onnx")))


def test_detect_mode_no_face(tmp_path):
    """Unaligned photos without a face are skipped with reason no_face (dlib detector)."""
    for j in range(2):
        save_jpeg(tmp_path / "src" / "x" / f"{j}.jpg", pattern(j, 160))
    st = run_ingest(ingest_cfg(tmp_path / "src", tmp_path / "out", min_images=1, mode="detect"))
    rows = read_dataset(tmp_path / "out").to_pylist()
    assert [r["reason"] for r in rows] == ["no_face", "no_face"] and rows[0]["num_faces"] == 0
    assert st["status_counts"] == {"skipped": 2}


def test_cli_ingest_and_audit(tmp_path):
    from typer.testing import CliRunner

    from lapdata.cli import app

    src = make_aligned_folders(tmp_path / "src")
    r = CliRunner().invoke(app, ["ingest", "folders", str(src), "--out", str(tmp_path / "o"), "--no-progress",
                                 "--samples-per-shard", "2"])
    assert r.exit_code == 0, r.output
    assert "ingest:" in r.output and "42 ok" in r.output
    r = CliRunner().invoke(app, ["audit", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["ok"] is True
    r = CliRunner().invoke(app, ["ingest", "folders", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")])
    assert r.exit_code == 2
    r = CliRunner().invoke(app, ["ingest", "folders", str(src), "--out", str(tmp_path / "o3"), "--part", "5/2"])
    assert r.exit_code == 2
    for i in range(2):
        r = CliRunner().invoke(app, ["ingest", "folders", str(src), "--out", str(tmp_path / f"part{i}"), "--part",
                                     f"{i}/2", "--no-progress", "--samples-per-shard", "2"])
        assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["merge", str(tmp_path / "part0"), str(tmp_path / "part1"), "--out", str(tmp_path / "m")])
    assert r.exit_code == 0 and "42 ok" in r.output, r.output
    assert CliRunner().invoke(app, ["audit", str(tmp_path / "m")]).exit_code == 0


# ------------------------------------------------------------------------------------------------ real data


def test_real_celebrity_sets_small(tmp_path):
    """Three real identities (ArcFace-aligned web photos), 20 photos each, read back."""
    from tests.builders import shared_path

    root = shared_path("faces", "celebrity-sets")
    small = tmp_path / "celeb"
    for name in sorted(p.name for p in root.iterdir() if p.is_dir())[:3]:
        for f in sorted((root / name).glob("*.jpg"))[:20]:
            (small / name).mkdir(parents=True, exist_ok=True)
            (small / name / f.name).symlink_to(f)
    st = run_ingest(ingest_cfg(small, tmp_path / "out"))
    assert st["status_counts"].get("ok", 0) >= 45
    from lapdata.dataset.audit.run import audit_dataset

    assert audit_dataset(tmp_path / "out").ok
    for d in iter_samples(tmp_path / "out"):
        assert decode_image(d["000.jpg"]).shape == (128, 128, 3)


@pytest.mark.slow
def test_real_wild_photos_detect(tmp_path):
    """A few unconstrained photos from the wild-photos CSV: detected, aligned, grouped; several faces recorded."""
    from tests.builders import shared_path

    csv_path = shared_path("faces", "wild-photos", "identities.csv")
    lines = csv_path.read_text().splitlines()
    rows = [l.split(",") for l in lines[1:] if l.strip()]
    ids = Counter(r[1] for r in rows)
    keep_ids = [i for i, _ in ids.most_common(2)]
    sub = [r for r in rows if r[1] in keep_ids]
    small = tmp_path / "ids.csv"
    small.write_text("file,identity\n" + "\n".join(f"{csv_path.parent / f},{i}" for f, i in sub) + "\n")
    st = run_ingest(ingest_cfg(small, tmp_path / "out", kind="csv", min_images=1, csv_root=str(csv_path.parent)))
    photos = read_dataset(tmp_path / "out").to_pylist()
    ok = [r for r in photos if r["status"] == "ok"]
    assert len(ok) >= len(sub) // 2, st
    assert all(r["crop_rule"].startswith("sim5:") and len(r["landmarks"]) == 136 for r in ok)
    assert {r["identity"] for r in ok} <= set(keep_ids)


def test_celebamask_hq_ingest_keeps_ground_truth_seg(tmp_path):
    from lapdata.dataset.audit.run import audit_dataset

    root = tmp_path / "hq"
    (root / "CelebA-HQ-img").mkdir(parents=True)
    md = root / "CelebAMask-HQ-mask-anno" / "0"
    md.mkdir(parents=True)
    lines, ids = ["idx orig_idx orig_file"], ["image identity"]
    for idx in range(6):
        save_jpeg(root / "CelebA-HQ-img" / f"{idx}.jpg", pattern(idx, 96))
        lines.append(f"{idx} {idx + 10} {idx + 10:06d}.jpg")
        ids.append(f"{idx + 10:06d}.jpg 7")
        skin = np.zeros((48, 48), np.uint8)
        skin[10:40, 12:36] = 255
        Image.fromarray(skin).save(md / f"{idx:05d}_skin.png")
        hair = np.zeros((48, 48), np.uint8)
        hair[:10] = 255
        Image.fromarray(hair).save(md / f"{idx:05d}_hair.png")
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(lines) + "\n")
    (root / "identity_CelebA.txt").write_text("\n".join(ids) + "\n")
    out = tmp_path / "out"
    st = run_ingest(ingest_cfg(root, out, kind="celebamask-hq", size=64))
    assert st["status_counts"] == {"ok": 6}
    n = 0
    for d in iter_samples(out):
        s = decode_sample(d)
        for v in s.views:
            assert v.seg.shape == (64, 64) and set(np.unique(v.seg)) == {0, 1, 13}
            assert v.seg[0, 32] == 13 and v.seg[40, 32] == 1
            assert "prealigned:resize" in v.meta["crop_rule"]
            n += 1
    assert n == 6
    assert audit_dataset(out).ok
