"""reconstruct: loading/cropping photos, the write-out of every output, the set path, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from lapdata.core import pictures
from lapdata.core.errors import LapError
from lapmodel.io import export
from lapmodel.models.outputs import Reconstruction
from lapmodel.inference.faces import load_faces
from lapmodel.inference.reconstruct import ReconstructConfig, reconstruct_images, reconstruct_paths
from tests.builders import StandIn, fake_reconstruction, sphere_depth


class SetStandIn(StandIn):
    """Set model: canonical fields are one row for the whole set (the mean image as albedo)."""

    accepts_sets = True

    def reconstruct(self, images: torch.Tensor, as_set: bool = False) -> Reconstruction:
        self.calls.append(len(images))
        rec = fake_reconstruction(images)
        if as_set:
            mean = images.mean(0, keepdim=True)
            rec.canon_depth, rec.canon_albedo = rec.canon_depth[:1], mean
            rec.canon_normal, rec.canon_shading = rec.canon_normal[:1], rec.canon_shading[:1]
            rec.canon_image = mean * rec.canon_shading
        return rec


KINDS = ("input", "recon", "albedo", "shading", "canonical", "depth", "depth_json", "depth_npy", "depth_color",
         "normal", "obj", "mtl", "texture", "ply", "glb", "summary", "view_depth_npy", "turntable")


def _images(b=3, s=16, seed=0):
    return torch.rand(b, 3, s, s, generator=torch.Generator().manual_seed(seed))


def test_reconstruct_images_writes_everything(tmp_path):
    model = StandIn()
    imgs = _images(5)
    names = [f"p{i}" for i in range(5)]
    res = reconstruct_images(model, imgs, tmp_path, names, batch_size=2, turntable=4, progress=False)
    assert model.calls == [2, 2, 1]
    assert set(res["outputs"]) == set(names)
    for n in names:
        out = res["outputs"][n]
        for k in KINDS:
            assert Path(out[k]).exists(), (n, k)
        d = np.load(out["depth_npy"])
        assert d.shape == (16, 16) and np.allclose(d, sphere_depth(1, 16)[0].numpy())
        assert np.nanmax(np.abs(export.load_depth_png(out["depth"]) - d)) < 1e-5
        obj = trimesh.load(out["obj"], force="mesh", process=False)  # (trimesh drops unused vertices)
        ply = trimesh.load(out["ply"], process=False)
        glb = trimesh.load(out["glb"], force="mesh", process=False)
        assert 0 < len(obj.vertices) <= 256 and len(obj.faces) > 0
        assert len(ply.faces) == len(glb.faces) == len(obj.faces) and len(ply.vertices) == len(obj.vertices)
        np.testing.assert_allclose(ply.vertices, obj.vertices, atol=1e-6)
        assert ply.visual.vertex_colors.shape == (len(ply.vertices), 4)  # RGBA (alpha 255)
        assert pictures.gif_frame_count(out["turntable"]) == 4
        col = pictures.load_png(out["depth_color"])
        assert np.array_equal(col, pictures.depth_colors(d))  # the one depth colour map
    inp = np.asarray(Image.open(res["outputs"]["p0"]["input"]))
    assert np.abs(inp.astype(float) / 255 - imgs[0].permute(1, 2, 0).numpy()).max() < 1 / 255 + 1e-6
    assert Path(res["summary"]).exists()
    assert not list(tmp_path.rglob("*.tmp"))


def test_reconstruct_images_set(tmp_path):
    model = SetStandIn()
    imgs = _images(3)
    res = reconstruct_images(model, imgs, tmp_path, ["a", "b", "c"], as_set=True, turntable=0, progress=False)
    assert model.calls == [3]  # one call for the whole set
    assert "set" in res["outputs"]
    alb = [np.asarray(Image.open(res["outputs"][n]["albedo"])) for n in ("a", "b", "c", "set")]
    assert all(np.array_equal(alb[0], a) for a in alb[1:])  # one identity: same canonical albedo
    with pytest.raises(LapError, match="--as-set"):
        reconstruct_images(StandIn(), imgs, tmp_path / "x", ["a", "b", "c"], as_set=True, progress=False)


def test_reconstruct_images_errors(tmp_path):
    with pytest.raises(ValueError):
        reconstruct_images(StandIn(), _images(2), tmp_path, ["a"], progress=False)
    res = reconstruct_images(StandIn(), torch.zeros(0, 3, 16, 16), tmp_path, [], progress=False)
    assert res["outputs"] == {}


def _write_png(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


def test_load_faces_aligned_unreadable_and_noface(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    d.mkdir()
    _write_png(d / "a.png", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    _write_png(d / "b.png", rng.integers(0, 255, (30, 30, 3), dtype=np.uint8))
    (d / "broken.jpg").write_bytes(b"not an image")
    _write_png(d / "wide.png", np.full((40, 70, 3), 128, np.uint8))  # non-square: goes to the detector
    faces = load_faces([d], 16)
    assert faces.names == ["a", "b"] and faces.images.shape == (2, 3, 16, 16)
    # square files are aligned crops: the whole square, area-resized, as (3, S, S) floats in [0, 1]
    a = np.asarray(Image.open(d / "a.png"))
    want = np.asarray(Image.fromarray(a).resize((16, 16), Image.BOX)).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(faces.images[0].numpy(), want, atol=1e-6)
    assert faces.rules == ["prealigned:resize;center-square,size=16"] * 2
    reasons = {Path(s["path"]).name: s["reason"] for s in faces.skipped}
    assert "unreadable" in reasons["broken.jpg"] and reasons["wide.png"] == "no face found"
    # forcing --aligned crops the wide image too (centre square)
    faces2 = load_faces([d / "wide.png", d / "a.png"], 16, aligned=True)
    assert faces2.names == ["wide", "a"] and not faces2.skipped
    assert torch.allclose(faces2.images[0], torch.tensor(128 / 255)) and torch.equal(faces2.images[1], faces.images[0])
    with pytest.raises(LapError, match="no such file"):
        load_faces([tmp_path / "missing.jpg"], 16)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LapError, match="no images"):
        load_faces([empty], 16)


def test_duplicate_names(tmp_path):
    rng = np.random.default_rng(1)
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        _write_png(tmp_path / sub / "face.png", rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    faces = load_faces([tmp_path / "x", tmp_path / "y"], 16)
    assert faces.names == ["face", "face_1"]


def test_reconstruct_paths_with_model(tmp_path):
    rng = np.random.default_rng(2)
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(3):
        _write_png(src / f"f{i}.png", rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))
    (src / "bad.png").write_bytes(b"\x89PNG broken")
    model = StandIn()
    rep = reconstruct_paths(ReconstructConfig((str(src),), checkpoint="unused.pt", out=str(tmp_path / "out"), turntable=0),
                            model=model, progress=False, chunk=2)
    assert rep["done"] == 3 and rep["skipped"] == 1 and rep["size"] == 16
    assert model.calls == [1, 2]  # chunk 1: bad.png + f0.png (one skipped), chunk 2: f1, f2
    assert sorted(rep["outputs"]) == ["f0", "f1", "f2"] and Path(rep["summary"]).exists()
    doc = json.loads((tmp_path / "out" / "reconstruct.json").read_text())
    assert doc["skipped_files"][0]["path"].endswith("bad.png")
    with pytest.raises(LapError, match="checkpoint not found"):
        reconstruct_paths(ReconstructConfig((str(src),), checkpoint=str(tmp_path / "nope.pt"), out=str(tmp_path / "out2")))
    with pytest.raises(LapError, match="batch_size must be >= 1"):
        ReconstructConfig((str(src),), checkpoint="x.pt", out=str(tmp_path / "out3"), batch_size=0)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(LapError, match="--out is a file"):
        reconstruct_paths(ReconstructConfig((str(src),), checkpoint="x.pt", out=str(tmp_path / "afile")), model=model)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(LapError, match="empty file"):
        reconstruct_paths(ReconstructConfig((str(src),), checkpoint=str(tmp_path / "empty.pt"), out=str(tmp_path / "out4")))


def test_detect_real_photo(tmp_path):
    from tests.builders import shared_path

    from lapdata.faces.detectors import DlibDetector
    from lapdata.faces.align import lap_template, largest_face

    photos = [shared_path("faces", "wild-photos", n) for n in ("couple.jpg", "img1.jpg")]
    faces = load_faces(photos, 128, aligned=False)
    assert faces.names == ["couple", "img1"] and not faces.skipped and faces.images.shape == (2, 3, 128, 128)
    assert all(r.startswith("sim5:template=lap") for r in faces.rules)
    # the crops are aligned faces: detected again inside the crop, the eyes sit on the template's (IOD 45 px)
    det = DlibDetector()
    for img in faces.images:
        face = largest_face(det((img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)))
        assert face is not None
        assert np.abs(face.points5()[:2] - lap_template(128)[:2]).max() < 6.0
    res = reconstruct_images(StandIn(), faces.images, tmp_path, faces.names, turntable=0, progress=False)
    assert sorted(res["outputs"]) == ["couple", "img1"]


def _tiny_checkpoint(path: Path, kind: str = "unsup3d") -> Path:
    from lapmodel.io import checkpoint as ckm
    from lapmodel.config import ModelConfig, TrainConfig
    from lapmodel.models.build import build_model

    cfg = TrainConfig(model=ModelConfig(kind=kind, image_size=64, nf=8, nf_encoder=8, zdim=16, zdim_conf=8))
    torch.manual_seed(0)
    model = build_model(cfg, training=False)
    return ckm.save_checkpoint(path, model=model, config=cfg, step=0)


def test_models_implement_the_protocol():
    from lapmodel.config import ModelConfig, TrainConfig
    from lapmodel.inference.reconstruct import run_model
    from lapmodel.models.build import build_model
    from lapmodel.models.model import Model

    x = _images(2, 64)
    for kind, sets in (("unsup3d", False), ("lap", True)):
        cfg = TrainConfig(model=ModelConfig(kind=kind, image_size=64, nf=8, nf_encoder=8, zdim=16, zdim_conf=8))
        m = build_model(cfg, training=False)
        assert isinstance(m, Model) and m.accepts_sets is sets and m.image_size == 64 and m.perceptual is None
        rec = run_model(m, x, as_set=sets)
        assert rec.recon_depth.shape == (2, 64, 64) and rec.canon_depth.shape[-2:] == (64, 64)
    m = build_model(TrainConfig(model=ModelConfig(image_size=64, nf=8, nf_encoder=8, zdim=16, zdim_conf=8)))
    with pytest.raises(ValueError, match="single images"):
        m.reconstruct(x, as_set=True)
    with pytest.raises(LapError, match="--as-set"):
        run_model(m, x, as_set=True)
    assert not isinstance(StandIn(), Model)  # a stand-in reconstructs only: it is no model to train


def test_cli_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from lapmodel.cli import app

    ck = _tiny_checkpoint(tmp_path / "tiny.pt")
    rng = np.random.default_rng(3)
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(2):
        _write_png(src / f"face{i}.png", rng.integers(0, 255, (80, 80, 3), dtype=np.uint8))
    (src / "junk.jpg").write_bytes(b"junk")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["reconstruct", str(src), "--checkpoint", str(ck), "--out", str(out),
                                 "--turntable-frames", "3"])
    assert r.exit_code == 0, r.output
    assert "reconstructed 2 photo(s), skipped 1" in r.output
    for name in ("face0", "face1"):
        for f in ("depth.png", "depth.json", "depth.npy", "normal.png", "albedo.png", "shading.png", "canonical.png",
                  "recon.png", "mesh.obj", "mesh.mtl", "mesh_texture.png", "mesh.ply", "mesh.glb", "turntable.gif",
                  "summary.png"):
            assert (out / name / f).exists(), (name, f)
        assert pictures.gif_frame_count(out / name / "turntable.gif") == 3
        assert np.load(out / name / "depth.npy").shape == (64, 64)
    assert (out / "summary.png").exists()
    # single-image checkpoint + --set: one-line error, exit 2
    r = CliRunner().invoke(app, ["reconstruct", str(src / "face0.png"), "--checkpoint", str(ck), "--out",
                                 str(tmp_path / "o2"), "--as-set"])
    assert r.exit_code == 2 and "--as-set needs" in r.output
    r = CliRunner().invoke(app, ["reconstruct", str(tmp_path / "nothing.png"), "--checkpoint", str(ck), "--out",
                                 str(tmp_path / "o3")])
    assert r.exit_code == 2 and "no such file" in r.output


def test_cli_set_lap(tmp_path):
    from typer.testing import CliRunner

    from lapmodel.cli import app

    ck = _tiny_checkpoint(tmp_path / "lap.pt", kind="lap")
    rng = np.random.default_rng(4)
    paths = []
    for i in range(3):
        paths.append(str(_write_png(tmp_path / f"p{i}.png", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["reconstruct", *paths, "--as-set", "--checkpoint", str(ck), "--out", str(out),
                                 "--turntable-frames", "0", "--no-mesh"])
    assert r.exit_code == 0, r.output
    assert (out / "set" / "albedo.png").exists() and (out / "p2" / "recon.png").exists()
    # one identity (the refiner untrained: no personalisation): every photo shows the set's canonical albedo
    set_albedo = np.asarray(Image.open(out / "set" / "albedo.png"))
    for n in ("p0", "p1", "p2"):
        assert np.array_equal(np.asarray(Image.open(out / n / "albedo.png")), set_albedo), n
    assert not list(out.rglob("mesh.obj"))  # --no-mesh


def test_no_checkpoint_uses_the_packaged_model(tmp_path, monkeypatch):
    """`lapmodel reconstruct photo.png` with no --checkpoint: the model shipped in the package (io.pretrained);
    without one installed, a one-line error saying so."""
    from typer.testing import CliRunner

    from lapmodel.cli import app
    from lapmodel.io import pretrained

    ck = _tiny_checkpoint(tmp_path / "tiny.pt")
    packed = pretrained.pack_checkpoint(ck, tmp_path / "weights" / "default.pt")
    photo = tmp_path / "face.png"
    _write_png(photo, np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    monkeypatch.setattr(pretrained, "DEFAULT_CHECKPOINT", packed)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["reconstruct", str(photo), "--turntable-frames", "0"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "reconstructions" / "reconstruct.json").read_text())
    assert rep["checkpoint"] == str(packed) and rep["done"] == 1
    monkeypatch.setattr(pretrained, "DEFAULT_CHECKPOINT", tmp_path / "absent.pt")
    r = CliRunner().invoke(app, ["reconstruct", str(photo), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no packaged model" in r.output and "\n" not in r.output.strip()
