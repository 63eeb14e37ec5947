"""RCL masks: label map -> (M, M_re), values exactly as configured."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lapdata.core.config import load_config
from lapdata.core.errors import LapError
from lapdata.parsing.labels import CLASSES, NUM_CLASSES, class_counts, colorize
from lapdata.parsing.masks import RCLMaskConfig, face_fraction, label_to_masks, label_to_masks_np

# expected defaults, written out by hand (paper: face 1, eyes/brows/mouth 0.3, the rest 0)
EXPECTED_M = {
    "background": 0, "skin": 1, "nose": 1, "eye_g": 0, "l_eye": 1, "r_eye": 1, "l_brow": 1, "r_brow": 1,
    "l_ear": 1, "r_ear": 1, "mouth": 1, "u_lip": 1, "l_lip": 1, "hair": 0, "hat": 0, "ear_r": 0, "neck_l": 0,
    "neck": 0, "cloth": 0,
}  # fmt: skip
EXPECTED_MRE = dict(EXPECTED_M, l_eye=0.3, r_eye=0.3, l_brow=0.3, r_brow=0.3, mouth=0.3, u_lip=0.3, l_lip=0.3)


def test_classes():
    assert NUM_CLASSES == 19 and CLASSES[0] == "background" and CLASSES[10] == "mouth" and CLASSES[18] == "cloth"


def test_default_values_every_class():
    seg = torch.arange(19).view(1, 19)
    m, m_re = label_to_masks(seg)
    assert m.dtype == torch.float32 and m.shape == (1, 19)
    for i, name in enumerate(CLASSES):
        assert m[0, i].item() == pytest.approx(EXPECTED_M[name], abs=0), name
        assert m_re[0, i].item() == pytest.approx(EXPECTED_MRE[name], abs=1e-7), name


def test_any_leading_dims_and_dtypes():
    g = torch.Generator().manual_seed(0)
    seg = torch.randint(0, 19, (2, 3, 4, 5, 6), generator=g)
    m, m_re = label_to_masks(seg)
    assert m.shape == seg.shape and m_re.shape == seg.shape
    m8, m_re8 = label_to_masks(seg.to(torch.uint8))
    assert torch.equal(m, m8) and torch.equal(m_re, m_re8)
    mn, m_ren = label_to_masks_np(seg.numpy())
    assert np.array_equal(mn, m.numpy()) and np.array_equal(m_ren, m_re.numpy())
    assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
    # M_re <= M everywhere, and they differ exactly on the lowered classes
    lowered = torch.isin(seg, torch.tensor([4, 5, 6, 7, 10, 11, 12]))
    assert torch.equal(m_re != m, lowered)


def test_out_of_range_labels_are_background():
    seg = torch.tensor([[-1, 19, 255, 1000, 1]])
    m, m_re = label_to_masks(seg)
    assert m.tolist() == [[0, 0, 0, 0, 1]] and m_re.tolist() == [[0, 0, 0, 0, 1]]


def test_float_seg_rejected():
    with pytest.raises(TypeError):
        label_to_masks(torch.zeros(2, 2))


def test_configured_from_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("rcl:\n  face: [skin, nose, hair]\n  lowered: [nose]\n  lowered_weight: 0.5\n  face_weight: 0.9\n")
    cfg = load_config(RCLMaskConfig, p, section="rcl")
    assert cfg.face == ("skin", "nose", "hair")
    m, m_re = label_to_masks(torch.tensor([0, 1, 2, 13, 4]), cfg)
    assert m.tolist() == pytest.approx([0, 0.9, 0.9, 0.9, 0])
    assert m_re.tolist() == pytest.approx([0, 0.9, 0.5, 0.9, 0])


def test_bad_config():
    with pytest.raises(LapError, match="unknown class"):
        RCLMaskConfig(face=("skin", "beard"))
    with pytest.raises(LapError, match="lowered_weight"):
        RCLMaskConfig(lowered_weight=1.5)
    with pytest.raises(LapError, match="unknown key"):
        load_config(RCLMaskConfig, {"weights": 1})


def test_face_fraction_counts_colorize():
    seg = np.zeros((10, 10), np.uint8)
    seg[:5, :] = 1  # skin: 50 px
    seg[5, :4] = 13  # hair
    assert face_fraction(seg) == pytest.approx(0.5)
    c = class_counts(seg)
    assert len(c) == 19 and c[0] == 46 and c[1] == 50 and c[13] == 4 and sum(c) == 100
    rgb = colorize(seg)
    assert rgb.shape == (10, 10, 3) and rgb.dtype == np.uint8 and (rgb[9, 9] == 0).all()
    assert rgb[0, 0].tolist() == [204, 102, 102] and rgb[5, 0].tolist() == [85, 40, 10]  # skin, hair: the demo palette
    every = colorize(np.arange(19, dtype=np.uint8)[None])[0]
    assert len({tuple(c) for c in every.tolist()}) == 19  # each class its own colour
    assert (colorize(np.array([[-1, 19, 255]])) == 0).all()  # out of range: black like the background


@pytest.mark.gpu
def test_cuda():
    seg = torch.randint(0, 19, (2, 8, 8), device="cuda")
    m, m_re = label_to_masks(seg)
    assert m.device.type == "cuda"
    assert torch.equal(m.cpu(), label_to_masks(seg.cpu())[0])
