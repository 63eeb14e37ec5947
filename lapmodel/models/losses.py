"""Unsup3D / LAP reconstruction losses, as pure functions.

Eq. 3 of LAP (Unsup3D's confidence-calibrated loss): with a predicted per-pixel scale sigma > 0, the photometric
term is the negative log-likelihood of a Laplacian,  ``sqrt(2) * |I - I_hat| / sigma + log sigma``, and the
perceptual term (VGG16 relu3_3 features) that of a Gaussian,  ``(F - F_hat)^2 / (2 sigma^2) + log sigma``.
Both are averaged over a mask (pixels the reconstruction covers) times an optional per-pixel weight map
(``lapmodel.models.lap`` passes RCL's M_re and hard-sample masks through ``weight``). ``eps`` is Unsup3D's 1e-7.

Shapes: images (B, C, H, W); confidence sigma (B, 1, H, W) (broadcast over channels); mask / weight (B, H, W) or
(B, 1, H, W). Features (B, C, h, w) with the mask/weight average-pooled to (h, w).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-7
SQRT2 = math.sqrt(2.0)


def _as_map(m: Tensor | None) -> Tensor | None:
    """(B, H, W) or (B, 1, H, W) -> (B, 1, H, W)."""
    if m is None:
        return None
    return m.unsqueeze(1) if m.dim() == 3 else m


def pixel_weight(mask: Tensor | None, weight: Tensor | None) -> Tensor | None:
    """Product of a validity mask and a weight map, as (B, 1, H, W) (None when both are None)."""
    mask, weight = _as_map(mask), _as_map(weight)
    if mask is None:
        return weight
    if weight is None:
        return mask
    return mask * weight


def masked_mean(loss_map: Tensor, w: Tensor | None, eps: float = EPS) -> Tensor:
    """Mean of ``loss_map`` (B, C, H, W) weighted by ``w`` (B, 1, H, W) broadcast over channels (Unsup3D's
    ``(loss * mask).sum() / mask.sum()``); 0 when the weights are all zero."""
    if w is None:
        return loss_map.mean()
    w = w.to(loss_map.dtype).expand_as(loss_map)
    return (loss_map * w).sum() / w.sum().clamp_min(eps)


def laplace_nll(diff_abs: Tensor, sigma: Tensor | None, eps: float = EPS) -> Tensor:
    """Per-pixel ``sqrt(2) |d| / sigma + log sigma`` (plain ``|d|`` when sigma is None)."""
    if sigma is None:
        return diff_abs
    return diff_abs * SQRT2 / (sigma + eps) + torch.log(sigma + eps)


def gaussian_nll(diff_sq: Tensor, sigma: Tensor | None, eps: float = EPS) -> Tensor:
    """Per-pixel ``d^2 / (2 sigma^2) + log sigma`` (plain ``d^2`` when sigma is None)."""
    if sigma is None:
        return diff_sq
    return diff_sq / (2 * sigma**2 + eps) + torch.log(sigma + eps)


def photometric_loss(pred: Tensor, target: Tensor, sigma: Tensor | None = None, mask: Tensor | None = None,
                     weight: Tensor | None = None, eps: float = EPS) -> Tensor:
    """Eq. 3: confidence-calibrated L1 between images, averaged over ``mask * weight``.

    pred, target (B, C, H, W); sigma (B, 1, H, W) > 0 or None; mask, weight (B, H, W) / (B, 1, H, W) or None.
    Returns a scalar. Use it for the reconstruction and (with the second confidence channel) the flipped one.
    """
    return masked_mean(laplace_nll((pred - target).abs(), sigma, eps), pixel_weight(mask, weight), eps)


def downsample_weight(w: Tensor | None, size: tuple[int, int]) -> Tensor | None:
    """Average-pool a (B, 1, H, W) weight map to feature resolution ``size`` (Unsup3D's mask pooling)."""
    if w is None:
        return None
    h, wd = w.shape[-2:]
    if (h, wd) == tuple(size):
        return w
    return F.avg_pool2d(w.float(), kernel_size=(h // size[0], wd // size[1]))


def feature_loss(feat_pred: Tensor, feat_target: Tensor, sigma: Tensor | None = None, mask: Tensor | None = None,
                 weight: Tensor | None = None, eps: float = EPS) -> Tensor:
    """Confidence-calibrated L2 between feature maps (B, C, h, w); sigma (B, 1, h, w); mask/weight at image size
    (average-pooled to h x w) or already at h x w. Returns a scalar."""
    w = downsample_weight(pixel_weight(mask, weight), tuple(feat_pred.shape[-2:]))
    return masked_mean(gaussian_nll((feat_pred - feat_target) ** 2, sigma, eps), w, eps)


def perceptual_loss(vgg: torch.nn.Module, pred: Tensor, target: Tensor, sigma: Tensor | None = None,
                    mask: Tensor | None = None, weight: Tensor | None = None, eps: float = EPS) -> Tensor:
    """Perceptual loss on VGG16 relu3_3 with its own confidence (quarter size, (B, 1, H/4, W/4)).

    pred, target: (B, 3, H, W) images in [0, 1]; the VGG runs once on both (concatenated). Returns a scalar.
    """
    f = vgg(torch.cat([pred, target], 0)).float()  # (2B, C, H/4, W/4); the NLL in fp32 under autocast
    f_pred, f_target = f.chunk(2, 0)
    return feature_loss(f_pred, f_target.detach(), sigma, mask, weight, eps)
