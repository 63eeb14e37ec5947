"""LAP attribute-refining network: injection and filtered-connection shapes at 64/128/256, ablation switches."""

from __future__ import annotations

import pytest
import torch

from lapmodel.models.refine import FilteredConnection, Injection, Refiner


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("size", [64, 128, 256])
def test_shapes_at_paper_sizes(size):
    ref = Refiner(out_size=size, width=8, target_size=32)
    a_c, d_c = torch.rand(1, 3, 64, 64) * 2 - 1, torch.randn(1, 1, 64, 64)
    out = ref(a_c, d_c, torch.rand(1, 3, 64, 64))
    assert out.albedo.shape == (1, 3, size, size) and out.depth.shape == (1, 1, size, size)
    att = out.albedo_detail.attention
    expected = [size // 2**k for k in range(1, 20) if size // 2**k >= 4]
    assert sorted(att) == sorted(expected)
    for s, a in att.items():
        assert a.shape == (1, 1, s, s) and (a >= 0).all() and (a <= 1).all()
    sel = out.depth_detail.selection
    assert sorted(sel) == [1, 4, 8]
    tc = ref.target_encoder.channels
    for lv, w in sel.items():
        assert w.shape == (1, tc[lv], 1, 1) and (w > 0).all() and (w < 1).all()


def test_target_encoder_levels():
    ref = Refiner(out_size=64, width=8, target_size=64)
    photo = torch.rand(2, 3, 128, 128)
    feats = ref.target_encoder(photo)
    assert feats[8].shape == (2, ref.target_encoder.channels[8], 8, 8)
    assert feats[4].shape == (2, ref.target_encoder.channels[4], 4, 4)
    assert feats[1].shape == (2, 256, 1, 1)
    # a photo of another size is first resized to the encoder's 64 px (bilinear): the same features as resizing it
    small = torch.nn.functional.interpolate(photo, size=(64, 64), mode="bilinear", align_corners=False)
    for lv, f in ref.target_encoder(small).items():
        torch.testing.assert_close(feats[lv], f)
    assert not torch.allclose(feats[1][0], feats[1][1])  # and the features depend on the photo


def test_untrained_refiner_returns_canonical_maps():
    ref = Refiner(out_size=64, width=8, target_size=32)
    a_c, d_c = torch.rand(2, 3, 64, 64), torch.rand(2, 1, 64, 64)
    out = ref(a_c, d_c, torch.rand(2, 3, 64, 64))
    torch.testing.assert_close(out.albedo, a_c)
    torch.testing.assert_close(out.depth, d_c)


def test_output_depends_on_target_after_head_is_nonzero():
    ref = Refiner(out_size=32, width=8, target_size=32)
    torch.nn.init.normal_(ref.albedo.head.weight, std=0.1)
    a_c, d_c = torch.rand(1, 3, 32, 32), torch.rand(1, 1, 32, 32)
    o1 = ref(a_c, d_c, torch.rand(1, 3, 32, 32)).albedo
    o2 = ref(a_c, d_c, torch.rand(1, 3, 32, 32)).albedo
    assert (o1 - o2).abs().max() > 1e-6


def test_vector_injection_only_uses_1x1():
    ref = Refiner(out_size=64, width=8, target_size=32, injection="vector")
    assert list(ref.albedo.inject) == ["1"]
    out = ref(torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64), torch.rand(1, 3, 32, 32))
    assert sorted(out.albedo_detail.selection) == [1]


@pytest.mark.parametrize("mode", ["plain", "none"])
def test_filtered_connection_ablation(mode):
    ref = Refiner(out_size=64, width=8, target_size=32, filtered_connection=mode)
    torch.nn.init.normal_(ref.albedo.head.weight, std=0.1)
    seen = []
    for s, skip in ref.albedo.skips.items():
        skip.register_forward_hook(lambda m, inp, out, s=s: seen.append((int(s), inp[0], out[0])))
    out = ref(torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64), torch.rand(1, 3, 32, 32))
    assert out.albedo.shape == (1, 3, 64, 64) and out.albedo_detail.attention == {}
    # plain: the encoder feature itself goes to the decoder (a U-Net skip); none: nothing does
    assert sorted(s for s, _, _ in seen) == [4, 8, 16, 32]
    for s, e, passed in seen:
        assert (passed is e) if mode == "plain" else (passed is None), s
    # ... and the decoder convs are sized for it: plain takes the skip channels like the filtered model, none not
    full = Refiner(out_size=64, width=8, target_size=32).albedo
    for s, up in ref.albedo.ups.items():
        drop = 0 if mode == "plain" else full.enc_channels[int(s)]
        assert up[0].in_channels == full.ups[s][0].in_channels - drop, s
    assert not list(ref.albedo.skips.parameters())  # no attention network in either ablation


def test_filtered_connection_unit():
    fc = FilteredConnection(8, 4, "filtered")
    e, g = torch.randn(2, 8, 16, 16), torch.randn(2, 4, 16, 16)
    filt, a = fc(e, g)
    assert a.shape == (2, 1, 16, 16)
    torch.testing.assert_close(filt, a * e)
    assert FilteredConnection(8, 4, "plain")(e, g)[0] is e
    assert FilteredConnection(8, 4, "none")(e, g) == (None, None)


def test_injection_gradcheck_float64():
    inj = Injection(4, 3).double()
    e = torch.randn(1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(inj, (e, t))


def test_bad_switches():
    with pytest.raises(ValueError, match="output size"):
        Refiner(out_size=100)
    with pytest.raises(ValueError, match="filtered_connection"):
        Refiner(out_size=64, filtered_connection="soft")
    with pytest.raises(ValueError, match="injection"):
        Refiner(out_size=64, injection="all")
