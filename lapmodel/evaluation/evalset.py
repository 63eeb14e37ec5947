"""Evaluation sets: the views of one identity sample with their ground truth (depth, mask), at the model's size."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor


@dataclass
class EvalSet:
    """The views of one identity sample, resized to the model's size.

    images (N, 3, S, S) in [0, 1]; depth (N, S, S) float32 NaN = none; mask (N, S, S) bool (gt face mask, all False
    where unknown); has_gt (N,) bool; fov_deg: the gt camera's field of view (None: the model's).
    """

    identity: str
    images: Tensor
    depth: Tensor
    mask: Tensor
    has_gt: Tensor
    fov_deg: float | None = None
    poses: list[tuple[float, float, float] | None] | None = None  # per view (yaw, pitch, roll) degrees, when known


def sample_to_evalset(raw: dict, size: int, max_views: int | None = None) -> EvalSet:
    """A raw shard sample -> EvalSet (decodes image, depth, mask), resized to ``size`` with lapdata's one view
    preprocessing (``lapdata.dataset.reader``): the pixels the training loader gives the model; ground truth nearest."""
    from lapdata.dataset.sample import decode_sample, num_views
    from lapdata.dataset.reader import preprocess_field, preprocess_image

    n = num_views(raw)
    views = range(n if max_views is None else min(n, max_views))
    s = decode_sample(raw, views=views, fields=("image", "depth", "mask"))
    imgs, depths, masks, has, poses = [], [], [], [], []
    fov = s.meta.get("fov_deg")
    for v in s.views:
        imgs.append(torch.from_numpy(preprocess_image(v.image, size)))
        pose = v.meta.get("pose")
        poses.append(tuple(float(x) for x in pose) if isinstance(pose, (list, tuple)) and len(pose) == 3 else None)
        h, w = v.image.shape[:2]
        if v.depth is not None:
            d = np.asarray(v.depth, dtype=np.float32)
            m = np.isfinite(d)
            if v.mask is not None:
                m &= np.asarray(v.mask, dtype=bool)
            has.append(True)
            fov = v.meta.get("fov_deg", fov)
        else:
            d = np.full((h, w), np.nan, np.float32)
            m = np.zeros((h, w), bool)
            has.append(False)
        depths.append(torch.from_numpy(preprocess_field(d, size)))
        masks.append(torch.from_numpy(preprocess_field(m, size)))
    return EvalSet(
        identity=s.identity, images=torch.stack(imgs), depth=torch.stack(depths), mask=torch.stack(masks),
        has_gt=torch.tensor(has, dtype=torch.bool), fov_deg=None if fov is None else float(fov), poses=poses,
    )


def iter_evalsets(shards: str | Sequence[str], size: int, max_identities: int | None = None,
                  max_views: int | None = None) -> Iterable[EvalSet]:
    """EvalSets from shards (brace patterns, globs, folders: `lapmodel.io.data.expand_shards`), in shard order."""
    from lapdata.dataset.reader import tar_samples
    from lapmodel.io.data import expand_shards

    for k, raw in enumerate(tar_samples(expand_shards(shards))):  # a damaged shard: LapError naming it
        if max_identities is not None and k >= max_identities:
            break
        yield sample_to_evalset(raw, size, max_views)


def set_order(identity: str, n: int) -> list[int]:
    """A fixed pseudo-random order of an identity's n views (seeded by its name): the set of size N is the first N,
    so sets are nested across N and mix poses even when the shard stores views sorted by pose."""
    g = torch.Generator().manual_seed(zlib.crc32(identity.encode("utf-8")))
    return torch.randperm(n, generator=g).tolist()
