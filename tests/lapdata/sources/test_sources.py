"""lapdata.sources.records / lapdata.sources.recordio / lapdata.dataset.split: fixtures built by the tests."""

from __future__ import annotations

import struct
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lapdata.core.errors import LapError
from lapdata.sources.recordio import MAGIC, IRHeader, RecordIOError, RecordReader, pack, read_record_at, unpack, write_record
from lapdata.sources.records import (
    CELEBAMASK_CLASSES,
    PhotoRecord,
    load_bytes,
    load_celebamask_seg,
    open_source,
)
from lapdata.dataset.split import (
    SplitConfig,
    assign_splits,
    celeba_split_table,
    read_identity_file,
    split_of,
)
from tests.builders import REPO, make_celeba, solid_jpeg, tiny_rec_writer


# ------------------------------------------------------------------------------------------------ split


def test_split_deterministic_stable_disjoint():
    ids = [f"id{i}" for i in range(2000)]
    a = {i: split_of(i, seed=3) for i in ids}
    b = {i: split_of(i, seed=3) for i in reversed(ids + [f"new{i}" for i in range(500)])}
    assert all(a[i] == b[i] for i in ids)  # stable when identities are added, order independent
    c = Counter(a.values())
    assert abs(c["train"] / 2000 - 0.75) < 0.04 and abs(c["val"] / 2000 - 0.125) < 0.03
    # the seed matters: another seed draws independently, so ~1 - (0.75^2 + 2 * 0.125^2) = 41 % change split
    moved = sum(split_of(i, seed=4) != a[i] for i in ids) / len(ids)
    assert 0.35 < moved < 0.47, moved
    with pytest.raises(LapError):
        split_of("x", fractions=(0.5, 0.5, 0.5))


def test_min_images_filter():
    s = assign_splits({"a": 6, "b": 5, "c": 100}, SplitConfig(min_images=6))
    assert s == {"a": split_of("a"), "b": None, "c": split_of("c")}  # kept at min_images, dropped below it
    counts = {f"id{i}": 6 for i in range(40)}
    cfg = SplitConfig(seed=7, fractions=(0.5, 0.25, 0.25))  # the config's seed and fractions are used
    assert assign_splits(counts, cfg) == {i: split_of(i, 7, (0.5, 0.25, 0.25)) for i in counts}


def test_identity_file_with_and_without_header(tmp_path):
    p = tmp_path / "ids.txt"
    p.write_text("image identity\n000001.jpg 7\n000002.jpg 7\n")
    assert read_identity_file(p) == {"000001.jpg": "7", "000002.jpg": "7"}
    p.write_text("000001.jpg 7\n000002.jpg 8\n")
    assert read_identity_file(p) == {"000001.jpg": "7", "000002.jpg": "8"}
    p.write_text("000001.jpg\n")
    with pytest.raises(LapError, match="expected"):
        read_identity_file(p)
    with pytest.raises(LapError, match="does not exist"):
        read_identity_file(tmp_path / "nope.txt")


def test_committed_celeba_split_matches_code():
    from tests.builders import shared_path

    ident = shared_path("celeba", "identity_CelebA.txt")
    committed = pq.read_table(REPO / "manifests" / "celeba_split.parquet")
    computed = celeba_split_table(ident, SplitConfig(min_images=6))
    assert committed.equals(computed)
    sp = committed.column("split").to_pylist()
    assert set(sp) == {"train", "val", "test"}
    assert min(committed.column("num_images").to_pylist()) >= 6
    assert len(set(committed.column("identity").to_pylist())) == committed.num_rows


# ------------------------------------------------------------------------------------------------ CelebA layout


def test_celeba_source(tmp_path):
    make_celeba(tmp_path / "celeba")
    recs = list(open_source("celeba", tmp_path / "celeba"))
    assert len(recs) == 21
    assert Counter(r.identity for r in recs) == {"100": 7, "101": 7, "102": 7}
    assert all(r.layout == "celeba-align" and r.path.startswith("img_align_celeba/") for r in recs)
    assert load_bytes(recs[0])[:2] == b"\xff\xd8"
    assert len({r.photo_id for r in recs}) == 21


def test_celeba_source_faults(tmp_path):
    with pytest.raises(LapError, match="does not exist"):
        list(open_source("celeba", tmp_path / "missing"))
    (tmp_path / "c" / "img_align_celeba").mkdir(parents=True)
    with pytest.raises(LapError, match="identity_CelebA.txt not found"):
        list(open_source("celeba", tmp_path / "c"))
    with pytest.raises(LapError, match="unknown source"):
        open_source("nope", tmp_path)


def test_folders_and_csv(tmp_path):
    for who in ("alice", "bob"):
        (tmp_path / "f" / who).mkdir(parents=True)
        for j in range(3):
            (tmp_path / "f" / who / f"{j}.jpg").write_bytes(solid_jpeg(50, 60))
    (tmp_path / "f" / "bob" / ".hidden").write_text("x")
    recs = list(open_source("folders", tmp_path / "f"))
    assert [r.identity for r in recs] == ["alice"] * 3 + ["bob"] * 3
    assert recs[0].path == "alice/0.jpg"
    (tmp_path / "list.csv").write_text("name,person\nf/alice/0.jpg,A\nf/bob/1.jpg,B\n,\n")
    from lapdata.sources.records import SourceOptions

    recs = list(open_source("csv", tmp_path / "list.csv", SourceOptions(path_column="name", identity_column="person")))
    assert [(r.identity, r.path) for r in recs] == [("A", "f/alice/0.jpg"), ("B", "f/bob/1.jpg")]
    assert load_bytes(recs[1]) == (tmp_path / "f" / "bob" / "1.jpg").read_bytes()
    with pytest.raises(LapError, match="no column 'file'"):
        list(open_source("csv", tmp_path / "list.csv"))


def test_celebamask_hq(tmp_path):
    root = tmp_path / "hq"
    (root / "CelebA-HQ-img").mkdir(parents=True)
    md = root / "CelebAMask-HQ-mask-anno" / "0"
    md.mkdir(parents=True)
    lines = ["idx orig_idx orig_file"]
    ids = ["image identity"]
    for idx in range(4):
        (root / "CelebA-HQ-img" / f"{idx}.jpg").write_bytes(solid_jpeg(64, 64))
        lines.append(f"{idx} {idx + 10} {idx + 10:06d}.jpg")
        ids.append(f"{idx + 10:06d}.jpg {idx % 2}")
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(lines) + "\n")
    (root / "identity_CelebA.txt").write_text("\n".join(ids) + "\n")
    skin = np.zeros((32, 32), np.uint8)
    skin[8:24, 8:24] = 255
    nose = np.zeros((32, 32), np.uint8)
    nose[14:18, 14:18] = 255
    Image.fromarray(skin).save(md / "00000_skin.png")
    Image.fromarray(nose).save(md / "00000_nose.png")
    recs = list(open_source("celebamask-hq", root))
    assert [r.identity for r in recs] == ["0", "1", "0", "1"]
    assert recs[0].mask is not None and recs[0].layout == "resize"
    seg = load_celebamask_seg(*recs[0].mask)
    assert seg.shape == (32, 32) and seg[0, 0] == 0 and seg[10, 10] == 1
    assert seg[15, 15] == CELEBAMASK_CLASSES.index("nose") + 1 == 2  # later classes painted over
    assert load_celebamask_seg(*recs[1].mask) is None


# ------------------------------------------------------------------------------------------------ RecordIO


def test_rec_source(tmp_path):
    items = [(i // 3, solid_jpeg(112, 112, (10 * i, 50, 50))) for i in range(9)]
    tiny_rec_writer(tmp_path / "train.rec", tmp_path / "train.idx", items)
    recs = list(open_source("rec", tmp_path / "train.rec"))
    assert [r.identity for r in recs] == [str(i // 3) for i in range(9)]
    assert all(r.layout == "arcface112" and r.file is None for r in recs)
    assert [load_bytes(r) for r in recs] == [d for _, d in items]
    # same result when the .idx is missing (the .rec is scanned), and via a folder
    (tmp_path / "train.idx").unlink()
    assert [load_bytes(r) for r in open_source("rec", tmp_path)] == [d for _, d in items]


def test_write_rec_is_the_real_layout(tmp_path):
    from lapdata.sources.recordio import read_idx, read_record_at, write_rec

    items = [(7, b"a"), (7, b"b"), (9, b"c")]
    write_rec(tmp_path / "t.rec", tmp_path / "t.idx", items)
    with open(tmp_path / "t.rec", "rb") as f:
        recs = [unpack(read_record_at(f, off)) for _, off in read_idx(tmp_path / "t.idx")]
    assert recs[0][0].label.tolist() == [4, 6]  # record 0: the identity records' range (keys 4, 5), not the images'
    assert [h.label.tolist() for h, _ in recs[4:]] == [[1, 3], [3, 4]]  # identity 7: keys 1-2, identity 9: key 3
    assert [(r.identity, load_bytes(r)) for r in open_source("rec", tmp_path / "t.rec")] == [
        ("7", b"a"), ("7", b"b"), ("9", b"c")]


def test_recordio_multipart_and_array_label(tmp_path):
    magic = struct.pack("<I", MAGIC)
    data = b"abcd" + magic + b"defgh" + magic + b"ij"  # first magic 4-byte aligned in the payload (24 + 4)
    payload = pack(IRHeader(0, 0.0, 5, 0), data)
    p = tmp_path / "x.rec"
    with open(p, "wb") as f:
        off = write_record(f, payload)
        off2 = write_record(f, pack(IRHeader(0, np.array([3.0, 4.0], np.float32), 1, 0), b"img"))
    raw = p.read_bytes()
    # aligned magic -> split in 2 parts (cflag 1, 3); the unaligned one stays inside: 2 + 1 (+1 second record)
    assert raw.count(magic) == 4
    assert struct.unpack("<I", raw[4:8])[0] >> 29 == 1
    with open(p, "rb") as f:
        h, d = unpack(read_record_at(f, off))
        assert d == data and h.label == 0.0 and h.id == 5
        h2, d2 = unpack(read_record_at(f, off2))
        assert h2.flag == 2 and list(h2.label) == [3.0, 4.0] and d2 == b"img"
    assert RecordReader(p).read(off2)[1] == b"img"
    bad = tmp_path / "bad.rec"
    bad.write_bytes(b"\0" * 16)
    with open(bad, "rb") as f, pytest.raises(RecordIOError, match="bad magic"):
        read_record_at(f, 0)
    trunc = tmp_path / "trunc.rec"
    trunc.write_bytes(raw[:20])
    with open(trunc, "rb") as f, pytest.raises(RecordIOError, match="truncated"):
        read_record_at(f, 0)


def test_photo_record_pickles():
    import pickle

    r = PhotoRecord("a", "x.jpg", "folders", "/tmp/x.jpg")
    assert pickle.loads(pickle.dumps(r)) == r and r.photo_id == pickle.loads(pickle.dumps(r)).photo_id
