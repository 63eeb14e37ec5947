import tarfile

import numpy as np
import pytest
import webdataset as wds

from lapdata.dataset.sample import (
    IdentitySample,
    View,
    decode_depth,
    decode_sample,
    encode_depth,
    encode_sample,
    sample_key,
)
from lapdata.dataset.schema import PHOTOS, check_schema, table_from_rows


def _sample(n=3, s=16, ext_depth=True):
    rng = np.random.default_rng(0)
    views = []
    for i in range(n):
        img = rng.integers(0, 255, (s, s, 3), dtype=np.uint8)
        d = (1 + 0.1 * rng.random((s, s))).astype(np.float32)
        d[:2] = np.nan
        views.append(
            View(
                img,
                {"photo_id": f"p{i}", "yaw": 10.0 * i},
                depth=d if ext_depth else None,
                canon_depth=d if ext_depth else None,
                normal=np.dstack([np.zeros((s, s)), np.zeros((s, s)), -np.ones((s, s))]).astype(np.float32),
                mask=np.isfinite(d),
                seg=rng.integers(0, 19, (s, s), dtype=np.uint8),
            )
        )
    return IdentitySample(sample_key("Jean.Dupont 1", 2), "Jean.Dupont 1", "val", views, {"source": "test"})


def test_key_has_no_dot_and_is_stable():
    k = sample_key("a.b.c", 7)
    assert "." not in k and k.endswith("-007")
    assert k == sample_key("a.b.c", 7) and k != sample_key("a.b.d", 7)


def test_depth_roundtrip_within_one_quantum():
    d = np.linspace(0.9, 1.1, 64 * 64).reshape(64, 64).astype(np.float32)
    d[0, 0] = np.nan
    data, rng = encode_depth(d)
    back = decode_depth(data, rng)
    assert np.isnan(back[0, 0]) and np.isfinite(back[1:]).all()
    quantum = (rng[1] - rng[0]) / 65534
    assert np.nanmax(np.abs(back - d)) <= quantum


def test_sample_roundtrip_through_webdataset(tmp_path):
    s = _sample()
    path = str(tmp_path / "x.tar")
    with wds.TarWriter(path) as w:
        w.write(encode_sample(s, image_ext="png"))
    # no member name has a dot inside the key
    with tarfile.open(path) as tf:
        names = tf.getnames()
    assert all(n.split(".", 1)[0] == s.key for n in names)
    raw = next(iter(wds.WebDataset(path, shardshuffle=False)))
    back = decode_sample(raw)
    assert back.identity == s.identity and back.split == "val" and back.meta["source"] == "test"
    assert back.key == s.key and len(back.views) == len(s.views) == 3
    for a, b in zip(s.views, back.views):
        assert np.array_equal(a.image, b.image)
        assert np.array_equal(a.seg, b.seg) and np.array_equal(a.mask, b.mask)
        for want, got in ((a.depth, b.depth), (a.canon_depth, b.canon_depth)):
            assert np.array_equal(np.isnan(want), np.isnan(got))
            assert np.allclose(want, got, atol=1e-5, equal_nan=True)
        assert np.allclose(a.normal, b.normal, atol=1 / 127)
        assert b.meta["photo_id"] == a.meta["photo_id"] and b.meta["yaw"] == a.meta["yaw"]


def test_decode_selected_views_and_fields():
    e = encode_sample(_sample(), image_ext="png")
    back = decode_sample(e, views=[2], fields=("image",))
    assert len(back.views) == 1 and back.views[0].meta["index"] == 2 and back.views[0].meta["photo_id"] == "p2"
    assert back.views[0].depth is None and back.views[0].seg is None and back.views[0].mask is None
    assert np.array_equal(back.views[0].image, _sample().views[2].image)  # view 2's pixels (png: lossless)


def test_jpeg_is_lossy_but_close():
    s = _sample(ext_depth=False)
    yy, xx = np.mgrid[:16, :16]
    for k, v in enumerate(s.views):  # smooth images (JPEG's case; pixel noise loses its chroma to subsampling)
        v.image = np.stack([8 * xx + 20 * k, 8 * yy + 10, 4 * (xx + yy) + 30], -1).astype(np.uint8)
    e = encode_sample(s, image_ext="jpg", quality=95)
    assert "000.jpg" in e and "000.png" not in e and e["000.jpg"][:2] == b"\xff\xd8"
    back = decode_sample(e, fields=("image",))
    errs = [np.abs(b.image.astype(int) - a.image).mean() for a, b in zip(s.views, back.views)]
    assert len(errs) == 3 and all(0 < x < 2 for x in errs), errs  # lossy, but within 2 levels on average
    low = decode_sample(encode_sample(s, image_ext="jpg", quality=20), fields=("image",))
    assert np.abs(low.views[0].image.astype(int) - s.views[0].image).mean() > errs[0]  # the quality reaches PIL


def test_dot_in_key_rejected():
    s = _sample(1)
    s.key = "a.b"
    with pytest.raises(ValueError, match="dot"):
        encode_sample(s)


def test_photo_table_schema():
    t = table_from_rows([{"photo_id": "a", "identity": "x", "status": "ok", "box": [0, 0, 1, 1]}], PHOTOS)
    assert check_schema(t, PHOTOS, "t") == []
    with pytest.raises(KeyError):
        table_from_rows([{"photo_id": "a", "identity": "x", "status": "ok", "nope": 1}], PHOTOS)
    bad = t.drop_columns(["status"])
    assert any("status" in f for f in check_schema(bad, PHOTOS, "t"))
