"""lapdata.faces.embed: ArcFace ONNX embedder on a tiny graph built here; dlib embedder on real faces; error paths."""

from __future__ import annotations

import numpy as np
import pytest

from lapdata.faces.embed import ArcFaceEmbedder, DlibEmbedder, cosine_matrix, l2_normalise
from lapdata.core.errors import LapError
from lapdata.faces.align import crop_prealigned


def _tiny_arcface(path, batch="N", dim=128, seed=0, normalise_in_graph=False):
    """conv(3->4, k8 s8) -> flatten -> gemm(784 -> dim) with a 112x112x3 input, like an ArcFace ONNX."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.1, (4, 3, 8, 8)).astype(np.float32)
    g = rng.normal(0, 0.1, (dim, 4 * 14 * 14)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "conv_w"), numpy_helper.from_array(g, "fc_w")]
    nodes = []
    x = "data"
    if normalise_in_graph:
        inits += [numpy_helper.from_array(np.array(127.5, np.float32), "sub_c"), numpy_helper.from_array(np.array(1 / 127.5, np.float32), "mul_c")]
        nodes += [helper.make_node("Sub", [x, "sub_c"], ["x_sub"]), helper.make_node("Mul", ["x_sub", "mul_c"], ["x_norm"])]
        x = "x_norm"
    nodes += [
        helper.make_node("Conv", [x, "conv_w"], ["c"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w"], ["fc1"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_arcface",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [batch, dim])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return w, g


def _faces(n, size=128, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_arcface_tiny_model(tmp_path):
    p = tmp_path / "w600k_tiny.onnx"
    _tiny_arcface(p)
    emb = ArcFaceEmbedder(p, batch_size=2)
    assert emb.input_name == "data" and emb.input_size == 112 and emb.dim == 128
    assert emb.name == "arcface:w600k_tiny" and emb.default_threshold == 0.6
    faces = _faces(5)
    out = emb(faces)
    assert out.shape == (5, 128) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # batching does not change results
    single = np.concatenate([emb([f]) for f in faces])
    np.testing.assert_allclose(out, single, atol=1e-5)
    assert emb([]).shape == (0, 128)


def _reference_embedding(crop, w, g):
    """The tiny graph computed with numpy: (x - 127.5) / 127.5 RGB CHW -> conv k8 s8 -> relu -> gemm -> L2."""
    x = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)
    patches = x.reshape(3, 14, 8, 14, 8).transpose(1, 3, 0, 2, 4).reshape(14, 14, -1)
    c = np.maximum(patches @ w.reshape(4, -1).T, 0).transpose(2, 0, 1).ravel()
    return l2_normalise((g @ c)[None])[0]


def test_arcface_preprocessing_matches_reference(tmp_path):
    """ArcFace-framed 112 crops -> (x - 127.5) / 127.5 RGB NCHW -> conv/gemm, computed here with numpy."""
    p = tmp_path / "m.onnx"
    w, g = _tiny_arcface(p)
    emb = ArcFaceEmbedder(p)
    crop = _faces(1, 112, seed=3)[0]
    ref = _reference_embedding(crop, w, g)[None]
    np.testing.assert_allclose(emb.embed_arcface_crops([crop]), ref, atol=1e-4)
    # a graph with its own Sub/Mul takes raw pixels and gives the same embedding
    p2 = tmp_path / "m2.onnx"
    _tiny_arcface(p2, normalise_in_graph=True)
    emb2 = ArcFaceEmbedder(p2)
    assert (emb2.mean, emb2.std) == (0.0, 1.0)
    np.testing.assert_allclose(emb2.embed_arcface_crops([crop]), ref, atol=1e-4)


def test_arcface_fixed_batch_model(tmp_path):
    """A graph with a fixed batch of 2 gets chunks of 2 whatever batch_size says, the last one zero-padded: 3 crops
    still give the 3 numpy reference embeddings, in order."""
    p = tmp_path / "b2.onnx"
    w, g = _tiny_arcface(p, batch=2)
    emb = ArcFaceEmbedder(p, batch_size=4)
    crops = _faces(3, 112, seed=5)
    out = emb.embed_arcface_crops(crops)
    np.testing.assert_allclose(out, np.stack([_reference_embedding(c, w, g) for c in crops]), atol=1e-4)
    dynamic = tmp_path / "bn.onnx"
    _tiny_arcface(dynamic)  # the same weights (same seed) with a dynamic batch: __call__ agrees too
    faces = _faces(3)
    np.testing.assert_allclose(emb(faces), ArcFaceEmbedder(dynamic)(faces), atol=1e-5)


def test_arcface_embed_image(tmp_path):
    from lapdata.faces.align import arcface_template

    p = tmp_path / "m.onnx"
    _tiny_arcface(p)
    emb = ArcFaceEmbedder(p)
    crop = _faces(1, 112, seed=4)[0]
    # a photo that is the crop itself, with the template points: embed_image == embedding the crop
    got = emb.embed_image(crop, [arcface_template(112)])
    np.testing.assert_allclose(got, emb.embed_arcface_crops([crop]), atol=1e-4)


def test_arcface_errors(tmp_path):
    with pytest.raises(LapError, match="ArcFace recognition ONNX file not found: .*nothere.onnx"):
        ArcFaceEmbedder(tmp_path / "nothere.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(LapError, match="cannot load ArcFace recognition ONNX file .*bad.onnx") as e:
        ArcFaceEmbedder(bad)
    assert "\n" not in str(e.value)
    p = tmp_path / "m.onnx"
    _tiny_arcface(p)
    with pytest.raises(ValueError, match="aligned square"):
        ArcFaceEmbedder(p)([np.zeros((10, 12, 3), np.uint8)])


def test_cosine_matrix():
    a = l2_normalise(np.array([[1.0, 0], [1, 1], [0, 3]]))
    np.testing.assert_allclose(cosine_matrix(a), [[1, 0.70710677, 0], [0.70710677, 1, 0.70710677], [0, 0.70710677, 1]], atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# dlib


@pytest.fixture(scope="module")
def dlib_embedder():
    return DlibEmbedder()


def _celeb(name, n):
    from PIL import Image

    from tests.builders import shared_path

    d = shared_path("faces", "celebrity-sets", name)
    files = sorted(d.glob("*.jpg"), key=lambda p: (len(p.stem), p.stem))[:n]
    return [crop_prealigned(np.asarray(Image.open(f).convert("RGB")), 128)[0] for f in files]


def test_dlib_same_identity_closer(dlib_embedder):
    a = _celeb("Barack_Obama", 5)
    b = _celeb("Gwyneth_Paltrow", 5)
    e = dlib_embedder(a + b)
    assert e.shape == (10, 128) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    s = cosine_matrix(e)
    iu = np.triu_indices(5, 1)
    same = np.concatenate([s[:5, :5][iu], s[5:, 5:][iu]])
    diff = s[:5, 5:].ravel()
    assert np.median(same) > np.median(diff) + 0.05
    assert diff.max() < dlib_embedder.default_threshold  # no false accept between these two people
    assert np.median(same) > dlib_embedder.centre_threshold > np.median(diff)


def test_dlib_embed_image_agrees_with_crop(dlib_embedder):
    from PIL import Image

    from tests.builders import shared_path
    from lapdata.faces.align import align_face, largest_face
    from lapdata.faces.detectors import DlibDetector

    img = np.asarray(Image.open(shared_path("faces", "wild-photos", "img1.jpg")).convert("RGB"))
    face = largest_face(DlibDetector()(img))
    via_crop = dlib_embedder([align_face(img, face, 128)[0]])
    via_image = dlib_embedder.embed_image(img, [face.landmarks])
    via_5 = dlib_embedder.embed_image(img, [face.points5()])
    assert float((via_crop @ via_image.T)[0, 0]) > 0.97
    assert float((via_5 @ via_image.T)[0, 0]) > 0.97


def test_dlib_embedder_shapes_batches_and_pickle(dlib_embedder):
    import pickle

    assert dlib_embedder(_faces(0)).shape == (0, 128)
    faces = _faces(3, 100)
    out = dlib_embedder(faces)
    assert out.shape == (3, 128) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.abs(out[0] - out[1]).max() > 1e-2  # different faces, different vectors
    chips = dlib_embedder.chips(faces)
    assert [c.shape for c in chips] == [(150, 150, 3)] * 3
    np.testing.assert_allclose(dlib_embedder.embed_chips(chips), out, atol=1e-6)  # __call__ = chips -> embed
    # a pickled copy (what worker processes get) reloads the models; batching does not change the vectors
    other = pickle.loads(pickle.dumps(dlib_embedder))
    other.batch_size = 1
    np.testing.assert_allclose(other(faces), out, atol=1e-5)
    assert dlib_embedder.name == "dlib-resnet-v1"
    assert 0.5 < dlib_embedder.default_threshold < 1.0
