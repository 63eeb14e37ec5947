"""Identity-noise filter, duplicate detection and the synthetic frontal-view filter.

* :func:`identity_filter` -- web identity folders contain other people. Given the L2-normalised embeddings of one
  identity's photos, find a robust centre (:func:`robust_centre`: start at the medoid, then repeatedly average the
  closest half and re-normalise), score each photo by its cosine to that centre and drop those below a threshold
  (default: the embedder's ``centre_threshold``). Identities with fewer than ``min_size`` photos are scored but
  never filtered (no majority to trust). Dropped photos get reason ``"id-outlier"``.
* :func:`phash` (64-bit DCT perceptual hash, as in the well-known pHash/imagehash recipe: 32x32 grey, 2-D DCT,
  top-left 8x8 block thresholded at its median), :func:`hamming` and :class:`DuplicateIndex`: streaming exact
  (sha256) and near (Hamming distance <= k) duplicate detection, within an identity and across the dataset
  (multi-index hashing: the 64 bits are cut into k+1 blocks, a near duplicate shares at least one block exactly).
* :func:`frontal_view_filter` -- the LAP curriculum filter: keep views whose cosine to the identity's frontal view
  is >= threshold (0.6 for ArcFace, the calibrated value for dlib, see ``docs/id-threshold.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

MAX_PHASH_DISTANCE = 15  # a near duplicate is within this many of the 64 bits at most (DuplicateIndex's blocks)
REASON_OUTLIER = "id-outlier"
REASON_DUP_EXACT = "duplicate-exact"
REASON_DUP_NEAR = "duplicate-near"
REASON_VIEW = "view-dissimilar"


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def robust_centre(emb: np.ndarray, keep_fraction: float = 0.5, iters: int = 10) -> np.ndarray:
    """Robust identity centre of L2-normalised embeddings (N, D) -> (D,) unit vector.

    Starts at the medoid (the photo with the highest median cosine to the others), then ``iters`` times: take the
    ``keep_fraction`` of photos closest to the centre (at least 1, at least 2 when N >= 3), average them,
    re-normalise. Tolerates up to ~half of the photos being other people, as long as they do not agree among
    themselves more than the true identity does."""
    e = _unit(emb)
    n = len(e)
    if n == 0:
        raise ValueError("robust_centre of an empty set")
    if n <= 2:
        return _unit(e.mean(0))
    sims = e @ e.T
    np.fill_diagonal(sims, np.nan)
    centre = e[int(np.nanargmax(np.nanmedian(sims, axis=1)))]
    k = max(2, int(np.ceil(keep_fraction * n)))
    prev = None
    for _ in range(iters):
        s = e @ centre
        idx = np.sort(np.argsort(-s, kind="stable")[:k])
        if prev is not None and np.array_equal(idx, prev):
            break
        prev = idx
        centre = _unit(e[idx].mean(0))
    return centre


@dataclass
class IdFilterResult:
    """Per-photo outcome of :func:`identity_filter` for one identity (N photos)."""

    keep: np.ndarray  # (N,) bool
    scores: np.ndarray  # (N,) float32 cosine to the robust centre
    reasons: list  # (N,) None for kept photos, "id-outlier" for dropped ones
    centre: np.ndarray  # (D,) float32 unit vector
    threshold: float
    filtered: bool  # False when the identity was too small to filter


def identity_filter(
    emb: np.ndarray,
    threshold: float,
    *,
    min_size: int = 3,
    keep_fraction: float = 0.5,
) -> IdFilterResult:
    """Drop photos of one identity whose cosine to the robust centre is below ``threshold``.

    emb: (N, D) L2-normalised embeddings. Identities with N < min_size are scored, not filtered."""
    e = _unit(np.asarray(emb, np.float64))
    n = len(e)
    if n == 0:
        return IdFilterResult(np.zeros(0, bool), np.zeros(0, np.float32), [], np.zeros(e.shape[1] if e.ndim == 2 else 0, np.float32), float(threshold), False)
    centre = robust_centre(e, keep_fraction)
    scores = (e @ centre).astype(np.float32)
    if n < min_size:
        keep = np.ones(n, bool)
        filtered = False
    else:
        keep = scores >= threshold
        filtered = True
    reasons = [None if k else REASON_OUTLIER for k in keep]
    return IdFilterResult(keep, scores, reasons, centre.astype(np.float32), float(threshold), filtered)


def frontal_view_filter(emb: np.ndarray, frontal_index: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """LAP synthetic-set filter. emb (V, D) L2-normalised views of one identity -> keep (V,) bool, sims (V,) float32.

    sims[v] = cosine(view v, frontal view); the frontal view itself is always kept."""
    e = _unit(np.asarray(emb, np.float64))
    if not 0 <= frontal_index < len(e):
        raise IndexError(f"frontal_index {frontal_index} out of range for {len(e)} views")
    sims = (e @ e[frontal_index]).astype(np.float32)
    keep = sims >= threshold
    keep[frontal_index] = True
    return keep, sims


# ----------------------------------------------------------------------------------------------------------------
# perceptual hash and duplicates


def phash(image: np.ndarray, hash_size: int = 8, highfreq_factor: int = 4) -> int:
    """64-bit DCT perceptual hash of an image (H, W[, C]) uint8 -> Python int in [0, 2**64).

    Grey (ITU-R 601 luma), area-resize to 32x32, orthonormal 2-D DCT-II, keep the top-left 8x8 low frequencies,
    bit = coefficient > median of those 64; bits in row-major order, first coefficient = most significant bit.
    Robust to re-encoding, resizing and mild colour changes; different photos differ in ~32 bits."""
    from PIL import Image
    from scipy.fft import dctn

    img = np.asarray(image)
    pil = Image.fromarray(img if img.dtype == np.uint8 else np.clip(img, 0, 255).astype(np.uint8))
    n = hash_size * highfreq_factor
    grey = np.asarray(pil.convert("L").resize((n, n), Image.LANCZOS), np.float64)
    coeffs = dctn(grey, type=2, norm="ortho")[:hash_size, :hash_size]
    bits = (coeffs > np.median(coeffs)).ravel()
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return value


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two hashes."""
    return bin(int(a) ^ int(b)).count("1")


def phash_hex(h: int) -> str:
    return f"{int(h):016x}"


@dataclass
class DupMatch:
    dup_of: str | None  # key of the earlier photo this one duplicates (None = not a duplicate)
    kind: str | None  # "duplicate-exact" | "duplicate-near" | None
    distance: int  # Hamming distance to dup_of (0 for exact)
    same_identity: bool


class DuplicateIndex:
    """Streaming exact / near duplicate detector. Add photos in a deterministic order; each is compared with every
    photo added before it (whole dataset), preferring an exact match, then the nearest pHash within ``max_distance``
    (ties: same identity first, then the earliest). Memory ~100 bytes per photo."""

    def __init__(self, max_distance: int = 4):
        if not 0 <= max_distance <= MAX_PHASH_DISTANCE:
            raise ValueError(f"max_distance must be in 0..{MAX_PHASH_DISTANCE}")
        self.max_distance = int(max_distance)
        self.blocks = self.max_distance + 1
        # split 64 bits into `blocks` nearly equal bit ranges
        edges = np.linspace(0, 64, self.blocks + 1).round().astype(int)
        self._ranges = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
        self._sha: dict[str, tuple[str, str]] = {}
        self._tables: list[dict[int, list[int]]] = [dict() for _ in range(self.blocks)]
        self._hashes: list[int] = []
        self._keys: list[str] = []
        self._ids: list[str] = []

    def __len__(self) -> int:
        return len(self._keys)

    def _block(self, h: int, i: int) -> int:
        a, b = self._ranges[i]
        return (h >> (64 - b)) & ((1 << (b - a)) - 1)

    def query(self, sha256: str | None, ph: int | None, identity: str = "") -> DupMatch:
        if sha256 is not None and sha256 in self._sha:
            k, ident = self._sha[sha256]
            return DupMatch(k, REASON_DUP_EXACT, 0, ident == identity)
        if ph is None:
            return DupMatch(None, None, -1, False)
        cands: set[int] = set()
        for i in range(self.blocks):
            cands.update(self._tables[i].get(self._block(ph, i), ()))
        best = None
        for j in sorted(cands):
            d = hamming(ph, self._hashes[j])
            if d <= self.max_distance:
                rank = (d, self._ids[j] != identity, j)
                if best is None or rank < best[0]:
                    best = (rank, j)
        if best is None:
            return DupMatch(None, None, -1, False)
        j = best[1]
        return DupMatch(self._keys[j], REASON_DUP_NEAR, best[0][0], self._ids[j] == identity)

    def add(self, key: str, sha256: str | None, ph: int | None, identity: str = "") -> DupMatch:
        """Check a photo against all earlier ones, then index it. Returns its match (dup_of None if unique)."""
        m = self.query(sha256, ph, identity)
        if sha256 is not None and sha256 not in self._sha:
            self._sha[sha256] = (key, identity)
        if ph is not None:
            j = len(self._hashes)
            self._hashes.append(int(ph))
            self._keys.append(key)
            self._ids.append(identity)
            for i in range(self.blocks):
                self._tables[i].setdefault(self._block(ph, i), []).append(j)
        return m


def find_duplicates(
    keys: Sequence[str],
    sha256: Sequence[str | None],
    phashes: Sequence[int | None],
    identities: Sequence[str] | None = None,
    max_distance: int = 4,
) -> list[DupMatch]:
    """Batch version of :class:`DuplicateIndex`: one DupMatch per photo, in the given order."""
    idx = DuplicateIndex(max_distance)
    ids = identities if identities is not None else [""] * len(keys)
    return [idx.add(k, s, p, i) for k, s, p, i in zip(keys, sha256, phashes, ids)]
