"""The paper's frontal-view identity filter of a synthetic identity: ``IdentityFilter`` (an embedder and its
threshold) and ``filter_views`` (which views of an identity keep their place). Called by ``lapdata.synthetic.build``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lapdata.synthetic.base import Pose, SynthView, frontal_index


class IdentityFilter:
    """The paper's frontal-view filter around an embedder (``lapdata.faces.embed``: ``__call__(aligned crops)`` and
    optionally ``embed_image(image, [landmarks])``): views whose cosine to the frontal view is below
    ``threshold`` are dropped. Views with landmarks are aligned from them (the 3D backends' projected landmarks;
    the detected ones on a generated view, ``lapdata.synthetic.framing``); others are embedded as they are."""

    def __init__(self, embedder, threshold: float, name: str):
        self.embedder = embedder
        self.threshold = float(threshold)
        self.name = name

    def embed(self, views: Sequence[SynthView]) -> np.ndarray:
        out = []
        for v in views:
            if v.landmarks is not None and hasattr(self.embedder, "embed_image"):
                e = self.embedder.embed_image(v.image, [np.asarray(v.landmarks, np.float64)])
            else:
                e = self.embedder([np.ascontiguousarray(v.image)])
            out.append(np.asarray(e, np.float32).reshape(-1))
        return np.stack(out)

    def __call__(self, views: Sequence[SynthView], frontal: int) -> tuple[np.ndarray, np.ndarray]:
        from lapdata.faces.idfilter import frontal_view_filter

        return frontal_view_filter(self.embed(views), frontal, self.threshold)


def filter_views(filt: IdentityFilter | None, views: Sequence[SynthView], poses: Sequence[Pose],
                  ok: Sequence[int]) -> tuple[int, np.ndarray, np.ndarray, str | None]:
    """The frontal-view identity filter over the views ``ok`` (indices of views with a face) -> (frontal index,
    keep (P,) bool, cosine (P,) float32 (NaN: not scored), id_model) over all P views."""
    P = len(views)
    keep, sims = np.zeros(P, bool), np.full(P, np.nan, np.float32)
    front = ok[frontal_index([poses[k] for k in ok])]
    if filt is None:
        keep[list(ok)] = True
        return front, keep, sims, None
    k_ok, s_ok = filt([views[k] for k in ok], list(ok).index(front))
    keep[list(ok)], sims[list(ok)] = k_ok, s_ok
    return front, keep, sims, filt.name
