"""Faces: the detected-face record, 5-point alignment to the lap template, and the crop rules of pre-aligned sources.

Everything here works on RGB ``uint8`` numpy images ``(H, W, 3)`` and pixel coordinates with the origin at the
centre of the top-left pixel (x right, y down), so a landmark at ``(x, y)`` lies on pixel column ``x``, row ``y``.

Detectors (dlib, insightface SCRFD) live in :mod:`lapdata.faces.detectors` and return the :class:`Face` records used here.

Alignment: :func:`align_face` estimates the least-squares similarity transform (Umeyama) from 5 points -- eye
centres, nose tip, mouth corners, in image order left-to-right -- to a fixed template and warps with bilinear
sampling. The default ``lap`` template is the framing of the crops Unsup3D and LAP train on (the face fills the
frame, forehead to chin): inter-ocular distance ``iod`` = 0.35 of the crop side, eye midpoint at
``(0.5, eye_y=0.33)`` of the crop, measured with dlib's 68 landmarks on Unsup3D's CelebA demo crops (iod 0.31-0.39,
mean 0.35; eye line 0.29-0.37, mean 0.33) and LAP's demo faces (0.35 / 0.33); the five points keep the proportions
of the ArcFace mean face. The synthetic sets (``lapdata.synthetic``) frame their frontal views with this template
too. The rule string recorded in the manifest is e.g. ``"sim5:template=lap,iod=0.35,eye_y=0.33,size=128,border=replicate"``.

Pre-aligned sources (:func:`crop_prealigned`) use the same template: each known layout has fixed source
points (its own mean 5 points), so the framing matches :func:`align_face`:

* ``arcface112`` -- insightface/ArcFace 112x112 crops (celebrity sets, CASIA/Glint .rec). The lap framing reaches
  ~7 % below the ArcFace crop (under the chin), filled by edge replication.
* ``celeba-align`` -- CelebA ``img_align_celeba`` 178x218: the lap framing is the fixed box of side 105.6 px at
  (x=35.5, y=76.5) (inside the image; :func:`prealigned_box`), resized.
* ``resize`` -- already framed the lap way (e.g. LAP/Unsup3D demo faces): centre square crop, resize.
* ``auto`` -- picks ``arcface112`` for 112x112 images, ``celeba-align`` for 178x218, else ``resize``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from lapdata.core.errors import LapError

# ArcFace (insightface) 112x112 template: left eye, right eye, nose tip, left mouth corner, right mouth corner
# (image left/right). Source: insightface.utils.face_align.arcface_dst.
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
# Approximate mean 5 points of CelebA img_align_celeba (178x218) (list_landmarks_align_celeba.txt rows agree within a
# few px: e.g. 000001.jpg 69 109 106 113 77 142 73 152 108 154).
CELEBA_ALIGN_5 = np.array(
    [[69.0, 111.5], [107.5, 111.5], [88.0, 134.8], [71.6, 152.2], [105.8, 152.0]], dtype=np.float64
)

MAX_CROP_SIZE = 4096  # the largest face crop side a command makes (ingest, build-synthetic, reconstruct --size)
DEFAULT_IOD = 0.35
DEFAULT_EYE_Y = 0.33
DEFAULT_BORDER = "replicate"


@dataclass
class Face:
    """One detected face.

    box: (4,) float x0, y0, x1, y1 in pixels; landmarks: (K, 2) float (K = 68 dlib order, or 5 insightface order:
    left eye, right eye, nose, left mouth, right mouth, image left/right); score: detector confidence.
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float
    extra: dict = field(default_factory=dict)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = (float(v) for v in self.box)
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    def points5(self) -> np.ndarray:
        return five_points(self.landmarks)


def largest_face(faces: Sequence[Face]) -> Face | None:
    """The face with the largest box area, or None for an empty list."""
    if not faces:
        return None
    return max(faces, key=lambda f: f.area)


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """(68, 2) dlib/iBUG landmarks or (5, 2) insightface points -> (5, 2) eye centres, nose tip, mouth corners."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape == (5, 2):
        return lm.copy()
    if lm.shape == (68, 2):
        return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
    raise ValueError(f"landmarks must be (5, 2) or (68, 2), got {lm.shape}")


# ----------------------------------------------------------------------------------------------------------------
# templates and similarity transforms


def lap_template(size: int, iod: float = DEFAULT_IOD, eye_y: float = DEFAULT_EYE_Y) -> np.ndarray:
    """(5, 2) target points of the ``lap`` template for a ``size`` x ``size`` crop.

    The ArcFace mean face scaled so that the inter-ocular distance is ``iod * size`` and moved so that the eye
    midpoint is at ``(0.5, eye_y) * size`` (pixel-centre coordinates: the crop spans [-0.5, size - 0.5])."""
    arc = ARCFACE_112 / 112.0
    arc_iod = float(np.linalg.norm(arc[1] - arc[0]))
    mid = (arc[0] + arc[1]) / 2
    unit = (arc - mid) * (iod / arc_iod) + np.array([0.5, eye_y])
    return unit * size - 0.5


def arcface_template(size: int = 112) -> np.ndarray:
    """(5, 2) ArcFace template scaled to ``size`` (insightface convention: points in pixel units of 112)."""
    return ARCFACE_112 * (size / 112.0)


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection), Umeyama 1991.

    src, dst: (N, 2), N >= 2 -> (2, 3) matrix M with dst ~= M[:, :2] @ src + M[:, 2]."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0**2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("degenerate source points (all equal)")
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def transform_points(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (N, 2) points."""
    pts = np.asarray(pts, np.float64)
    return pts @ m[:, :2].T + m[:, 2]


_BORDERS = ("replicate", "reflect", "constant")


def resize_image(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-averaging (down) / bilinear (up) resize of (H, W[, C]) uint8 -> (height, width[, C]).

    One image backend (PIL, with scipy for warps) on every machine, so crops never depend on what is installed."""
    down = width * height < img.shape[0] * img.shape[1]
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((int(width), int(height)), Image.BOX if down else Image.BILINEAR))


def _warp_numpy(img: np.ndarray, m: np.ndarray, w: int, h: int, border: str) -> np.ndarray:
    """Bilinear inverse warp with scipy (same convention as cv2.warpAffine, pixel centres at integers)."""
    from scipy.ndimage import map_coordinates

    a = np.vstack([np.asarray(m, np.float64), [0, 0, 1]])
    inv = np.linalg.inv(a)
    ys, xs = np.mgrid[:h, :w].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    mode = {"replicate": "nearest", "reflect": "mirror", "constant": "grid-constant"}[border]  # cv2 conventions
    src = img.astype(np.float64)
    chans = [src] if src.ndim == 2 else [src[..., c] for c in range(src.shape[2])]
    out = [map_coordinates(c, [sy, sx], order=1, mode=mode, cval=0.0) for c in chans]
    res = out[0] if img.ndim == 2 else np.stack(out, -1)
    if np.issubdtype(img.dtype, np.integer):
        res = np.clip(np.rint(res), np.iinfo(img.dtype).min, np.iinfo(img.dtype).max)
    return res.astype(img.dtype)


def warp_affine(image: np.ndarray, m: np.ndarray, size: int | tuple[int, int], border: str = DEFAULT_BORDER) -> np.ndarray:
    """Bilinear warp: output pixel q takes image at M^-1 q. image (H, W, C) or (H, W) -> (h, w[, C]) same dtype.

    size: int (square) or (width, height). border: replicate | reflect | constant (0); scipy, the convention of
    cv2.warpAffine (pixel centres at integers)."""
    if border not in _BORDERS:
        raise ValueError(f"border must be one of {_BORDERS}, got {border!r}")
    w, h = (size, size) if isinstance(size, int) else size
    return _warp_numpy(np.ascontiguousarray(image), m, int(w), int(h), border)


def _outside_fraction(m: np.ndarray, size: int, shape: tuple[int, ...]) -> float:
    """Fraction of the output crop whose source pixel lies outside the image (sampled on a coarse grid)."""
    n = 16
    g = (np.arange(n) + 0.5) * size / n - 0.5
    xs, ys = np.meshgrid(g, g)
    q = np.stack([xs.ravel(), ys.ravel()], 1)
    a = m[:, :2]
    src = (q - m[:, 2]) @ np.linalg.inv(a).T
    h, w = shape[:2]
    out = (src[:, 0] < -0.5) | (src[:, 0] > w - 0.5) | (src[:, 1] < -0.5) | (src[:, 1] > h - 0.5)
    return float(out.mean())


def lap_rule(size: int, iod: float = DEFAULT_IOD, eye_y: float = DEFAULT_EYE_Y, border: str = DEFAULT_BORDER) -> str:
    return f"sim5:template=lap,iod={iod:g},eye_y={eye_y:g},size={size},border={border}"


def align_points(
    image: np.ndarray,
    points5: np.ndarray,
    size: int,
    *,
    iod: float = DEFAULT_IOD,
    eye_y: float = DEFAULT_EYE_Y,
    border: str = DEFAULT_BORDER,
    template: np.ndarray | None = None,
    rule: str | None = None,
) -> tuple[np.ndarray, dict]:
    """Align from explicit 5 points (see :func:`align_face`). ``template`` (5, 2) overrides the lap template."""
    pts = five_points(points5)
    dst = lap_template(size, iod, eye_y) if template is None else np.asarray(template, np.float64)
    m = estimate_similarity(pts, dst)
    crop = warp_affine(image, m, size, border)
    info = {
        "rule": rule or lap_rule(size, iod, eye_y, border),
        "matrix": m.tolist(),
        "points5": pts.tolist(),
        "scale": float(math.hypot(m[0, 0], m[1, 0])),
        "outside_fraction": _outside_fraction(m, size, image.shape),
    }
    return crop, info


def align_face(
    image: np.ndarray,
    face: Face,
    size: int = 128,
    *,
    iod: float = DEFAULT_IOD,
    eye_y: float = DEFAULT_EYE_Y,
    border: str = DEFAULT_BORDER,
) -> tuple[np.ndarray, dict]:
    """Similarity-align ``face`` to the ``lap`` template.

    image (H, W, 3) uint8 -> crop (size, size, 3) uint8 and info: ``rule`` (the manifest crop-rule string),
    ``matrix`` (2x3 image->crop), ``points5`` (source points), ``scale`` (crop px per image px),
    ``outside_fraction`` (part of the crop that lies beyond the image, filled per ``border``)."""
    return align_points(image, face.points5(), size, iod=iod, eye_y=eye_y, border=border)


# ----------------------------------------------------------------------------------------------------------------
# pre-aligned sources

PREALIGNED_RULES = ("auto", "arcface112", "celeba-align", "resize")
PREALIGNED_SIZES = {(112, 112): "arcface112", (218, 178): "celeba-align"}  # (height, width) -> the layout it names


def prealigned_layout(width: int, height: int) -> str | None:
    """The pre-aligned layout an image size names (``arcface112`` for 112x112, ``celeba-align`` for 178x218), or
    None: the one image-size -> crop-rule choice (``auto``, and ingest's ``--mode auto``)."""
    return PREALIGNED_SIZES.get((height, width))


def resolve_prealigned_rule(rule: str, width: int, height: int) -> str:
    """``auto`` -> the layout its size names (``prealigned_layout``), else ``resize``; other rules are returned as
    they are (an unknown one is a LapError)."""
    if rule not in PREALIGNED_RULES:
        raise LapError(f"unknown pre-aligned crop rule {rule!r} (known: {', '.join(PREALIGNED_RULES)})")
    if rule == "auto":
        return prealigned_layout(width, height) or "resize"
    return rule


def prealigned_matrix(rule: str, width: int, height: int, size: int, *, iod: float = DEFAULT_IOD,
                      eye_y: float = DEFAULT_EYE_Y) -> np.ndarray:
    """(2, 3) image -> crop matrix of a pre-aligned layout's fixed rule (pixel centres at integers).

    ``resize``: the centre square of side min(w, h) scaled to ``size``; ``arcface112`` / ``celeba-align``: the
    similarity from the layout's mean 5 points to the lap template. The one definition of where a pre-aligned
    crop comes from: :func:`crop_prealigned` warps with it and keypoint evaluation maps points through it."""
    rule = resolve_prealigned_rule(rule, width, height)
    if rule == "resize":
        s = min(height, width)
        y0, x0 = (height - s) // 2, (width - s) // 2
        sc = size / s
        return np.array([[sc, 0.0, (0.5 - x0) * sc - 0.5], [0.0, sc, (0.5 - y0) * sc - 0.5]])
    if rule == "arcface112":
        if height != width:
            raise LapError(f"arcface112 rule needs a square image, got {width}x{height}")
        src = arcface_template(width)
    else:  # celeba-align
        src = CELEBA_ALIGN_5 * np.array([width / 178.0, height / 218.0])
    return estimate_similarity(src, lap_template(size, iod, eye_y))


def crop_prealigned(
    image: np.ndarray,
    size: int = 128,
    rule: str = "auto",
    *,
    iod: float = DEFAULT_IOD,
    eye_y: float = DEFAULT_EYE_Y,
    border: str = DEFAULT_BORDER,
) -> tuple[np.ndarray, str]:
    """Crop a pre-aligned face with a fixed rule giving the ``lap`` framing of :func:`align_face`.

    image (H, W, 3) uint8 -> (size, size, 3) uint8 and the full rule string for the manifest, e.g.
    ``"prealigned:arcface112;sim5:template=lap,iod=0.35,eye_y=0.33,size=128,border=replicate"``.
    Rules: ``arcface112`` (ArcFace 112x112 crops; any square size, scaled), ``celeba-align`` (178x218
    img_align_celeba), ``resize`` (centre square crop + resize), ``auto`` (by image size, see module doc).
    The crop is the image under :func:`prealigned_matrix`."""
    h, w = image.shape[:2]
    rule = resolve_prealigned_rule(rule, w, h)
    m = prealigned_matrix(rule, w, h, size, iod=iod, eye_y=eye_y)
    if rule == "resize":
        s = min(h, w)
        y0, x0 = (h - s) // 2, (w - s) // 2
        sq = image[y0 : y0 + s, x0 : x0 + s]
        if s == size:
            out = np.ascontiguousarray(sq)
        else:
            from PIL import Image

            out = np.asarray(Image.fromarray(sq).resize((size, size), Image.BILINEAR if size > s else Image.BOX))
        return out, f"prealigned:resize;center-square,size={size}"
    out = warp_affine(image, m, size, border)
    return out, f"prealigned:{rule};{lap_rule(size, iod, eye_y, border)}"


def prealigned_box(rule: str, width: int, height: int, iod: float = DEFAULT_IOD, eye_y: float = DEFAULT_EYE_Y) -> tuple[float, float, float]:
    """(x0, y0, side) in source pixels of the square a pre-aligned rule's crop covers (``auto`` resolved as in
    :func:`crop_prealigned`): the lap framing of a layout, or ``resize``'s centre square."""
    rule = resolve_prealigned_rule(rule, width, height)
    if rule == "resize":
        s = min(height, width)
        return float((width - s) // 2), float((height - s) // 2), float(s)
    if rule == "arcface112":
        src = arcface_template(width)
    else:  # celeba-align
        src = CELEBA_ALIGN_5 * np.array([width / 178.0, height / 218.0])
    m = estimate_similarity(lap_template(1000, iod, eye_y), src)
    corner = transform_points(m, np.array([[-0.5, -0.5], [999.5, 999.5]]))
    return float(corner[0, 0]), float(corner[0, 1]), float(corner[1, 0] - corner[0, 0])
