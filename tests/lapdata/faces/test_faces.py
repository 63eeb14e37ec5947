"""lapdata.faces.align: similarity alignment (closed form), crop rules, detectors (dlib on real photos, SCRFD decode on a
tiny ONNX graph built here), error paths."""

from __future__ import annotations

import numpy as np
import pytest

from lapdata.core.errors import LapError
from lapdata.faces.align import ARCFACE_112, Face, align_face, align_points, arcface_template, crop_prealigned, estimate_similarity, five_points, lap_template, largest_face, prealigned_box, transform_points
from lapdata.faces.detectors import DlibDetector, InsightFaceDetector


def _sim(angle, scale, tx, ty):
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    return np.array([[c, -s, tx], [s, c, ty]])


def _blob(h, w, x, y, sigma=1.5):
    yy, xx = np.mgrid[:h, :w]
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)).astype(np.float32)


def _centroid(img):
    img = np.where(img > 0.2 * img.max(), img, 0).astype(np.float64)
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    return np.array([(xx * img).sum() / img.sum(), (yy * img).sum() / img.sum()])


def test_estimate_similarity_recovers_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    m = _sim(0.3, 1.7, 12.0, -5.0)
    dst = transform_points(m, src)
    np.testing.assert_allclose(estimate_similarity(src, dst), m, atol=1e-9)
    # noisy points: still close, and never a reflection
    m2 = estimate_similarity(src, dst + rng.normal(0, 0.1, dst.shape))
    assert np.linalg.det(m2[:, :2]) > 0
    np.testing.assert_allclose(m2[:, :2], m[:, :2], atol=0.01)
    np.testing.assert_allclose(transform_points(m2, src), dst, atol=0.3)


def test_estimate_similarity_errors():
    with pytest.raises(ValueError):
        estimate_similarity(np.zeros((5, 2)), np.ones((5, 2)))
    with pytest.raises(ValueError):
        estimate_similarity(np.zeros((5, 2)), np.ones((4, 2)))


def test_lap_template_geometry():
    t = lap_template(128)
    iod = np.linalg.norm(t[1] - t[0])
    assert iod == pytest.approx(0.35 * 128, rel=1e-9)
    mid = (t[0] + t[1]) / 2
    np.testing.assert_allclose(mid, [0.5 * 128 - 0.5, 0.33 * 128 - 0.5], atol=1e-9)
    # ArcFace proportions kept: mouth below nose below eyes
    assert t[0, 1] < t[2, 1] < t[3, 1]


def test_five_points_from_68():
    lm = np.zeros((68, 2))
    lm[36:42] = [10, 20]
    lm[42:48] = [30, 20]
    lm[30] = [20, 30]
    lm[48] = [12, 40]
    lm[54] = [28, 40]
    np.testing.assert_allclose(five_points(lm), [[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]])
    with pytest.raises(ValueError):
        five_points(np.zeros((7, 2)))


def test_align_puts_points_on_template():
    """Closed form: blobs at 5 points of a rotated/scaled face land on the template points after alignment."""
    size = 128
    h, w = 420, 480
    m_true = _sim(0.4, 2.3, 150.0, 40.0)  # template(unit 128) -> image
    pts = transform_points(m_true, lap_template(size))
    crop_pts = []
    for x, y in pts:
        img = _blob(h, w, x, y, sigma=3.0)
        crop, info = align_points(img, pts, size, border="constant")
        crop_pts.append(_centroid(crop))
    np.testing.assert_allclose(np.array(crop_pts), lap_template(size), atol=0.5)
    assert info["rule"] == "sim5:template=lap,iod=0.35,eye_y=0.33,size=128,border=constant"
    assert info["scale"] == pytest.approx(1 / 2.3, rel=1e-6)


def test_align_face_rgb_and_info():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (200, 240, 3), dtype=np.uint8)
    pts = transform_points(_sim(-0.2, 1.1, 60, 30), lap_template(128))
    face = Face(box=np.array([50, 30, 190, 180.0]), landmarks=pts, score=1.0)
    crop, info = align_face(img, face, 96)
    assert crop.shape == (96, 96, 3) and crop.dtype == np.uint8
    m = np.array(info["matrix"])  # image -> crop: the face's points land on the 96 px template
    np.testing.assert_allclose(transform_points(m, pts), lap_template(96), atol=1e-9)
    assert info["scale"] == pytest.approx(96 / 128 / 1.1, rel=1e-9)
    np.testing.assert_allclose(info["points5"], pts)
    assert info["outside_fraction"] == 0.0  # the rotated 141 px square lies inside the 240x200 photo
    # a pure translation with the left half of the crop off the photo: exact pixels, replicated border, 1/2 outside
    shifted = Face(box=np.array([-64, 50, 64, 178.0]), landmarks=lap_template(128) + [-64.0, 50.0], score=1.0)
    crop2, info2 = align_face(img, shifted, 128)
    assert info2["outside_fraction"] == 0.5 and info2["scale"] == pytest.approx(1.0)
    np.testing.assert_array_equal(crop2[:, 64:], img[50:178, :64])
    np.testing.assert_array_equal(crop2[:, :64], np.repeat(img[50:178, :1], 64, axis=1))


def test_crop_prealigned_sizes_and_rules():
    a112 = np.zeros((112, 112, 3), np.uint8)
    celeba = np.zeros((218, 178, 3), np.uint8)
    other = np.zeros((256, 300, 3), np.uint8)
    out, rule = crop_prealigned(a112, 128)
    assert out.shape == (128, 128, 3) and rule.startswith("prealigned:arcface112;sim5:template=lap")
    out, rule = crop_prealigned(celeba, 64)
    assert out.shape == (64, 64, 3) and rule.startswith("prealigned:celeba-align;")
    out, rule = crop_prealigned(other, 128)
    assert out.shape == (128, 128, 3) and rule == "prealigned:resize;center-square,size=128"
    photo = np.random.default_rng(2).integers(0, 255, (112, 140, 3), dtype=np.uint8)
    out, _ = crop_prealigned(photo, 112, "resize")  # the centre square, already at size: the pixels themselves
    np.testing.assert_array_equal(out, photo[:, 14:126])
    with pytest.raises(LapError, match="unknown pre-aligned crop rule"):
        crop_prealigned(a112, 128, "nope")
    # celeba box lies inside the image
    x0, y0, side = prealigned_box("celeba-align", 178, 218)
    assert 0 <= x0 and 0 <= y0 and x0 + side <= 178 and y0 + side <= 218


def test_crop_prealigned_arcface_matches_align():
    """ArcFace template points of a 112 crop land on the lap template (same framing as align_face)."""
    got = []
    for x, y in ARCFACE_112:
        img = (_blob(112, 112, x, y, 2.0) * 255).astype(np.uint8)
        img3 = np.repeat(img[..., None], 3, axis=2)
        crop, _ = crop_prealigned(img3, 128, "arcface112", border="constant")
        got.append(_centroid(crop[..., 0].astype(np.float32)))
    np.testing.assert_allclose(np.array(got), lap_template(128), atol=0.6)
    np.testing.assert_allclose(arcface_template(224), ARCFACE_112 * 2)


def test_largest_face():
    assert largest_face([]) is None
    a = Face(np.array([0, 0, 10, 10.0]), np.zeros((5, 2)), 0.9)
    b = Face(np.array([0, 0, 20, 5.0]), np.zeros((5, 2)), 0.5)
    c = Face(np.array([0, 0, 11, 11.0]), np.zeros((5, 2)), 0.1)
    assert largest_face([a, b, c]) is c


# ---------------------------------------------------------------------------------------------------------------
# dlib on real photos


@pytest.fixture(scope="module")
def dlib_detector():
    return DlibDetector()


def _load(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("name,min_faces", [("couple.jpg", 2), ("selfie-many-people.jpg", 3)])
def test_dlib_detects_several_faces_sorted(dlib_detector, name, min_faces):
    from tests.builders import shared_path

    img = _load(shared_path("faces", "wild-photos", name))
    faces = dlib_detector(img)
    assert len(faces) >= min_faces
    areas = [f.area for f in faces]
    assert areas == sorted(areas, reverse=True)
    for f in faces:
        assert f.landmarks.shape == (68, 2)
        x0, y0, x1, y1 = f.box
        p5 = f.points5()
        # eyes, nose and mouth inside the (slightly enlarged) box, eyes above the mouth
        pad = 0.2 * (x1 - x0)
        assert np.all(p5[:, 0] > x0 - pad) and np.all(p5[:, 0] < x1 + pad)
        assert np.all(p5[:, 1] > y0 - pad) and np.all(p5[:, 1] < y1 + pad)
        assert p5[0, 1] < p5[3, 1] and p5[1, 1] < p5[4, 1]
        assert p5[0, 0] < p5[1, 0]
    crop, info = align_face(img, faces[0], 128)
    assert crop.shape == (128, 128, 3)


def test_dlib_detector_no_face(dlib_detector):
    assert dlib_detector(np.full((120, 160, 3), 128, np.uint8)) == []
    with pytest.raises(ValueError):
        dlib_detector(np.zeros((10, 10, 3), np.float32))


def test_dlib_detector_pickles(dlib_detector):
    import pickle

    from tests.builders import shared_path

    d2 = pickle.loads(pickle.dumps(dlib_detector))  # what worker processes get: the dlib models are rebuilt
    assert d2.upsample == dlib_detector.upsample and d2.name == "dlib-hog"
    img = _load(shared_path("faces", "wild-photos", "couple.jpg"))
    a, b = dlib_detector(img), d2(img)
    assert len(a) == len(b) >= 2
    for fa, fb in zip(a, b):
        np.testing.assert_array_equal(fa.box, fb.box)
        np.testing.assert_array_equal(fa.landmarks, fb.landmarks)


def test_dlib_missing_model_dir(tmp_path):
    with pytest.raises(LapError, match="shape_predictor_68_face_landmarks.dat"):
        DlibDetector(model_dir=tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# SCRFD decode on a tiny ONNX graph with known outputs


def _scrfd_model(path, size=64):
    import onnx
    from onnx import TensorProto, helper

    strides = [8, 16, 32]
    outputs, nodes = [], []
    tensors = {}
    for s in strides:
        n = (size // s) ** 2 * 2
        tensors[("score", s)] = np.zeros((n, 1), np.float32)
        tensors[("bbox", s)] = np.zeros((n, 4), np.float32)
        tensors[("kps", s)] = np.zeros((n, 10), np.float32)
    # one face at stride 16, cell (row 1, col 2), anchor 0 -> centre (32, 16); distances 1 stride each side
    idx = (1 * (size // 16) + 2) * 2
    tensors[("score", 16)][idx] = 0.9
    tensors[("bbox", 16)][idx] = [1, 1, 1, 1]
    tensors[("kps", 16)][idx] = [-0.5, -0.25, 0.5, -0.25, 0, 0, -0.4, 0.5, 0.4, 0.5]
    # a weaker overlapping duplicate (removed by NMS) at anchor 1 of the same cell
    tensors[("score", 16)][idx + 1] = 0.7
    tensors[("bbox", 16)][idx + 1] = [1, 1, 1, 0.9]
    order = [(k, s) for k in ("score", "bbox", "kps") for s in strides]
    for k, s in order:
        name = f"{k}_{s}"
        arr = tensors[(k, s)]
        nodes.append(helper.make_node("Constant", [], [name], value=helper.make_tensor(name + "_v", TensorProto.FLOAT, arr.shape, arr.ravel())))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(arr.shape)))
    # consume the input so the graph is valid and the input is kept
    nodes.append(helper.make_node("ReduceMean", ["input.1"], ["dummy"], keepdims=0))
    outputs.append(helper.make_tensor_value_info("dummy", TensorProto.FLOAT, []))
    graph = helper.make_graph(nodes, "scrfd_tiny", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, size, size])], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    # drop the dummy output: SCRFD models have exactly 9 outputs
    del model.graph.output[-1]
    del model.graph.node[-1]
    onnx.save(model, str(path))


def test_insightface_scrfd_decode(tmp_path):
    p = tmp_path / "scrfd.onnx"
    _scrfd_model(p)
    det = InsightFaceDetector(p, det_size=64)
    img = np.zeros((128, 128, 3), np.uint8)  # det_scale 0.5: image coordinates are twice the model's
    faces = det(img)
    assert len(faces) == 1
    f = faces[0]
    np.testing.assert_allclose(f.box, [32, 0, 96, 64], atol=1e-4)
    assert f.score == pytest.approx(0.9)
    np.testing.assert_allclose(f.landmarks[0], [(32 - 8) * 2, (16 - 4) * 2], atol=1e-4)
    np.testing.assert_allclose(f.landmarks[2], [64, 32], atol=1e-4)
    assert f.landmarks.shape == (5, 2)


def test_insightface_errors(tmp_path):
    with pytest.raises(LapError, match="not found: .*missing.onnx"):
        InsightFaceDetector(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a model")
    with pytest.raises(LapError, match="cannot load .*bad.onnx") as e:
        InsightFaceDetector(bad)
    assert "\n" not in str(e.value)


def test_crop_prealigned_celeba_matches_align():
    """CelebA img_align_celeba mean points land where the least-squares similarity puts them, eyes near the template."""
    from lapdata.faces.align import CELEBA_ALIGN_5

    got = []
    for x, y in CELEBA_ALIGN_5:
        img = (_blob(218, 178, x, y, 2.0) * 255).astype(np.uint8)
        crop, rule = crop_prealigned(np.repeat(img[..., None], 3, axis=2), 128)
        got.append(_centroid(crop[..., 0].astype(np.float32)))
    assert rule.startswith("prealigned:celeba-align;")
    t = lap_template(128)
    np.testing.assert_allclose(np.array(got), transform_points(estimate_similarity(CELEBA_ALIGN_5, t), CELEBA_ALIGN_5), atol=0.8)
    got = np.array(got)
    np.testing.assert_allclose((got[0] + got[1]) / 2, (t[0] + t[1]) / 2, atol=1.5)  # same framing, to ~1 px
    assert np.linalg.norm(got[1] - got[0]) == pytest.approx(np.linalg.norm(t[1] - t[0]), rel=0.05)


def test_dlib_cnn_detector():
    from tests.builders import shared_path

    img = _load(shared_path("faces", "wild-photos", "selfie-many-people.jpg"))
    faces = DlibDetector(upsample=0, cnn=True)(img)
    assert len(faces) >= 3
    assert [f.area for f in faces] == sorted((f.area for f in faces), reverse=True)
    assert all(f.landmarks.shape == (68, 2) for f in faces)


@pytest.mark.parametrize("border", ["replicate", "reflect", "constant"])
def test_warp_affine_integer_shift_is_exact(border):
    """Output pixel q takes the image at M^-1 q: a translation by (+3, +2) moves every pixel by exactly that."""
    from lapdata.faces.align import warp_affine

    rng = np.random.default_rng(7)
    img = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    m = np.array([[1.0, 0.0, 3.0], [0.0, 1.0, 2.0]])
    out = warp_affine(img, m, (50, 40), border)
    np.testing.assert_array_equal(out[2:, 3:], img[:-2, :-3])
    if border == "constant":
        assert (out[:2] == 0).all() and (out[:, :3] == 0).all()
    elif border == "replicate":
        np.testing.assert_array_equal(out[0, 3:], img[0, :-3])


def test_align_closed_form():
    """Alignment (one backend: PIL + scipy) maps planted landmarks onto the template."""
    import lapdata.faces.align as faces_mod

    m_true = _sim(-0.3, 1.8, 90.0, 60.0)
    pts = transform_points(m_true, lap_template(64))
    got = [_centroid(align_points(_blob(240, 260, x, y, 2.5), pts, 64, border="constant")[0]) for x, y in pts]
    np.testing.assert_allclose(np.array(got), lap_template(64), atol=0.5)
    small = faces_mod.resize_image(np.zeros((100, 80, 3), np.uint8), 40, 50)
    assert small.shape == (50, 40, 3)
