"""Evaluation metrics (pure torch functions, batched, per-image results).

Protocol (Unsup3D, ``unsup3d/model.py`` + ``utils.py``): a pixel counts when the ground-truth mask is valid *and*
the predicted re-render covers it, both masks eroded by ``erode`` pixels (Unsup3D: a 3x3 average pool > 0.99, i.e.
1 pixel). Then, per image over the mask M:

- SIDE (scale-invariant depth error, Eigen et al. 2014) on log depth: d = log(pred) - log(gt),
  SIDE = sqrt(mean_M(d^2) - mean_M(d)^2). Papers report it "x 1e-2": a SIDE of 0.00793 is written 0.793.
- MAD (mean angle deviation): mean_M(arccos(<n_pred, n_gt>)) in degrees.

Shapes: B images, H x W pixels. Depth (B, H, W) > 0; normals (B, H, W, 3) unit; masks (B, H, W) bool or {0, 1};
images (B, C, H, W) in [0, 1]. Results (B,) unless stated. Computation is in float64 where it matters (SIDE, the
Pearson correlation, SSIM statistics); results come back in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SIDE_SCALE = 100.0  # SIDE is reported x 1e-2 (value * 100)


def erode_mask(mask: Tensor, pixels: int = 1) -> Tensor:
    """(B, H, W) mask -> (B, H, W) bool, eroded by ``pixels`` (a (2p+1)^2 window must be fully inside).

    Pixels outside the image count as outside the mask (zero padding), as in Unsup3D's avg-pool erosion.
    """
    m = mask.to(torch.float64)
    if pixels <= 0:
        return m > 0.5
    k = 2 * pixels + 1
    avg = F.avg_pool2d(m[:, None], k, stride=1, padding=pixels, count_include_pad=True)[:, 0]
    return avg > 1.0 - 1e-6


def eval_mask(gt_mask: Tensor, pred_mask: Tensor | None = None, erode: int = 1) -> Tensor:
    """Unsup3D's evaluation mask: erode(gt_mask) & erode(pred_mask) -> (B, H, W) bool."""
    m = erode_mask(gt_mask, erode)
    if pred_mask is not None:
        m = m & erode_mask(pred_mask, erode)
    return m


def _mask_like(mask: Tensor | None, ref: Tensor) -> Tensor:
    if mask is None:
        return torch.ones(ref.shape[:3], dtype=torch.bool, device=ref.device)
    return mask.to(torch.bool)


def side(pred_depth: Tensor, gt_depth: Tensor, mask: Tensor | None = None) -> Tensor:
    """Scale-invariant depth error per image, on log depth over the mask.

    pred_depth, gt_depth: (B, H, W) > 0 inside the mask; mask: (B, H, W) -> (B,) float64 (NaN for an empty mask).
    SIDE = sqrt(mean(d^2) - mean(d)^2), d = log(pred) - log(gt). Invariant to pred -> c * pred (c > 0).
    Multiply by `SIDE_SCALE` for the "x 1e-2" figures of the papers.
    """
    m = _mask_like(mask, pred_depth)
    p = pred_depth.to(torch.float64)
    g = gt_depth.to(torch.float64)
    m = m & torch.isfinite(p) & torch.isfinite(g) & (p > 0) & (g > 0)
    mf = m.to(torch.float64)
    d = torch.where(m, p.clamp_min(1e-12).log() - g.clamp_min(1e-12).log(), torch.zeros_like(p))
    n = mf.flatten(1).sum(1)
    mean = d.flatten(1).sum(1) / n
    var = ((d - mean.view(-1, 1, 1)) ** 2 * mf).flatten(1).sum(1) / n  # = mean(d^2) - mean(d)^2, stable form
    return var.clamp_min(0).sqrt()


def angle_error(pred_normal: Tensor, gt_normal: Tensor) -> Tensor:
    """Per-pixel angle between normals in degrees: (B, H, W, 3) x2 -> (B, H, W) float64 (inputs renormalised)."""
    a = F.normalize(pred_normal.to(torch.float64), dim=-1, eps=1e-12)
    b = F.normalize(gt_normal.to(torch.float64), dim=-1, eps=1e-12)
    return (a * b).sum(-1).clamp(-1, 1).acos() * (180.0 / math.pi)


def mad(pred_normal: Tensor, gt_normal: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean angle deviation in degrees: normals (B, H, W, 3), mask (B, H, W) -> (B,) float64.

    0 for identical normals, 90 for orthogonal, 180 for opposite.
    """
    m = _mask_like(mask, pred_normal)
    err = angle_error(pred_normal, gt_normal)
    m = m & torch.isfinite(err)
    mf = m.to(torch.float64)
    return torch.where(m, err, torch.zeros_like(err)).flatten(1).sum(1) / mf.flatten(1).sum(1)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g


def ssim_map(img1: Tensor, img2: Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> Tensor:
    """SSIM map (Wang et al. 2004, Gaussian window, constants K1 = 0.01, K2 = 0.03), averaged over channels.

    img1, img2: (B, C, H, W) -> (B, H, W) float64 (reflect padding so the map has the image size).
    """
    x = img1.to(torch.float64)
    y = img2.to(torch.float64)
    b, c, h, w = x.shape
    g = _gaussian_window(window, sigma, x.dtype, x.device)
    pad = window // 2

    def blur(t: Tensor) -> Tensor:
        t = F.pad(t, (pad, pad, pad, pad), mode="reflect" if min(h, w) > pad else "replicate")
        t = F.conv2d(t, g.view(1, 1, 1, -1).expand(c, 1, 1, window), groups=c)
        return F.conv2d(t, g.view(1, 1, -1, 1).expand(c, 1, window, 1), groups=c)

    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean(1)


def ssim(img1: Tensor, img2: Tensor, mask: Tensor | None = None, window: int = 11, sigma: float = 1.5,
         data_range: float = 1.0) -> Tensor:
    """SSIM per image, the map's mean over ``mask`` (the face region): (B, C, H, W) x2, (B, H, W) -> (B,) float64.

    1 for identical images.
    """
    s = ssim_map(img1, img2, window, sigma, data_range)
    m = _mask_like(mask, s[..., None]).to(torch.float64)
    return (s * m).flatten(1).sum(1) / m.flatten(1).sum(1)


def depth_correlation(pred_depth: Tensor, gt_depth: Tensor, mask: Tensor | None = None) -> Tensor:
    """Pearson correlation of depth values over the mask: (B, H, W) x2, (B, H, W) -> (B,) float64 in [-1, 1].

    1 for pred = a * gt + b with a > 0 (NaN when either map is constant on the mask).
    """
    m = _mask_like(mask, pred_depth)
    p = pred_depth.to(torch.float64)
    g = gt_depth.to(torch.float64)
    m = m & torch.isfinite(p) & torch.isfinite(g)
    mf = m.to(torch.float64)
    p = torch.where(m, p, torch.zeros_like(p))
    g = torch.where(m, g, torch.zeros_like(g))
    n = mf.flatten(1).sum(1).view(-1, 1, 1)
    pc = (p - (p * mf).flatten(1).sum(1).view(-1, 1, 1) / n) * mf
    gc = (g - (g * mf).flatten(1).sum(1).view(-1, 1, 1) / n) * mf
    num = (pc * gc).flatten(1).sum(1)
    den = ((pc * pc).flatten(1).sum(1) * (gc * gc).flatten(1).sum(1)).sqrt()
    return num / den


def identity_cosine(emb_a: Tensor, emb_b: Tensor) -> Tensor:
    """Cosine similarity of paired embeddings: (N, D) x2 -> (N,) float64 (rows renormalised)."""
    a = F.normalize(torch.as_tensor(emb_a).to(torch.float64), dim=-1, eps=1e-12)
    b = F.normalize(torch.as_tensor(emb_b).to(torch.float64), dim=-1, eps=1e-12)
    return (a * b).sum(-1)


def flat_normals(shape: tuple[int, int, int], dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """Normals of a fronto-parallel plane facing the camera: (0, 0, 1) (z away from the camera, the convention of
    `lapdata.geometry.camera.depth_to_normals`) -> (B, H, W, 3)."""
    n = torch.zeros(*shape, 3, dtype=dtype, device=device)
    n[..., 2] = 1.0
    return n


# --------------------------------------------------------------------------------------------- keypoint depth


def sample_at_points(depth: Tensor, valid: Tensor, points: Tensor) -> Tensor:
    """Bilinear depth at sub-pixel points, NaN where any of the four pixels is invalid or the point is off the frame.

    depth (B, S, S), valid (B, S, S) bool, points (B, K, 2) x, y in pixels (pixel centres at integers) ->
    (B, K) float64."""
    b, s = depth.shape[0], depth.shape[-1]
    grid = ((points.to(torch.float64) + 0.5) / s * 2 - 1)[:, :, None, :]  # (B, K, 1, 2), align_corners=False
    d = torch.where(valid, depth.to(torch.float64), torch.zeros((), dtype=torch.float64))[:, None]
    val = F.grid_sample(d, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0, :, 0]
    cover = F.grid_sample(valid.to(torch.float64)[:, None], grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)[:, 0, :, 0]
    inside = (points >= -0.5).all(-1) & (points <= s - 0.5).all(-1)
    ok = inside & (cover > 1 - 1e-6) & torch.isfinite(val)
    return torch.where(ok, val / cover.clamp_min(1e-12), torch.full_like(val, math.nan)).reshape(b, -1)


def keypoint_correlation(pred: Tensor, gt: Tensor, min_points: int = 8) -> Tensor:
    """Per-photo Pearson correlation of keypoint depths (DepthNet's ``pearsons``): (B, K) x2 -> (B,) float64.

    NaN keypoints are left out; NaN for a photo with fewer than ``min_points`` valid keypoints."""
    r = depth_correlation(pred[:, None, :], gt[:, None, :])
    n = (torch.isfinite(pred) & torch.isfinite(gt)).sum(1)
    return torch.where(n >= min_points, r, torch.full_like(r, math.nan))


def depthnet_score(pred: Tensor, gt: Tensor) -> tuple[float, Tensor]:
    """DepthNet's summed depth correlation (Moniz et al. 2018; Unsup3D / LAP Table 3, 66 = ground truth on 3DFAW).

    pred, gt (B, K): keypoint depths of B photos. Each photo's depths are centred on their mean (the protocol's
    depth has no absolute origin); then, per keypoint, the correlation across the photos; the score is the sum over
    keypoints of its absolute value (K for a perfect prediction; a keypoint whose depth is constant over the photos
    adds 0). Returns (score, per-keypoint |corr| (K,))."""
    ok = torch.isfinite(pred) & torch.isfinite(gt)
    p = pred.to(torch.float64).where(ok, torch.tensor(math.nan, dtype=torch.float64))
    g = gt.to(torch.float64).where(ok, torch.tensor(math.nan, dtype=torch.float64))
    p = p - p.nanmean(1, keepdim=True)
    g = g - g.nanmean(1, keepdim=True)
    r = depth_correlation(p.T[:, None, :], g.T[:, None, :]).abs()  # (K,)
    r = torch.nan_to_num(r, nan=0.0)
    return float(r.sum()), r
