"""Label map -> RCL attention masks (M, M_re) of LAP's Relaxed Consistency Loss (Eq. 5).

M is 1 on the visible face and 0 on the background; M_re equals M except that expression-dependent parts
(eyes, brows, mouth) get a lower weight (0.3 in the paper). The masks are derived at load time from the stored
19-class label map (``View.seg``), so class groups and weights can be changed in a config without re-parsing::

    # pipelines/*.yaml
    rcl_masks:
      face: [skin, nose, l_eye, r_eye, l_brow, r_brow, l_ear, r_ear, mouth, u_lip, l_lip]
      lowered: [l_eye, r_eye, l_brow, r_brow, mouth, u_lip, l_lip]
      lowered_weight: 0.3

    cfg = load_config(RCLMaskConfig, "pipelines/lap.yaml", section="rcl_masks")
    M, M_re = label_to_masks(batch.seg, cfg)          # (B, N, S, S) int64 -> two (B, N, S, S) float32

Both functions are a gather from a 256-entry lookup table: labels outside 0..18 count as background.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np

from lapdata.core.errors import LapError
from lapdata.parsing.labels import CLASSES, CLASS_ID

if TYPE_CHECKING:  # torch loads with label_to_masks only (the lapdata CLI starts without it)
    from torch import Tensor

LUT_SIZE = 256


@dataclass(frozen=True)
class RCLMaskConfig:
    """Class groups and weights of the RCL masks (class names of ``lapdata.parsing.labels.CLASSES``).

    face: classes with M = face_weight (the visible face). Everything else -- background, hair, hat, neck,
        necklace, earring, cloth and eyeglasses (eye_g: its frame covers the face but is not face) -- has M = 0.
    lowered: classes whose M_re is ``lowered_weight`` instead of their M (expression-dependent parts). The
        paper's "mouth" region is taken as inner mouth plus both lips (they move with the expression).
    lowered_weight: M_re value of the lowered classes (0.3 in the paper).
    face_weight: M (and M_re) value of the face classes (1 in the paper).
    """

    face: tuple[str, ...] = (
        "skin",
        "nose",
        "l_eye",
        "r_eye",
        "l_brow",
        "r_brow",
        "l_ear",
        "r_ear",
        "mouth",
        "u_lip",
        "l_lip",
    )
    lowered: tuple[str, ...] = ("l_eye", "r_eye", "l_brow", "r_brow", "mouth", "u_lip", "l_lip")
    lowered_weight: float = 0.3
    face_weight: float = 1.0

    def __post_init__(self) -> None:
        for group in ("face", "lowered"):
            names = getattr(self, group)
            unknown = [n for n in names if n not in CLASS_ID]
            if unknown:
                raise LapError(f"RCLMaskConfig.{group}: unknown class(es) {unknown}; known: {list(CLASSES)}")
        for w in ("lowered_weight", "face_weight"):
            v = getattr(self, w)
            if not (0.0 <= v <= 1.0):
                raise LapError(f"RCLMaskConfig.{w}: {v} is not in [0, 1]")


@functools.lru_cache(maxsize=64)
def mask_tables(config: RCLMaskConfig = RCLMaskConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Lookup tables (256,) float32 for M and M_re, indexed by label value (>= 19 -> 0)."""
    m = np.zeros(LUT_SIZE, np.float32)
    for n in config.face:
        m[CLASS_ID[n]] = config.face_weight
    m_re = m.copy()
    for n in config.lowered:
        m_re[CLASS_ID[n]] = config.lowered_weight
    m.setflags(write=False)
    m_re.setflags(write=False)
    return m, m_re


def label_to_masks(seg: Tensor, config: RCLMaskConfig = RCLMaskConfig()) -> tuple[Tensor, Tensor]:
    """Label map -> (M, M_re).

    Args:
        seg: (..., H, W) integer CelebAMask-HQ labels (any integer dtype, any device; values outside 0..18 are
            background).
        config: class groups and weights.

    Returns:
        M: (..., H, W) float32 in {0, face_weight}; M_re: (..., H, W) float32, on ``seg``'s device.
    """
    import torch

    if seg.is_floating_point() or seg.is_complex() or seg.dtype == torch.bool:
        raise TypeError(f"label_to_masks: seg must be an integer tensor, got {seg.dtype}")
    m_np, m_re_np = mask_tables(config)
    lut = torch.from_numpy(np.stack([m_np, m_re_np])).to(seg.device)  # (2, 256)
    idx = seg.long().clamp(0, LUT_SIZE - 1)
    idx = torch.where(idx < len(CLASSES), idx, torch.zeros_like(idx))
    return lut[0][idx], lut[1][idx]


def label_to_masks_np(seg: np.ndarray, config: RCLMaskConfig = RCLMaskConfig()) -> tuple[np.ndarray, np.ndarray]:
    """numpy variant of :func:`label_to_masks`: (..., H, W) integer labels -> two (..., H, W) float32 arrays."""
    m_np, m_re_np = mask_tables(config)
    idx = np.clip(np.asarray(seg).astype(np.int64), 0, LUT_SIZE - 1)
    idx = np.where(idx < len(CLASSES), idx, 0)
    return m_np[idx], m_re_np[idx]


def face_fraction(seg: np.ndarray, config: RCLMaskConfig = RCLMaskConfig()) -> float:
    """Fraction of pixels of an (H, W) label map inside the face group (M > 0)."""
    m, _ = label_to_masks_np(seg, config)
    return float((m > 0).mean()) if m.size else 0.0
