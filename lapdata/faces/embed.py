"""Face identity embeddings: dlib 128-D (offline default) and ArcFace (insightface recognition ONNX).

Both embedders take faces *aligned by* :mod:`lapdata.faces.align` (``lap`` template crops, any size, RGB uint8) and return
L2-normalised ``(N, D)`` float32 embeddings; cosine similarity is then a dot product. Both re-align internally to
the framing their network was trained on:

* :class:`DlibEmbedder` -- ``dlib_face_recognition_resnet_model_v1`` (128-D). dlib needs a
  ``full_object_detection`` to cut its 150x150 chip: on each aligned crop we run dlib's 5-point landmark predictor
  inside the box where dlib's HOG detector puts a face of the ``lap`` framing (measured on wild photos: centre
  0.557 inter-ocular distances below the eye midpoint, 2.40 x 2.51 inter-ocular distances), then
  ``dlib.get_face_chip(crop, shape, 150, 0.25)`` and the batched ``compute_face_descriptor`` on the chips --
  the same steps as ``face_recognition``/dlib's own example, so dlib's published behaviour carries over.
  :meth:`DlibEmbedder.embed_image` embeds faces straight from a photo and their 68 (or 5 dlib) landmarks.
* :class:`ArcFaceEmbedder` -- e.g. ``w600k_r50.onnx`` (buffalo_l), glint360k r100: a fixed similarity maps the
  ``lap`` template onto the ArcFace 112 template, input ``(x - 127.5) / 127.5`` RGB NCHW (no scaling when the graph
  starts with its own Sub/Mul normalisation, like insightface does), output 512-D. Input name and size are read
  from the model. :meth:`ArcFaceEmbedder.embed_image` aligns a photo with its 5 points to the ArcFace template.

``default_threshold`` is the same-identity cosine used by the synthetic frontal-view filter: 0.6 for ArcFace (the
LAP paper), and for dlib the value calibrated in ``docs/id-threshold.md`` (same false-accept rate as ArcFace 0.6).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from lapdata.core.errors import LapError, require
from lapdata.faces.align import DEFAULT_EYE_Y, DEFAULT_IOD, arcface_template, estimate_similarity, five_points, lap_template, warp_affine
from lapdata.faces.detectors import dlib_model_path, load_onnx_session

# dlib cosine with the same false-accept rate as ArcFace cosine 0.6 -- see docs/id-threshold.md and
# benchmarks/calibrate_id_threshold.py
DLIB_DEFAULT_THRESHOLD = 0.94
ARCFACE_DEFAULT_THRESHOLD = 0.6
# robust-centre (ingest) thresholds: cosine of a photo to its identity's robust centre
DLIB_CENTRE_THRESHOLD = 0.90  # calibrated, docs/id-threshold.md
ARCFACE_CENTRE_THRESHOLD = 0.45  # not calibrated here (no ArcFace weights offline); see docs/id-threshold.md

# where dlib's HOG detector box lies relative to the eyes of a face (inter-ocular distance units, eye midpoint origin)
_DLIB_BOX_CENTRE_Y = 0.557
_DLIB_BOX_W = 2.40
_DLIB_BOX_H = 2.51


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, D) float32 rows of unit norm (zero rows stay zero)."""
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _check_faces(faces: Sequence[np.ndarray]) -> list[np.ndarray]:
    out = []
    for i, f in enumerate(faces):
        a = np.asarray(f)
        if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] != a.shape[1] or a.dtype != np.uint8:
            raise ValueError(f"face {i}: expected an aligned square (S, S, 3) uint8 RGB crop, got {a.shape} {a.dtype}")
        out.append(np.ascontiguousarray(a))
    return out


class DlibEmbedder:
    """dlib ResNet 128-D face embedding. ``__call__(aligned crops) -> (N, 128)`` float32, L2-normalised.

    iod, eye_y: the ``lap`` template parameters the crops were aligned with (defaults of lapdata.faces.align).
    num_jitters: dlib's test-time jitter (0 = off). batch_size: chips per dlib call."""

    name = "dlib-resnet-v1"
    dim = 128
    default_threshold = DLIB_DEFAULT_THRESHOLD
    centre_threshold = DLIB_CENTRE_THRESHOLD

    def __init__(self, *, iod: float = DEFAULT_IOD, eye_y: float = DEFAULT_EYE_Y, num_jitters: int = 0,
                 batch_size: int = 64, model_dir: str | Path | None = None):
        dlib = require("dlib")

        self.iod, self.eye_y = float(iod), float(eye_y)
        self.num_jitters = int(num_jitters)
        self.batch_size = int(batch_size)
        self._model_dir = model_dir
        self.sp5 = dlib.shape_predictor(str(dlib_model_path("shape_predictor_5_face_landmarks.dat", model_dir)))
        self.net = dlib.face_recognition_model_v1(str(dlib_model_path("dlib_face_recognition_resnet_model_v1.dat", model_dir)))

    def __getstate__(self):
        return {"iod": self.iod, "eye_y": self.eye_y, "num_jitters": self.num_jitters, "batch_size": self.batch_size, "model_dir": self._model_dir}

    def __setstate__(self, st):
        self.__init__(**st)

    def box_in_crop(self, size: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1): where dlib's detector would box the face of a ``size`` crop of the lap framing."""
        d = self.iod * size
        cx, cy = 0.5 * size - 0.5, self.eye_y * size - 0.5 + _DLIB_BOX_CENTRE_Y * d
        return cx - _DLIB_BOX_W * d / 2, cy - _DLIB_BOX_H * d / 2, cx + _DLIB_BOX_W * d / 2, cy + _DLIB_BOX_H * d / 2

    def chips(self, faces: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Aligned lap crops -> dlib 150x150 chips (5-point predictor inside the template box, get_face_chip)."""
        import dlib

        out = []
        for f in _check_faces(faces):
            x0, y0, x1, y1 = (int(round(v)) for v in self.box_in_crop(f.shape[0]))
            shape = self.sp5(f, dlib.rectangle(x0, y0, x1, y1))
            out.append(dlib.get_face_chip(f, shape, size=150, padding=0.25))
        return out

    def embed_chips(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """dlib 150x150 chips -> (N, 128) L2-normalised."""
        res = []
        for i in range(0, len(chips), self.batch_size):
            batch = [np.ascontiguousarray(c) for c in chips[i : i + self.batch_size]]
            vecs = self.net.compute_face_descriptor(batch, self.num_jitters)
            res.extend(np.array(v, dtype=np.float32) for v in vecs)
        if not res:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalise(np.stack(res))

    def __call__(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        return self.embed_chips(self.chips(faces))

    def embed_image(self, image: np.ndarray, landmarks: Sequence[np.ndarray]) -> np.ndarray:
        """Embed faces straight from a photo: landmarks (68, 2) per face (or 5 points, re-fitted with the 5-point
        predictor inside a box derived from them) -> (N, 128)."""
        import dlib

        img = np.ascontiguousarray(image)
        chips = []
        for lm in landmarks:
            lm = np.asarray(lm, np.float64)
            if lm.shape == (68, 2):
                pts = [dlib.point(int(round(x)), int(round(y))) for x, y in lm]
                r = dlib.rectangle(*(int(round(v)) for v in (lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max())))
                shape = dlib.full_object_detection(r, pts)
            else:
                p5 = five_points(lm)
                mid = (p5[0] + p5[1]) / 2
                d = float(np.linalg.norm(p5[1] - p5[0]))
                cx, cy = mid[0], mid[1] + _DLIB_BOX_CENTRE_Y * d
                r = dlib.rectangle(*(int(round(v)) for v in (cx - _DLIB_BOX_W * d / 2, cy - _DLIB_BOX_H * d / 2, cx + _DLIB_BOX_W * d / 2, cy + _DLIB_BOX_H * d / 2)))
                shape = self.sp5(img, r)
            chips.append(dlib.get_face_chip(img, shape, size=150, padding=0.25))
        return self.embed_chips(chips)


class ArcFaceEmbedder:
    """insightface ArcFace recognition ONNX. ``__call__(aligned lap crops) -> (N, D)`` float32, L2-normalised.

    onnx_path: e.g. ``w600k_r50.onnx``; a missing or unloadable file is a one-line LapError naming it, and so is a
    valid graph that is not a face embedder: loading runs it once (:meth:`check_model`) on a synthetic crop, its
    inverse and the crop again, and requires an embedding of at least ``MIN_DIM`` values (ArcFace: 512), finite,
    the same crop twice at cosine >= 0.999 and the two different crops under 0.99."""

    MIN_DIM = 64  # ArcFace models give 512 (some 128, 256); a narrower output is not an identity embedding

    default_threshold = ARCFACE_DEFAULT_THRESHOLD
    centre_threshold = ARCFACE_CENTRE_THRESHOLD

    def __init__(self, onnx_path: str | Path, *, iod: float = DEFAULT_IOD, eye_y: float = DEFAULT_EYE_Y, batch_size: int = 32):
        self.onnx_path = str(onnx_path)
        self.iod, self.eye_y = float(iod), float(eye_y)
        self.batch_size = int(batch_size)
        self.session = load_onnx_session(onnx_path, "ArcFace recognition")
        inp = self.session.get_inputs()[0]
        shp = inp.shape
        if len(shp) != 4 or shp[1] not in (3, "3"):
            raise LapError(f"{onnx_path}: not an ArcFace recognition model (input shape {shp}, expected (N, 3, 112, 112))")
        self.input_name = inp.name
        self.input_size = int(shp[2]) if isinstance(shp[2], int) else 112
        self.fixed_batch = shp[0] if isinstance(shp[0], int) else None
        out = self.session.get_outputs()[0]
        self.output_name = out.name
        self.dim = int(out.shape[-1]) if isinstance(out.shape[-1], int) else None
        self.name = f"arcface:{Path(onnx_path).stem}"
        # insightface: graphs that start with their own Sub/Mul take raw 0..255 pixels
        self.mean, self.std = 127.5, 127.5
        try:
            import onnx

            graph = onnx.load(self.onnx_path, load_external_data=False).graph
            ops = [n.op_type for n in graph.node[:8]]
            if "Sub" in ops and "Mul" in ops:
                self.mean, self.std = 0.0, 1.0
        except Exception:  # noqa: BLE001 - normalisation sniffing is best-effort
            pass
        self.check_model()

    def check_model(self) -> None:
        """Run the graph on a synthetic crop, its inverse and the crop again: LapError unless it behaves like an
        identity embedder (width >= MIN_DIM, finite, deterministic, different crops apart); sets ``dim``."""
        s = self.input_size
        y, x = np.mgrid[0:s, 0:s].astype(np.float32) / max(1, s - 1)
        a = np.stack([255 * x, 255 * y, 255 * (1 - x) * y], axis=-1).clip(0, 255).astype(np.uint8)
        crops = [a, (255 - a).astype(np.uint8), a]
        what = f"{self.onnx_path}: not an ArcFace recognition model"
        try:
            e = self.embed_arcface_crops(crops)
        except Exception as exc:  # noqa: BLE001 - any failure to run is this one fault
            raise LapError(f"{what} (running it on a {s}x{s} crop failed: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
        if e.ndim != 2 or e.shape[0] != 3 or e.shape[1] < self.MIN_DIM:
            raise LapError(f"{what} (its output has {e.shape[-1] if e.ndim == 2 else e.shape} values per face; "
                           f"an identity embedding has 512, or at least {self.MIN_DIM})")
        if not np.isfinite(e).all():
            raise LapError(f"{what} (its output holds NaN/inf)")
        same, other = float(e[0] @ e[2]), float(e[0] @ e[1])
        if same < 0.999:
            raise LapError(f"{what} (the same crop twice gives cosine {same:.4f}, not 1: not deterministic)")
        if other >= 0.99:
            raise LapError(f"{what} (two different crops give cosine {other:.4f}: its output does not depend on "
                           f"the face)")
        self.dim = int(e.shape[1])

    def __getstate__(self):
        return {"onnx_path": self.onnx_path, "iod": self.iod, "eye_y": self.eye_y, "batch_size": self.batch_size}

    def __setstate__(self, st):
        self.__init__(st["onnx_path"], iod=st["iod"], eye_y=st["eye_y"], batch_size=st["batch_size"])

    def _to_arcface(self, crop: np.ndarray) -> np.ndarray:
        s = self.input_size
        m = estimate_similarity(lap_template(crop.shape[0], self.iod, self.eye_y), arcface_template(s))
        return warp_affine(crop, m, s, "replicate")

    def embed_arcface_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Crops already in the ArcFace 112 framing (e.g. from a .rec file) -> (N, D) L2-normalised."""
        crops = _check_faces(crops)
        if not crops:
            return np.zeros((0, self.dim or 512), np.float32)
        x = np.stack(crops).astype(np.float32)
        x = ((x - self.mean) / self.std).transpose(0, 3, 1, 2)
        step = self.fixed_batch or self.batch_size
        res = []
        for i in range(0, len(x), step):
            chunk = x[i : i + step]
            n = len(chunk)
            if self.fixed_batch and n < self.fixed_batch:
                chunk = np.concatenate([chunk, np.zeros((self.fixed_batch - n,) + chunk.shape[1:], np.float32)])
            out = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(chunk)})[0]
            res.append(np.asarray(out, np.float32).reshape(len(chunk), -1)[:n])
        return l2_normalise(np.concatenate(res))

    def __call__(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        faces = _check_faces(faces)
        return self.embed_arcface_crops([self._to_arcface(f) for f in faces])

    def embed_image(self, image: np.ndarray, landmarks: Sequence[np.ndarray]) -> np.ndarray:
        """Photo + per-face 5 points (or 68 landmarks) -> aligned to the ArcFace template -> (N, D)."""
        s = self.input_size
        crops = [warp_affine(image, estimate_similarity(five_points(lm), arcface_template(s)), s, "constant") for lm in landmarks]
        return self.embed_arcface_crops(crops)


def cosine_matrix(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity of L2-normalised rows: (N, D), (M, D) -> (N, M)."""
    b = a if b is None else b
    return np.asarray(a, np.float32) @ np.asarray(b, np.float32).T
