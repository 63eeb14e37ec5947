"""Reading the shard contract: raw samples out of lapdata's WebDataset tars, and the one way a view becomes pixels.

``lapdata.dataset.writer`` writes ``DIR/shards/{split}-{index:06d}.tar`` (one sample per identity chunk, members encoded by
``lapdata.dataset.sample``) with its ``.parquet`` rows and its ``.json`` stats, written last. Everything that reads shards
goes through this module: audit, parse-masks and the synthetic contact sheet in lapdata; the training loader,
evaluation and the recipes in lapmodel. So a view decodes to the same pixels for training and for evaluation.

Names (defined once, elsewhere): the sample members ``KEY``, ``URL``, ``JSON``, ``image_member(i, ext)``
(``"003.jpg"``), ``field_member(i, name)`` (``"003.depth.png"``), ``IMAGE_EXTS``, ``EXTRA_FIELDS`` live in
``lapdata.dataset.sample``; the layout ``SHARD_DIR`` and the shard-stats keys (``NUM_SAMPLES``, ``NUM_IMAGES``, ...) in
``lapdata.dataset.schema``.

Raw samples::

    iter_tar_samples("DIR/shards/train-000000.tar")   # -> {"__key__", "__url__", "json": b"...", "000.jpg": b"...",
                                                      #     "000.depth.png": b"...", ...}, in tar order
    iter_samples("DIR", "train")                      # every finished shard of a split (or of all splits)
    wds.DataPipeline(wds.SimpleShardList(urls), tar_samples, wds.map(...))   # the same as a webdataset stage

Members are grouped as WebDataset does (``webdataset.tariterators.group_by_keys``): the key is the member path up to
the first dot of its base name, the field is the rest (lower case); consecutive members with one key make one
sample. Shards are plain (uncompressed) tars, local or streamed from an object-store URL
(``lapdata.core.storage.open_read``). A damaged tar is a ``LapError`` naming the file: unreadable
header or data, a member name given twice in one sample, or a tar cut short exactly at a member boundary (which
Python's tarfile would take for a clean end: a tar ends with zero blocks, a cut one does not).

One bad sample is not a bad shard: a member over ``max_member_bytes`` (default ``MAX_MEMBER_BYTES``, 64 MiB: a
view is a few hundred KiB) is never read into memory, and with ``verify`` a view whose image bytes do not match
its ``image_sha256`` is caught; either makes that sample a ``SampleError`` (a LapError naming shard, key and fault)
given to ``handler``: True skips the sample (the reader goes on with the next one), False stops, None raises it.
``tar_samples`` verifies by default, and ``lapdata.dataset.sample.decode_sample`` checks every view it decodes, so no
reader (training included, whose handler counts what it skips) trains on flipped bytes. ``SkipCounter`` is a
handler that logs each skip once and counts them.

Preprocessing (one resampling, used everywhere)::

    preprocess_image(bytes_or_rgb, size)     # -> (3, size, size) float32 in [0, 1]
    preprocess_field(depth_mask_or_seg, size)  # -> (size, size), nearest

Images are resized in 8-bit RGB with PIL ``Image.Resampling.BILINEAR`` and ``reducing_gap=None`` (PIL's exact
resampling): PIL widens the triangle filter by the reduction factor, so shrinking is antialiased (every covered
source pixel is averaged, no aliasing), enlarging is plain bilinear interpolation; pixel centres are aligned
(``align_corners=False`` in torch terms). Then ``float32 = uint8 / 255``. Dense ground truth (depth, canonical
depth, face mask, label map) is resized with ``Image.Resampling.NEAREST``: no label is mixed with another, no depth is
invented across a face edge, NaN (no surface) stays NaN.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
from PIL import Image

from lapdata.core import storage

from lapdata.core.errors import LapError
from lapdata.dataset.sample import KEY, URL, decode_image, view_faults
from lapdata.dataset.schema import SHARD_DIR

RawSample = dict[str, Any]  # {KEY: str, URL: str, field: bytes, ...}

IMAGE_RESAMPLE = Image.Resampling.BILINEAR  # antialiased when shrinking (see the module docstring)
FIELD_RESAMPLE = Image.Resampling.NEAREST

_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext: (key, field)
_END_OF_ARCHIVE = tarfile.BLOCKSIZE  # a finished tar has at least one zero block after its last member
MAX_MEMBER_BYTES = 64 * 2**20  # a member larger than this is not read (its sample is a SampleError)
_FAULTS = object()  # key of a sample's faults while it is being read (never a member field)

Handler = Callable[[Exception], bool]


class SampleError(LapError):
    """One sample of a shard that cannot be used (a member over the size limit, image bytes that do not match their
    image_sha256); the shard's other samples can. ``url``, ``key`` and ``sample`` (the members that were read,
    e.g. its json) let a handler record rows for it."""

    def __init__(self, message: str, url: str = "", key: str = "", sample: RawSample | None = None):
        super().__init__(message)
        self.url, self.key, self.sample = url, key, sample or {}


class SkipCounter:
    """The bad-sample counter of every reader (the training stream's too): a reader error handler that logs each
    skipped shard/sample (once per message, on ``log``), counts them and keeps the first 100 messages; returns True
    (go on with the next sample)."""

    def __init__(self, log: Any = None) -> None:
        self.count = 0
        self.errors: list[str] = []
        self._log = log

    def __call__(self, exn: Exception) -> bool:
        from lapdata.core.logs import get_logger, warn_once

        self.count += 1
        if len(self.errors) < 100:
            self.errors.append(str(exn))
        warn_once(self._log or get_logger("lapdata.dataset.reader"),
                  f"skipped an unreadable shard/sample: {type(exn).__name__}: {str(exn)[:300]}")
        return True


# ------------------------------------------------------------------------------------------------------ raw samples


def _damaged(path: str, why: str) -> LapError:
    return LapError(f"{path}: damaged shard tar ({why}); rewrite it (rerun the command that wrote it)")


def iter_tar_samples(path: str | Path, *, max_member_bytes: int = MAX_MEMBER_BYTES, verify: bool = False,
                     handler: Handler | None = None) -> Iterator[RawSample]:
    """Raw samples of one local shard tar, in tar order: dicts of member bytes by field, plus ``__key__`` and
    ``__url__`` (the path as given). LapError naming the file when it is missing or damaged. A sample with a member
    over ``max_member_bytes`` (not read) or, with ``verify``, a view whose bytes do not match its image_sha256 is a
    SampleError given to ``handler`` (True: skip it and go on; False: stop; None: raise)."""
    url = str(path)
    stop = False

    def finish(cur: RawSample) -> RawSample | None:
        """The finished sample, or None when it is skipped (``stop`` set when the handler says so)."""
        nonlocal stop
        faults = cur.pop(_FAULTS, None) or (view_faults(cur) if verify else [])
        if not faults:
            return cur
        e = SampleError(f"{url}: sample {cur[KEY]}: {'; '.join(faults)}", url, cur[KEY], cur)
        if handler is None:
            raise e
        stop = not handler(e)
        return None

    try:
        fh = storage.open_read(url)  # a local file, or the object of a URL / a mounted dataset (streamed)
    except FileNotFoundError:
        raise LapError(f"{url}: shard does not exist") from None
    except OSError as e:
        raise LapError(f"{url}: cannot open the shard ({type(e).__name__}: {e})") from None
    try:
        tf = tarfile.open(fileobj=fh, mode="r:")
    except (tarfile.TarError, OSError) as e:
        fh.close()
        raise _damaged(url, f"{type(e).__name__}: {e}") from None
    cur: RawSample | None = None
    with fh, tf:
        try:
            for m in tf:
                if not m.isfile():
                    continue
                match = _MEMBER.match(m.name)
                if match is None:
                    continue  # no field: not a sample member (webdataset skips it too)
                key, field = match.group(1), match.group(2).lower()
                if cur is None or cur[KEY] != key:
                    if cur is not None:
                        done = finish(cur)
                        if done is not None:
                            yield done
                        if stop:
                            return
                    cur = {KEY: key, URL: url}
                if field in cur:
                    raise _damaged(url, f"member {m.name} appears twice in sample {key}")
                if m.size > max_member_bytes:  # not read: the tar reader seeks over it
                    cur.setdefault(_FAULTS, []).append(f"member {m.name} is {m.size / 2**20:.1f} MiB, over the "
                                                       f"{max_member_bytes / 2**20:.0f} MiB member limit (not read)")
                    continue
                cur[field] = tf.extractfile(m).read()  # type: ignore[union-attr]  (a file member has a reader)
            end = tf.offset  # where the next header would start
            size = fh.seek(0, 2)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise _damaged(url, f"{type(e).__name__}: {e}") from None
    if size - end < _END_OF_ARCHIVE:
        raise _damaged(url, f"cut short after {end} bytes: no end-of-archive block")
    if cur is not None:
        done = finish(cur)
        if done is not None:
            yield done


def tar_samples(
    src: Iterable[str | Path | Mapping[str, Any]], handler: Handler | None = None, *, verify: bool = True,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> Iterator[RawSample]:
    """Webdataset pipeline stage: shard urls (paths, or ``{"url": path}`` dicts as ``wds.SimpleShardList`` yields)
    -> raw samples, shard after shard. ``handler`` as in webdataset (``wds.warn_and_continue``): called with the
    LapError of a damaged shard (True goes on with the next shard, False stops) and with the SampleError of a bad
    sample (True skips it); None raises. Samples are verified (image bytes = image_sha256) unless ``verify=False``.
    Object-store URLs (``s3://``, ``gs://``, any fsspec protocol) are read here, streamed (``lapdata.core.storage``);
    ``pipe:`` and ``http(s)://`` urls are opened by webdataset itself (the same grouping; its errors, through
    ``handler``)."""
    for item in src:
        url = str(item["url"] if isinstance(item, Mapping) else item)
        if url.startswith(("pipe:", "http://", "https://")):
            import webdataset as wds

            yield from wds.tarfile_to_samples(handler=handler or wds.reraise_exception)(iter([{"url": url}]))
            continue
        try:
            stopped: list[bool] = []

            def on_sample(e: Exception) -> bool:
                if handler is None:
                    return False  # not reached: iter_tar_samples raises when its handler is None
                go = bool(handler(e))
                if not go:
                    stopped.append(True)
                return go

            yield from iter_tar_samples(url, max_member_bytes=max_member_bytes, verify=verify,
                                        handler=None if handler is None else on_sample)
            if stopped:
                return
        except LapError as e:
            if handler is None:
                raise
            if not handler(e):
                return


def shard_names(folder: str | Path) -> set[str]:
    """The file names directly in shard folder FOLDER (a local path or a URL); empty when it does not exist."""
    if storage.is_url(folder):
        return {k for k in storage.list_files(str(folder)) if "/" not in k}
    p = Path(folder)
    return {q.name for q in p.iterdir() if q.is_file()} if p.is_dir() else set()


def finished_shards(folder: str | Path, split: str | None = None) -> list[str]:
    """Paths (URLs for a URL) of the finished .tar shards in shard folder FOLDER, of ``split`` (every split when
    None), sorted by name. The one rule of what a finished shard is: the writer commits a shard's tar, then its
    parquet, then its stats .json (``staging.push``), so a tar is finished when its .json is beside it. (A mounted
    dataset URL's staging folder holds the jsons; its tars exist remotely: ``storage.exists``.)"""
    prefix = f"{split}-" if split else ""
    if storage.is_url(folder):
        names = shard_names(folder)
        return [storage.join(str(folder), t) for t in sorted(names)
                if t.startswith(prefix) and t.endswith(".tar") and t[:-4] + ".json" in names]
    return [str(j.with_suffix(".tar")) for j in sorted(Path(folder).glob(f"{prefix}*.json"))
            if storage.exists(j.with_suffix(".tar"))]


def shard_urls(out_dir: str | Path, split: str) -> list[str]:
    """The split's finished shards of dataset DIR (``finished_shards`` of ``DIR/shards``)."""
    folder = storage.join(str(out_dir), SHARD_DIR) if storage.is_url(out_dir) else Path(out_dir) / SHARD_DIR
    return finished_shards(folder, split)


def iter_samples(out_dir: str | Path, split: str | None = None, handler: Handler | None = None
                 ) -> Iterator[RawSample]:
    """Raw samples of the finished shards of dataset DIR: of ``split``, or of every split (sorted by name);
    verified, errors through ``handler`` as in ``tar_samples``."""
    shard_dir = Path(out_dir) / SHARD_DIR
    splits = [split] if split else sorted({p.name.split("-")[0] for p in shard_dir.glob("*.json")})
    for sp in splits:
        yield from tar_samples(shard_urls(out_dir, sp), handler)


# ------------------------------------------------------------------------------------------------------ preprocessing


def _check_size(size: int) -> None:
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")


def preprocess_image(image: bytes | np.ndarray, size: int, dtype: type = np.float32) -> np.ndarray:
    """One view's image -> the model's input pixels (the one image preprocessing of lapdata and lapmodel).

    image: the encoded member bytes (decoded as RGB) or an (H, W, 3) uint8 RGB array (e.g. ``View.image``).
    Returns (3, size, size): float32 in [0, 1] by default; ``dtype=np.uint8`` gives the same pixels before the
    division (0..255, a quarter of the bytes to move between processes; ``x / 255`` in float32 gives the float ones).
    Resampling: PIL bilinear, antialiased when shrinking (module docstring); non-square images are stretched.
    """
    _check_size(size)
    rgb = decode_image(image, "RGB") if isinstance(image, (bytes, bytearray, memoryview)) else np.asarray(image)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    if rgb.shape[:2] != (size, size):
        rgb = np.asarray(Image.fromarray(rgb).resize((size, size), IMAGE_RESAMPLE, reducing_gap=None))
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    if np.dtype(dtype) == np.uint8:
        return chw
    if np.dtype(dtype) != np.float32:
        raise ValueError(f"dtype must be np.float32 or np.uint8, got {dtype!r}")
    return chw.astype(np.float32) / np.float32(255.0)


def preprocess_field(field: np.ndarray, size: int) -> np.ndarray:
    """A dense per-pixel field of a view -> (size, size), nearest neighbour (the one resize of ground truth).

    field: (H, W) depth / canonical depth (float, NaN = no surface; returned as float32), face mask (bool) or label
    map (uint8). The dtype is kept (float64 becomes float32).
    """
    _check_size(size)
    a = np.asarray(field)
    if a.ndim != 2:
        raise ValueError(f"expected an (H, W) field, got shape {a.shape}")
    if a.dtype == np.bool_:
        return preprocess_field(a.astype(np.uint8), size).astype(bool)
    if a.dtype.kind == "f":
        a = a.astype(np.float32, copy=False)
    elif a.dtype != np.uint8:
        raise ValueError(f"expected a bool, uint8 or float field, got {a.dtype}")
    if a.shape == (size, size):
        return a.copy()
    return np.array(Image.fromarray(a).resize((size, size), FIELD_RESAMPLE))  # a writable copy (torch.from_numpy)

