"""Scores of one identity's reconstruction against its EvalSet, view by view, and their summaries: SIDE / MAD
against ground-truth depth (Unsup3D protocol), SSIM of the re-render, depth correlation, identity cosine between
input and re-render; the flat / gt / mean-face baselines scored the same way.

Protocol per view (see `lapmodel.evaluation.metrics`): prediction = the model's depth *in the input's view*
(``Reconstruction.recon_depth``) and its mask ``recon_mask``; ground truth = the shard's view ``depth`` (NaN = no
surface) and ``mask``. Pixels = erode(gt mask) & erode(pred mask) (1 px, Unsup3D). Normals of both prediction and
ground truth come from their depth maps through the same function (`lapdata.geometry.camera.depth_to_normals`, as
Unsup3D derives its ground-truth normals), so conventions cannot disagree. SSIM and identity cosine compare the
re-render with the input on the face region (the eroded gt mask where the shard has one, else the predicted mask).
Views without ground-truth depth (real photos) still count for SSIM and identity cosine.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from lapdata.core import pictures
from lapdata.core.errors import LapError
from lapmodel.evaluation import metrics
from lapmodel.evaluation.baselines import MeanFace
from lapmodel.evaluation.evalset import EvalSet
from lapmodel.models.outputs import Reconstruction

METRIC_KEYS = ("side", "mad", "ssim", "depth_corr", "id_cos")
METRIC_LABELS = {
    "side": "SIDE x1e-2",
    "mad": "MAD (deg)",
    "ssim": "SSIM",
    "depth_corr": "depth corr",
    "id_cos": "ID cosine",
}


# --------------------------------------------------------------------------------------------- per-view metrics


def fill_nan(depth: Tensor, mask: Tensor) -> Tensor:
    """Replace depth outside ``mask`` (and NaN) by the largest valid depth of each image (a background plane)."""
    valid = mask & torch.isfinite(depth)
    big = torch.where(valid, depth, torch.full_like(depth, -math.inf)).flatten(1).amax(1)
    big = torch.where(torch.isfinite(big), big, torch.ones_like(big))
    return torch.where(valid, depth, big.view(-1, 1, 1).expand_as(depth))


def depth_metrics(pred_depth: Tensor, pred_mask: Tensor, gt_depth: Tensor, gt_mask: Tensor, fov_pred: float,
                  fov_gt: float, erode: int = 1) -> dict[str, Tensor]:
    """SIDE (raw, not x100), MAD (deg) and depth correlation per view: all (B, S, S) -> {name: (B,)} float64."""
    from lapdata.geometry.camera import depth_to_normals

    gt_valid = gt_mask & torch.isfinite(gt_depth)
    m = metrics.eval_mask(gt_valid, pred_mask > 0.5, erode)
    pd = fill_nan(pred_depth.to(torch.float64), pred_mask > 0.5)
    gd = fill_nan(gt_depth.to(torch.float64), gt_valid)
    n_pred = depth_to_normals(pd, fov_pred)
    n_gt = depth_to_normals(gd, fov_gt)
    return {
        "side": metrics.side(pd, gd, m),
        "mad": metrics.mad(n_pred, n_gt, m),
        "depth_corr": metrics.depth_correlation(pd, gd, m),
    }


def face_region(es_mask: Tensor, has_gt: Tensor, pred_mask: Tensor, erode: int = 1) -> Tensor:
    """Where SSIM is measured: the eroded gt mask where known, else the eroded predicted mask. (B, S, S) bool."""
    gt = metrics.erode_mask(es_mask, erode)
    pr = metrics.erode_mask(pred_mask > 0.5, erode)
    return torch.where(has_gt.view(-1, 1, 1), gt, pr)


class Embedder:
    """Identity embedder wrapper: ArcFace ONNX when a path is given, else dlib; None-safe (``error`` says why)."""

    def __init__(self, id_model: str | os.PathLike | None = None):
        self.fn: Callable | None = None
        self.name = "none"
        self.error: str | None = None
        try:
            from lapdata.faces import embed
        except ImportError as e:
            self.error = f"identity cosine skipped: lapdata.faces.embed unavailable ({e})"
            return
        try:
            self.fn = embed.ArcFaceEmbedder(id_model) if id_model else embed.DlibEmbedder()
            self.name = self.fn.name
        except LapError:
            raise
        except Exception as e:  # model files missing, dlib broken, ...
            self.error = f"identity cosine skipped: embedder failed to load ({type(e).__name__}: {e})"
            self.fn = None

    def cosine(self, a: Tensor, b: Tensor) -> Tensor | None:
        """Images (B, 3, S, S) x2 in [0, 1] -> (B,) cosine of their embeddings (None when unavailable)."""
        if self.fn is None:
            return None
        ua = [pictures.to_uint8(x) for x in a]
        ub = [pictures.to_uint8(x) for x in b]
        try:
            ea, eb = self.fn(ua), self.fn(ub)
        except Exception as e:
            self.error = f"identity cosine skipped: embedding failed ({type(e).__name__}: {e})"
            self.fn = None
            return None
        return metrics.identity_cosine(torch.as_tensor(np.asarray(ea)), torch.as_tensor(np.asarray(eb)))


def view_metrics(es: EvalSet, rec: Reconstruction, embedder: Embedder | None = None, erode: int = 1,
                 idx: Sequence[int] | None = None) -> dict[str, list[float]]:
    """All metrics for the views ``idx`` of ``es`` (default all) reconstructed as ``rec`` (same rows).

    Returns {metric: [value per view]}; NaN where a metric does not apply (no gt depth, no embedder).
    """
    sel = list(range(len(es.images))) if idx is None else list(idx)
    images, depth, mask, has = es.images[sel], es.depth[sel], es.mask[sel], es.has_gt[sel]
    b = len(sel)
    out = {k: [float("nan")] * b for k in METRIC_KEYS}
    rimg = rec.recon_image.detach().float().cpu().clamp(0, 1)
    rdepth = rec.recon_depth.detach().float().cpu()
    rmask = rec.recon_mask.detach().float().cpu()
    if has.any():
        g = has.nonzero().flatten()
        dm = depth_metrics(rdepth[g], rmask[g], depth[g], mask[g], rec.fov_deg, es.fov_deg or rec.fov_deg, erode)
        for k, v in dm.items():
            for j, gi in enumerate(g.tolist()):
                out[k][gi] = float(v[j])
    region = face_region(mask, has, rmask, erode)
    s = metrics.ssim(rimg, images, region)
    out["ssim"] = [float(x) for x in s]
    if embedder is not None:
        c = embedder.cosine(images, rimg)
        if c is not None:
            out["id_cos"] = [float(x) for x in c]
    return out


def baseline_metrics(es: EvalSet, kind: str, erode: int = 1, fov_deg: float = 10.0) -> dict[str, list[float]]:
    """Depth metrics of a baseline on the gt views: ``flat`` (constant = median gt depth) or ``gt`` (gt itself)."""
    out = {k: [] for k in METRIC_KEYS}
    g = es.has_gt.nonzero().flatten()
    if len(g) == 0:
        return out
    gt, m = es.depth[g], es.mask[g] & torch.isfinite(es.depth[g])
    if kind == "flat":
        med = torch.stack([gt[i][m[i]].median() if m[i].any() else torch.tensor(1.0) for i in range(len(g))])
        pred = med.view(-1, 1, 1).expand_as(gt).clone()
    elif kind == "gt":
        pred = gt.clone()
    else:
        raise ValueError(f"unknown baseline {kind!r}")
    fov = es.fov_deg or fov_deg
    dm = depth_metrics(pred, m.float(), gt, m, fov, fov, erode)
    for k, v in dm.items():
        out[k] = [float(x) for x in v]
    return out


def mean_face_metrics(mean_face: MeanFace, erode: int = 1, fov_deg: float = 10.0) -> dict[str, list[float]]:
    """Depth metrics of the mean-face baseline (``MeanFace.predictions``) on every view it covers."""
    pred, pmask, gt, gmask = mean_face.predictions()
    if len(pred) == 0:
        return {k: [] for k in METRIC_KEYS}
    dm = depth_metrics(pred, pmask.float(), torch.where(gmask, gt, torch.full_like(gt, math.nan)), gmask, fov_deg,
                       fov_deg, erode)
    return {k: [float(x) for x in dm[k]] if k in dm else [] for k in METRIC_KEYS}


def summarize(values: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """{metric: per-view values} -> {metric: {mean, std, n}} over finite values; SIDE scaled x100 (x1e-2)."""
    res = {}
    for k in METRIC_KEYS:
        a = np.asarray(values.get(k, []), dtype=np.float64)
        a = a[np.isfinite(a)]
        if k == "side":
            a = a * metrics.SIDE_SCALE
        res[k] = {"mean": float(a.mean()) if len(a) else float("nan"), "std": float(a.std()) if len(a) else float("nan"),
                  "n": int(len(a))}
    return res
