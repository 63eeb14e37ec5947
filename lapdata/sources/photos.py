"""Source photo bytes -> (H, W, 3) uint8 RGB, for every PIL image mode, under a pixel budget (ingest's decoder).

``decode_photo(data, max_pixels)`` opens the image, checks its size from the header *before* decoding (so a
144-megapixel PNG costs nothing), applies the EXIF orientation, then converts by mode:

=====================  ===========================================================================================
mode                   conversion
=====================  ===========================================================================================
RGB                    as is
1, L, P, CMYK, YCbCr,  PIL's ``convert("RGB")`` (exact for these modes)
RGBX, LAB, HSV
RGBA, LA, PA, RGBa,    composited over white (what an image viewer shows), then RGB; a P image with a transparent
La, P + transparency   colour likewise
I;16, I;16B/L/N        16-bit grey: ``round(v / 257)`` (65535 -> 255), then grey -> RGB (``convert("RGB")`` clips
                       them to white)
I (32-bit integer)     taken as 16-bit grey when every value is in 0..65535 (how PIL opens many 16-bit files),
                       else refused
F (32-bit float)       values in [0, 1] -> x 255; in [0, 255] -> as is; otherwise (or NaN/inf) refused
anything else          refused by name
=====================  ===========================================================================================

A refused image raises ``PhotoRejected`` (status error, the message names the mode); one over ``max_pixels``
(width x height, after nothing is decoded) raises ``PhotoTooLarge`` (status skipped, reason ``too_large``), also
when PIL's own decompression-bomb guard trips (``Image.MAX_IMAGE_PIXELS`` is set to ``max_pixels``).
``max_file_bytes(max_pixels)`` is the matching file-size cap (checked before a file is read).
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np

DEFAULT_MAX_PIXELS = 64_000_000  # 64 MP: 8000 x 8000; decoding one costs ~0.2-0.5 GB
_BYTES_PER_PIXEL = 8  # no image format needs more than this per pixel on disk (16-bit RGBA, uncompressed)
_CONVERTIBLE = {"1", "L", "P", "CMYK", "YCbCr", "RGBX", "LAB", "HSV"}
_ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}
_GREY16 = {"I;16", "I;16B", "I;16L", "I;16N"}


class PhotoRejected(ValueError):
    """An image lapdata does not decode (its mode or values); the message names why."""


class PhotoTooLarge(ValueError):
    """An image over the pixel (or file-size) budget; ``width`` and ``height`` when known."""

    def __init__(self, message: str, width: int | None = None, height: int | None = None):
        super().__init__(message)
        self.width, self.height = width, height


def max_file_bytes(max_pixels: int) -> int:
    """The file-size cap that goes with ``max_pixels`` (at least 64 MiB)."""
    return max(64 * 2**20, int(max_pixels) * _BYTES_PER_PIXEL)


def _mp(n: float) -> str:
    return f"{n / 1e6:.1f} MP" if n >= 1e5 else f"{int(n)} pixels"


def _grey16_to_rgb(a: np.ndarray) -> np.ndarray:
    g = np.round(a.astype(np.float64) / 257.0).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def _over_white(im):
    from PIL import Image

    rgba = im.convert("RGBA")
    bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))


def to_rgb(im) -> np.ndarray:
    """A loaded PIL image of any mode -> (H, W, 3) uint8 RGB (table in the module doc), or PhotoRejected."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode in _ALPHA or (mode == "P" and "transparency" in im.info):
        return _over_white(im)
    if mode in _CONVERTIBLE:
        return np.asarray(im.convert("RGB"))
    if mode in _GREY16:
        return _grey16_to_rgb(np.asarray(im))
    if mode == "I":
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise PhotoRejected(f"32-bit integer image (mode I) with values {int(a.min())}..{int(a.max())}, "
                                f"outside 0..65535: not decoded (save it as 8- or 16-bit)")
        return _grey16_to_rgb(a)
    if mode == "F":
        a = np.asarray(im, np.float64)
        if a.size and not np.isfinite(a).all():
            raise PhotoRejected("32-bit float image (mode F) with NaN/inf values: not decoded")
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo >= 0 and hi <= 1:
            a = a * 255.0
        elif not (lo >= 0 and hi <= 255):
            raise PhotoRejected(f"32-bit float image (mode F) with values {lo:g}..{hi:g}, neither in [0, 1] nor "
                                f"[0, 255]: not decoded")
        g = np.round(a).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    raise PhotoRejected(f"unsupported image mode {mode!r}: not decoded (save it as RGB)")


def decode_photo(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded bytes -> (H, W, 3) uint8 RGB (EXIF orientation applied). PhotoTooLarge over ``max_pixels``;
    PhotoRejected for a mode/value range it does not decode; PIL's errors for non-image or truncated data."""
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = int(max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:  # PIL's own guard (over twice its limit): its message has the size
            m = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{_mp(int(m.group(1)))}, " if m else ""
            raise PhotoTooLarge(f"{size}over --max-pixels {_mp(max_pixels)}") from None
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise PhotoTooLarge(f"{w}x{h} = {_mp(w * h)}, over --max-pixels {_mp(max_pixels)}", w, h)
        im.load()  # truncated files fail here
        im = ImageOps.exif_transpose(im)
        rgb = to_rgb(im)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:  # a mode PIL converted unexpectedly
        raise PhotoRejected(f"image mode {im.mode!r} decoded to {rgb.shape} {rgb.dtype}, not RGB")
    return np.ascontiguousarray(rgb)
