"""The shard sample contract: one WebDataset sample = one identity (or one chunk of a large identity).

Fields of a sample (WebDataset splits key from field at the *first* dot, so keys hold no dots)::

    __key__             "<identity-slug>-<hash8>-<chunk:03d>"          (sample_key)
    json                {"identity", "split", "chunk", "source", "views": [per-view metadata], ...}
    {i:03d}.jpg|.png    view i, RGB, encoded bytes                     (always)
    {i:03d}.depth.png   view-space depth, 16-bit PNG, 0 = no surface   (synthetic ground truth)
    {i:03d}.cdepth.png  canonical (frontal) depth, 16-bit PNG          (synthetic ground truth)
    {i:03d}.normal.png  view-space normals, 8-bit RGB, n = rgb/127.5-1 (synthetic ground truth)
    {i:03d}.mask.png    face mask, 8-bit, 255 = face                   (synthetic ground truth)
    {i:03d}.seg.png     19-class CelebAMask-HQ label map, 8-bit        (parse-masks, ground truth)

16-bit depth: ``v = 1 + round((d - lo) / (hi - lo) * 65534)``, ``v = 0`` where there is no surface; ``lo, hi`` are in
the view's metadata as ``depth_range`` / ``cdepth_range`` (one quantum = (hi-lo)/65534, lossless for our purposes).

Integrity: the writer stores each view's ``image_sha256`` (of the image member's bytes); ``decode_sample`` checks
every view image it decodes against it (``CorruptView``, a LapError naming the sample and view) and
``view_faults`` lists every mismatch of a raw sample (``lapdata.dataset.reader`` readers with ``verify``).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from lapdata.core.errors import LapError

# The member names of a sample, defined once (writer, readers, audit and lapmodel use these; see lapdata.dataset.reader).
KEY = "__key__"  # the sample key (the member names' prefix up to the first dot)
URL = "__url__"  # added by the readers: the shard a sample came from
JSON = "json"  # the sample's metadata member
IMAGE_EXTS = ("jpg", "png")  # the view image's suffix: "{i:03d}.jpg" | "{i:03d}.png"
EXTRA_FIELDS = ("depth", "cdepth", "normal", "mask", "seg")  # "{i:03d}.{field}.png"
FIELD_EXT = "png"


def image_member(i: int, ext: str = "jpg") -> str:
    """Member name of view ``i``'s image: ``"003.jpg"``."""
    return f"{i:03d}.{ext}"


def field_member(i: int, name: str) -> str:
    """Member name of view ``i``'s extra field ``name`` (one of EXTRA_FIELDS): ``"003.depth.png"``."""
    return f"{i:03d}.{name}.{FIELD_EXT}"

_SLUG = re.compile(r"[^A-Za-z0-9_-]+")


class CorruptView(LapError):
    """A view's stored image bytes do not match the image_sha256 its writer recorded (a corrupt shard)."""


def image_digest(data: bytes) -> str:
    """A view's ``image_sha256``: the hex sha256 of its image member's bytes as stored in the tar."""
    return hashlib.sha256(data).hexdigest()


def image_fault(d: Mapping[str, Any], i: int, meta: Mapping[str, Any]) -> str | None:
    """Why view ``i``'s image member (of raw sample ``d``, view metadata ``meta``) is not the one its writer stored
    (missing, or bytes whose digest is not its ``image_sha256``), or None. The one integrity check of a view: the
    readers, decode_sample, the audit and parse-masks call it."""
    name = image_member(i, meta.get("image_ext", "jpg"))
    data = d.get(name)
    if data is None:
        return f"view {i}: image {name} missing"
    want = meta.get("image_sha256")
    if want and image_digest(data) != want:
        return f"view {i}: {name} bytes do not match its image_sha256 (corrupt)"
    return None


def view_faults(d: Mapping[str, Any]) -> list[str]:
    """Faults of a raw sample's views: unreadable json, missing image members, image bytes that do not match
    their image_sha256; [] when every view is intact."""
    try:
        views = sample_json(d)["views"]
        if not isinstance(views, list):
            raise TypeError("views is not a list")
    except (KeyError, TypeError, ValueError) as e:
        return [f"bad json ({type(e).__name__}: {str(e)[:100]})"]
    return [f for i, m in enumerate(views) if (f := image_fault(d, i, m if isinstance(m, dict) else {}))]


def sample_key(identity: str, chunk: int = 0) -> str:
    """WebDataset key for ``identity``'s ``chunk``: readable slug + 8 hex of sha1 (unique), no dots."""
    slug = _SLUG.sub("_", identity).strip("_")[:48] or "id"
    h = hashlib.sha1(identity.encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{h}-{chunk:03d}"


@dataclass
class View:
    """One photo (or rendered view) of an identity.

    image: (H, W, 3) uint8 RGB. depth / canon_depth: (H, W) float32, NaN where no surface.
    normal: (H, W, 3) float32 in [-1, 1]. mask: (H, W) bool. seg: (H, W) uint8 labels in 0..18.
    meta: JSON-able per-view metadata (photo_id, source path, box, landmarks, pose, light, ...).
    encoded: optional pre-encoded image (ext, bytes) written as-is instead of re-encoding ``image``.
    """

    image: np.ndarray | None
    meta: dict[str, Any] = field(default_factory=dict)
    depth: np.ndarray | None = None
    canon_depth: np.ndarray | None = None
    normal: np.ndarray | None = None
    mask: np.ndarray | None = None
    seg: np.ndarray | None = None
    encoded: tuple[str, bytes] | None = None


@dataclass
class IdentitySample:
    key: str
    identity: str
    split: str
    views: list[View]
    meta: dict[str, Any] = field(default_factory=dict)  # sample-level extras (source, chunk, coefficients, ...)


# --------------------------------------------------------------------------------------------- encoding helpers


def encode_image(img: np.ndarray, ext: str = "jpg", quality: int = 95) -> bytes:
    """(H, W, 3) or (H, W) uint8 -> JPEG/PNG bytes. 16-bit arrays (uint16) are written as 16-bit PNG."""
    buf = io.BytesIO()
    if img.dtype == np.uint16:
        Image.fromarray(img).save(buf, format="PNG")
    elif ext == "jpg":
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    elif ext == "png":
        Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    else:
        raise ValueError(f"unknown image extension {ext!r}")
    return buf.getvalue()


def decode_image(data: bytes, mode: str | None = "RGB") -> np.ndarray:
    """Encoded bytes -> numpy array (mode "RGB" -> (H, W, 3) uint8; None keeps the file's mode, e.g. 16-bit)."""
    with Image.open(io.BytesIO(data)) as im:
        if mode is not None:
            im = im.convert(mode)
        arr = np.array(im)
    if arr.dtype == np.int32 or arr.dtype == np.int64:  # PIL "I" / "I;16" modes
        arr = arr.astype(np.uint16)
    return arr


def encode_depth(depth: np.ndarray) -> tuple[bytes, list[float]]:
    """(H, W) float depth, NaN = no surface -> (16-bit PNG bytes, [lo, hi])."""
    d = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(d)
    if valid.any():
        lo, hi = float(d[valid].min()), float(d[valid].max())
    else:
        lo, hi = 0.0, 1.0
    if hi <= lo:
        hi = lo + 1e-6
    q = np.zeros(d.shape, dtype=np.uint16)
    q[valid] = (1 + np.round((d[valid] - lo) / (hi - lo) * 65534)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(q).save(buf, format="PNG")
    return buf.getvalue(), [lo, hi]


def decode_depth(data: bytes, rng: Sequence[float]) -> np.ndarray:
    """Inverse of encode_depth: (H, W) float32 with NaN where there is no surface."""
    q = decode_image(data, mode=None).astype(np.float64)
    lo, hi = float(rng[0]), float(rng[1])
    d = lo + (q - 1) / 65534.0 * (hi - lo)
    d[q == 0] = np.nan
    return d.astype(np.float32)


def encode_normal(n: np.ndarray) -> bytes:
    """(H, W, 3) float normals in [-1, 1] -> 8-bit RGB PNG (rgb = (n + 1) * 127.5)."""
    q = np.clip(np.round((np.nan_to_num(n) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return encode_image(q, "png")


def decode_normal(data: bytes) -> np.ndarray:
    return decode_image(data, "RGB").astype(np.float32) / 127.5 - 1.0


# --------------------------------------------------------------------------------------------- sample <-> dict


def encode_sample(s: IdentitySample, image_ext: str = "jpg", quality: int = 95) -> dict[str, Any]:
    """IdentitySample -> dict for webdataset.TarWriter (``__key__``, ``json`` and per-view byte fields)."""
    if "." in s.key:
        raise ValueError(f"sample key {s.key!r} contains a dot")
    out: dict[str, Any] = {KEY: s.key}
    views_meta = []
    for i, v in enumerate(s.views):
        meta = dict(v.meta)
        meta["index"] = i
        if v.encoded is not None:
            ext, data = v.encoded
        else:
            if v.image is None:
                raise ValueError(f"{s.key} view {i}: no image")
            ext, data = image_ext, encode_image(v.image, image_ext, quality)
        out[image_member(i, ext)] = data
        meta["image_ext"] = ext
        fields = []
        if v.depth is not None:
            out[field_member(i, "depth")], meta["depth_range"] = encode_depth(v.depth)
            fields.append("depth")
        if v.canon_depth is not None:
            out[field_member(i, "cdepth")], meta["cdepth_range"] = encode_depth(v.canon_depth)
            fields.append("cdepth")
        if v.normal is not None:
            out[field_member(i, "normal")] = encode_normal(v.normal)
            fields.append("normal")
        if v.mask is not None:
            out[field_member(i, "mask")] = encode_image(np.asarray(v.mask).astype(np.uint8) * 255, "png")
            fields.append("mask")
        if v.seg is not None:
            out[field_member(i, "seg")] = encode_image(np.asarray(v.seg, dtype=np.uint8), "png")
            fields.append("seg")
        meta["fields"] = fields
        views_meta.append(meta)
    doc = dict(s.meta)
    doc.update({"identity": s.identity, "split": s.split, "views": views_meta})
    out[JSON] = json.dumps(doc, sort_keys=True).encode("utf-8")
    return out


def sample_json(d: Mapping[str, Any]) -> dict[str, Any]:
    j = d[JSON]
    if isinstance(j, (bytes, bytearray)):
        return json.loads(j.decode("utf-8"))
    if isinstance(j, str):
        return json.loads(j)
    return dict(j)


def decode_sample(
    d: Mapping[str, Any],
    views: Iterable[int] | None = None,
    fields: Iterable[str] = ("image",) + EXTRA_FIELDS,
) -> IdentitySample:
    """Raw webdataset dict (bytes per field) -> IdentitySample, decoding only ``views`` (indices) and ``fields``.

    Fields a view does not have are left None. ``fields`` names: image, depth, cdepth, normal, mask, seg.
    A decoded image whose bytes do not match the view's ``image_sha256`` raises CorruptView.
    """
    doc = sample_json(d)
    all_meta = doc.pop("views")
    identity = doc.pop("identity")
    split = doc.pop("split")
    fields = set(fields)
    idx = range(len(all_meta)) if views is None else list(views)
    out_views = []
    for i in idx:
        m = all_meta[i]
        have = set(m.get("fields", []))
        v = View(image=None, meta=m)
        if "image" in fields:
            bad = image_fault(d, i, m)
            if bad is not None:
                raise CorruptView(f"{d.get(URL, 'sample')}: {d.get(KEY, '?')} {bad}")
            v.image = decode_image(d[image_member(i, m.get("image_ext", "jpg"))], "RGB")
        if "depth" in fields and "depth" in have:
            v.depth = decode_depth(d[field_member(i, "depth")], m["depth_range"])
        if "cdepth" in fields and "cdepth" in have:
            v.canon_depth = decode_depth(d[field_member(i, "cdepth")], m["cdepth_range"])
        if "normal" in fields and "normal" in have:
            v.normal = decode_normal(d[field_member(i, "normal")])
        if "mask" in fields and "mask" in have:
            v.mask = decode_image(d[field_member(i, "mask")], "L") > 127
        if "seg" in fields and "seg" in have:
            v.seg = decode_image(d[field_member(i, "seg")], "L")
        out_views.append(v)
    key = d.get(KEY, "")
    return IdentitySample(key=key, identity=identity, split=split, views=out_views, meta=doc)


def num_views(d: Mapping[str, Any]) -> int:
    return len(sample_json(d)["views"])
