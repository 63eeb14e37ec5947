"""What a model must beat to have learned shape, and whether its shape depends on the face.

* :class:`MeanFace`: the mean-face baseline of the synthetic evaluation: for each view, the average ground-truth
  depth of the *other* evaluated identities' views in the same nominal pose (the synthetic sets render every
  identity at the same yaws; pitch and roll carry a few degrees of jitter), i.e. the mean face seen in that view.
  A model that does not beat it predicts a generic face. (On real photos the keypoints' mean template plays this
  part: ``evaluation.photos``.)
* :func:`canon_spread`: how much a model's canonical depth varies across photos or identities, relative to its
  relief; near 0 means one map for everyone.

Shapes: N views of side S; depth (N, S, S) float, NaN or masked where there is no surface.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import Tensor


def face_interior(size: int) -> Tensor:
    """(S, S) bool: the central ellipse (semi-axes 0.6 x 0.75 of the half side) where the aligned face's interior is."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    return (xs / 0.6) ** 2 + (ys / 0.75) ** 2 < 1


def canon_spread(maps: Tensor) -> float:
    """(M, S, S) canonical depth maps -> mean over the face interior of the per-pixel std across the M maps,
    divided by the relief (max - min over the interior) of their mean map; NaN for fewer than 2 maps."""
    if maps.shape[0] < 2:
        return math.nan
    inside = face_interior(maps.shape[-1])
    mean = maps.double().mean(0)[inside]
    relief = float(mean.max() - mean.min())
    return float(maps.double().std(0, unbiased=False)[inside].mean()) / max(relief, 1e-12)


class MeanFace:
    """Collects ground-truth views by identity and pose; ``predictions()`` gives each view the leave-one-out mean
    of the other identities' depth at the same pose key (a pixel counts where at least half of them have a surface).

    ``add(identity, keys, depth (N, S, S), mask (N, S, S) bool)``; keys: one hashable per view (the rounded yaw)."""

    def __init__(self) -> None:
        self.views: list[tuple[int, object, Tensor, Tensor]] = []
        self.sums: dict[object, Tensor] = {}
        self.counts: dict[object, Tensor] = {}
        self.ids_per_key: dict[object, set[int]] = defaultdict(set)

    def add(self, identity: int, keys: list, depth: Tensor, mask: Tensor) -> None:
        for k, d, m in zip(keys, depth, mask):
            m = m & torch.isfinite(d)
            d = torch.where(m, d.double(), torch.zeros((), dtype=torch.float64))
            self.views.append((identity, k, d, m))
            self.sums[k] = self.sums.get(k, 0) + d
            self.counts[k] = self.counts.get(k, 0) + m.double()
            self.ids_per_key[k].add(identity)

    def predictions(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(pred depth, pred mask, gt depth, gt mask), each (V, S, S), for the views whose pose key was seen with
        at least one other identity."""
        out = ([], [], [], [])
        for ident, k, d, m in self.views:
            others = len(self.ids_per_key[k] - {ident})
            if others == 0:
                continue
            cnt = self.counts[k] - m.double()
            pred = (self.sums[k] - d) / cnt.clamp_min(1.0)
            for lst, v in zip(out, (pred, cnt >= max(1.0, others / 2), d, m)):
                lst.append(v)
        if not out[0]:
            return tuple(torch.zeros(0) for _ in range(4))  # type: ignore[return-value]
        return tuple(torch.stack(x) for x in out)  # type: ignore[return-value]
