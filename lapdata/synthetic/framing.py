"""GAN views framed like photos: detect the face on each generated view and align it to the ``lap`` template.

The 3D backends (procedural, ict) place their camera so that every view is rendered in the ``lap`` framing of
``lapdata.faces.align`` (inter-ocular distance 0.35 of the side, eye line 0.33 from the top). Image generators do not:
a StyleGAN trained on FFHQ paints faces in FFHQ's alignment, and a diffusers pipeline paints roughly where its
conditioning map put the face. Such a backend declares the framing its images come in (its ``framing`` attribute,
a key of ``SOURCE_FRAMINGS``), and build-synthetic passes every view through :class:`ViewFramer`, exactly as
``lapdata ingest`` treats a photo:

1. the view is generated at ``render_size(size)`` pixels, large enough that the lap crop of ``size`` pixels is
   not upsampled (FFHQ framing: ``ceil(size * 0.35 / 0.241)``);
2. the toolkit's face detector (``lapdata.faces.detectors``: dlib HOG + 68 landmarks by default, offline; insightface
   SCRFD with ``--det-model``) finds the faces, the largest is kept;
3. ``lapdata.faces.align.align_face`` (the one 5-point similarity alignment) warps it to the lap template at ``size``.

The identity filter then embeds each view from the generated image with the detected landmarks (ArcFace's own
template alignment on the full-resolution view, as insightface does); the aligned crop is what is written. The
manifest row records the rule as ingest does: ``crop_rule``, ``box``, ``landmarks`` and ``other_boxes`` in the
generated view's pixels, ``num_faces``, ``orig_width``/``orig_height`` = the render size; the view json gets
``crop_rule``, ``box``, ``num_faces``, ``det_score`` and the landmarks mapped into the written crop. A view where
no face is found is a ``no_face`` error row of its identity (counted; the run goes on); a detector or warp that
fails on one view, a ``face_crop_failed`` error row.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from lapdata.core.errors import LapError
from lapdata.faces.align import DEFAULT_EYE_Y, DEFAULT_IOD, Face, align_face, largest_face, lap_rule, transform_points

from lapdata.synthetic.base import SynthView


@dataclass(frozen=True)
class SourceFraming:
    """How a generator frames its faces: inter-ocular distance and eye line as fractions of the image side."""

    iod: float
    eye_y: float
    where: str  # provenance of the numbers


SOURCE_FRAMINGS: dict[str, SourceFraming] = {
    # FFHQ's alignment (NVlabs/ffhq-dataset, download_ffhq.py recreate_aligned_images: crop side = 2 max(2 |eye to
    # eye|, 1.8 |eye to mouth|), centre = eye midpoint + 0.1 (eye to mouth)); on the ArcFace mean face that is
    # iod 0.241 of the side and the eye line at 0.47 from the top. StyleGAN 1/2/3 FFHQ generators paint this framing.
    "ffhq": SourceFraming(0.241, 0.469, "NVlabs/ffhq-dataset download_ffhq.py on the ArcFace mean face"),
    # diffusers pipelines driven by lap-framed conditioning renders: about the lap framing, not exactly.
    "approx-lap": SourceFraming(DEFAULT_IOD, DEFAULT_EYE_Y, "the lap-framed conditioning maps it was painted over"),
}

NO_FACE = "no_face"  # the reasons of a view's error row (the message starts with its reason)
CROP_FAILED = "face_crop_failed"


@dataclass
class FramedView:
    """One generated view after detection and alignment.

    view: the aligned crop (size, size, 3) as a SynthView (its landmarks: the detected ones mapped into the crop);
    source: the generated view with the detected landmarks (what the identity filter embeds); row: the PHOTOS
    columns of the rule; meta: the view json entries of the rule."""

    view: SynthView
    source: SynthView
    row: dict[str, Any]
    meta: dict[str, Any]


def _flat(a: Any) -> list[float]:
    return np.asarray(a, np.float64).reshape(-1).round(2).tolist()


class ViewFramer:
    """Detect + align generated views of a backend whose framing is ``framing`` (a key of SOURCE_FRAMINGS).

    detector: ``image (H, W, 3) uint8 -> list[Face]`` with a ``name`` (``lapdata.faces.detectors``; picklable, so the
    framer travels to the build's workers). ``__call__(view) -> FramedView``, or a one-line message starting with
    its reason (``no_face: ...``, ``face_crop_failed: ...``) for the view's error row."""

    def __init__(self, framing: str, size: int, detector: Callable[[np.ndarray], list[Face]], backend: str = ""):
        if framing not in SOURCE_FRAMINGS:
            raise ValueError(f"unknown source framing {framing!r}; known: {', '.join(SOURCE_FRAMINGS)}")
        self.framing = framing
        self.size = int(size)
        self.detector = detector
        self.backend = backend
        self.render_size = render_size(self.size, framing)

    @property
    def detector_name(self) -> str:
        return str(getattr(self.detector, "name", type(self.detector).__name__))

    def rule(self) -> str:
        """The manifest's crop rule of every view this framer writes."""
        return (f"synthetic:{self.backend}:{self.framing}-frame,render={self.render_size};{self.detector_name};"
                f"{lap_rule(self.size)}")

    def describe(self) -> dict[str, Any]:
        src = SOURCE_FRAMINGS[self.framing]
        return {"source": self.framing, "source_iod": src.iod, "source_eye_y": src.eye_y,
                "render_size": self.render_size, "detector": self.detector_name, "rule": self.rule()}

    def __call__(self, view: SynthView) -> FramedView | str:
        img = np.ascontiguousarray(view.image)
        h, w = img.shape[:2]
        try:
            found = self.detector(img)
            face = largest_face(found)
            if face is None:
                return f"{NO_FACE}: {self.detector_name} found no face in the {w}x{h} generated view"
            crop, info = align_face(img, face, self.size)
        except Exception as e:  # noqa: BLE001 - one bad view is an error row, as in ingest
            msg = (str(e).strip().splitlines() or [""])[0][:200]
            return f"{CROP_FAILED}: {type(e).__name__}: {msg}"
        m = np.asarray(info["matrix"], np.float64)
        lm_src = np.asarray(face.landmarks, np.float64)
        others = [f for f in found if f is not face]
        row = {"orig_width": w, "orig_height": h, "num_faces": len(found), "box": _flat(face.box),
               "landmarks": _flat(lm_src), "other_boxes": _flat([f.box for f in others]) if others else None,
               "crop_rule": self.rule()}
        meta = {"crop_rule": row["crop_rule"], "box": row["box"], "num_faces": len(found),
                "det_score": round(float(face.score), 4)}
        aligned = dataclasses.replace(view, image=crop, landmarks=transform_points(m, lm_src).astype(np.float32))
        source = dataclasses.replace(view, landmarks=lm_src)
        return FramedView(aligned, source, row, meta)


def render_size(size: int, framing: str) -> int:
    """Side at which to generate a view of ``framing`` so that its lap crop of ``size`` px is not upsampled."""
    src = SOURCE_FRAMINGS[framing]
    return max(int(size), math.ceil(size * DEFAULT_IOD / src.iod - 1e-9))


def make_detector(det_model: str = ""):
    """The toolkit's detector: insightface SCRFD from ``det_model`` (.onnx) when given, else dlib (offline)."""
    from lapdata.faces import detectors

    if det_model:
        return detectors.InsightFaceDetector(det_model)
    return detectors.DlibDetector()


def make_framer(backend: Any, size: int, det_model: str = "", detector=None) -> ViewFramer | None:
    """A ViewFramer for a backend that declares ``framing`` (None for backends rendered in the lap framing).

    ``detector`` overrides the toolkit's (tests use stand-ins). A missing or bad ``det_model`` is a LapError
    here, before any work."""
    framing = getattr(backend, "framing", None)
    if framing is None:
        return None
    if framing not in SOURCE_FRAMINGS:
        raise LapError(f"backend {getattr(backend, 'name', '?')}: unknown framing {framing!r}")
    return ViewFramer(framing, size, detector if detector is not None else make_detector(det_model),
                      getattr(backend, "name", ""))

