"""Depth and mesh files: 16-bit depth PNG, .npy, the depth-grid mesh (OBJ, PLY, GLB through lapmodel.io.mesh)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

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
    m = export.depth_mesh(d, fov_deg=10.0, frame="camera")
    verts, faces, uvs = m.verts, m.faces, m.uvs
    assert uvs is None and m.texture is None  # no texture given
    assert verts.shape == (s * s, 3) and faces.shape == (2 * (s - 1) ** 2, 3)
    assert np.allclose(verts[:, 2], 2.0)
    # pinhole: pixel column j -> x = (j - (S-1)/2) / f * z, f = (S-1)/2/tan(fov/2)
    f = (s - 1) / 2 / math.tan(math.radians(5.0))
    assert verts[s - 1, 0] == pytest.approx((s - 1 - (s - 1) / 2) / f * 2.0, rel=1e-5)
    assert verts[s * (s - 1), 1] == pytest.approx((s - 1) / 2 / f * 2.0, rel=1e-5)
    tex = export.depth_mesh(d, texture=np.zeros((s, s, 3), np.uint8)).uvs
    assert tex[0, 0] == pytest.approx(0.5 / s) and tex[0, 1] == pytest.approx(1 - 0.5 / s)
    # camera-facing triangles: normal towards the camera (-z) in camera space, towards +z in the y-up frame
    tri = verts[faces[0]]
    assert np.cross(tri[1] - tri[0], tri[2] - tri[0])[2] < 0
    up = export.depth_mesh(d, fov_deg=10.0)
    assert np.allclose(up.verts, verts * np.array([1, -1, -1]))
    tri = up.verts[up.faces[0]]
    assert np.cross(tri[1] - tri[0], tri[2] - tri[0])[2] > 0
    with pytest.raises(ValueError):
        export.depth_mesh(d, frame="z_up")


def test_depth_mesh_drops_masked_and_discontinuities():
    s = 8
    d = np.full((s, s), 1.0, dtype=np.float32)
    mask = np.ones((s, s), dtype=bool)
    mask[:, :2] = False  # columns 0,1 out -> quads touching them dropped
    assert len(export.depth_mesh(d, mask=mask).faces) == 2 * (s - 1) * (s - 3)
    d2 = d.copy()
    d2[:, 4:] = 1.5  # a step between columns 3 and 4
    assert len(export.depth_mesh(d2, max_jump=0.05).faces) == 2 * (s - 1) * (s - 2)
    assert len(export.depth_mesh(d2, max_jump=None).faces) == 2 * (s - 1) ** 2
    assert len(export.depth_mesh(d, crop=1).faces) == 2 * (s - 3) ** 2  # the border pixels cropped off
    d3 = d.copy()
    d3[0, 0] = np.nan
    assert np.isfinite(export.depth_mesh(d3).verts).all()  # no NaN vertex, even unused


def test_export_depth_mesh(tmp_path):
    """OBJ + MTL + texture, PLY and GLB of one mesh through lapmodel.io.mesh; read back with trimesh."""
    from lapmodel.io.mesh import glb_json

    d, mask = _sphere_depth(16)
    tex = np.zeros((16, 16, 3), np.uint8)
    tex[..., 0] = 200
    out = export.export_depth_mesh(tmp_path / "face", d, tex, mask=mask)
    for k in ("obj", "mtl", "texture", "ply", "glb"):
        assert out[k].exists(), k
    assert "map_Kd face_texture.png" in out["mtl"].read_text()
    assert np.array_equal(np.asarray(Image.open(out["texture"]).convert("RGB")), tex)
    obj = trimesh.load(out["obj"], force="mesh", process=False)
    ply = trimesh.load(out["ply"], process=False)
    glb = trimesh.load(out["glb"], force="mesh", process=False)
    want = export.depth_mesh(d, mask=mask)
    assert len(obj.faces) == len(ply.faces) == len(glb.faces) == len(want.faces) > 0
    assert len(ply.vertices) == len(obj.vertices) <= mask.sum()  # unused vertices dropped
    np.testing.assert_allclose(ply.vertices, obj.vertices, atol=1e-6)
    assert (ply.visual.vertex_colors[:, :3] == (200, 0, 0)).all()  # RGBA from the texture
    assert (ply.visual.vertex_colors[:, 3] == 255).all()
    doc = glb_json(out["glb"].read_bytes())
    assert doc["images"] and doc["meshes"][0]["primitives"][0]["attributes"]["TEXCOORD_0"] is not None
    with pytest.raises(ValueError, match="texture size"):
        export.export_depth_mesh(tmp_path / "bad", d, np.zeros((8, 8, 3), np.uint8))
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
