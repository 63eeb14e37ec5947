"""The 19 CelebAMask-HQ face-parsing classes: the project's label ids, and the class orders of published parsers.

The project's ids (``CLASSES``) are defined once here; every parser returns, and every dataset stores, label maps
with these ids (uint8 / int64, 0..18): the stored ``seg``, the PHOTOS ``class_counts``, the RCL masks and the
pictures. A network trained in another order is mapped to these ids right at its output (``order_lookup``), so
nothing downstream ever sees a network's own class ids.

Two orders of the same 18 part names (+ background 0) are in use:

* ``celebamask-hq`` -- the project's order: CelebAMask-HQ's own label maps, as its script
  ``face_parsing/Data_preprocessing/g_mask.py`` (switchablenorms/CelebAMask-HQ, ``label_list``, label = index + 1)
  writes them. ``lapdata.sources.records`` reads the per-part annotation files in this order.
* ``face-parsing`` -- the order face-parsing.PyTorch trained ``79999_iter.pth`` in: its ``prepropess_data.py``
  (zllrunning/face-parsing.PyTorch, ``atts``, label = index + 1) builds the training masks in it; facexlib's
  ``parsing_bisenet.pth`` is that network and documents the same ids (xinntao/facexlib,
  ``inference/inference_parsing.py``). 7 of 19 ids differ in meaning from ours (e.g. its 10 is nose, ours mouth).
"""

from __future__ import annotations

import numpy as np

from lapdata.core.errors import LapError

# The project's ids: CelebAMask-HQ's g_mask.py ``label_list`` order, 1-based after background (see the module doc)
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

# face-parsing.PyTorch's training order (prepropess_data.py ``atts``, 1-based after background; see the module doc)
FACE_PARSING_CLASSES: tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",  # 0-9
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",  # 10-18
)
LABEL_ORDERS: dict[str, tuple[str, ...]] = {"face-parsing": FACE_PARSING_CLASSES, "celebamask-hq": CLASSES}

# Colours for pictures (contact sheets), indexed by the project's ids; background black.
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


def read_label_order(spec: str) -> tuple[str, ...]:
    """A network's class order: a name of ``LABEL_ORDERS`` or a text file of the 19 class names, one per line in
    the network's id order (blank lines and ``#`` comments ignored). LapError for an unknown name, a missing file,
    or a list that is not a permutation of the 19 classes."""
    if spec in LABEL_ORDERS:
        return LABEL_ORDERS[spec]
    from pathlib import Path

    p = Path(spec).expanduser()
    if not p.is_file():
        raise LapError(f"--label-order {spec!r}: not one of {', '.join(LABEL_ORDERS)} and not a file of class names")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LapError(f"{p}: cannot read the label order ({type(e).__name__})") from None
    names = tuple(x.split("#", 1)[0].strip() for x in lines)
    names = tuple(n for n in names if n)
    unknown = [n for n in names if n not in CLASS_ID]
    if unknown or len(names) != NUM_CLASSES or len(set(names)) != NUM_CLASSES:
        why = f"unknown class {unknown[0]!r}" if unknown else f"{len(names)} names, {len(set(names))} distinct"
        raise LapError(f"{p}: a label order needs the {NUM_CLASSES} class names once each, one per line ({why}; "
                       f"known: {' '.join(CLASSES)})")
    return names


def order_lookup(order: tuple[str, ...] | list[str]) -> np.ndarray:
    """A network's class order (names by its ids) -> (19,) uint8 table: network id -> the project's id."""
    if sorted(order) != sorted(CLASSES):
        raise ValueError(f"label order must name the {NUM_CLASSES} classes once each, got {list(order)}")
    return np.array([CLASS_ID[n] for n in order], dtype=np.uint8)


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
