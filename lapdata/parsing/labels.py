"""The 19 CelebAMask-HQ face-parsing classes (the label set of face-parsing.PyTorch, facexlib and our parsers).

Defined once here; every parser returns label maps with these ids (uint8 / int64, 0..18).
"""

from __future__ import annotations

import numpy as np

CLASSES: tuple[str, ...] = (
    "background",  # 0
    "skin",  # 1
    "nose",  # 2
    "eye_g",  # 3  eyeglasses
    "l_eye",  # 4
    "r_eye",  # 5
    "l_brow",  # 6
    "r_brow",  # 7
    "l_ear",  # 8
    "r_ear",  # 9
    "mouth",  # 10 inner mouth (between the lips)
    "u_lip",  # 11
    "l_lip",  # 12
    "hair",  # 13
    "hat",  # 14
    "ear_r",  # 15 earring
    "neck_l",  # 16 necklace
    "neck",  # 17
    "cloth",  # 18
)
NUM_CLASSES = len(CLASSES)
CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}

# Colours for pictures (contact sheets); the face-parsing.PyTorch demo palette order, background black.
PALETTE = np.array(
    [
        [0, 0, 0],
        [204, 102, 102],
        [255, 170, 0],
        [255, 255, 255],
        [0, 255, 85],
        [0, 255, 170],
        [0, 85, 255],
        [0, 170, 255],
        [255, 0, 170],
        [170, 0, 255],
        [255, 85, 0],
        [255, 0, 85],
        [255, 0, 255],
        [85, 40, 10],
        [0, 255, 255],
        [170, 255, 0],
        [85, 255, 0],
        [255, 255, 85],
        [100, 100, 100],
    ],
    dtype=np.uint8,
)


def class_ids(names: tuple[str, ...] | list[str], where: str = "classes") -> list[int]:
    """Class names -> ids; an unknown name raises ValueError naming it and the known names."""
    out = []
    for n in names:
        if n not in CLASS_ID:
            raise ValueError(f"{where}: unknown class {n!r}; known: {list(CLASSES)}")
        out.append(CLASS_ID[n])
    return out


def colorize(seg: np.ndarray) -> np.ndarray:
    """(H, W) labels 0..18 -> (H, W, 3) uint8 RGB picture (labels outside 0..18 drawn black)."""
    s = np.asarray(seg).astype(np.int64)
    s = np.where((s >= 0) & (s < NUM_CLASSES), s, 0)
    return PALETTE[s]


def class_counts(seg: np.ndarray) -> list[int]:
    """(H, W) labels -> 19 per-class pixel counts (labels outside 0..18 are not counted)."""
    s = np.asarray(seg).astype(np.int64).ravel()
    s = s[(s >= 0) & (s < NUM_CLASSES)]
    return np.bincount(s, minlength=NUM_CLASSES).astype(np.int64).tolist()
