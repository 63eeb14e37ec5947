"""Photo sources: each yields ``PhotoRecord``s (identity, display path, how to load the bytes, layout hint).

Sources (``open_source(kind, src, **options)``):

* ``celeba``  DIR with ``img_align_celeba/`` (pre-aligned 178x218) or ``img_celeba/`` (in-the-wild, detected) and
  ``identity_CelebA.txt`` (in DIR or DIR/Anno; optional header line ``image identity``).
* ``casia`` / ``folders``  DIR with one sub-folder per identity (every non-hidden file in it is a photo; files that are
  not images become status=error rows).
* ``csv``  a UTF-8 CSV file with a path column and an identity column (names configurable, default
  ``file``/``identity``); relative paths are relative to the CSV's folder; every path must stay inside the CSV's
  folder, or inside ``csv_root`` when given (absolute paths too).
* ``celebamask-hq``  DIR with ``CelebA-HQ-img/``, ``CelebA-HQ-to-CelebA-mapping.txt`` and ``identity_CelebA.txt`` (in
  DIR, DIR/Anno, or given); when ``CelebAMask-HQ-mask-anno/`` is present each photo carries its ground-truth masks,
  combined into a 19-class label map (:func:`load_celebamask_seg`).
* ``rec``  an insightface ``train.rec`` (+ ``train.idx`` beside it, else the file is scanned), read without mxnet.

Records are small picklable tuples; the bytes are read by :func:`load_bytes` in the worker that processes them.
Faults that make the whole run meaningless (missing path, identity file, columns; empty source; a CSV or identity
file that is not UTF-8) raise LapError.

Every input gets a row; what is followed and what is refused (a record with a ``note``: its row's status, reason
and error, decided here):

* names that are not UTF-8 (file or folder): kept, written with backslash escapes (``lapdata.core.paths.display_name``)
  and ``name_escaped`` set; the file is read by its real name;
* folders: an identity folder that is a symlink is followed when it points outside the source; one that points back
  into the source (or at a folder holding it) would be a phantom identity holding other identities' photos: refused
  (error row ``path`` = ``NAME/``). Inside an identity folder files and file symlinks are photos (a broken or
  looping symlink is an error row when read); a symlinked sub-folder is not followed (error row). An identity folder
  with no photo: one skipped row (reason ``empty_folder``);
* csv: a path that leaves the CSV's folder or ``csv_root`` (``..``, absolute elsewhere, a symlink out) is not read
  (error row), so a CSV cannot make ingest read and hash arbitrary files; a row with a
  path but no identity, or an identity but no path, is an error row; a path listed twice is read once (the later
  rows: ``lapdata.ingest.run.group_records`` makes them error rows with their own photo_id).
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from lapdata.core import storage
from lapdata.core.errors import LapError
from lapdata.core.paths import display_name, read_utf8
from lapdata.dataset.schema import STATUS_ERROR, STATUS_SKIPPED
from lapdata.dataset.split import read_identity_file

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
    escaped: bool = False  # identity or path held bytes that are not UTF-8 (written with backslash escapes)
    note: tuple[str, str | None, str | None] | None = None  # decided without reading: (status, reason, error)

    @property
    def photo_id(self) -> str:
        """Stable id of this input: sha256("source:path")[:16] (the file bytes' hash is the sha256 column)."""
        return hashlib.sha256(f"{self.source}:{self.path}".encode("utf-8")).hexdigest()[:16]


def load_bytes(rec: PhotoRecord) -> bytes:
    """The encoded image bytes of a record: a local file or an object URL (OSError / RecordIOError on failure)."""
    if rec.file is not None:
        return storage.read_bytes(rec.file)
    if rec.rec is not None:

        reader = _rec_reader(rec.rec[0])
        _, data = reader.read(rec.rec[1])
        return data
    raise ValueError(f"record {rec.path} has no file and no rec location")


_READERS: dict = {}


def _rec_reader(path: str):
    from lapdata.sources.recordio import RecordReader

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


def _url_listing(url: str, what: str) -> dict[str, int]:
    """Every object under a source URL ({relative key: size}); LapError when there is none."""
    found = storage.list_files(url)
    if not found:
        raise LapError(f"{url}: {what} does not exist (no objects under it)")
    return found


def url_folders_source(url: str, source: str = "folders") -> Iterator[PhotoRecord]:
    """``folders``/``casia`` on an object store: ``URL/<identity>/<photo>`` keys (an object store has no
    symlinks and no empty folders)."""
    url = url.rstrip("/")
    for rel in sorted(_url_listing(url, "photo folder")):
        parts = rel.split("/")
        if len(parts) < 2 or any(p.startswith(".") for p in parts):
            continue
        yield PhotoRecord(parts[0], rel, source, storage.join(url, rel))


def url_celeba_source(url: str, identity_file: str | None = None) -> Iterator[PhotoRecord]:
    """``celeba`` on an object store: URL/img_align_celeba/ (or img_celeba/) and identity_CelebA.txt (in URL,
    URL/Anno, or given as a path or URL)."""
    import tempfile

    url = url.rstrip("/")
    found = _url_listing(url, "CelebA folder")
    cands = [identity_file] if identity_file else [storage.join(url, k) for k in
                                                   ("identity_CelebA.txt", "Anno/identity_CelebA.txt")]
    ident = next((c for c in cands if storage.exists(c)), None)
    if ident is None:
        raise LapError(f"{cands[0] if identity_file else url}: identity_CelebA.txt not found (give --identity-file)")
    with tempfile.TemporaryDirectory() as d:
        local = Path(d) / "identity_CelebA.txt"
        local.write_bytes(storage.read_bytes(ident))
        ids = read_identity_file(local)
    sub = next((s for s in ("img_align_celeba", "img_celeba") if any(k.startswith(s + "/") for k in found)), None)
    if sub is None:
        raise LapError(f"{url}: neither img_align_celeba/ nor img_celeba/ is there")
    layout = "celeba-align" if sub == "img_align_celeba" else None
    for name, who in ids.items():
        yield PhotoRecord(who, f"{sub}/{name}", "celeba", storage.join(url, sub, name), None, layout, None)


def celeba_source(root: str | Path, identity_file: str | Path | None = None) -> Iterator[PhotoRecord]:
    if storage.is_url(root):
        yield from url_celeba_source(str(root), None if identity_file is None else str(identity_file))
        return
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


def _noted(ident: str, path: str, source: str, status: str, reason: str | None, error: str | None) -> PhotoRecord:
    (ident, e1), (path, e2) = display_name(ident), display_name(path)
    return PhotoRecord(ident, path, source, escaped=e1 or e2, note=(status, reason, error))


def _phantom(root: Path, d: Path) -> str | None:
    """Why identity folder ``d`` (a symlink) is refused: it points into the source or at a folder holding it."""
    try:
        target, base = d.resolve(strict=True), root.resolve()
    except (OSError, RuntimeError) as e:
        return f"cannot resolve the symlink ({type(e).__name__})"
    if target == base or base in target.parents or target in base.parents:
        return (f"identity folder is a symlink to {target}, inside the source or holding it: not followed (a "
                f"phantom identity; its photos are listed under their own folders)")
    return None


def folders_source(root: str | Path, source: str = "folders") -> Iterator[PhotoRecord]:
    if storage.is_url(root):
        yield from url_folders_source(str(root), source)
        return
    root = _require_dir(Path(root), "photo folder")
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        why = _phantom(root, d) if d.is_symlink() else None
        if why is not None:
            yield _noted(d.name, f"{d.name}/", source, STATUS_ERROR, None, why)
            continue
        ident, id_escaped = display_name(d.name)
        found = False
        for f in sorted(p for p in d.rglob("*") if not p.name.startswith(".")):
            rel = f.relative_to(root).as_posix()
            if f.is_dir():
                if f.is_symlink():  # rglob does not descend into it
                    yield _noted(d.name, rel + "/", source, STATUS_ERROR, None,
                                 "symlinked folder inside an identity folder: not followed")
                    found = True
                continue
            path, p_escaped = display_name(rel)  # files, file symlinks, broken or looping symlinks (read fails)
            yield PhotoRecord(ident, path, source, str(f), escaped=id_escaped or p_escaped)
            found = True
        if not found:
            yield _noted(d.name, f"{d.name}/", source, STATUS_SKIPPED, "empty_folder", None)


def _csv_escape(base: Path, root: Path, rel: str) -> str | None:
    """Why CSV path ``rel`` (relative to ``base``, or absolute) is refused: it resolves outside ``root``."""
    target = Path(rel) if Path(rel).is_absolute() else base / rel
    try:
        full = target.resolve()
        top = root.resolve()
    except (OSError, RuntimeError) as e:
        return f"cannot resolve ({type(e).__name__})"
    if full != top and top not in full.parents:
        return f"resolves to {full}, outside {top}"
    return None


def csv_source(path: str | Path, path_column: str = "file", identity_column: str = "identity",
               root: str | Path | None = None) -> Iterator[PhotoRecord]:
    p = Path(path)
    if not p.is_file():
        raise LapError(f"{p}: CSV file does not exist")
    import io

    base = p.parent
    top = _require_dir(Path(root), "--csv-root folder") if root is not None else base
    reader = csv.DictReader(io.StringIO(read_utf8(p, "CSV file"), newline=""))
    try:
        cols = reader.fieldnames or []
        for c in (path_column, identity_column):
            if c not in cols:
                raise LapError(f"{p}: no column {c!r} (columns: {', '.join(cols) or 'none'}; set --path-column/--identity-column)")
        for n, row in enumerate(reader, 2):
            rel, ident = (row.get(path_column) or "").strip(), (row.get(identity_column) or "").strip()
            if not rel and not ident:
                continue  # blank line: nothing to record
            if not rel or not ident:
                missing = path_column if not rel else identity_column
                yield _noted(ident, rel or f"{p.name}:{n}", "csv", STATUS_ERROR, None,
                             f"{p.name} line {n}: no {missing!r} cell")
                continue
            why = _csv_escape(base, top, rel)
            if why is not None:
                yield _noted(ident, rel, "csv", STATUS_ERROR, None, f"{p.name} line {n}: path leaves the CSV's "
                             f"folder ({why}): not read (paths must stay inside the CSV's folder or --csv-root)")
                continue
            yield PhotoRecord(ident, rel, "csv", str(Path(rel) if Path(rel).is_absolute() else base / rel))
    except csv.Error as e:
        raise LapError(f"{p}: not a readable CSV (line {reader.line_num}: {e})") from None


def celebamask_hq_source(root: str | Path, identity_file: str | Path | None = None) -> Iterator[PhotoRecord]:
    root = _require_dir(Path(root), "CelebAMask-HQ folder")
    img_dir = _require_dir(root / "CelebA-HQ-img", "CelebA-HQ-img folder")
    mapping = root / "CelebA-HQ-to-CelebA-mapping.txt"
    if not mapping.is_file():
        raise LapError(f"{mapping}: mapping file does not exist")
    ids = read_identity_file(_find_identity_file(root, identity_file))
    mask_dir = root / "CelebAMask-HQ-mask-anno"
    has_masks = mask_dir.is_dir()
    for n, line in enumerate(read_utf8(mapping, "mapping file").splitlines(), 1):
        parts = line.split()
        if not parts or (n == 1 and not parts[0].isdigit()):
            continue  # header "idx orig_idx orig_file"
        if len(parts) < 3 or not parts[0].isdigit():
            raise LapError(f"{mapping}:{n}: expected 'idx orig_idx orig_file', got {line.strip()[:80]!r}")
        idx, orig_file = int(parts[0]), parts[2]
        ident = ids.get(orig_file)
        if ident is None:
            continue  # not in the identity file: cannot be grouped
        name = f"{idx}.jpg"
        yield PhotoRecord(ident, f"CelebA-HQ-img/{name}", "celebamask-hq", str(img_dir / name), None, "resize",
                          (str(mask_dir), idx) if has_masks else None)


def rec_source(path: str | Path) -> Iterator[PhotoRecord]:
    """insightface .rec: identity = int(label) (first value of an array label); records without an image (record 0
    and the identity records after the images, ``lapdata.sources.recordio``) are skipped."""
    from lapdata.sources.recordio import RecordIOError, iter_offsets, read_idx, read_record_at, unpack

    p = Path(path)
    if p.is_dir():
        p = p / "train.rec"
    if not p.is_file():
        raise LapError(f"{p}: .rec file does not exist")
    name, escaped = display_name(p.name)
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
                yield PhotoRecord("unknown", f"{name}#{key}", "rec", None, (str(p), off), "arcface112", None, escaped)
                continue
            if header.flag > 0 and not data:
                continue  # record 0 (the identity records' range) or an identity record (its image range)
            lab = header.label
            ident = str(int(lab[0] if isinstance(lab, np.ndarray) else lab))
            yield PhotoRecord(ident, f"{name}#{key}", "rec", None, (str(p), off), "arcface112", None, escaped)


@dataclass(frozen=True)
class SourceOptions:
    identity_file: str | None = None
    path_column: str = "file"
    identity_column: str = "identity"
    csv_root: str | None = None


def open_source(kind: str, src: str | Path, options: SourceOptions = SourceOptions()) -> Iterator[PhotoRecord]:
    """Records of source ``kind`` at ``src`` (lazy; LapError for a missing path/identity file at first next())."""
    if kind == "celeba":
        return celeba_source(src, options.identity_file)
    if kind in ("casia", "folders"):
        return folders_source(src, kind)
    if storage.is_url(src) and kind not in ("celeba", "casia", "folders"):
        raise LapError(f"{src}: a {kind} source must be a local path (object-store URLs: celeba, casia, folders)")
    if kind == "csv":
        return csv_source(src, options.path_column, options.identity_column, options.csv_root)
    if kind == "celebamask-hq":
        return celebamask_hq_source(src, options.identity_file)
    if kind == "rec":
        return rec_source(src)
    raise LapError(f"unknown source kind {kind!r} (known: {', '.join(SOURCE_KINDS)})")
