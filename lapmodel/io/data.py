"""Streaming of lapdata shards into training batches (WebDataset), reproducible and resumable.

One shard sample is one identity (lapdata/dataset/sample.py); the loader picks a random set of its views (set size uniform
in ``min_set..max_set``, clipped to the views the identity has; Unsup3D-re uses 1), decodes only those views (and
only the ``fields`` asked for), resizes them to the model's size and pads the set to ``max_set``.

Determinism: the stream of a (rank, worker) is a pure function of ``(seed, rank, worker, sample index)``:
epoch ``e`` visits the shards in the permutation ``rng(seed, e)``; the shards are split over ``world * workers``
streams (``split_by_node`` then ``split_by_worker``: stream ``g = rank * workers + worker`` takes shards
``g, g + world*workers, ...``; with fewer shards than streams, every stream reads all shards and keeps every
``world*workers``-th sample); epochs repeat forever (resampled); a seeded shuffle buffer mixes samples; the view
choice of the k-th sample uses ``rng(seed, rank, worker, k)``. The DataLoader takes batches from its workers in
turn, so the data position is a single number, the batches consumed; on ``--resume`` each worker takes the role
of the worker whose turn it is, skips whole consumed epochs without reading them and the rest of the consumed part
*before decoding it*, and the run continues exactly as if never stopped (same world size and worker count;
otherwise the data order differs and train.py says so). A sample that fails to decode is skipped, logged once and
counted (``Batch.skipped``, ``skipped_samples`` in log.jsonl); the resume is exact as long as no such sample lay in
the consumed part of the stream.
"""

from __future__ import annotations

import glob
import itertools
import json
import random
import tarfile
from dataclasses import dataclass, fields as dc_fields
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import webdataset as wds
from torch import Tensor

from lapdata.core.errors import LapError
from lapdata.core.logs import get_logger, warn_once
from lapdata.dataset.manifests import unfinished
from lapdata.dataset.sample import decode_sample, sample_json
from lapdata.dataset.schema import NUM_SAMPLES
from lapdata.core import storage
from lapdata.dataset.reader import (SkipCounter, finished_shards, preprocess_field, preprocess_image, shard_names,
                                    shard_urls, tar_samples)

from lapmodel.config import DataConfig

LOG = get_logger("data")


@dataclass
class Batch:
    """A training batch: B identities x N views (N = max_set; views past an identity's set size are padding)."""

    images: Tensor                     # (B, N, 3, S, S) float in [0, 1]; padded views are 0
    valid: Tensor                      # (B, N) bool: view n of identity b exists
    seg: Tensor | None = None          # (B, N, S, S) int64 19-class label maps (0 where a view has none)
    depth: Tensor | None = None        # (B, N, S, S) ground-truth view depth, NaN = none
    canon_depth: Tensor | None = None  # (B, N, S, S) ground-truth canonical depth, NaN = none
    mask: Tensor | None = None         # (B, N, S, S) ground-truth face mask (0/1 float)
    hard: Tensor | None = None         # (B, N) bool: parse-masks marked the view hard (losses skip it)
    identity: list[str] | None = None  # B identity names
    stream: int = 0                    # the data stream (rank * workers + worker) that built this batch
    skipped: int = 0                   # unreadable samples that stream has skipped so far

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        kw = {f.name: getattr(self, f.name) for f in dc_fields(self)}
        for k, v in kw.items():
            if isinstance(v, Tensor):
                kw[k] = v.to(device, non_blocking=non_blocking)
        return Batch(**kw)

    def pin_memory(self) -> "Batch":  # called by the DataLoader's pin_memory thread
        kw = {f.name: getattr(self, f.name) for f in dc_fields(self)}
        return Batch(**{k: v.pin_memory() if isinstance(v, Tensor) else v for k, v in kw.items()})

    @property
    def num_identities(self) -> int:
        return self.images.shape[0]

    def views(self) -> Tensor:
        """The valid views flattened: (sum(valid), 3, S, S) (identity-major order)."""
        return self.images[self.valid]


# ------------------------------------------------------------------------------------------------------ shard urls


def expand_shards(shards: str | Sequence[str]) -> list[str]:
    """Shard paths from patterns: brace ranges (``train-{000000..000009}.tar``), globs, ``::``-joined lists,
    or a dataset folder (its finished ``shards/train-*.tar``: ``lapdata.dataset.reader.finished_shards``; a folder
    with no .json or .parquet beside its tars, written by another tool: every tar). Local paths must exist (LapError naming the first
    missing one); object-store URLs (``s3://``, ``gs://``: ``lapdata.core.storage``) too: a tar, a glob, or a dataset
    URL (its finished train shards); ``pipe:``/``http(s)://`` URLs are passed through."""
    items = [shards] if isinstance(shards, str) else list(shards)
    out: list[str] = []
    for item in items:
        for url in wds.shardlists.expand_urls(str(item)):
            if storage.is_url(url) and not url.startswith(("http://", "https://")):
                out.extend(_object_shards(url))
                continue
            if "://" in url or url.startswith("pipe:"):
                out.append(url)
                continue
            p = Path(url)
            if p.is_dir():
                d = p / "shards" if (p / "shards").is_dir() else p
                _warn_unfinished(p if d != p else p.parent)
                found = finished_shards(d, "train")
                names = shard_names(d)
                lapdata_folder = any(n.endswith((".json", ".parquet")) for n in names)
                if not found and not lapdata_folder:
                    found = [str(d / n) for n in sorted(names) if n.endswith(".tar")]  # tars of another tool
                if not found and lapdata_folder:  # its val/test shards are held out: never trained on
                    raise LapError(f"{p}: no finished train shards in this folder (expected shards/train-*.tar with "
                                   f"its .json)")
                if not found:
                    raise LapError(f"{p}: no .tar shards in this folder")
                out.extend(found)
            elif any(ch in url for ch in "*?["):
                found = sorted(glob.glob(url))
                if not found:
                    raise LapError(f"{url}: no shard matches this pattern")
                out.extend(found)
            elif not p.is_file():
                raise LapError(f"{p}: shard does not exist")
            else:
                out.append(url)
    if not out:
        raise LapError("no shards given (use --shards or data.shards in the config)")
    return out


def _object_shards(url: str) -> list[str]:
    """Shards of an object-store URL: a .tar (must exist), a glob, or a dataset (its finished train shards)."""
    if any(ch in url for ch in "*?["):
        found = storage.glob(url)
        if not found:
            raise LapError(f"{url}: no shard matches this pattern")
        return found
    if url.endswith(".tar"):
        if not storage.exists(url):
            raise LapError(f"{url}: shard does not exist")
        return [url]
    _warn_unfinished(url.rstrip("/"))
    found = shard_urls(url, "train")
    if not found:
        raise LapError(f"{url}: no finished train shards under it (expected shards/train-*.tar with .json)")
    return found


def _warn_unfinished(dataset: str | Path) -> None:
    """Training on a dataset whose writer has not finished takes the shards finished so far: said once."""
    if not storage.exists(storage.join(str(dataset), "stats.json") if storage.is_url(dataset)
                          else Path(dataset) / "shards"):
        return  # not a lapdata dataset folder (a folder of tars)
    why = unfinished(dataset)
    if why is not None:
        warn_once(LOG, f"{dataset}: the dataset is not finished ({why}); training on the shards finished so far")


def count_samples(urls: Sequence[str]) -> int:
    """Identities in the shards: from each shard's stats .json (``num_samples``, as ``lapdata.dataset.writer`` writes it)
    when present, else by reading the tar headers (no decoding)."""
    total = 0
    for u in urls:
        stats = u[:-4] + ".json" if u.endswith(".tar") else u + ".json"
        if storage.exists(stats):
            try:
                doc = json.loads(storage.read_bytes(stats))
                if isinstance(doc.get(NUM_SAMPLES), int):
                    total += doc[NUM_SAMPLES]
                    continue
            except (ValueError, OSError):
                pass
        try:
            with storage.open_read(u) as f, tarfile.open(fileobj=f) as tf:
                total += len({m.name.split("/")[-1].split(".", 1)[0] for m in tf.getmembers() if m.isfile()})
        except (tarfile.TarError, OSError, EOFError) as e:
            raise LapError(f"{u}: not a readable shard tar ({type(e).__name__}: "
                           f"{(str(e).strip().splitlines() or [''])[-1][:100]})") from None
    return total


# ------------------------------------------------------------------------------------------------------ decoding


def decode_views(raw: dict, views: Sequence[int], size: int, fields: Sequence[str]) -> dict[str, Any]:
    """Decode ``views`` of a raw shard sample into arrays at ``size`` (only the requested fields), with lapdata's one
    view preprocessing (``lapdata.dataset.reader``): images (3, S, S) uint8 (``collate`` divides by 255: the pixels
    evaluation sees), ground truth nearest."""
    s = decode_sample(raw, views=views, fields=fields)

    def field(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else preprocess_field(a, size)

    out: dict[str, Any] = {"identity": s.identity, "key": s.key}
    out.update(
        images=np.stack([preprocess_image(v.image, size, dtype=np.uint8) for v in s.views]),
        seg=[field(v.seg) for v in s.views],
        depth=[field(v.depth) for v in s.views],
        cdepth=[field(v.canon_depth) for v in s.views],
        mask=[field(v.mask) for v in s.views],
        hard=[bool(v.meta.get("hard", False)) for v in s.views],
    )
    return out


def collate(samples: list[dict[str, Any]], max_set: int) -> Batch:
    """Stack decoded samples into a Batch padded to ``max_set`` views (fields nobody has stay None)."""
    b = len(samples)
    size = samples[0]["images"].shape[-1]
    images = torch.zeros(b, max_set, 3, size, size)
    valid = torch.zeros(b, max_set, dtype=torch.bool)
    hard = torch.zeros(b, max_set, dtype=torch.bool)
    for i, s in enumerate(samples):
        n = s["images"].shape[0]
        images[i, :n] = torch.from_numpy(s["images"]).float().div_(255.0)
        valid[i, :n] = True
        hard[i, :n] = torch.tensor(s["hard"], dtype=torch.bool)

    def stack(name: str, fill: float, dtype: torch.dtype) -> Tensor | None:
        if not any(x is not None for s in samples for x in s[name]):
            return None
        t = torch.full((b, max_set, size, size), fill, dtype=dtype)
        for i, s in enumerate(samples):
            for j, x in enumerate(s[name]):
                if x is not None:
                    t[i, j] = torch.from_numpy(np.array(x)).to(dtype)
        return t

    return Batch(
        images=images, valid=valid,
        seg=stack("seg", 0, torch.int64),
        depth=stack("depth", float("nan"), torch.float32),
        canon_depth=stack("cdepth", float("nan"), torch.float32),
        mask=stack("mask", 0, torch.float32),
        hard=hard if bool(hard.any()) else None,
        identity=[s["identity"] for s in samples],
        stream=int(samples[0].get("stream", 0)), skipped=max(int(s.get("skipped", 0)) for s in samples),
    )


# ------------------------------------------------------------------------------------------------------ the stream


def shard_sample_counts(urls: Sequence[str]) -> list[int]:
    """Identities per shard (``count_samples`` of each)."""
    return [count_samples([u]) for u in urls]


class ShardStream(torch.utils.data.IterableDataset):
    """Infinite, deterministic stream of decoded identity samples for one rank (split over DataLoader workers).

    ``start_batch``: batches already consumed (resume); ``batch_size``: identities per batch of this rank.

    Epochs are self-contained: epoch ``e`` permutes the shards with ``rng(seed, e)`` and shuffles its samples in a
    buffer seeded by ``(seed, rank, worker, e)`` that is emptied at the epoch's end. A stream's samples per epoch
    follow from the shards' sample counts (their stats .json), so a resume skips whole epochs without reading them
    and replays at most one epoch of its own stream (undecoded): the cost does not grow with the steps done.
    """

    def __init__(self, urls: Sequence[str], cfg: DataConfig, image_size: int, *, rank: int = 0, world: int = 1,
                 batch_size: int = 1, start_batch: int = 0):
        super().__init__()
        if cfg.min_set < 1 or cfg.max_set < cfg.min_set:
            raise LapError(f"data: need 1 <= min_set <= max_set, got {cfg.min_set}..{cfg.max_set}")
        self.urls = list(urls)
        self.cfg = cfg
        self.image_size = image_size
        self.rank, self.world = rank, world
        self.batch_size = batch_size
        self.start_batch = start_batch
        self.counts = shard_sample_counts(self.urls)
        if sum(self.counts) == 0:
            raise LapError(f"the shards hold no samples ({len(self.urls)} shard(s), e.g. {self.urls[0]})")
        empty = [u for u, c in zip(self.urls, self.counts) if c == 0]
        if empty:
            warn_once(LOG, f"{len(empty)} of {len(self.urls)} shard(s) hold no samples and are skipped (e.g. "
                           f"{empty[0]}: an empty or all-zero tar)")

    def _plan(self, g: int, total: int, epoch: int) -> tuple[list[str], range | None, int]:
        """(shards stream g reads in ``epoch``, the sample indices it keeps or None = all, how many it gets)."""
        n = len(self.urls)
        perm = np.random.default_rng([self.cfg.seed, epoch, 0x5A4D]).permutation(n)
        if n >= total:  # split_by_node + split_by_worker: whole shards
            mine = [int(i) for i in perm[g::total]]
            return [self.urls[i] for i in mine], None, sum(self.counts[i] for i in mine)
        # fewer shards than streams: every stream reads all shards and keeps every total-th sample, counted over
        # the concatenation of the epochs (so every stream gets samples even when there are fewer than streams)
        size = sum(self.counts)
        keep = range((g - epoch * size) % total, size, total)
        return [self.urls[i] for i in perm], keep, len(keep)

    def _epoch(self, g: int, total: int, epoch: int, bad: SkipCounter) -> Iterator[dict]:
        """The raw (undecoded) samples of stream g in ``epoch``."""
        urls, keep, _ = self._plan(g, total, epoch)
        expected = dict(zip(self.urls, self.counts))
        i = 0
        for url in urls:
            n, errors = 0, bad.count
            for s in tar_samples([url], handler=bad):  # lapdata's one shard reader: checksums verified, bad counted
                n += 1
                if keep is None or i in keep:  # a range: O(1) membership
                    yield s
                i += 1
            if n == 0 and bad.count == errors and expected[url] > 0:
                warn_once(LOG, f"{url}: its stats say {expected[url]} samples but the tar holds none (emptied or "
                               f"all zeros?): skipped")

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # the DataLoader asks worker 0 first; after `start_batch` batches the next one belongs to worker
        # start_batch % workers of the uninterrupted run, so each worker takes the role shifted by that much
        worker = (worker + self.start_batch) % workers
        g, total = self.rank * workers + worker, self.world * workers
        cfg = self.cfg
        bad = SkipCounter(LOG)  # its count travels with every decoded sample (Batch.skipped)
        # resume: this worker delivered batches worker, worker + workers, ... below start_batch
        skip = len(range(worker, self.start_batch, workers)) * self.batch_size
        k, epoch = 0, 0
        while k + (n := self._plan(g, total, epoch)[2]) <= skip:  # whole epochs consumed before the checkpoint
            k += n  # not read
            epoch += 1
        empty = 0  # epochs in a row that gave this stream no decodable sample
        for epoch in itertools.count(epoch):
            if empty >= 100:
                raise LapError(f"data stream {g} of {total}: 100 epochs in a row without a readable sample "
                               f"({bad.count} skipped as unreadable; e.g. {self.urls[0]}): the shards are empty or "
                               f"damaged, or there are more data.workers x ranks than shards hold samples")
            empty += 1
            raw = self._epoch(g, total, epoch, bad)
            if cfg.shuffle_buffer > 1:
                seed = int(np.random.default_rng([cfg.seed, self.rank, worker, epoch, 0x5348]).integers(2**62))
                raw = wds.shuffle(cfg.shuffle_buffer, cfg.shuffle_initial, rng=random.Random(seed))(raw)
            for raw_sample in raw:
                k += 1
                if k <= skip:
                    continue  # consumed before the checkpoint: not decoded
                try:
                    n_views = len(sample_json(raw_sample)["views"])
                    pick = np.random.default_rng([cfg.seed, self.rank, worker, k - 1, 0x5649])
                    m = int(pick.integers(cfg.min_set, cfg.max_set + 1))
                    views = pick.permutation(n_views)[: max(1, min(m, n_views))].tolist()
                    out = decode_views(raw_sample, views, self.image_size, cfg.fields)
                except Exception as e:  # noqa: BLE001 - a bad sample is skipped (logged, counted), the run goes on
                    bad(e)
                    continue
                out["stream"], out["skipped"] = g, bad.count
                empty = 0
                yield out


def make_loader(urls: Sequence[str], cfg: DataConfig, image_size: int, batch_size: int, *, rank: int = 0,
                world: int = 1, start_batch: int = 0, pin_memory: bool = False) -> Iterator[Batch]:
    """Endless iterator of Batches (``batch_size`` identities each) for this rank, starting after ``start_batch``
    consumed batches."""
    ds = ShardStream(urls, cfg, image_size, rank=rank, world=world, batch_size=batch_size, start_batch=start_batch)
    kw: dict[str, Any] = {}
    if cfg.workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=cfg.prefetch)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, num_workers=cfg.workers, collate_fn=partial(collate, max_set=cfg.max_set),
        pin_memory=pin_memory, generator=torch.Generator().manual_seed(cfg.seed), **kw)
    return iter(loader)


def data_position(batches: int, cfg: DataConfig, world: int, batch_size: int) -> dict[str, Any]:
    """What a checkpoint stores so that ``--resume`` continues the stream exactly."""
    return {"batches": batches, "seed": cfg.seed, "world": world, "workers": cfg.workers, "batch_size": batch_size}


__all__ = ["Batch", "expand_shards", "count_samples", "shard_sample_counts", "decode_views", "collate", "ShardStream",
           "make_loader", "data_position"]
