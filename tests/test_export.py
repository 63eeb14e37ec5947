"""Export round trips: 16-bit depth, OBJ, PLY, GIF, grids, pictures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lapmodel.io import export
def _sphere_depth(s=24):
    y, x = np.meshgrid(np.linspace(-1, 1, s), np.linspace(-1, 1, s), indexing="ij")
    r2 = x**2 + y**2
    d = np.where(r2 < 0.8, 1.0 - 0.1 * np.sqrt(np.clip(1 - r2, 0, 1)), 1.0)
    return d.astype(np.float32), r2 < 0.8


def test_depth_png_roundtrip(tmp_path):
    d, mask = _sphere_depth()
    png, side = export.save_depth_png(tmp_path / "depth.png", d, mask)
    doc = json.loads(side.read_text())
    lo, hi = doc["range"]
    assert lo == pytest.approx(d[mask].min()) and hi == pytest.approx(d[mask].max())
    back = export.load_depth_png(png)
    assert back.shape == d.shape
    assert np.isnan(back[~mask]).all()
    err = np.abs(back[mask] - d[mask]).max()
    assert err <= (hi - lo) / 65534 / 2 + 1e-6  # half a quantum (float32 rounding aside)
    from PIL import Image

    with Image.open(png) as im:
        assert np.array(im).dtype in (np.uint16, np.int32)


def test_depth_npy_exact(tmp_path):
    d, _ = _sphere_depth()
    p = export.save_depth_npy(tmp_path / "d.npy", torch.from_numpy(d))
    assert np.array_equal(np.load(p), d)


def test_depth_mesh_counts_and_geometry():
    s = 8
    d = np.full((s, s), 2.0, dtype=np.float32)
    verts, faces, uvs = export.depth_mesh(d, fov_deg=10.0, frame="camera")
    assert verts.shape == (s * s, 3) and uvs.shape == (s * s, 2)
    assert faces.shape == (2 * (s - 1) ** 2, 3)
    assert np.allclose(verts[:, 2], 2.0)
    # pinhole: pixel column j -> x = (j - (S-1)/2) / f * z, f = (S-1)/2/tan(fov/2)
    f = (s - 1) / 2 / math.tan(math.radians(5.0))
    assert verts[s - 1, 0] == pytest.approx((s - 1 - (s - 1) / 2) / f * 2.0, rel=1e-5)
    assert verts[s * (s - 1), 1] == pytest.approx((s - 1) / 2 / f * 2.0, rel=1e-5)
    assert uvs[0, 0] == pytest.approx(0.5 / s) and uvs[0, 1] == pytest.approx(1 - 0.5 / s)
    # camera-facing triangles: normal towards the camera (-z) in camera space, towards +z in the y-up frame
    tri = verts[faces[0]]
    assert np.cross(tri[1] - tri[0], tri[2] - tri[0])[2] < 0
    up, faces_up, _ = export.depth_mesh(d, fov_deg=10.0)
    assert np.allclose(up, verts * np.array([1, -1, -1]))
    tri = up[faces_up[0]]
    assert np.cross(tri[1] - tri[0], tri[2] - tri[0])[2] > 0
    with pytest.raises(ValueError):
        export.depth_mesh(d, frame="z_up")


def test_depth_mesh_drops_masked_and_discontinuities():
    s = 8
    d = np.full((s, s), 1.0, dtype=np.float32)
    mask = np.ones((s, s), dtype=bool)
    mask[:, :2] = False  # columns 0,1 out -> quads touching them dropped
    _, faces, _ = export.depth_mesh(d, mask=mask)
    assert len(faces) == 2 * (s - 1) * (s - 3)
    d2 = d.copy()
    d2[:, 4:] = 1.5  # a step between columns 3 and 4
    _, faces2, _ = export.depth_mesh(d2, max_jump=0.05)
    assert len(faces2) == 2 * (s - 1) * (s - 2)
    _, faces3, _ = export.depth_mesh(d2, max_jump=None)
    assert len(faces3) == 2 * (s - 1) ** 2


def test_obj_roundtrip(tmp_path):
    d, mask = _sphere_depth(16)
    tex = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    verts, faces, uvs = export.depth_mesh(d, mask=mask)
    obj = export.write_obj(tmp_path / "m.obj", verts, faces, uvs, tex)
    back = export.read_obj(obj)
    assert back["verts"].shape == verts.shape
    assert np.allclose(back["verts"], verts, atol=1e-5)
    assert np.array_equal(back["faces"], faces)
    assert np.allclose(back["uvs"], uvs, atol=1e-5)
    assert back["mtllib"] == "m.mtl"
    mtl = (tmp_path / "m.mtl").read_text()
    assert "map_Kd m_texture.png" in mtl
    assert (tmp_path / "m_texture.png").exists()
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("binary", [True, False])
def test_ply_roundtrip(tmp_path, binary):
    rng = np.random.default_rng(1)
    verts = rng.random((50, 3)).astype(np.float32)
    faces = rng.integers(0, 50, (70, 3))
    cols = rng.integers(0, 256, (50, 3)).astype(np.uint8)
    p = export.write_ply(tmp_path / "m.ply", verts, faces, cols, binary=binary)
    back = export.read_ply(p)
    assert back["verts"].shape == (50, 3) and back["faces"].shape == (70, 3)
    assert np.allclose(back["verts"], verts, atol=1e-6 if binary else 1e-5)
    assert np.array_equal(back["faces"], faces)
    assert np.array_equal(back["colors"], cols)
    head = p.read_bytes()[:200]
    assert (b"binary_little_endian" in head) == binary


def test_export_depth_mesh(tmp_path):
    d, mask = _sphere_depth(16)
    tex = np.zeros((16, 16, 3), np.uint8)
    tex[..., 0] = 200
    out = export.export_depth_mesh(tmp_path / "face", d, tex, mask=mask)
    for k in ("obj", "mtl", "texture", "ply"):
        assert out[k].exists(), k
    ply = export.read_ply(out["ply"])
    obj = export.read_obj(out["obj"])
    assert len(ply["faces"]) == len(obj["faces"]) > 0
    assert len(ply["verts"]) <= mask.sum()  # unused vertices dropped
    assert (ply["colors"][:, 0] == 200).all()


def test_gif_frames(tmp_path):
    frames = np.random.default_rng(0).random((7, 3, 12, 12)).astype(np.float32)
    p = export.write_gif(tmp_path / "t.gif", frames, fps=10)
    assert export.gif_frame_count(p) == 7
    p2 = export.write_gif(tmp_path / "u.gif", [np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)])
    assert export.gif_frame_count(p2) == 2
    with pytest.raises(ValueError):
        export.write_gif(tmp_path / "v.gif", [])


def test_turntable_gif(tmp_path):
    d, _ = _sphere_depth(16)
    img = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    frames = export.turntable_frames(d, img, n_frames=5)
    assert frames.shape == (5, 16, 16, 3) and frames.dtype == np.uint8
    p = export.write_gif(tmp_path / "t.gif", frames)
    assert export.gif_frame_count(p) == 5
    both = export.turntable_frames(d, img, n_frames=3, shape=True)
    assert both.shape == (3, 16, 32, 3)
    assert np.array_equal(both[0, :, :16], frames[0])  # left half: the textured face (yaw 0 in both)


def test_pictures(tmp_path):
    d, mask = _sphere_depth(16)
    col = export.depth_to_color(d, mask)
    assert col.shape == (16, 16, 3) and col.dtype == np.uint8
    assert (col[~mask] == 0).all() and col[mask].any()
    n = np.zeros((16, 16, 3), np.float32)
    n[..., 2] = -1
    img = export.normal_to_image(n)
    assert (img[..., 0] == 128).all() and (img[..., 2] == 0).all()
    assert export.to_uint8_image(torch.ones(3, 5, 4)).shape == (5, 4, 3)
    assert export.to_uint8_image(np.zeros((5, 4))).shape == (5, 4, 3)
    p = export.save_normal_png(tmp_path / "n.png", torch.from_numpy(n))
    assert p.exists()


def test_image_grid(tmp_path):
    a = np.zeros((3, 20, 20), np.float32)
    b = np.ones((20, 20, 3), np.uint8) * 255
    g = export.image_grid([[a, b, None], [b, a]], col_labels=["x", "y", "z"], row_labels=["r0", "r1"], cell=20)
    assert g.ndim == 3 and g.shape[2] == 3
    assert g.shape[0] > 2 * 20 and g.shape[1] > 3 * 20
    p = export.save_grid(tmp_path / "g.png", [[a, b]], ["a", "b"])
    assert p.exists()
    with pytest.raises(ValueError):
        export.image_grid([])
