"""lapmodel.io.mesh: grid meshes in closed form, OBJ / PLY / GLB round trips through trimesh, GLB structure, bytes."""

from __future__ import annotations

import stat

import numpy as np
import pytest
import torch
import trimesh

from lapdata.geometry import camera as geometry
from lapdata.core.errors import LapError
from lapmodel.io import mesh as M


def _dome(h=12, w=10, fov=10.0):
    """Depth (H, W) of a bump, its camera points (H, W, 3) and a random texture (H, W, 3) in [0, 1]."""
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    d = 1.0 - 0.1 * np.sqrt(np.clip(1 - (x**2 + y**2) / 2, 0, 1))
    pts = geometry.depth_to_points(torch.from_numpy(d)[None], geometry.intrinsics(fov, (h, w), dtype=torch.float64))
    tex = np.random.default_rng(0).random((h, w, 3))
    return d, pts[0].numpy(), tex


def _normals(verts, faces):
    e1, e2 = verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]]
    n = np.cross(e1, e2)
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def test_grid_3x3_closed_form():
    jj, ii = np.meshgrid(np.arange(3.0), np.arange(3.0))
    pts = np.stack([jj, ii, np.ones((3, 3))], -1)  # camera frame: x = j right, y = i down, z = 1 away
    m = M.grid_mesh(np.ones((3, 3)), pts)
    expected = [[0, 3, 1], [1, 4, 2], [3, 6, 4], [4, 7, 5],  # (top-left, bottom-left, top-right) of each quad
                [1, 3, 4], [2, 4, 5], [4, 6, 7], [5, 7, 8]]  # (top-right, bottom-left, bottom-right)
    assert m.faces.tolist() == expected
    assert np.allclose(_normals(m.verts, m.faces), [0, 0, -1])  # towards the camera
    up = M.grid_mesh(np.ones((3, 3)), M.camera_to_y_up(pts))
    assert np.allclose(_normals(up.verts, up.faces), [0, 0, 1])  # y up: towards a viewer at +z
    assert np.allclose(trimesh.Trimesh(up.verts, up.faces, process=False).face_normals, [0, 0, 1])
    assert np.allclose(M.grid_uvs(3, 3)[[0, 2, 6]], [[1 / 6, 5 / 6], [5 / 6, 5 / 6], [1 / 6, 1 / 6]])


def test_grid_faces_match_geometry():
    assert np.array_equal(M.grid_faces(7, 5), geometry.grid_faces(7, 5).numpy())


def test_grid_mesh_drops_holes_and_jumps():
    d = np.ones((4, 4))
    pts = np.zeros((4, 4, 3))
    d[0, 0] = np.nan  # 1 triangle uses vertex 0
    mask = np.ones((4, 4), bool)
    mask[3, 3] = False  # 1 triangle uses vertex 15
    d[1, 2] = 2.0  # a jump: the 6 triangles around vertex 6
    m = M.grid_mesh(d, pts, mask=mask, max_jump=0.5)
    assert len(m.faces) == 18 - 1 - 1 - 6
    assert not np.isin(m.faces, [0, 6, 15]).any()
    assert len(M.grid_mesh(d, pts, mask=mask).faces) == 16  # no max_jump: the jump stays
    pts[0, 0] = np.nan
    assert np.isfinite(M.grid_mesh(d, pts).verts).all()  # the unused vertex is not NaN


def test_obj_roundtrip_textured(tmp_path):
    d, pts, tex = _dome()
    m = M.grid_mesh(d, M.camera_to_y_up(pts), texture=tex)
    out = M.write_obj(tmp_path / "face.obj", m)
    assert {k: p.name for k, p in out.items()} == {"obj": "face.obj", "mtl": "face.mtl", "texture": "face_texture.png"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.mtl", "face.obj", "face_texture.png"]  # no temp files
    back = trimesh.load(out["obj"], process=False)
    assert np.allclose(back.vertices, m.verts, atol=1e-7)
    assert np.array_equal(back.faces, m.faces)
    assert np.allclose(back.visual.uv, m.uvs, atol=1e-7)
    assert np.array_equal(np.asarray(back.visual.material.image.convert("RGB")), m.texture)
    assert "map_Kd face_texture.png" in out["mtl"].read_text()


def test_obj_vertex_colours(tmp_path):
    d, pts, tex = _dome()
    m = M.grid_mesh(d, pts, colors=tex.reshape(-1, 3))
    back = trimesh.load(M.write_obj(tmp_path / "c.obj", m)["obj"], process=False)
    assert np.abs(back.visual.vertex_colors[:, :3].astype(int) - m.colors).max() <= 1


@pytest.mark.parametrize("binary", [True, False])
def test_ply_roundtrip(tmp_path, binary):
    d, pts, tex = _dome()
    d[0, :] = np.nan
    m = M.compact(M.grid_mesh(d, M.camera_to_y_up(pts), texture=tex))
    assert len(m.verts) == d.size - d.shape[1] and m.faces.max() == len(m.verts) - 1
    back = trimesh.load(M.write_ply(tmp_path / "face.ply", m, binary=binary), process=False)
    assert np.allclose(back.vertices, m.verts, atol=1e-6)
    assert np.array_equal(back.faces, m.faces)
    assert np.array_equal(back.visual.vertex_colors[:, :3], (tex[1:] * 255 + 0.5).astype(np.uint8).reshape(-1, 3))


def test_glb_roundtrip_and_structure(tmp_path):
    d, pts, tex = _dome()
    d[0, 0] = np.nan  # an unused vertex: the GLB drops it
    m = M.grid_mesh(d, M.camera_to_y_up(pts), texture=tex)
    path = M.write_glb(tmp_path / "face.glb", m)
    data = path.read_bytes()
    assert data[:4] == b"glTF" and int.from_bytes(data[4:8], "little") == 2
    doc = M.glb_json(data)
    prim = doc["meshes"][0]["primitives"][0]
    assert {"POSITION", "NORMAL", "TEXCOORD_0"} <= set(prim["attributes"])
    assert len(doc["images"]) == 1 and doc["images"][0]["mimeType"] == "image/png"
    assert doc["materials"][prim["material"]]["pbrMetallicRoughness"]["baseColorTexture"] == {"index": 0}
    back = trimesh.load(path, force="mesh", process=False)
    c = M.compact(m)
    assert np.allclose(back.vertices, c.verts) and np.array_equal(back.faces, c.faces)
    assert np.allclose(back.visual.uv, c.uvs, atol=1e-6)
    assert np.array_equal(np.asarray(back.visual.material.baseColorTexture.convert("RGB")), m.texture)
    assert np.allclose(np.linalg.norm(back.vertex_normals, axis=1), 1, atol=1e-5)


def test_glb_vertex_colours(tmp_path):
    d, pts, tex = _dome()
    m = M.grid_mesh(d, pts, colors=tex)
    doc = M.glb_json(M.write_glb(tmp_path / "c.glb", m).read_bytes())
    assert "COLOR_0" in doc["meshes"][0]["primitives"][0]["attributes"] and "images" not in doc
    with pytest.raises(LapError, match="not a GLB"):
        M.glb_json(b"PK\x03\x04" + bytes(30))


def test_same_mesh_same_bytes(tmp_path):
    d, pts, tex = _dome()
    for name in ("a", "b"):
        m = M.grid_mesh(d, M.camera_to_y_up(pts), texture=tex)
        M.write_obj(tmp_path / name / "m.obj", m)
        M.write_ply(tmp_path / name / "m.ply", m)
        M.write_glb(tmp_path / name / "m.glb", m)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["m.glb", "m.mtl", "m.obj", "m.ply", "m_texture.png"]
    (tmp_path / "ref").write_bytes(b"")  # permissions as the umask gives (a temp file's 0600 would leak through)
    mode = stat.S_IMODE((tmp_path / "ref").stat().st_mode)
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes(), n
        assert stat.S_IMODE((tmp_path / "a" / n).stat().st_mode) == mode, n


def test_bad_shapes_raise_laperror():
    d, pts, tex = _dome(4, 5)
    cases = [
        (lambda: M.grid_mesh(d[None], pts), r"depth must be \(H, W\)"),
        (lambda: M.grid_mesh(d, pts[:, :, :2]), r"points must be \(H, W, 3\) = \(4, 5, 3\)"),
        (lambda: M.grid_mesh(d, pts, texture=tex.transpose(2, 0, 1)), r"texture must be \(H, W, 3\)"),
        (lambda: M.grid_mesh(d, pts, colors=tex[:2]), r"colors must be"),
        (lambda: M.grid_mesh(d, pts, mask=np.ones(3, bool)), r"mask must be \(H, W\)"),
        (lambda: M.make_mesh(np.zeros((3, 3)), [[0, 1, 3]]), r"faces index vertices 0\.\.3, but there are 3"),
        (lambda: M.make_mesh(np.zeros((3, 2)), [[0, 1, 2]]), r"verts must be \(V, 3\)"),
        (lambda: M.make_mesh(np.full((3, 3), np.nan), [[0, 1, 2]]), r"non-finite"),
        (lambda: M.make_mesh(np.zeros((3, 3)), [[0.0, 1.0, 2.0]]), r"faces must be \(F, 3\) integers"),
        (lambda: M.make_mesh(np.zeros((3, 3)), [[0, 1, 2]], texture=tex), r"needs uvs"),
    ]
    for fn, msg in cases:
        with pytest.raises(LapError, match=msg):
            fn()
