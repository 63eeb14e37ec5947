"""parse-masks over a shard dataset: seg per view, manifests, hard samples, faults, resume after a kill, audit."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lapdata.dataset.audit.run import audit_dataset
from lapdata.core.errors import LapError
from lapdata.parsing import parse as P
from lapdata.parsing.base import ParseResult
from lapdata.parsing.labels import CLASS_ID
from lapdata.dataset.sample import IdentitySample, View, decode_sample, sample_key
from lapdata.dataset.writer import ShardResult, WriteConfig, plan_shards, write_dataset
from lapdata.dataset.reader import iter_samples
from tests.builders import forced_state_dict

S = 48


class FakeParser:
    """Deterministic stand-in for a model parser: a centred disc of skin (radius from the image mean), eyes, lips;
    an all-black image has 'no face'."""

    name = "landmarks"
    black_is_face = False

    def __call__(self, images):
        out = []
        for im in images:
            if im.max() < 10 and not self.black_is_face:
                out.append(ParseResult(None, error="no_face: dlib found no face for the landmark parser"))
                continue
            h, w = im.shape[:2]
            yy, xx = np.mgrid[:h, :w]
            r = (0.15 + 0.3 * (im.mean() / 255.0)) * min(h, w)
            seg = np.where((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < r * r, 1, 13).astype(np.uint8)
            seg[h // 2 - 2 : h // 2, w // 3] = CLASS_ID["l_eye"]
            seg[int(h * 0.65), w // 2 - 2 : w // 2 + 2] = CLASS_ID["u_lip"]
            out.append(ParseResult(seg))
        return out


def _image(seed: int, level: int) -> np.ndarray:
    if level == 0:
        return np.zeros((S, S, 3), np.uint8)
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(level, 20, (S, S, 3)), 0, 255).astype(np.uint8)


def _process(task, kind: str):
    samples, rows = [], []
    for ident, payload in task.items:
        views = []
        for j, (level, extra) in enumerate(payload):
            pid = f"{ident}-{j}"
            v = View(image=_image(hash(pid) % 1000, level), meta={"photo_id": pid, "num_faces": 1})
            if extra == "mask":
                m = np.zeros((S, S), bool)
                m[10:40, 12:36] = True
                v.mask = m
                d = np.full((S, S), np.nan, np.float32)
                d[m] = 1.0 + 0.01 * np.arange(m.sum(), dtype=np.float32) / m.sum()
                v.depth = d
            elif extra == "seg":
                seg = np.zeros((S, S), np.uint8)
                seg[5:45, 5:45] = 1
                seg[20:24, 10:20] = 4
                v.seg = seg
            views.append(v)
            rows.append({"photo_id": pid, "identity": ident, "split": task.split, "source": kind, "status": "ok",
                         "size": S})
        samples.append(IdentitySample(sample_key(ident), ident, task.split, views, {"source": kind}))
    return ShardResult(samples, rows)


def make_dataset(root: Path, kind: str = "folders", n_ids: int = 6, per_shard: int = 2) -> Path:
    groups = []
    for i in range(n_ids):
        if kind == "folders":
            payload = [(40 + 30 * j + 10 * i, None) for j in range(3)]
            if i == 1:
                payload[1] = (0, None)  # black image: no face
            if i == 2:
                payload[0] = (5 + 1, None)  # tiny disc -> small face fraction? (dark but not black)
        else:
            payload = [(120, "mask"), (140, "seg"), (160, None)]
        groups.append((f"person_{i}", "train" if i < 4 else "val", tuple(payload)))
    tasks = plan_shards(groups, per_shard)
    write_dataset(root, tasks, functools.partial(_process, kind=kind), WriteConfig(progress=False, config={"min_images": 1}))
    return root


@pytest.fixture(autouse=True)
def fake_parser(monkeypatch):
    fake = FakeParser()
    monkeypatch.setattr(P, "get_parser", lambda name, cfg: fake)
    return fake


def _views(root):
    out = {}
    for d in iter_samples(root):
        s = decode_sample(d, fields=("image", "seg", "mask", "depth"))
        for i, v in enumerate(s.views):
            out[v.meta["photo_id"]] = v
    return out


def test_parse_folders_dataset(tmp_path):
    root = make_dataset(tmp_path / "ds")
    before = _views(root)
    rep = P.parse_masks(root, P.ParseConfig(min_face_fraction=0.3), progress=False)
    assert rep.swapped and not rep.audit_faults and not rep.failed_shards
    assert not (tmp_path / "ds.parse-tmp").exists() and not (tmp_path / "ds.parse-old").exists()
    assert audit_dataset(root).ok
    views = _views(root)
    assert set(views) == set(before)  # nothing dropped by default
    photos = pq.read_table(root / "photos.parquet").to_pylist()
    by = {r["photo_id"]: r for r in photos}
    for pid, v in views.items():
        assert v.seg is not None and v.seg.shape == (S, S)
        assert np.array_equal(v.image, before[pid].image)  # image bytes untouched
        r = by[pid]
        assert r["parser"] == "landmarks" and len(r["class_counts"]) == 19 and sum(r["class_counts"]) == S * S
        assert r["face_fraction"] == pytest.approx(np.isin(v.seg, [1, 4, 11]).mean(), abs=1e-6)
        assert r["hard"] == (r["face_fraction"] < 0.3) and v.meta["hard"] == r["hard"]
    # the black image: kept, empty label map, hard with the parse error, error column filled
    r = by["person_1-1"]
    assert r["status"] == "ok" and r["hard"] and r["hard_reason"].startswith("parse_failed: no_face")
    assert r["error"].startswith("no_face") and views["person_1-1"].seg.max() == 0
    assert rep.stats["parse_errors"] == {"parse_failed_kept_hard": 1}
    assert any(x["hard_reason"] and x["hard_reason"].startswith("face_fraction") for x in photos)
    assert (root / "parse_contact_sheet.png").exists() and (root / "parse_face_fraction.png").exists()
    st = json.loads((root / "stats.json").read_text())
    assert st["config"]["min_images"] == 1 and st["config"]["parse_masks"]["parser"] == "auto"


def test_drop_failed_makes_error_rows(tmp_path):
    root = make_dataset(tmp_path / "ds")
    rep = P.parse_masks(root, P.ParseConfig(drop_failed=True), progress=False)
    assert rep.swapped, rep.audit_faults
    by = {r["photo_id"]: r for r in pq.read_table(root / "photos.parquet").to_pylist()}
    r = by["person_1-1"]
    assert r["status"] == "error" and r["reason"] == "parse_failed" and r["shard"] is None
    assert "no_face" in r["error"]
    assert "person_1-1" not in _views(root)
    assert rep.stats["parse_errors"] == {"parse_failed": 1}
    assert audit_dataset(root).ok


def test_ground_truth_synthetic(tmp_path):
    root = make_dataset(tmp_path / "syn", kind="synthetic:procedural")
    before = _views(root)
    rep = P.parse_masks(root, P.ParseConfig(), progress=False)
    assert rep.swapped and audit_dataset(root).ok
    by = {r["photo_id"]: r for r in pq.read_table(root / "photos.parquet").to_pylist()}
    views = _views(root)
    for pid, v in views.items():
        j = int(pid.rsplit("-", 1)[1])
        if j == 0:  # synthetic face mask -> skin, rest background; depth kept
            assert by[pid]["parser"] == "ground-truth"
            assert np.array_equal(v.seg, np.where(before[pid].mask, 1, 0))
            assert np.allclose(v.depth, before[pid].depth, equal_nan=True, atol=1e-6)
            assert np.array_equal(v.mask, before[pid].mask)
        elif j == 1:  # a stored annotation is kept as is
            assert by[pid]["parser"] == "ground-truth" and np.array_equal(v.seg, before[pid].seg)
        else:
            assert by[pid]["parser"] == "landmarks"
    # exact synthetic masks are not marked hard by face fraction (a profile is not a quality problem)
    rep = P.parse_masks(root, P.ParseConfig(min_face_fraction=0.9), progress=False)
    by = {r["photo_id"]: r for r in pq.read_table(root / "photos.parquet").to_pylist()}
    assert by["person_0-0"]["face_fraction"] < 0.9 and not by["person_0-0"]["hard"]
    assert by["person_0-1"]["hard"] and by["person_0-2"]["hard"]
    # --parser ground-truth: views without ground truth get an empty label map, marked hard
    rep = P.parse_masks(root, P.ParseConfig(parser="ground-truth"), progress=False)
    assert rep.swapped
    by = {r["photo_id"]: r for r in pq.read_table(root / "photos.parquet").to_pylist()}
    assert by["person_0-2"]["hard_reason"].startswith("parse_failed: no_ground_truth")


def test_reparse_replaces_model_labels(tmp_path, fake_parser):
    root = make_dataset(tmp_path / "ds", n_ids=2, per_shard=1)
    P.parse_masks(root, P.ParseConfig(), progress=False)
    fake_parser.name = "other"
    rep = P.parse_masks(root, P.ParseConfig(min_face_fraction=0.0), progress=False)
    assert rep.swapped and rep.stats["hard"] == 1  # only the black image (parse failed) is hard now
    assert audit_dataset(root).ok
    fake_parser.black_is_face = True  # a better parser finds the face: the earlier failure is cleared
    rep = P.parse_masks(root, P.ParseConfig(min_face_fraction=0.0), progress=False)
    r = {x["photo_id"]: x for x in pq.read_table(root / "photos.parquet").to_pylist()}["person_1-1"]
    assert rep.stats["hard"] == 0 and r["error"] is None and not r["hard"]
    assert "parse_error" not in _views(root)["person_1-1"].meta


def test_resume_after_kill(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "ds", n_ids=6, per_shard=1)
    n_shards = len(list((root / "shards").glob("*.tar")))
    real = P.process_shard
    calls = {"n": 0}

    def killed(task, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the kill arrives while the 3rd shard is being parsed
        return real(task, **kw)

    monkeypatch.setattr(P, "process_shard", killed)
    with pytest.raises(KeyboardInterrupt):
        P.parse_masks(root, P.ParseConfig(), progress=False)
    tmp = tmp_path / "ds.parse-tmp"
    assert len(list((tmp / "shards").glob("*.json"))) == 2  # two shards finished
    (tmp / "shards" / "train-000002.tar.tmp").write_bytes(b"half-written")  # what a kill can leave
    assert audit_dataset(root).ok  # the old version is untouched
    monkeypatch.setattr(P, "process_shard", real)
    calls["n"] = 0
    done = []
    monkeypatch.setattr(P, "process_shard", lambda task, **kw: (done.append(task.name), real(task, **kw))[1])
    rep = P.parse_masks(root, P.ParseConfig(), progress=False)
    assert rep.swapped and len(done) == n_shards - 2  # finished shards were skipped
    assert audit_dataset(root).ok
    assert all(v.seg is not None for v in _views(root).values())


def test_interrupted_swap_is_completed(tmp_path):
    root = make_dataset(tmp_path / "ds", n_ids=2, per_shard=1)
    P.parse_masks(root, P.ParseConfig(), progress=False)
    # simulate a kill between the two renames of the swap
    tmp, old = tmp_path / "ds.parse-tmp", tmp_path / "ds.parse-old"
    shutil.copytree(root, tmp)
    root.rename(old)
    rep = P.parse_masks(root, P.ParseConfig(), progress=False)
    assert rep.swapped and root.exists() and not old.exists() and not tmp.exists()
    assert audit_dataset(root).ok


def test_options_change_restarts_tmp(tmp_path, monkeypatch, capsys):
    root = make_dataset(tmp_path / "ds", n_ids=3, per_shard=1)
    tmp = tmp_path / "ds.parse-tmp"
    tmp.mkdir()
    (tmp / P.CONFIG_FILE).write_text(json.dumps({"parser": "bisenet"}))
    rep = P.parse_masks(root, P.ParseConfig(), progress=False)
    assert rep.swapped and "starting it over" in capsys.readouterr().out


def test_bad_inputs(tmp_path):
    with pytest.raises(LapError, match="does not exist"):
        P.parse_masks(tmp_path / "nope", P.ParseConfig(), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LapError, match="no finished shards"):
        P.parse_masks(tmp_path / "empty", P.ParseConfig(), progress=False)
    with pytest.raises(LapError, match="needs --weights"):
        P.ParseConfig(parser="bisenet")
    with pytest.raises(LapError, match="min-face-fraction"):
        P.ParseConfig(min_face_fraction=2.0)


def test_wrong_weights_one_line(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real get_parser: the weight file is checked before any work
    root = make_dataset(tmp_path / "ds", n_ids=2, per_shard=1)
    w = tmp_path / "w.pth"
    import torch

    torch.save({"fc.weight": torch.zeros(3, 3)}, w)
    with pytest.raises(LapError, match="w.pth: not a BiSeNet face-parsing weight file"):
        P.parse_masks(root, P.ParseConfig(parser="bisenet", weights=str(w)), progress=False)
    assert not (tmp_path / "ds.parse-tmp").exists()


def test_shard_without_images(tmp_path):
    root = make_dataset(tmp_path / "ds", n_ids=2, per_shard=1)
    # rewrite one shard's tar without its image members (json only)
    import tarfile

    tar = sorted((root / "shards").glob("*.tar"))[0]
    with tarfile.open(tar) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf if m.name.endswith(".json")]
    with tarfile.open(tar, "w") as tf:
        import io

        for m, data in members:
            m.size = len(data)
            tf.addfile(m, io.BytesIO(data))
    rep = P.parse_masks(root, P.ParseConfig(), progress=False)
    assert rep.swapped, rep.audit_faults
    rows = pq.read_table(root / "photos.parquet").to_pylist()
    bad = [r for r in rows if r["reason"] == "no_image"]
    assert len(bad) == 3 and all(r["status"] == "error" and "missing" in r["error"] for r in bad)
    assert rep.stats["parse_errors"]["no_image"] == 3
    assert audit_dataset(root).ok


def test_cli(tmp_path):
    from typer.testing import CliRunner

    from lapdata.cli import app

    root = make_dataset(tmp_path / "ds", n_ids=2, per_shard=1)
    cfg = tmp_path / "p.yaml"
    cfg.write_text("parse_masks:\n  min_face_fraction: 0.9\n  masks:\n    face: [skin]\n")
    res = CliRunner().invoke(app, ["parse-masks", str(root), "--config", str(cfg), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "hard 6" in res.output and "contact sheet" in res.output
    res = CliRunner().invoke(app, ["parse-masks", str(root), "--parser", "bisenet", "--no-progress"])
    assert res.exit_code == 2 and "needs --weights" in res.output


def test_bisenet_end_to_end(tmp_path, monkeypatch):
    """79999_iter.pth-layout weights forced to answer face-parsing.PyTorch's class 10 (nose): the stored label maps,
    class counts and RCL masks hold the project's nose (2), not its 10 (mouth, M_re 0.3)."""
    monkeypatch.undo()  # the real parsers
    import torch

    from lapdata.parsing.masks import label_to_masks_np

    w = tmp_path / "79999_iter.pth"
    torch.save(forced_state_dict(10), w)
    root = make_dataset(tmp_path / "ds", n_ids=2, per_shard=1)
    rep = P.parse_masks(root, P.ParseConfig(weights=str(w), input_size=64, batch_size=4), progress=False)
    assert rep.swapped and audit_dataset(root).ok
    rows = [r for r in pq.read_table(root / "photos.parquet").to_pylist() if r["status"] == "ok"]
    assert len(rows) == 6 and all(r["parser"] == "bisenet" for r in rows)  # auto + --weights -> bisenet
    nose = CLASS_ID["nose"]
    assert nose == 2 and all(r["class_counts"][nose] == S * S == sum(r["class_counts"]) for r in rows)
    for v in _views(root).values():
        assert (v.seg == nose).all()
        m, m_re = label_to_masks_np(v.seg)
        assert (m == 1).all() and (m_re == 1).all()
    # the same weights declared in the project's order: the id is stored as is (10 = mouth, lowered to 0.3)
    rep = P.parse_masks(root, P.ParseConfig(weights=str(w), input_size=64, label_order="celebamask-hq"),
                        progress=False)
    assert rep.swapped
    for v in _views(root).values():
        assert (v.seg == CLASS_ID["mouth"]).all() and (label_to_masks_np(v.seg)[1] == np.float32(0.3)).all()
