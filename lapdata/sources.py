"""Photo sources: each yields ``PhotoRecord``s (identity, display path, how to load the bytes, layout hint).

Sources (``open_source(kind, src, **options)``):

* ``celeba``  DIR with ``img_align_celeba/`` (pre-aligned 178x218) or ``img_celeba/`` (in-the-wild, detected) and
  ``identity_CelebA.txt`` (in DIR or DIR/Anno; optional header line ``image identity``).
* ``casia`` / ``folders``  DIR with one sub-folder per identity (every non-hidden file in it is a photo; files that are
  not images become status=error rows).
* ``csv``  a CSV file with a path column and an identity column (names configurable, default ``file``/``identity``;
  relative paths are relative to the CSV's folder).
* ``celebamask-hq``  DIR with ``CelebA-HQ-img/``, ``CelebA-HQ-to-CelebA-mapping.txt`` and ``identity_CelebA.txt`` (in
  DIR, DIR/Anno, or given); when ``CelebAMask-HQ-mask-anno/`` is present each photo carries its ground-truth masks,
  combined into a 19-class label map (:func:`load_celebamask_seg`).
* ``rec``  an insightface ``train.rec`` (+ ``train.idx`` beside it, else the file is scanned), read without mxnet.

Records are small picklable tuples; the bytes are read by :func:`load_bytes` in the worker that processes them.
Faults that make the whole run meaningless (missing path, identity file, columns; empty source) raise LapError.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from .errors import LapError
from .split import read_identity_file

SOURCE_KINDS = ("celeba", "casia", "folders", "csv", "celebamask-hq", "rec")

# CelebAMask-HQ class names in label order 1..18 (0 = background), as in the dataset's g_mask.py
CELEBAMASK_CLASSES = (
    "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)


class PhotoRecord(NamedTuple):
    """One input photo. ``file``: absolute path, or None for a .rec record (then ``rec`` = (rec path, offset)).

    ``layout``: crop-rule hint for pre-aligned layouts ("arcface112", "celeba-align", "resize") or None (decide by
    the ingest mode). ``mask``: (CelebAMask-HQ mask folder, image index) or None.
    """

    identity: str
    path: str  # relative to the source root (display + manifest)
    source: str
    file: str | None = None
    rec: tuple[str, int] | None = None
    layout: str | None = None
    mask: tuple[str, int] | None = None

    @property
    def photo_id(self) -> str:
        """Stable id of this input: sha256("source:path")[:16] (the file bytes' hash is the sha256 column)."""
        return hashlib.sha256(f"{self.source}:{self.path}".encode("utf-8")).hexdigest()[:16]


def load_bytes(rec: PhotoRecord) -> bytes:
    """The encoded image bytes of a record (OSError / RecordIOError on failure)."""
    if rec.file is not None:
        with open(rec.file, "rb") as f:
            return f.read()
    if rec.rec is not None:
        from .recordio import RecordReader

        reader = _rec_reader(rec.rec[0])
        _, data = reader.read(rec.rec[1])
        return data
    raise ValueError(f"record {rec.path} has no file and no rec location")


_READERS: dict = {}


def _rec_reader(path: str):
    from .recordio import RecordReader

    r = _READERS.get(path)
    if r is None:
        r = _READERS[path] = RecordReader(path)
    return r


def load_celebamask_seg(mask_dir: str, index: int) -> np.ndarray | None:
    """CelebAMask-HQ per-class masks of image ``index`` -> (512, 512) uint8 label map (0 background, 1..18 in
    CELEBAMASK_CLASSES order, later classes painted over earlier ones as the dataset's g_mask.py does); None when
    no mask file of that index exists."""
    from PIL import Image

    folder = Path(mask_dir) / str(index // 2000)
    seg = None
    for label, name in enumerate(CELEBAMASK_CLASSES, 1):
        p = folder / f"{index:05d}_{name}.png"
        if not p.exists():
            continue
        with Image.open(p) as im:
            m = np.asarray(im.convert("L")) > 127
        if seg is None:
            seg = np.zeros(m.shape, np.uint8)
        seg[m] = label
    return seg


# ------------------------------------------------------------------------------------------------------ sources


def _require_dir(p: Path, what: str) -> Path:
    if not p.exists():
        raise LapError(f"{p}: {what} does not exist")
    if not p.is_dir():
        raise LapError(f"{p}: {what} is not a directory")
    return p


def _find_identity_file(root: Path, given: str | Path | None) -> Path:
    if given is not None:
        p = Path(given)
        if not p.is_file():
            raise LapError(f"{p}: identity file does not exist")
        return p
    for c in (root / "identity_CelebA.txt", root / "Anno" / "identity_CelebA.txt"):
        if c.is_file():
            return c
    raise LapError(f"{root}: identity_CelebA.txt not found (looked in {root} and {root / 'Anno'}; give --identity-file)")


def celeba_source(root: str | Path, identity_file: str | Path | None = None) -> Iterator[PhotoRecord]:
    root = _require_dir(Path(root), "CelebA folder")
    ids = read_identity_file(_find_identity_file(root, identity_file))
    if (root / "img_align_celeba").is_dir():
        sub, layout = "img_align_celeba", "celeba-align"
    elif (root / "img_celeba").is_dir():
        sub, layout = "img_celeba", None
    else:
        raise LapError(f"{root}: neither img_align_celeba/ nor img_celeba/ is there")
    folder = root / sub
    for name, ident in ids.items():
        yield PhotoRecord(ident, f"{sub}/{name}", "celeba", str(folder / name), None, layout, None)


def folders_source(root: str | Path, source: str = "folders") -> Iterator[PhotoRecord]:
    root = _require_dir(Path(root), "photo folder")
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith(".")):
            yield PhotoRecord(d.name, f.relative_to(root).as_posix(), source, str(f), None, None, None)


def csv_source(path: str | Path, path_column: str = "file", identity_column: str = "identity") -> Iterator[PhotoRecord]:
    p = Path(path)
    if not p.is_file():
        raise LapError(f"{p}: CSV file does not exist")
    base = p.parent
    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        for c in (path_column, identity_column):
            if c not in cols:
                raise LapError(f"{p}: no column {c!r} (columns: {', '.join(cols) or 'none'}; set --path-column/--identity-column)")
        for n, row in enumerate(reader, 2):
            rel, ident = (row.get(path_column) or "").strip(), (row.get(identity_column) or "").strip()
            if not rel or not ident:
                continue  # blank line / missing cell: nothing to record
            fp = Path(rel) if Path(rel).is_absolute() else base / rel
            yield PhotoRecord(ident, rel, "csv", str(fp), None, None, None)


def celebamask_hq_source(root: str | Path, identity_file: str | Path | None = None) -> Iterator[PhotoRecord]:
    root = _require_dir(Path(root), "CelebAMask-HQ folder")
    img_dir = _require_dir(root / "CelebA-HQ-img", "CelebA-HQ-img folder")
    mapping = root / "CelebA-HQ-to-CelebA-mapping.txt"
    if not mapping.is_file():
        raise LapError(f"{mapping}: mapping file does not exist")
    ids = read_identity_file(_find_identity_file(root, identity_file))
    mask_dir = root / "CelebAMask-HQ-mask-anno"
    has_masks = mask_dir.is_dir()
    with open(mapping, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts or (n == 1 and not parts[0].isdigit()):
                continue  # header "idx orig_idx orig_file"
            if len(parts) < 3:
                raise LapError(f"{mapping}:{n}: expected 'idx orig_idx orig_file'")
            idx, orig_file = int(parts[0]), parts[2]
            ident = ids.get(orig_file)
            if ident is None:
                continue  # not in the identity file: cannot be grouped
            name = f"{idx}.jpg"
            yield PhotoRecord(ident, f"CelebA-HQ-img/{name}", "celebamask-hq", str(img_dir / name), None, "resize",
                              (str(mask_dir), idx) if has_masks else None)


def rec_source(path: str | Path) -> Iterator[PhotoRecord]:
    """insightface .rec: identity = int(label) (first value of an array label); the header record is skipped."""
    from .recordio import RecordIOError, iter_offsets, read_idx, read_record_at, unpack

    p = Path(path)
    if p.is_dir():
        p = p / "train.rec"
    if not p.is_file():
        raise LapError(f"{p}: .rec file does not exist")
    idx = p.with_suffix(".idx")
    try:
        offsets = read_idx(idx) if idx.is_file() else list(iter_offsets(p))
    except (RecordIOError, ValueError) as e:
        raise LapError(f"{idx if idx.is_file() else p}: {e}") from None
    with open(p, "rb") as f:
        for key, off in offsets:
            try:
                payload = read_record_at(f, off)
                if payload is None:
                    raise RecordIOError("offset beyond the end of the file")
                header, data = unpack(payload)
            except RecordIOError:
                # unreadable record: still a photo row (error recorded when the worker reads it)
                yield PhotoRecord("unknown", f"{p.name}#{key}", "rec", None, (str(p), off), "arcface112", None)
                continue
            if header.flag > 0 and not data:
                continue  # header record (record 0 in insightface datasets)
            lab = header.label
            ident = str(int(lab[0] if isinstance(lab, np.ndarray) else lab))
            yield PhotoRecord(ident, f"{p.name}#{key}", "rec", None, (str(p), off), "arcface112", None)


@dataclass(frozen=True)
class SourceOptions:
    identity_file: str | None = None
    path_column: str = "file"
    identity_column: str = "identity"


def open_source(kind: str, src: str | Path, options: SourceOptions = SourceOptions()) -> Iterator[PhotoRecord]:
    """Records of source ``kind`` at ``src`` (lazy; LapError for a missing path/identity file at first next())."""
    if kind == "celeba":
        return celeba_source(src, options.identity_file)
    if kind in ("casia", "folders"):
        return folders_source(src, kind)
    if kind == "csv":
        return csv_source(src, options.path_column, options.identity_column)
    if kind == "celebamask-hq":
        return celebamask_hq_source(src, options.identity_file)
    if kind == "rec":
        return rec_source(src)
    raise LapError(f"unknown source kind {kind!r} (known: {', '.join(SOURCE_KINDS)})")
