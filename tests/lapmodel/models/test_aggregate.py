"""LAP aggregation networks: set softmax, Eq. 4, order invariance, N=1 path, average ablation, shapes."""

from __future__ import annotations

import pytest
import torch

from lapdata.core.errors import LapError
from lapmodel.models.aggregate import Aggregator, ScaleEncoder, set_softmax, uniform_weights


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _set(b=2, n=4, s=32):
    images = torch.rand(b, n, 3, s, s)
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])[:b, :n]
    return images, valid


def test_set_softmax_sums_to_one_per_channel_and_zero_on_padding():
    logits = torch.randn(3, 5, 7)
    valid = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0]], dtype=torch.bool)
    w = set_softmax(logits, valid)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(3, 7))
    assert (w[~valid] == 0).all()
    # hand-computed: two valid views -> sigmoid of the logit difference
    torch.testing.assert_close(w[0, 0], torch.sigmoid(logits[0, 0] - logits[0, 1]))
    assert (w[2, 2] == 1).all()


def test_uniform_weights_is_mean_over_valid():
    valid = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    w = uniform_weights(valid, 3)
    torch.testing.assert_close(w[0, :, 0], torch.tensor([0.5, 0.5, 0.0, 0.0]))
    torch.testing.assert_close(w[1, :, 2], torch.full((4,), 0.25))


@pytest.mark.parametrize("size", [32, 64, 128])
def test_shapes(size):
    agg = Aggregator(3, size, zdim=64, nf=8)
    images, valid = _set(s=size)
    out = agg(images, valid)
    assert out.canon.shape == (2, 3, size, size)
    assert out.code.shape == (2, 64) and out.codes.shape == (2, 4, 64) and out.weights.shape == (2, 4, 64)
    torch.testing.assert_close(out.weights.sum(dim=1), torch.ones(2, 64))
    assert out.canon.abs().max() <= 1.0  # tanh
    depth = Aggregator(1, size, zdim=64, nf=8, tanh=False)(images, valid)
    assert depth.canon.shape == (2, 1, size, size)


@pytest.mark.parametrize("adaptive", [True, False])
def test_order_invariance_and_padding_ignored(adaptive):
    agg = Aggregator(3, 32, zdim=32, nf=8, adaptive=adaptive).eval()
    images, valid = _set()
    out = agg(images, valid)
    perm = torch.tensor([2, 0, 3, 1])
    out_p = agg(images[:, perm], valid[:, perm])
    torch.testing.assert_close(out_p.code, out.code, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_p.canon, out.canon, rtol=1e-4, atol=1e-5)
    # the content of a padded view does not matter
    images2 = images.clone()
    images2[0, 3] = torch.rand(3, 32, 32)
    torch.testing.assert_close(agg(images2, valid).canon, out.canon)


def test_set_of_one_equals_single_image_path():
    agg = Aggregator(1, 32, zdim=32, nf=8, tanh=False).eval()
    images = torch.rand(3, 1, 3, 32, 32)
    out = agg(images, torch.ones(3, 1, dtype=torch.bool))
    torch.testing.assert_close(out.code, agg.encoder(images[:, 0]))
    torch.testing.assert_close(out.canon, agg.single(images[:, 0]))
    assert (out.weights == 1).all()
    # a single valid view among padding is the same as the set of one
    padded = torch.cat([images, torch.rand(3, 2, 3, 32, 32)], dim=1)
    valid = torch.tensor([[True, False, False]] * 3)
    torch.testing.assert_close(agg(padded, valid).canon, out.canon, rtol=1e-4, atol=1e-5)


def test_adaptive_off_is_plain_mean_of_codes():
    agg = Aggregator(3, 32, zdim=16, nf=8, adaptive=False).eval()
    images, valid = _set()
    out = agg(images, valid)
    codes = agg.encoder(images.flatten(0, 1)).view(2, 4, -1)
    torch.testing.assert_close(out.code[0], codes[0, :3].mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.code[1], codes[1].mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.canon, agg.decoder(out.code[:, :, None, None]))


def test_weighted_sum_is_eq4():
    agg = Aggregator(3, 32, zdim=16, nf=8).eval()
    images, valid = _set()
    out = agg(images, valid)
    logits = agg.weight_head(out.codes)
    w = torch.softmax(logits[0, :3], dim=0)
    torch.testing.assert_close(out.code[0], (w * out.codes[0, :3]).sum(0), rtol=1e-4, atol=1e-5)


def test_gradcheck_aggregation_float64():
    agg = Aggregator(1, 16, zdim=4, nf=4).double()
    valid = torch.tensor([[True, True, False]])
    codes = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: agg.aggregate_codes(c, valid)[0], (codes,))


def test_errors():
    with pytest.raises(LapError, match="power of two"):
        ScaleEncoder(3, 48)
    agg = Aggregator(3, 32, zdim=8, nf=8)
    with pytest.raises(ValueError, match="at least one valid view"):
        agg(torch.rand(1, 2, 3, 32, 32), torch.zeros(1, 2, dtype=torch.bool))
