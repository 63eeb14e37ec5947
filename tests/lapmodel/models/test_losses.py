"""Losses: hand-computed values, masks and weights, float64 gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from lapmodel.models.losses import (EPS, feature_loss, gaussian_nll, laplace_nll, masked_mean, perceptual_loss,
                             photometric_loss)


def test_photometric_plain_l1():
    a = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    b = torch.zeros_like(a)
    assert photometric_loss(a, b).item() == pytest.approx(1.5)


def test_photometric_confidence_hand_value():
    # |d| = 1 everywhere, sigma = 2: sqrt(2) * 1 / 2 + log 2
    a = torch.ones(1, 3, 2, 2)
    b = torch.zeros(1, 3, 2, 2)
    sigma = torch.full((1, 1, 2, 2), 2.0)
    expect = math.sqrt(2) / (2 + EPS) + math.log(2 + EPS)
    assert photometric_loss(a, b, sigma).item() == pytest.approx(expect, rel=1e-6)


def test_photometric_mask_and_weight():
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    b = torch.zeros_like(a)
    mask = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])  # (B, H, W)
    # masked mean of 1, 2, 4 = 7/3
    assert photometric_loss(a, b, mask=mask).item() == pytest.approx(7 / 3)
    w = torch.tensor([[[[0.5, 1.0], [1.0, 0.0]]]])  # (B, 1, H, W)
    # weights 0.5, 1, 0 (mask) , 0 -> (0.5*1 + 2) / 1.5
    assert photometric_loss(a, b, mask=mask, weight=w).item() == pytest.approx(2.5 / 1.5)
    # channels: Unsup3D's mask.expand_as(loss) -> same mean per channel
    a3, b3 = a.expand(1, 3, 2, 2), b.expand(1, 3, 2, 2)
    assert photometric_loss(a3, b3, mask=mask).item() == pytest.approx(7 / 3)


def test_all_zero_weight_is_zero_not_nan():
    a, b = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    out = photometric_loss(a, b, mask=torch.zeros(2, 4, 4))
    assert out.item() == 0.0


def test_gaussian_hand_value():
    d2 = torch.tensor([4.0])
    s = torch.tensor([2.0])
    assert gaussian_nll(d2, s).item() == pytest.approx(4 / (8 + EPS) + math.log(2 + EPS), rel=1e-6)
    assert gaussian_nll(d2, None).item() == 4.0
    assert laplace_nll(torch.tensor([3.0]), None).item() == 3.0


def test_feature_loss_pools_mask():
    f1 = torch.tensor([[[[1.0, 3.0]]]])  # (1, 1, 1, 2)
    f2 = torch.zeros_like(f1)
    mask = torch.tensor([[[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0]]])  # (1, 2, 4) -> pooled (2x2): [1, 0.25]
    expect = (1 * 1 + 9 * 0.25) / 1.25
    assert feature_loss(f1, f2, mask=mask).item() == pytest.approx(expect)


def test_confidence_minimiser_is_the_error():
    # d/dsigma [sqrt2 |d| / sigma + log sigma] = 0 at sigma = sqrt2 |d|
    d = torch.tensor([0.3])
    sig = torch.linspace(0.05, 2, 2000)
    best = sig[torch.argmin(laplace_nll(d.abs(), sig))]
    assert best.item() == pytest.approx(math.sqrt(2) * 0.3, abs=2e-3)
    best = sig[torch.argmin(gaussian_nll(d**2, sig))]
    assert best.item() == pytest.approx(0.3, abs=2e-3)


def test_gradcheck_photometric():
    torch.manual_seed(0)
    a = torch.rand(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    b = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    s = (torch.rand(2, 1, 4, 4, dtype=torch.float64) + 0.5).requires_grad_()
    m = (torch.rand(2, 4, 4) > 0.3).double()
    w = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, s: photometric_loss(a, b, s, m, w), (a, s))


def test_gradcheck_feature():
    torch.manual_seed(1)
    f1 = torch.randn(2, 5, 2, 2, dtype=torch.float64, requires_grad=True)
    f2 = torch.randn(2, 5, 2, 2, dtype=torch.float64)
    s = (torch.rand(2, 1, 2, 2, dtype=torch.float64) + 0.5).requires_grad_()
    m = (torch.rand(2, 8, 8) > 0.3).double()
    assert torch.autograd.gradcheck(lambda f, s: feature_loss(f, f2, s, m), (f1, s))


def test_perceptual_loss_with_tiny_vgg():
    class Pool(torch.nn.Module):  # stands in for VGG: a quarter-size feature map
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 4)

    a = torch.rand(2, 3, 8, 8)
    assert perceptual_loss(Pool(), a, a).item() == 0.0
    b = torch.rand(2, 3, 8, 8)
    expect = ((torch.nn.functional.avg_pool2d(a, 4) - torch.nn.functional.avg_pool2d(b, 4)) ** 2).mean()
    assert perceptual_loss(Pool(), a, b).item() == pytest.approx(expect.item())
    assert masked_mean(torch.ones(1, 2, 2, 2), None).item() == 1.0
