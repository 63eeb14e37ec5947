"""lapdata.synthetic.ict: OBJ parsing and the model loader on a tiny OBJ set the test writes, folder validation
errors, and (slow, skipped when absent) the shared ICT-FaceKit model."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lapdata.core.errors import LapError
from lapdata.synthetic.base import Pose
from lapdata.synthetic.ict import ICTBackend, ICTConfig
from lapdata.synthetic.ict_model import load_model, read_obj, validate_folder


def _grid(n: int = 4) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """A bumpy n x n vertex sheet facing +z: vertices, uvs, quads (1-based)."""
    ys, xs = np.mgrid[0:n, 0:n].astype(float)
    x, y = xs / (n - 1) * 2 - 1, 1 - ys / (n - 1) * 2
    z = 0.4 * np.exp(-(x**2 + y**2))
    v = np.stack([x, y, z], -1).reshape(-1, 3)
    uv = np.stack([(x + 1) / 2, (y + 1) / 2], -1).reshape(-1, 2)
    quads = []
    for i in range(n - 1):
        for j in range(n - 1):
            a = i * n + j + 1
            quads.append([a, a + n, a + n + 1, a + 1])  # CCW seen from +z
    return v, uv, quads


def _write_obj(path: Path, v, uv=None, quads=None, mtl: str | None = None) -> None:
    lines = [f"mtllib {mtl}"] if mtl else []
    lines += [f"v {a:.6f} {b:.6f} {c:.6f}" for a, b, c in v]
    if uv is not None:
        lines += [f"vt {a:.6f} {b:.6f}" for a, b in uv]
    if quads is not None:
        lines.append("usemtl M_Face")
        lines += ["f " + " ".join(f"{k}/{k}" for k in q) for q in quads]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    d = tmp_path / "FaceXModel"
    d.mkdir()
    v, uv, quads = _grid(4)
    _write_obj(d / "generic_neutral_mesh.obj", v, uv, quads, mtl="ICTFaceModelMaterial.mtl")
    (d / "ICTFaceModelMaterial.mtl").write_text("newmtl M_Face\nKd 0.6 0.6 0.6\n")
    d0 = np.zeros_like(v)
    d0[:, 0] = 0.1 * v[:, 0]  # mode 0: wider
    d1 = np.zeros_like(v)
    d1[:, 2] = 0.2  # mode 1: forward
    _write_obj(d / "identity000.obj", v + d0, uv, quads)
    _write_obj(d / "identity001.obj", v + d1, uv, quads)
    e = np.zeros_like(v)
    e[:, 1] = -0.05 * (v[:, 1] < 0)
    _write_obj(d / "jawOpen.obj", v + e)  # vertices only is fine for blendshapes
    return d


def test_read_obj_quads_and_uvs(tiny_model):
    m = read_obj(tiny_model / "generic_neutral_mesh.obj")
    assert m.v.shape == (16, 3) and m.vt.shape == (16, 2) and len(m.polys) == 9
    assert all(len(p) == 4 for p in m.polys) and set(m.mats) == {"M_Face"}
    assert m.polys[0][0] == (0, 0) and m.mtllib == "ICTFaceModelMaterial.mtl"


def test_loader_on_tiny_set(tiny_model, tmp_path):
    files = validate_folder(tiny_model)
    assert [p.name for p in files.identities] == ["identity000.obj", "identity001.obj"]
    assert [p.name for p in files.expressions] == ["jawOpen.obj"]
    model = load_model(tiny_model, cache_dir=tmp_path / "cache")
    assert model.neutral.shape == (16, 3)
    assert model.faces.shape == (18, 3)  # 9 quads -> 18 triangles
    assert model.id_basis.shape == (2, 16, 3) and model.expr_basis.shape == (1, 16, 3)
    v, _, _ = _grid(4)
    np.testing.assert_allclose(model.id_basis[0][:, 0], 0.1 * v[:, 0], atol=1e-5)
    np.testing.assert_allclose(model.id_basis[1][:, 2], 0.2, atol=1e-5)
    assert model.expr_names == ["jawOpen"]
    # triangles keep the quad's orientation (+z normals)
    tri = model.neutral[model.faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert (n[:, 2] > 0).all()
    # the cache is written once and reloaded identically
    caches = list((tmp_path / "cache").glob("ict-*.npz"))
    assert len(caches) == 1
    again = load_model(tiny_model, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.id_basis, model.id_basis)
    np.testing.assert_array_equal(again.rfaces, model.rfaces)


def test_loader_reads_the_folder_packed_as_tar_xz(tiny_model, tmp_path):
    """`--model FaceXModel.tar.xz`: the same model as the folder; unpacked once into a temporary folder that is
    removed, then read from the cache without unpacking; a broken archive is one line naming it."""
    import tarfile

    arc = tmp_path / "FaceXModel.tar.xz"
    with tarfile.open(arc, "w:xz") as tf:
        tf.add(tiny_model, arcname="FaceXModel")
    ref = load_model(tiny_model)
    got = load_model(arc, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(got.id_basis, ref.id_basis)
    assert [p.name for p in (tmp_path / "c").iterdir()] == [next((tmp_path / "c").glob("ict-archive-*.npz")).name]
    tiny_model.rename(tmp_path / "gone")  # the cache alone serves the archive now
    np.testing.assert_array_equal(load_model(arc, cache_dir=tmp_path / "c").neutral, ref.neutral)
    bad = tmp_path / "bad.tar.xz"
    bad.write_bytes(b"\xfd7zXZ\x00 not really")
    with pytest.raises(LapError, match="bad.tar.xz: cannot unpack"):
        load_model(bad, cache_dir=tmp_path / "c2")


def test_identity_is_neutral_plus_modes(tiny_model, tmp_path):
    b = ICTBackend(tiny_model, ICTConfig(expression_scale=0.0), cache_dir=tmp_path / "cache")
    p = b.sample_identity(np.random.default_rng(0))
    c = np.asarray(p.coeffs["identity"])
    assert c.shape == (2,) and np.abs(c).max() <= 2.5
    v = b.vertices(p, []).numpy()
    m = b.model
    np.testing.assert_allclose(v, m.neutral + c[0] * m.id_basis[0] + c[1] * m.id_basis[1], atol=1e-5)
    ve = b.vertices(p, [1.0]).numpy()
    np.testing.assert_allclose(ve - v, m.expr_basis[0], atol=1e-5)


def test_tiny_model_renders(tiny_model, tmp_path):
    torch.set_num_threads(1)
    b = ICTBackend(tiny_model, ICTConfig(), cache_dir=tmp_path / "cache")
    rng = np.random.default_rng(1)
    views = b.render_views(b.sample_identity(rng), [Pose(-20, 0, 0), Pose(0, 0, 0), Pose(20, 3, 2)], 32, rng)
    for v in views:
        assert v.image.shape == (32, 32, 3) and 0.3 < v.mask.mean() < 0.9
        np.testing.assert_array_equal(np.isfinite(v.depth), v.mask)
        assert np.isfinite(v.canon_depth).any()
        assert 0.9 < np.nanmin(v.depth) and np.nanmax(v.depth) < 1.1  # the head's anchor at distance 1
        n = np.linalg.norm(v.normal, axis=-1)
        np.testing.assert_allclose(n[v.mask], 1.0, atol=1e-4)
        assert (n[~v.mask] == 0).all()
    front = views[1]
    # the frontal view is its own canonical view; a turned one is not; the symmetric sheet sits in the middle
    np.testing.assert_array_equal(front.depth, front.canon_depth)
    assert abs(np.nonzero(front.mask)[1].mean() - 15.5) < 0.05
    turned = views[0]
    both = turned.mask & np.isfinite(turned.canon_depth)
    assert np.abs(turned.depth - turned.canon_depth)[both].max() > 1e-2


@pytest.mark.parametrize(
    "breakage, msg",
    [
        ("no_neutral", "generic_neutral_mesh.obj is missing"),
        ("no_identity", "identity000.obj is missing"),
        ("gap", "not numbered contiguously"),
        ("topology", "identity001.obj: wrong topology: 9 vertices, expected 16"),
        ("faces", "identity000.obj: wrong topology"),
        ("mtl", "ICTFaceModelMaterial.mtl"),
        ("expression_list", "expression blendshape browDown_L.obj is missing"),
    ],
)
def test_bad_folders_are_one_line_errors(tiny_model, breakage, msg):
    d = tiny_model
    if breakage == "no_neutral":
        (d / "generic_neutral_mesh.obj").unlink()
    elif breakage == "no_identity":
        (d / "identity000.obj").unlink()
        (d / "identity001.obj").unlink()
    elif breakage == "gap":
        os.rename(d / "identity001.obj", d / "identity005.obj")
    elif breakage == "topology":
        v, uv, quads = _grid(3)
        _write_obj(d / "identity001.obj", v, uv, quads)
    elif breakage == "faces":
        v, uv, quads = _grid(4)
        _write_obj(d / "identity000.obj", v, uv, quads[:-1])
    elif breakage == "mtl":
        (d / "ICTFaceModelMaterial.mtl").unlink()
    elif breakage == "expression_list":
        (d / "vertex_indices.json").write_text('{"expressions": ["jawOpen", "browDown_L"]}')
    with pytest.raises(LapError, match=msg) as ei:
        validate_folder(d)
    assert "\n" not in str(ei.value)


def test_not_a_folder(tmp_path):
    with pytest.raises(LapError, match="does not exist"):
        validate_folder(tmp_path / "nope")


# ------------------------------------------------------------------------------------------------ the shared model


@pytest.fixture(scope="module")
def ict_folder(tmp_path_factory) -> Path:
    env = os.environ.get("LAP_ICT_MODEL")
    if env and Path(env).is_dir():
        return Path(env)
    from tests.builders import shared_path

    tar = shared_path("ict-facekit", "FaceXModel.tar.xz")
    d = tmp_path_factory.mktemp("ict")
    with tarfile.open(tar) as tf:
        tf.extractall(d, filter="data")
    return d / "FaceXModel"


@pytest.mark.slow
@pytest.mark.shared
def test_shared_ict_model(ict_folder, tmp_path_factory):
    torch.set_num_threads(1)
    cache = tmp_path_factory.mktemp("ict-cache")
    b = ICTBackend(ict_folder, ICTConfig(), cache_dir=cache)
    m = b.model
    assert m.id_basis.shape[0] == 100 and len(m.expr_names) == 53
    assert (m.landmarks >= 0).all() and m.face_area.sum() == 9409
    assert {"M_Face", "M_BackHead", "M_ScleraLeft"} <= set(m.mat_names) and "M_EyeLashes" not in m.mat_names
    rng = np.random.default_rng(0)
    views = b.render_views(b.sample_identity(rng), [Pose(-45, 0, 0), Pose(0, 0, 0), Pose(45, 0, 0)], 64, rng)
    for v in views:
        np.testing.assert_array_equal(np.isfinite(v.depth), v.mask)
        assert 0.15 < v.mask.mean() < 0.8 and v.landmarks.shape == (68, 2)
        assert 0.8 < np.nanmedian(v.depth) < 1.2
    # frontal: the eyes land where the lap template has them (IOD 0.35, eye line 0.33 of the side)
    lm = views[1].landmarks
    eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)
    assert abs(np.linalg.norm(eye_r - eye_l) / 64 - 0.35) < 0.02
    assert abs((eye_l[1] + eye_r[1]) / 2 / 64 - 0.33) < 0.03
    # yaw +45 turns the face toward the image's right: the nose tip moves right of the eye midpoint
    lm = views[2].landmarks
    assert lm[30, 0] > (lm[36:48, 0].mean())
