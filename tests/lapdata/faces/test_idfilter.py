"""lapdata.faces.idfilter: robust centre + identity filter, frontal-view filter, pHash and duplicate index."""

from __future__ import annotations

import io

import numpy as np
import pytest

from lapdata.faces.idfilter import (
    REASON_DUP_EXACT,
    REASON_DUP_NEAR,
    REASON_OUTLIER,
    DuplicateIndex,
    find_duplicates,
    frontal_view_filter,
    hamming,
    identity_filter,
    phash,
    phash_hex,
    robust_centre,
)


def _cluster(rng, centre, n, spread):
    x = centre + rng.normal(0, spread, (n, len(centre)))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _unit(v):
    return v / np.linalg.norm(v)


def test_robust_centre_ignores_outliers():
    rng = np.random.default_rng(0)
    u, v = _unit(rng.normal(size=64)), rng.normal(size=64)
    v = _unit(v - (v @ u) * u)  # another person: orthogonal direction
    good = _cluster(rng, u * 4, 12, 0.3)
    bad = _cluster(rng, v * 4, 5, 0.3)  # 5 of 17 photos are another person (who agree among themselves)
    c = robust_centre(np.concatenate([bad, good]))
    naive = _unit(np.concatenate([bad, good]).mean(0))
    assert float(c @ u) > 0.95 and abs(float(c @ v)) < 0.1
    assert float(naive @ v) > 0.3  # the plain mean is pulled towards the other person
    assert float(c @ _unit(good.mean(0))) > 0.97
    assert np.linalg.norm(c) == pytest.approx(1.0)


def test_identity_filter_drops_injected_outlier():
    rng = np.random.default_rng(1)
    u = _unit(rng.normal(size=32))
    emb = _cluster(rng, u * 5, 10, 0.3)
    outlier = _unit(rng.normal(size=32))
    emb = np.concatenate([emb[:4], outlier[None], emb[4:]])
    res = identity_filter(emb, threshold=0.8)
    assert res.filtered
    assert res.keep.tolist() == [True] * 4 + [False] + [True] * 6
    assert res.reasons[4] == REASON_OUTLIER and res.reasons[0] is None
    assert res.scores[4] < 0.5 and np.all(np.delete(res.scores, 4) > 0.8)
    assert res.scores.dtype == np.float32 and res.centre.shape == (32,)


def test_identity_filter_tiny_identities():
    rng = np.random.default_rng(2)
    a, b = _unit(rng.normal(size=8)), _unit(rng.normal(size=8))
    one = identity_filter(a[None], 0.9)
    assert one.keep.tolist() == [True] and one.scores[0] == pytest.approx(1.0) and not one.filtered
    two = identity_filter(np.stack([a, b]), 0.99)
    assert two.keep.tolist() == [True, True] and not two.filtered  # no majority to trust: scored, not filtered
    assert two.scores[0] == pytest.approx(two.scores[1], abs=1e-6)
    empty = identity_filter(np.zeros((0, 8)), 0.5)
    assert empty.keep.shape == (0,)
    three = identity_filter(np.stack([a, a, b]), 0.9)
    assert three.keep.tolist() == [True, True, False]


def test_identity_filter_real_faces():
    """dlib on celebrity sets: 8 photos of one person plus one of another -> the injected photo is dropped."""
    from PIL import Image

    from tests.builders import shared_path
    from lapdata.faces.embed import DlibEmbedder
    from lapdata.faces.align import crop_prealigned

    root = shared_path("faces", "celebrity-sets")
    obama = sorted((root / "Barack_Obama").glob("*.jpg"), key=lambda p: (len(p.stem), p.stem))[:8]
    other = sorted((root / "Gwyneth_Paltrow").glob("*.jpg"), key=lambda p: (len(p.stem), p.stem))[:1]
    files = obama[:3] + other + obama[3:]
    crops = [crop_prealigned(np.asarray(Image.open(f).convert("RGB")), 128)[0] for f in files]
    emb_model = DlibEmbedder()
    res = identity_filter(emb_model(crops), emb_model.centre_threshold)
    assert not res.keep[3]
    assert res.scores[3] == res.scores.min()
    assert res.keep.sum() >= 5  # dlib is weak on profiles: hard poses of small sets may go too (docs/id-threshold.md)


def test_frontal_view_filter():
    rng = np.random.default_rng(3)
    u = _unit(rng.normal(size=16))
    views = _cluster(rng, u * 6, 5, 0.2)
    views[2] = _unit(rng.normal(size=16))  # a view that became someone else
    keep, sims = frontal_view_filter(views, 0, 0.6)
    assert keep.tolist() == [True, True, False, True, True]
    assert sims[0] == pytest.approx(1.0) and sims.dtype == np.float32
    np.testing.assert_allclose(sims, views @ views[0], atol=1e-6)
    keep, _ = frontal_view_filter(views, 1, 1.1)  # nothing passes but the frontal view itself
    assert keep.tolist() == [False, True, False, False, False]
    with pytest.raises(IndexError):
        frontal_view_filter(views, 5, 0.6)


# ---------------------------------------------------------------------------------------------------------------
# perceptual hash


def _smooth_image(seed, h=180, w=150):
    """A photo-like image: low-frequency random field (RGB uint8)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.normal(size=(h, w, 3)), sigma=(8, 8, 0))
    x = (x - x.min()) / (x.max() - x.min()) * 255
    return x.astype(np.uint8)


def _reencode(img, quality=60, size=None):
    from PIL import Image

    pil = Image.fromarray(img)
    if size:
        pil = pil.resize(size, Image.BILINEAR)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def test_hamming_closed_form():
    assert hamming(0, 0) == 0
    assert hamming(0b1011, 0b0001) == 2
    assert hamming(2**64 - 1, 0) == 64
    assert phash_hex(255) == "00000000000000ff"


def test_phash_robust_to_resize_and_reencode():
    img = _smooth_image(0)
    h = phash(img)
    assert 0 <= h < 2**64
    assert phash(img) == h  # deterministic
    assert hamming(h, phash(_reencode(img, 50))) <= 4
    assert hamming(h, phash(_reencode(img, 90, size=(75, 90)))) <= 4
    assert hamming(h, phash(_reencode(img, 90, size=(300, 360)))) <= 4
    others = [phash(_smooth_image(s)) for s in range(1, 9)]
    assert min(hamming(h, o) for o in others) > 10
    # bits are roughly balanced (median threshold)
    assert 20 <= bin(h).count("1") <= 44


def test_phash_real_photos():
    from PIL import Image

    from tests.builders import shared_path

    root = shared_path("faces", "lap-demo")
    files = sorted(root.glob("*.png"))[:6]
    imgs = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    hs = [phash(x) for x in imgs]
    for x, h in zip(imgs, hs):
        assert hamming(h, phash(_reencode(x, 70, size=(128, 128)))) <= 6
    d = [hamming(a, b) for i, a in enumerate(hs) for b in hs[i + 1 :]]
    assert min(d) > 8


def test_duplicate_index_exact_and_near():
    rng = np.random.default_rng(4)
    base = [int(x) for x in rng.integers(0, 2**63, 6, dtype=np.int64)]
    near = base[2] ^ 0b101  # distance 2
    far = base[3] ^ (0xFFFF << 20)  # distance 16
    keys = ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
    shas = ["s0", "s1", "s2", "s3", "s4", "s5", "s1", "x", "y"]
    hashes = base + [base[1], near, far]
    ids = ["p", "p", "p", "q", "q", "q", "q", "p", "q"]
    res = find_duplicates(keys, shas, hashes, ids, max_distance=4)
    assert [r.dup_of for r in res[:6]] == [None] * 6
    assert res[6].dup_of == "b" and res[6].kind == REASON_DUP_EXACT and not res[6].same_identity
    assert res[7].dup_of == "c" and res[7].kind == REASON_DUP_NEAR and res[7].distance == 2 and res[7].same_identity
    assert res[8].dup_of is None


def test_duplicate_index_matches_brute_force():
    """Multi-index hashing finds every pair within max_distance (pigeonhole over 5 blocks)."""
    rng = np.random.default_rng(5)
    k = 4
    hashes = []
    for i in range(300):
        if i > 10 and rng.random() < 0.3:
            h = hashes[rng.integers(0, len(hashes))]
            for b in rng.choice(64, size=rng.integers(0, 7), replace=False):
                h ^= 1 << int(b)
        else:
            h = int(rng.integers(0, 2**63, dtype=np.int64)) | (int(rng.integers(0, 2)) << 63)
        hashes.append(h)
    idx = DuplicateIndex(k)
    for i, h in enumerate(hashes):
        m = idx.add(str(i), None, h)
        dists = [hamming(h, hashes[j]) for j in range(i)]
        best = min(dists) if dists else 99
        if best <= k:
            assert m.dup_of is not None and m.distance == best
        else:
            assert m.dup_of is None
    assert len(idx) == 300
    with pytest.raises(ValueError):
        DuplicateIndex(16)
