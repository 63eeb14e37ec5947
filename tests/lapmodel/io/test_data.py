"""Shard streaming: batches, view sets, optional fields, determinism, exact resume without decoding, rank split."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from lapdata.core.errors import LapError
from lapdata.dataset.sample import IdentitySample, View, encode_sample
from lapmodel.io import data as D
from lapmodel.config import DataConfig
from tests.builders import make_groups, synth_process, write_shards


def cfg(**kw) -> DataConfig:
    base = dict(workers=0, shuffle_buffer=4, shuffle_initial=2, seed=0, max_set=1)
    base.update(kw)
    return DataConfig(**base)


def take(it, n):
    return list(itertools.islice(it, n))


def test_batch_shapes_and_fields(tmp_path):
    urls = write_shards(tmp_path, extras=True)
    b = next(D.make_loader(urls, cfg(min_set=1, max_set=3), 32, batch_size=5))
    assert b.images.shape == (5, 3, 3, 32, 32) and b.images.dtype == torch.float32
    assert 0 <= b.images.min() and b.images.max() <= 1
    assert b.valid.shape == (5, 3) and b.valid[:, 0].all()
    n = b.valid.sum(1)
    assert ((n >= 1) & (n <= 3)).all()
    assert (b.images[~b.valid] == 0).all()  # padding
    assert b.seg.shape == (5, 3, 32, 32) and b.seg.dtype == torch.int64 and b.seg.max() < 19
    assert b.mask.shape == (5, 3, 32, 32) and set(b.mask.unique().tolist()) <= {0.0, 1.0}
    assert b.depth.shape == (5, 3, 32, 32) and torch.isnan(b.depth).any()
    assert b.canon_depth is None  # not in these shards
    assert b.hard is not None and b.hard.shape == (5, 3) and not b.hard[~b.valid].any()
    assert (b.hard.sum(1) <= 1).all()  # the shards mark view 1 of each identity hard, no other
    full = next(D.make_loader(urls, cfg(min_set=3, max_set=3), 32, batch_size=4))
    assert full.hard.sum(1).tolist() == [1, 1, 1, 1]  # sets of all 3 views: each holds its one hard view
    assert len(b.identity) == 5 and all(i.startswith("person") for i in b.identity)
    assert b.views().shape == (int(n.sum()), 3, 32, 32)


def test_set_size_one_and_fields_off(tmp_path):
    urls = write_shards(tmp_path, extras=True)
    b = next(D.make_loader(urls, cfg(fields=("image",)), 64, batch_size=4))
    assert b.images.shape == (4, 1, 3, 64, 64) and b.valid.all()
    assert b.seg is None and b.mask is None and b.depth is None


def test_set_sizes_cover_range(tmp_path):
    urls = write_shards(tmp_path, views=4)
    it = D.make_loader(urls, cfg(min_set=2, max_set=4), 16, batch_size=6)
    sizes = torch.cat([next(it).valid.sum(1) for _ in range(6)])
    assert set(sizes.tolist()) == {2, 3, 4}


def test_deterministic_and_seeded(tmp_path):
    urls = write_shards(tmp_path)
    a = take(D.make_loader(urls, cfg(), 16, 4), 5)
    b = take(D.make_loader(urls, cfg(), 16, 4), 5)
    c = take(D.make_loader(urls, cfg(seed=1), 16, 4), 5)
    assert all(torch.equal(x.images, y.images) for x, y in zip(a, b))
    assert not all(torch.equal(x.images, y.images) for x, y in zip(a, c))
    # without a shuffle buffer spanning epochs, an epoch visits every identity once (12 = 3 batches of 4)
    e = take(D.make_loader(urls, cfg(shuffle_buffer=0), 16, 4), 3)
    ids = [i for x in e for i in x.identity]
    assert sorted(ids) == sorted(f"person {s}-{i}" for s in range(3) for i in range(4))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_equals_uninterrupted(tmp_path, workers):
    urls = write_shards(tmp_path)
    c = cfg(workers=workers, min_set=1, max_set=2)
    full = take(D.make_loader(urls, c, 16, 3), 9)
    for k in (1, 4):
        tail = take(D.make_loader(urls, c, 16, 3, start_batch=k), 9 - k)
        for x, y in zip(full[k:], tail):
            assert x.identity == y.identity and torch.equal(x.images, y.images) and torch.equal(x.valid, y.valid)


def test_resume_skips_without_decoding(tmp_path, monkeypatch):
    urls = write_shards(tmp_path)
    calls = []
    real = D.decode_views
    monkeypatch.setattr(D, "decode_views", lambda *a, **k: calls.append(1) or real(*a, **k))
    next(D.make_loader(urls, cfg(), 16, 2, start_batch=7))
    assert len(calls) == 2  # only the delivered batch was decoded, not the 14 skipped samples


def test_ranks_split_the_shards(tmp_path):
    urls = write_shards(tmp_path, n_shards=4, ids_per_shard=2)
    seen = []
    for rank in range(2):
        it = D.make_loader(urls, cfg(shuffle_buffer=0), 16, 4, rank=rank, world=2)
        seen.append({i for i in next(it).identity})  # one epoch per rank = 2 shards = 4 identities
    assert len(seen[0]) == 4 and len(seen[1]) == 4 and not seen[0] & seen[1]


def test_fewer_shards_than_streams(tmp_path):
    urls = write_shards(tmp_path, n_shards=1, ids_per_shard=6)
    a = {i for i in next(D.make_loader(urls, cfg(shuffle_buffer=0), 16, 3, rank=0, world=2)).identity}
    b = {i for i in next(D.make_loader(urls, cfg(shuffle_buffer=0), 16, 3, rank=1, world=2)).identity}
    assert len(a | b) == 6 and not a & b


def test_bad_sample_is_skipped(tmp_path):
    urls = write_shards(tmp_path, n_shards=1, ids_per_shard=3)
    bad = tmp_path / "bad.tar"
    with wds.TarWriter(str(bad)) as tw:
        d = encode_sample(IdentitySample("broken-0000", "broken", "train",
                                         [View(image=np.zeros((8, 8, 3), np.uint8))]))
        d["000.jpg"] = b"not a jpeg"
        tw.write(d)
    it = D.make_loader(urls + [str(bad)], cfg(shuffle_buffer=0), 16, 3)
    b = [next(it) for _ in range(3)]  # 3 good identities per epoch: the bad one is skipped every epoch, counted
    assert all("broken" not in x.identity for x in b)
    assert [x.skipped for x in b] == [1, 2, 3]


def test_resume_skips_whole_epochs_without_reading_them(tmp_path, monkeypatch):
    """Resume cost does not grow with the steps done: consumed epochs are not read at all."""
    urls = write_shards(tmp_path, n_shards=2, ids_per_shard=3)  # 6 identities = 3 batches of 2 per epoch
    c = cfg(shuffle_buffer=4)
    full = take(D.make_loader(urls, c, 16, 2), 3 * 7 + 2)
    read = []
    real = D.ShardStream._epoch
    monkeypatch.setattr(D.ShardStream, "_epoch", lambda self, g, t, e, bad: read.append(e) or real(self, g, t, e, bad))
    tail = take(D.make_loader(urls, c, 16, 2, start_batch=3 * 7 + 1), 1)
    assert read == [7] and tail[0].identity == full[-1].identity and torch.equal(tail[0].images, full[-1].images)


@pytest.mark.parametrize("workers", [0, 3])
def test_fewer_samples_than_streams_resumes(tmp_path, workers):
    """2 identities, 4 streams (2 ranks x 2 workers or 4 ranks): every stream gets samples, and resume is exact."""
    urls = write_shards(tmp_path, n_shards=1, ids_per_shard=2)
    c = cfg(shuffle_buffer=0, workers=workers)
    for rank in range(4 if workers == 0 else 1):
        world = 4 if workers == 0 else 1
        full = take(D.make_loader(urls, c, 16, 1, rank=rank, world=world), 6)
        tail = take(D.make_loader(urls, c, 16, 1, rank=rank, world=world, start_batch=4), 2)
        assert [x.identity for x in full[4:]] == [x.identity for x in tail]


def test_expand_shards(tmp_path):
    urls = write_shards(tmp_path / "d" / "shards", n_shards=3)
    pattern = str(tmp_path / "d" / "shards" / "train-{000000..000002}.tar")
    assert D.expand_shards(pattern) == urls
    assert D.expand_shards(str(tmp_path / "d")) == urls  # a dataset folder
    assert D.expand_shards(str(tmp_path / "d" / "shards" / "*.tar")) == urls
    with pytest.raises(LapError, match="does not exist"):
        D.expand_shards(str(tmp_path / "nope-{000000..000001}.tar"))
    with pytest.raises(LapError, match="no shards"):
        D.expand_shards([])
    assert D.count_samples(urls) == 12


def test_expand_shards_takes_finished_shards_only(tmp_path):
    """A lapdata folder (stats .json beside its tars): a tar without its .json is not finished, whatever its split;
    the one rule, ``lapdata.dataset.reader.finished_shards``, is what ``expand_shards`` and ``shard_urls`` apply."""
    from lapdata.dataset.reader import finished_shards, shard_urls

    d = tmp_path / "d" / "shards"
    urls = write_shards(d, n_shards=3)
    Path(urls[0]).with_suffix(".json").write_text("{}")
    Path(urls[2]).with_suffix(".parquet").write_bytes(b"")  # mid-commit: tar and parquet, no json yet
    assert D.expand_shards(str(tmp_path / "d")) == [urls[0]]
    assert shard_urls(tmp_path / "d", "train") == finished_shards(d, "train") == [urls[0]]
    assert finished_shards(d, "val") == []
    Path(urls[0]).rename(d / "test-000000.tar")  # its only finished shard held out: never trained on
    Path(urls[0]).with_suffix(".json").rename(d / "test-000000.json")
    with pytest.raises(LapError, match="no finished train shards"):
        D.expand_shards(str(tmp_path / "d"))


def test_bad_set_config(tmp_path):
    with pytest.raises(LapError, match="min_set"):
        D.ShardStream([], cfg(min_set=3, max_set=2), 16)


def test_count_samples_reads_the_writers_shard_json(tmp_path):
    """The writer's per-shard json is the count (no tar is opened): the key names of writer and reader agree."""

    from lapdata.dataset.writer import WriteConfig, plan_shards, write_dataset
    from lapdata.dataset.reader import shard_urls

    write_dataset(tmp_path, plan_shards(make_groups(n_ids=7), 3), synth_process, WriteConfig(progress=False))
    urls = [u for split in ("train", "val", "test") for u in shard_urls(tmp_path, split)]
    assert D.count_samples(urls) == 7
    for u in urls:  # tars no longer readable: only the json can give the count
        Path(u).write_bytes(b"")
    assert D.count_samples(urls) == 7


def test_a_stream_with_no_readable_sample_is_one_line(tmp_path):
    bad = tmp_path / "bad.tar"
    with wds.TarWriter(str(bad)) as tw:
        d = encode_sample(IdentitySample("broken-0000", "broken", "train", [View(image=np.zeros((8, 8, 3), np.uint8))]))
        d["000.jpg"] = b"not a jpeg"
        tw.write(d)
    with pytest.raises(LapError, match="100 epochs in a row without a readable sample"):
        next(D.make_loader([str(bad)], cfg(shuffle_buffer=0), 16, 1))
