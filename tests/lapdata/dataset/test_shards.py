"""lapdata.dataset.reader: the one reader of the shard contract and the one view preprocessing (round trip through the real
lapdata.dataset.writer, the contract's names, damaged tars, identical pixels for training and evaluation)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from lapdata.dataset import sample as SM
from lapdata.dataset import schema as SC
from lapdata.dataset import reader as S
from lapdata.core.errors import LapError
from lapdata.dataset.sample import IdentitySample, View, decode_sample, encode_image, sample_key
from lapdata.dataset.schema import SHARDS
from lapdata.dataset.writer import ShardResult, ShardTask, WriteConfig, plan_shards, write_dataset

SIZE = 48  # stored side; the model side in these tests is 32 (shrink) or 64 (enlarge)


def view_of(ident: str, j: int, n_views: int = 1) -> View:
    """A seeded view: smooth-ish image with synthetic ground truth (depth with holes, mask, seg), except view 0 of the
    identities with 3 views (a real photo among rendered ones)."""
    rng = np.random.default_rng([len(ident), sum(map(ord, ident)), j])
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    img = np.asarray(small.resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    meta = {"photo_id": f"{ident}/{j}"}
    if j == 0 and n_views == 3:
        return View(image=img, meta=meta)
    depth = (1 + rng.random((SIZE, SIZE))).astype(np.float32)
    mask = rng.random((SIZE, SIZE)) > 0.3
    depth[~mask] = np.nan
    return View(image=img, meta=meta, depth=depth, mask=mask, seg=rng.integers(0, 19, (SIZE, SIZE)).astype(np.uint8))


def process(task: ShardTask) -> ShardResult:
    samples, rows = [], []
    for ident, n_views in task.items:
        views = [view_of(ident, j, n_views) for j in range(n_views)]
        samples.append(IdentitySample(sample_key(ident), ident, task.split, views))
        rows += [{"photo_id": v.meta["photo_id"], "identity": ident, "split": task.split, "status": "ok"}
                 for v in views]
    return ShardResult(samples=samples, rows=rows)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds")
    groups = [(f"person {i}", "train" if i < 5 else "val", 1 + i % 3) for i in range(7)]
    write_dataset(out, plan_shards(groups, 2), process, WriteConfig(image_ext="png", progress=False))
    return out


def test_round_trip_through_the_writer(dataset):
    urls = S.shard_urls(dataset, "train")
    assert len(urls) == 3 and all(Path(u).parent.name == SC.SHARD_DIR for u in urls)
    ours = list(S.iter_samples(dataset, "train"))
    theirs = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [d[SM.KEY] for d in ours] == [d["__key__"] for d in theirs]
    for a, b in zip(ours, theirs):  # byte for byte what webdataset reads
        assert a[SM.URL] == b["__url__"]
        assert {k: v for k, v in a.items() if not k.startswith("__")} == \
               {k: v for k, v in b.items() if not k.startswith("__")}
    # the same as a webdataset pipeline stage
    staged = list(wds.DataPipeline(wds.SimpleShardList(urls), S.tar_samples))
    assert [d[SM.KEY] for d in staged] == [d[SM.KEY] for d in ours]
    piped = list(S.tar_samples([f"pipe:cat {urls[0]}"]))  # a stream url goes through webdataset itself
    assert [d[SM.KEY] for d in piped] == [d[SM.KEY] for d in ours if d[SM.URL] == urls[0]]
    assert piped[0][SM.JSON] == ours[0][SM.JSON]
    # decoded views are what was written (png: lossless), ground truth included
    for d in ours:
        s = decode_sample(d)
        for j, v in enumerate(s.views):
            want = view_of(s.identity, j, len(s.views))
            np.testing.assert_array_equal(v.image, want.image)
            assert (v.depth is None) == (want.depth is None)
            if want.depth is not None:
                np.testing.assert_array_equal(v.mask, want.mask)
                np.testing.assert_array_equal(v.seg, want.seg)
                np.testing.assert_allclose(v.depth, want.depth, atol=1e-4)  # 16-bit depth, NaN where no surface
    assert {decode_sample(d).identity for d in S.iter_samples(dataset)} == {f"person {i}" for i in range(7)}


def test_names_match_what_the_writer_writes(dataset):
    for url in S.shard_urls(dataset, "train") + S.shard_urls(dataset, "val"):
        raw = list(S.iter_tar_samples(url))
        with tarfile.open(url) as tf:
            members = [m.name for m in tf]
        expected = []
        for d in raw:
            views = json.loads(d[SM.JSON])["views"]
            fields = [SM.JSON]
            for i, vm in enumerate(views):
                assert vm["image_ext"] in SM.IMAGE_EXTS and set(vm["fields"]) <= set(SM.EXTRA_FIELDS)
                fields.append(SM.image_member(i, vm["image_ext"]))
                fields += [SM.field_member(i, f) for f in vm["fields"]]
            assert sorted(k for k in d if not k.startswith("__")) == sorted(fields)
            expected += [f"{d[SM.KEY]}.{f}" for f in fields]
        assert sorted(members) == sorted(expected)
        stats = json.loads(Path(url).with_suffix(".json").read_text())
        assert set(stats) == {SC.SHARD, SC.SHARD_PATH, SC.SHARD_SPLIT, SC.NUM_SAMPLES, SC.NUM_IMAGES, SC.NUM_ROWS,
                              SC.SHARD_BYTES, SC.SHARD_SHA256, SC.STATUS_COUNTS, SC.REASON_COUNTS, SC.SECONDS,
                              SC.PARQUET_SHA256}
        assert set(SHARDS.names) <= set(stats)
        assert stats[SC.NUM_SAMPLES] == len(raw)
        assert stats[SC.NUM_IMAGES] == sum(len(json.loads(d[SM.JSON])["views"]) for d in raw)
        assert stats[SC.SHARD_PATH] == f"{SC.SHARD_DIR}/{Path(url).name}"
        assert stats[SC.SHARD_BYTES] == Path(url).stat().st_size
    assert SM.field_member(3, "depth") == "003.depth.png"
    assert SM.image_member(12, "png") == "012.png"


@pytest.mark.parametrize("side", [32, 48, 64])
def test_preprocess_image_is_pil_bilinear(side):
    img = view_of("x", 0, 3).image
    ref = np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    u8 = S.preprocess_image(img, side, dtype=np.uint8)
    assert u8.shape == (3, side, side) and u8.dtype == np.uint8
    np.testing.assert_array_equal(u8, ref)
    f = S.preprocess_image(encode_image(img, "png"), side)  # from the member bytes: the same pixels
    assert f.dtype == np.float32 and f.min() >= 0 and f.max() <= 1
    np.testing.assert_array_equal(f, ref.astype(np.float32) / np.float32(255))
    # the training loader moves uint8 and divides in torch: bit-identical to the float path
    assert torch.equal(torch.from_numpy(u8).float().div_(255.0), torch.from_numpy(f))
    with pytest.raises(ValueError, match="uint8 RGB"):
        S.preprocess_image(img[..., 0], side)


def test_preprocess_image_antialiases_when_shrinking():
    """A one-pixel checkerboard shrunk 4x is flat grey (antialiased), not an aliased pattern."""
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    out = S.preprocess_image(np.repeat(board[..., None], 3, -1), 16)
    assert abs(float(out.mean()) - 0.5) < 0.01 and float(out.std()) < 0.02


def test_preprocess_field_nearest():
    v = view_of("x", 1)
    depth = S.preprocess_field(v.depth, 32)
    assert depth.dtype == np.float32 and depth.shape == (32, 32)
    ref = np.asarray(Image.fromarray(v.depth).resize((32, 32), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(depth, ref)  # NaN where no surface, in the same places
    assert set(np.unique(depth[np.isfinite(depth)])) <= set(np.unique(v.depth[np.isfinite(v.depth)]))
    mask = S.preprocess_field(v.mask, 64)
    assert mask.dtype == bool and mask.shape == (64, 64)
    np.testing.assert_array_equal(mask, ~np.isnan(S.preprocess_field(v.depth, 64)))  # same pixels picked
    seg = S.preprocess_field(v.seg, 32)
    assert seg.dtype == np.uint8 and set(np.unique(seg)) <= set(np.unique(v.seg))
    # labels are picked, never blended: the same pixels as PIL's nearest, like the depth
    np.testing.assert_array_equal(seg, np.asarray(Image.fromarray(v.seg).resize((32, 32), Image.Resampling.NEAREST)))
    assert S.preprocess_field(v.seg, SIZE) is not v.seg and np.array_equal(S.preprocess_field(v.seg, SIZE), v.seg)
    with pytest.raises(ValueError):
        S.preprocess_field(v.seg.astype(np.int64), 32)


# ------------------------------------------------------------------------------------------------------ damaged tars


def _damage(dataset: Path, tmp_path: Path, how: str) -> Path:
    """A copy of a finished shard, cut at a member boundary (tarfile alone would read it as a shorter, clean tar),
    cut inside a member's data, or replaced by garbage."""
    src = Path(S.shard_urls(dataset, "train")[0])
    data = src.read_bytes()
    with tarfile.open(src) as tf:
        members = list(tf)
    big = next(m for m in members if m.size > 100)
    cut = {"at a member boundary": members[2].offset, "inside a member": big.offset_data + 50}.get(how)
    bad = tmp_path / src.name
    bad.write_bytes(b"this is not a tar file at all" * 40 if cut is None else data[:cut])
    return bad


@pytest.mark.parametrize("how", ["at a member boundary", "inside a member", "garbage"])
def test_damaged_tar_is_a_lap_error_naming_the_file(dataset, tmp_path, how):
    bad = _damage(dataset, tmp_path, how)
    with pytest.raises(LapError, match=rf"{bad}: damaged shard tar"):
        list(S.iter_tar_samples(bad))
    # as a pipeline stage: raised, or handed to a webdataset-style handler that goes on with the next shard
    good = S.shard_urls(dataset, "train")[1]
    with pytest.raises(LapError, match=str(bad)):
        list(S.tar_samples([str(bad), good]))
    seen: list[Exception] = []
    rest = list(S.tar_samples([{"url": str(bad)}, {"url": good}], handler=lambda e: seen.append(e) or True))
    assert len(seen) == 1 and str(bad) in str(seen[0])
    assert rest and rest[-1][SM.URL] == good


def test_missing_and_duplicate_members(tmp_path):
    with pytest.raises(LapError, match="does not exist"):
        list(S.iter_tar_samples(tmp_path / "nope.tar"))
    dup = tmp_path / "dup.tar"
    with tarfile.open(dup, "w") as tf:
        for name in ("k.json", "k.000.png", "k.000.png"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tf.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(LapError, match=rf"{dup}: .*k.000.png appears twice"):
        list(S.iter_tar_samples(dup))


def test_audit_names_a_damaged_shard(dataset, tmp_path):
    import shutil

    from lapdata.dataset.audit.run import audit_dataset

    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    tar = Path(S.shard_urls(copy, "train")[0])
    tar.write_bytes(tar.read_bytes()[:1536])
    faults = audit_dataset(copy).faults
    assert any(f.startswith(f"{tar}: damaged shard tar") for f in faults), faults


# ------------------------------------------------------------------------------------------------ one set of pixels


@pytest.mark.parametrize("side", [32, 64])
def test_training_evaluation_and_recipes_see_the_same_pixels(dataset, side):
    """lapmodel's three readers of a shard (the training loader, evaluation, the recipes' compare pictures) give
    bit-identical images and ground truth: they all go through lapdata.dataset.reader' one preprocessing."""
    from lapmodel.evaluation.evalset import sample_to_evalset
    from lapmodel.io.data import collate, decode_views
    from lapmodel.recipes.steps import load_identity_sets

    def first_with(n_views: int) -> tuple[dict, str]:
        raw = next(d for d in S.iter_samples(dataset) if len(json.loads(d[SM.JSON])["views"]) == n_views)
        return raw, raw[SM.URL]

    n = 3
    raw, url = first_with(n)
    train = collate([decode_views(raw, list(range(n)), side, ("image", "depth", "mask"))], max_set=n)
    ev = sample_to_evalset(raw, side)
    ident, imgs, gt = next((i, x, g) for i, x, g in load_identity_sets(url, 10, n, side) if i == ev.identity)
    assert train.images.shape == (1, n, 3, side, side) and imgs.shape == (n, 3, side, side)
    assert torch.equal(train.images[0], ev.images) and torch.equal(ev.images, imgs)
    reference = torch.stack([torch.from_numpy(S.preprocess_image(raw[SM.image_member(i, "png")], side))
                             for i in range(n)])
    assert torch.equal(ev.images, reference)
    # ground truth: view 0 has none (NaN / False everywhere), views 1, 2 have depth and mask
    assert ev.has_gt.tolist() == [False, True, True] and gt is None  # the recipes need depth on every view
    assert torch.equal(train.depth[0, 1:].isnan(), ev.depth[1:].isnan())
    assert torch.equal(torch.nan_to_num(train.depth[0, 1:]), torch.nan_to_num(ev.depth[1:]))
    assert torch.equal((train.mask[0, 1:] > 0.5) & train.depth[0, 1:].isfinite(), ev.mask[1:])
    assert not ev.mask[0].any() and ev.depth[0].isnan().all()
    # a sample with depth on every view: the recipes' ground truth is evaluation's
    raw, url = first_with(2)
    ev = sample_to_evalset(raw, side)
    ident, imgs, gt = next((i, x, g) for i, x, g in load_identity_sets(url, 10, 2, side) if i == ev.identity)
    assert gt is not None and torch.equal(imgs, ev.images)
    assert torch.equal(gt.isnan(), ev.depth.isnan()) and torch.equal(torch.nan_to_num(gt), torch.nan_to_num(ev.depth))
