"""Photos -> face crops for the model, cut the way `lapdata` cuts them: files and folders expanded (`expand_paths`),
one distinct output name per photo (`unique_names`), each photo read (EXIF rotation applied) and cropped
(`crop_face`: a known pre-aligned layout by its rule, else the largest face detected by dlib and aligned to the lap
template; an aligned square crop only resized), unreadable photos and photos without a face skipped and listed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from lapdata.core.errors import LapError
from lapdata.core.paths import plain_name

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class LoadedFaces:
    """Face crops ready for the model: images (B, 3, S, S) float in [0, 1]; names unique per photo; ``matrices``
    the (2, 3) photo -> crop transform of each crop (pixel centres at integers), so that points annotated on the
    photo (keypoint evaluation) land where the model sees them."""

    images: Tensor
    names: list[str]
    sources: list[str]
    rules: list[str]
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}
    matrices: list[np.ndarray] = field(default_factory=list)


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files and folders (their images, sorted, not recursive) -> image files. A missing path is a LapError."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file())
            if not files:
                raise LapError(f"{p}: folder holds no images ({', '.join(IMAGE_EXTS)})")
            out.extend(files)
        elif p.exists():
            out.append(p)
        else:
            raise LapError(f"{p}: no such file or folder")
    if not out:
        raise LapError("no input images given")
    return out


RESERVED = ("set",)  # out/set/ holds an --as-set reconstruction


def unique_names(paths: Sequence[Path]) -> list[str]:
    """One output folder name per photo, all distinct (also on a case-insensitive disk) and never a path: the
    stem as a plain name (``lapdata.core.paths.plain_name``: '...jpg' or 'a b.jpg' never lead out of --out), then
    '_1', '_2', ... until it is free (``x.png`` -> x, ``x.jpg`` -> x_1, ``x_1.jpg`` -> x_1_1)."""
    names: list[str] = []
    taken = {r.casefold() for r in RESERVED}
    for p in paths:
        base = plain_name(p.stem or "image")
        name, k = base, 0
        while name.casefold() in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name.casefold())
        names.append(name)
    return names


def load_faces(
    paths: Sequence[str | os.PathLike],
    size: int,
    aligned: bool | None = None,
    detector: Any | None = None,
) -> LoadedFaces:
    """Read photos and crop faces the way `lapdata` does.

    aligned=True: every file is an aligned crop (`crop_prealigned(rule="auto")`: ArcFace 112 px, CelebA aligned,
    or already lap-framed -> centre square + resize). aligned=False: detect the largest face (dlib) and align it
    to the lap template. aligned=None (auto): see ``crop_face``.
    Unreadable files and photos without a face are skipped and listed in ``skipped`` (the run goes on).
    """
    files = expand_paths(paths)
    return load_files(files, unique_names(files), size, aligned, detector)


def load_files(files: Sequence[Path], names: Sequence[str], size: int, aligned: bool | None = None,
               detector: Any | None = None) -> LoadedFaces:
    """`load_faces` for an explicit list of image files and their output names."""
    from PIL import Image, ImageOps

    from lapdata.faces import detectors as ldetectors

    crops, kept_names, sources, rules, skipped, matrices = [], [], [], [], [], []
    for path, name in zip(files, names):
        try:
            with Image.open(path) as im:
                img = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))  # phone photos: apply EXIF rotation
        except Exception as e:  # unreadable, truncated, decompression bomb, ...: skip and count
            skipped.append({"path": str(path), "reason": f"unreadable image ({type(e).__name__}: {e})"})
            continue
        if detector is None and _needs_detector_for(img.shape, aligned):
            detector = ldetectors.DlibDetector()
        got = crop_face(img, size, aligned, detector)
        if isinstance(got, str):
            skipped.append({"path": str(path), "reason": got})
            continue
        crop, rule, matrix = got
        crops.append(crop)
        matrices.append(matrix)
        kept_names.append(name)
        sources.append(str(path))
        rules.append(rule)
    if crops:
        images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    else:
        images = torch.zeros(0, 3, size, size)
    return LoadedFaces(images, kept_names, sources, rules, skipped, matrices)


def _needs_detector_for(shape: tuple[int, ...], aligned: bool | None) -> bool:
    """A known pre-aligned layout's size (``lapdata.faces.align.prealigned_layout``) needs no detector."""
    from lapdata.faces.align import prealigned_layout

    return not aligned if aligned is not None else prealigned_layout(shape[1], shape[0]) is None


def needs_detector(path: Path, aligned: bool | None) -> bool:
    """Whether ``path`` goes to the face detector (see ``crop_face``; unreadable: no)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception:
        return False
    return _needs_detector_for((h, w), aligned)


def crop_face(img: np.ndarray, size: int, aligned: bool | None, detector: Any) -> tuple[np.ndarray, str, np.ndarray] | str:
    """One photo (H, W, 3) uint8 -> (crop (S, S, 3), rule, (2, 3) photo -> crop matrix), or the reason it has none.

    aligned=True: a pre-aligned crop (``lapdata.faces.align.crop_prealigned`` 'auto'). aligned=False: the most confident
    of the large detected faces, aligned to the lap template. aligned=None: the known pre-aligned layouts (ArcFace 112, CelebA 178x218) by
    their rule; any other photo is detected (on a padded copy, so a face that fills the frame is found) and aligned,
    except that a square photo whose face already sits where the lap template puts it (an aligned crop such as
    LAP's / Unsup3D's demo faces) is only resized; a square photo with no face found is taken as an aligned crop."""
    from lapdata.faces import align as lfaces

    h, w = img.shape[:2]
    if aligned or (aligned is None and lfaces.prealigned_layout(w, h) is not None):
        return (*lfaces.crop_prealigned(img, size, "auto"), lfaces.prealigned_matrix("auto", w, h, size))
    pad = max(h, w) // 4
    found = detector(np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    big = max((f.area for f in found), default=0.0)
    # the most confident of the large faces (a patch or a poster is a weak, often equally large, detection)
    face = max((f for f in found if f.area >= 0.5 * big), key=lambda f: f.score, default=None)
    if face is None:
        if aligned is None and h == w:
            return (*lfaces.crop_prealigned(img, size, "resize"), lfaces.prealigned_matrix("resize", w, h, size))
        return "no face found"
    pts = face.points5() - pad
    if aligned is None and h == w and _lap_framed(pts, w):
        return (*lfaces.crop_prealigned(img, size, "resize"), lfaces.prealigned_matrix("resize", w, h, size))
    crop, info = lfaces.align_points(img, pts, size)
    return crop, info["rule"], np.asarray(info["matrix"], np.float64)


def _lap_framed(points5: np.ndarray, side: int, tol: float = 0.12) -> bool:
    """Whether the 5 points of a square photo already sit on the lap template (scale within ``tol``, shift within
    ``tol / 2`` of the side, rotation within 8 degrees): the photo is an aligned crop."""
    from lapdata.faces import align as lfaces

    m = lfaces.estimate_similarity(points5, lfaces.lap_template(side))
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    rot = abs(float(np.degrees(np.arctan2(m[1, 0], m[0, 0]))))
    centre = lfaces.transform_points(m, np.array([[side / 2 - 0.5, side / 2 - 0.5]]))[0] - (side / 2 - 0.5)
    return abs(scale - 1) < tol and float(np.abs(centre).max()) < tol / 2 * side and rot < 8
