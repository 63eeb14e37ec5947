"""Face detectors: ``__call__(image (H, W, 3) uint8 RGB) -> list[Face]``, all faces, largest box first.

* :class:`DlibDetector` -- offline default. dlib's HOG frontal detector (or the CNN mmod detector with
  ``cnn=True``) plus the 68-point landmark predictor, read from the ``face_recognition_models`` data folder
  (found with ``importlib.util.find_spec``; that package is never imported).
* :class:`InsightFaceDetector` -- an insightface SCRFD detection ONNX file (``det_10g.onnx``, ``det_2.5g.onnx``,
  ...) run with onnxruntime; 5 landmarks. The SCRFD decode is implemented here (no insightface import needed).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from lapdata.core.errors import LapError, require
from lapdata.faces.align import Face, resize_image


# ----------------------------------------------------------------------------------------------------------------
# dlib detector


def dlib_model_dir() -> Path:
    """The ``models/`` folder of the installed face_recognition_models package (found, never imported)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise LapError("dlib model files not found: install face-recognition-models (pip install face-recognition-models)")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def dlib_model_path(name: str, model_dir: str | Path | None = None) -> Path:
    p = Path(model_dir or dlib_model_dir()) / name
    if not p.is_file():
        raise LapError(f"dlib model file missing: {p}")
    return p


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {img.shape}")
    if img.shape[2] == 4:
        img = img[..., :3]
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    return np.ascontiguousarray(img)


class DlibDetector:
    """dlib face detector + 68-point landmarks. ``__call__(image (H,W,3) uint8 RGB) -> list[Face]`` by area.

    upsample: how many times dlib upsamples the (possibly downscaled) image before detecting (1 finds faces down
    to ~40 px). max_side: images larger than this are downscaled for detection only (landmarks run at full
    resolution). cnn: use the mmod CNN detector (slower on CPU, better on profiles). min_score: HOG score
    threshold (dlib's adjust_threshold, 0 = default) or CNN confidence threshold."""

    def __init__(
        self,
        upsample: int = 1,
        *,
        cnn: bool = False,
        max_side: int = 1024,
        min_score: float = 0.0,
        model_dir: str | Path | None = None,
    ):
        dlib = require("dlib")

        self.upsample = int(upsample)
        self.cnn = bool(cnn)
        self.max_side = int(max_side)
        self.min_score = float(min_score)
        self.predictor = dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat", model_dir)))
        if self.cnn:
            self.detector = dlib.cnn_face_detection_model_v1(str(dlib_model_path("mmod_human_face_detector.dat", model_dir)))
        else:
            self.detector = dlib.get_frontal_face_detector()
        self.name = "dlib-cnn" if self.cnn else "dlib-hog"

    def __getstate__(self):  # dlib objects do not pickle: rebuild in the worker
        return {"upsample": self.upsample, "cnn": self.cnn, "max_side": self.max_side, "min_score": self.min_score}

    def __setstate__(self, st):
        self.__init__(st["upsample"], cnn=st["cnn"], max_side=st["max_side"], min_score=st["min_score"])

    def detect_boxes(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """(box (4,), score) pairs in full-image pixels, unsorted."""
        img = _as_rgb_uint8(image)
        h, w = img.shape[:2]
        scale = 1.0
        small = img
        if max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            small = resize_image(img, max(1, round(w * scale)), max(1, round(h * scale)))
        out = []
        if self.cnn:
            for d in self.detector(small, self.upsample):
                if d.confidence >= self.min_score:
                    r = d.rect
                    out.append((np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], float) / scale, float(d.confidence)))
        else:
            rects, scores, _ = self.detector.run(small, self.upsample, self.min_score)
            for r, s in zip(rects, scores):
                out.append((np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], float) / scale, float(s)))
        return out

    def landmarks(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(68, 2) landmarks for a box (x0, y0, x1, y1) on the full image."""
        import dlib

        x0, y0, x1, y1 = (int(round(v)) for v in box)
        shape = self.predictor(image, dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

    def __call__(self, image: np.ndarray) -> list[Face]:
        img = _as_rgb_uint8(image)
        faces = [Face(box=b, landmarks=self.landmarks(img, b), score=s) for b, s in self.detect_boxes(img)]
        faces.sort(key=lambda f: -f.area)
        return faces


# ----------------------------------------------------------------------------------------------------------------
# insightface SCRFD detector (ONNX)


def _nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][ovr <= thresh]
    return keep


def load_onnx_session(path: str | Path, what: str):
    """onnxruntime InferenceSession on CPU (CUDA first when available), or a one-line LapError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise LapError(f"{what} ONNX file not found: {p}")
    ort = require("onnxruntime")
    try:
        avail = ort.get_available_providers()
        providers = [x for x in ("CUDAExecutionProvider", "CPUExecutionProvider") if x in avail] or avail
        so = ort.SessionOptions()
        so.log_severity_level = 3
        return ort.InferenceSession(str(p), sess_options=so, providers=providers)
    except Exception as e:  # noqa: BLE001 - any load failure is a user error about this file
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LapError(f"cannot load {what} ONNX file {p}: {msg[:200]}") from None


class InsightFaceDetector:
    """insightface SCRFD detector from an ONNX file (e.g. ``det_10g.onnx`` of buffalo_l). 5 landmarks.

    ``__call__(image (H,W,3) uint8 RGB) -> list[Face]`` sorted by area. The image is resized (aspect kept) into
    ``det_size`` x ``det_size`` (padded right/bottom), normalised (x - 127.5) / 128 as RGB NCHW; the 6/9/10/15
    outputs (scores, box distances, keypoint offsets per stride) are decoded on anchor centres, then NMS."""

    def __init__(self, model_path: str | Path, det_size: int = 640, score_threshold: float = 0.5, nms_threshold: float = 0.4):
        self.model_path = str(model_path)
        self.session = load_onnx_session(model_path, "insightface detection")
        self.det_size = int(det_size)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shp = inp.shape
        if len(shp) != 4:
            raise LapError(f"{model_path}: not a detection model (input shape {shp})")
        if isinstance(shp[2], int) and isinstance(shp[3], int):
            self.input_hw = (shp[2], shp[3])
        else:
            self.input_hw = (self.det_size, self.det_size)
        outs = self.session.get_outputs()
        self.output_names = [o.name for o in outs]
        n = len(outs)
        cfg = {6: (3, [8, 16, 32], 2, False), 9: (3, [8, 16, 32], 2, True), 10: (5, [8, 16, 32, 64, 128], 1, False), 15: (5, [8, 16, 32, 64, 128], 1, True)}
        if n not in cfg:
            raise LapError(f"{model_path}: not an SCRFD detection model ({n} outputs, expected 6, 9, 10 or 15)")
        self.fmc, self.strides, self.num_anchors, self.use_kps = cfg[n]
        if not self.use_kps:
            raise LapError(f"{model_path}: SCRFD model without keypoints; alignment needs the 5-landmark variant")
        self.batched = len(outs[0].shape) == 3
        self.name = "insightface-scrfd"
        self._centers: dict = {}

    def __getstate__(self):
        return {"model_path": self.model_path, "det_size": self.det_size, "score_threshold": self.score_threshold, "nms_threshold": self.nms_threshold}

    def __setstate__(self, st):
        self.__init__(st["model_path"], st["det_size"], st["score_threshold"], st["nms_threshold"])

    def _anchor_centers(self, h: int, w: int, stride: int) -> np.ndarray:
        key = (h, w, stride)
        if key not in self._centers:
            c = np.stack(np.mgrid[:h, :w][::-1], axis=-1).astype(np.float32)
            c = (c * stride).reshape(-1, 2)
            if self.num_anchors > 1:
                c = np.stack([c] * self.num_anchors, axis=1).reshape(-1, 2)
            self._centers[key] = c
        return self._centers[key]

    def __call__(self, image: np.ndarray) -> list[Face]:
        img = _as_rgb_uint8(image)
        ih, iw = self.input_hw
        h, w = img.shape[:2]
        det_scale = min(ih / h, iw / w)
        nh, nw = max(1, int(round(h * det_scale))), max(1, int(round(w * det_scale)))
        canvas = np.zeros((ih, iw, 3), np.uint8)
        canvas[:nh, :nw] = resize_image(img, nw, nh)
        blob = ((canvas.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outs = self.session.run(self.output_names, {self.input_name: blob})
        boxes, scores, kpss = [], [], []
        for i, stride in enumerate(self.strides):
            sc = outs[i][0] if self.batched else outs[i]
            bb = (outs[i + self.fmc][0] if self.batched else outs[i + self.fmc]) * stride
            kp = (outs[i + 2 * self.fmc][0] if self.batched else outs[i + 2 * self.fmc]) * stride
            centers = self._anchor_centers(ih // stride, iw // stride, stride)
            sc = sc.reshape(-1)
            pos = np.where(sc >= self.score_threshold)[0]
            if pos.size == 0:
                continue
            c = centers[pos]
            d = bb.reshape(-1, 4)[pos]
            boxes.append(np.stack([c[:, 0] - d[:, 0], c[:, 1] - d[:, 1], c[:, 0] + d[:, 2], c[:, 1] + d[:, 3]], -1))
            k = kp.reshape(len(sc), -1)[pos].reshape(len(pos), -1, 2)
            kpss.append(c[:, None, :] + k)
            scores.append(sc[pos])
        if not boxes:
            return []
        boxes_a = np.concatenate(boxes) / det_scale
        kps_a = np.concatenate(kpss) / det_scale
        sc_a = np.concatenate(scores)
        keep = _nms(boxes_a, sc_a, self.nms_threshold)
        faces = [Face(box=boxes_a[i].astype(np.float64), landmarks=kps_a[i].astype(np.float64), score=float(sc_a[i])) for i in keep]
        faces.sort(key=lambda f: -f.area)
        return faces
