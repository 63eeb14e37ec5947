"""lapdata.synthetic 2D backends end to end on tiny random models the tests build and save locally:
stylegan (TorchScript generator + mapping + InterfaceGAN boundary; the published formats are in
test_stylegan_files.py) and diffusers (a tiny PoseControlPipeline saved
with save_pretrained and reloaded offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from lapdata.dataset.audit.run import audit_dataset
from lapdata.core.errors import LapError
from lapdata.synthetic.base import Pose
from lapdata.synthetic.build import SynthConfig, run_synthetic, summary_line


class TinyGenerator(nn.Module):
    def __init__(self, dim: int = 16):
        super().__init__()
        self.fc = nn.Linear(dim, 3 * 8 * 8)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(w)).view(-1, 3, 8, 8)  # (N, 3, 8, 8) in [-1, 1]


class TinyMapping(nn.Module):
    def __init__(self, z_dim: int = 8, w_dim: int = 16):
        super().__init__()
        self.z_dim = z_dim
        self.fc = nn.Linear(z_dim, w_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z)  # (N, w_dim)


class CentreFace:
    """Stand-in detector: one face whose 5 points are the lap template's of a face filling the middle of the view."""

    name = "centre"

    def __call__(self, image):
        from lapdata.faces.align import Face, lap_template

        h = image.shape[0]
        pts = lap_template(h) * 0.8 + 0.1 * h
        return [Face(box=np.array([0.0, 0.0, h, h]), landmarks=pts, score=0.9)]


class NotAnImage(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * 2  # (N, D): not an image


@pytest.fixture
def gan_files(tmp_path) -> dict[str, Path]:
    torch.manual_seed(0)
    files = {"generator": tmp_path / "G.pt", "mapping": tmp_path / "M.pt", "boundary": tmp_path / "pose_w_boundary.npy"}
    torch.jit.save(torch.jit.script(TinyGenerator(16)), files["generator"])
    torch.jit.save(torch.jit.script(TinyMapping(8, 16)), files["mapping"])
    np.save(files["boundary"], np.random.default_rng(0).standard_normal((1, 16)))
    return files


def test_stylegan_pose_edit(gan_files):
    from lapdata.synthetic.stylegan import StyleGANBackend, StyleGANConfig

    cfg = StyleGANConfig(generator=str(gan_files["generator"]), mapping=str(gan_files["mapping"]),
                         boundary=str(gan_files["boundary"]), yaw_scale=0.05, truncation=1.0)
    b = StyleGANBackend(cfg)
    assert b.space == "w"  # from InterfaceGAN's naming (*_w_boundary.npy)
    assert b.z_dim == 8 and b.w_shape == (16,) and b.image_shape == (3, 8, 8)
    p = b.sample_identity(np.random.default_rng(0))
    poses = [Pose(-60), Pose(0), Pose(30)]
    w = b.latents(p, poses)
    n = torch.as_tensor(b.boundary, dtype=w.dtype)
    # the pose component is exactly the requested distance along the boundary; the rest is shared
    np.testing.assert_allclose((w @ n).numpy(), [-3.0, 0.0, 1.5], atol=1e-5)
    w_perp = w - (w @ n)[:, None] * n
    np.testing.assert_allclose(w_perp[0].numpy(), w_perp[2].numpy(), atol=1e-5)
    views = b.render_views(p, poses, 24, np.random.default_rng(0))
    assert [v.image.shape for v in views] == [(24, 24, 3)] * 3
    assert [v.pose.yaw for v in views] == [-60, 0, 30] and views[0].depth is None
    assert [v.meta["boundary_distance"] for v in views] == pytest.approx([-3.0, 0.0, 1.5])
    assert not np.array_equal(views[0].image, views[2].image)
    # at the generator's own 8 px: each view is G(w) of its edited latent, mapped from [-1, 1] to 0..255
    with torch.no_grad():
        want = (torch.jit.load(str(gan_files["generator"]))(w) + 1) / 2 * 255  # (3, 3, 8, 8)
    native = np.stack([v.image for v in b.render_views(p, poses, 8, np.random.default_rng(0))])
    np.testing.assert_allclose(native.astype(np.float64), want.permute(0, 2, 3, 1).numpy(), atol=0.51)


def test_stylegan_end_to_end(gan_files, tmp_path):

    out = tmp_path / "gan"
    cfg = SynthConfig(backend="stylegan", out=str(out), identities=3, poses=5, size=16, id_filter="none",
                      generator=str(gan_files["generator"]), mapping=str(gan_files["mapping"]),
                      pose_boundary=str(gan_files["boundary"]), progress=False)
    stats = run_synthetic(cfg, detector=CentreFace())  # every view: a face in the middle, aligned to the lap framing
    assert stats["status_counts"] == {"ok": 15}
    assert audit_dataset(out).ok
    photos = pq.read_table(out / "photos.parquet").to_pandas()
    assert sorted(set(photos.yaw)) == [-45, -22.5, 0, 22.5, 45] and (photos.pitch == 0).all()
    assert (photos.orig_width == 24).all() and photos.crop_rule.str.startswith("synthetic:stylegan:ffhq-frame,render=24;"
                                                                              "centre;sim5:template=lap").all()


def test_stylegan_view_without_face_is_an_error_row(gan_files, tmp_path):
    """The toolkit's detector (dlib) finds no face on a random generator's views: counted error rows, no failure."""
    pytest.importorskip("dlib")
    out = tmp_path / "gan"
    cfg = SynthConfig(backend="stylegan", out=str(out), identities=2, poses=3, size=16, id_filter="none",
                      generator=str(gan_files["generator"]), mapping=str(gan_files["mapping"]),
                      pose_boundary=str(gan_files["boundary"]), progress=False)
    stats = run_synthetic(cfg)
    assert stats["status_counts"] == {"error": 6} and stats["reason_counts"] == {"no_face": 6} and not stats["failed"]
    assert audit_dataset(out).ok and summary_line(stats, out).startswith("6 views: 0 ok, 0 skipped, 6 error (no_face 6)")
    rows = pq.read_table(out / "photos.parquet").to_pylist()
    assert all(r["error"] == "no_face: dlib-hog found no face in the 24x24 generated view" and r["num_faces"] == 0
               for r in rows)


def test_bad_det_model_is_one_line_before_work(gan_files, tmp_path):
    cfg = SynthConfig(backend="stylegan", out=str(tmp_path / "gan"), generator=str(gan_files["generator"]),
                      mapping=str(gan_files["mapping"]), pose_boundary=str(gan_files["boundary"]),
                      det_model=str(tmp_path / "det_10g.onnx"), progress=False)
    with pytest.raises(LapError, match=r"insightface detection ONNX file not found: .*det_10g.onnx"):
        run_synthetic(cfg)
    assert not (tmp_path / "gan" / "shards").exists()


@pytest.mark.parametrize("what", ["boundary_size", "not_image", "missing", "not_script", "no_boundary", "z_without_mapping"])
def test_stylegan_bad_inputs(gan_files, tmp_path, what):
    from lapdata.synthetic.stylegan import StyleGANBackend, StyleGANConfig

    g, m, bnd = str(gan_files["generator"]), str(gan_files["mapping"]), str(gan_files["boundary"])
    if what == "boundary_size":
        np.save(tmp_path / "b10_w_boundary.npy", np.ones(10))
        bnd, msg = str(tmp_path / "b10_w_boundary.npy"), "boundary has 10 values but the generator's W latent has 16"
    elif what == "not_image":
        torch.jit.save(torch.jit.script(NotAnImage()), tmp_path / "bad.pt")
        g, m, msg = str(tmp_path / "bad.pt"), "", r"output \(1, 16\) is not an image batch"
    elif what == "missing":
        g, msg = str(tmp_path / "nope.pt"), "generator file does not exist"
    elif what == "not_script":
        (tmp_path / "junk.pt").write_bytes(b"not a model")
        g, msg = str(tmp_path / "junk.pt"), "not a StyleGAN generator"
    elif what == "z_without_mapping":
        m, msg = "", "W-space pose boundary, but G.pt has no mapping network"
    else:
        bnd, msg = "", "needs --pose-boundary"
    with pytest.raises(LapError, match=msg) as ei:
        StyleGANBackend(StyleGANConfig(generator=g, mapping=m, boundary=bnd))
    assert "\n" not in str(ei.value)


# ------------------------------------------------------------------------------------------------ diffusers


@pytest.fixture
def tiny_pipeline(tmp_path) -> Path:
    pytest.importorskip("diffusers")
    from diffusers import DDIMScheduler, UNet2DModel

    from lapdata.synthetic.diffusers_backend import PoseControlPipeline

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=6, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    pipe = PoseControlPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=50))
    d = tmp_path / "pipe"
    pipe.save_pretrained(d)
    return d


def test_diffusers_end_to_end(tiny_pipeline, tmp_path):
    from lapdata.synthetic.build import make_backend

    cfg = SynthConfig(backend="diffusers", out=str(tmp_path / "diff"), identities=2, poses=3, size=16, steps=2,
                      id_filter="none", pipeline=str(tiny_pipeline), progress=False)
    b = make_backend(cfg)
    assert type(b.pipe).__name__ == "PoseControlPipeline"
    p = b.sample_identity(np.random.default_rng(0))
    conds = b.condition_images(p, [Pose(-40), Pose(40)], 16, np.random.default_rng(0))
    a = np.asarray(conds[0])
    assert a.shape == (16, 16, 3) and a.max() > 0 and (a == 0).all(-1).any()  # normals on the face, black around
    v1 = b.render_views(p, [Pose(-40), Pose(40)], 16, np.random.default_rng(0))
    v2 = b.render_views(p, [Pose(-40), Pose(40)], 16, np.random.default_rng(0))
    np.testing.assert_array_equal(v1[0].image, v2[0].image)  # same seed per identity: deterministic
    assert not np.array_equal(v1[0].image, v1[1].image)  # the conditioning moves the output
    stats = run_synthetic(cfg, backend=b, detector=CentreFace())  # views detected and aligned (approx-lap framing)
    assert stats["status_counts"] == {"ok": 6}
    rule = pq.read_table(tmp_path / "diff" / "photos.parquet").column("crop_rule").to_pylist()
    assert set(rule) == {"synthetic:diffusers:approx-lap-frame,render=16;centre;"
                         "sim5:template=lap,iod=0.35,eye_y=0.33,size=16,border=replicate"}
    assert audit_dataset(tmp_path / "diff").ok


def test_diffusers_bad_folder(tmp_path):
    pytest.importorskip("diffusers")
    from lapdata.synthetic.diffusers_backend import load_pipeline

    (tmp_path / "model.safetensors").write_bytes(b"\0" * 16)  # a single-file checkpoint: how to convert it, one line
    with pytest.raises(LapError, match=r"model.safetensors: a single-file checkpoint; --pipeline takes a diffusers "
                                       r"folder: convert it once, offline, with from_single_file\(FILE, config=") as ei:
        load_pipeline(str(tmp_path / "model.safetensors"))
    assert "\n" not in str(ei.value)
    (tmp_path / "p").mkdir()
    with pytest.raises(LapError, match="model_index.json is missing"):
        load_pipeline(str(tmp_path / "p"))
    (tmp_path / "p" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}')
    with pytest.raises(LapError, match="cannot load the diffusers pipeline"):
        load_pipeline(str(tmp_path / "p"))
