"""Unsup3D networks: shapes at 64/128/256 (tiny widths), per-scale features, value ranges, bad sizes; VGG loading."""

from __future__ import annotations

import pytest
import torch

from lapdata.core.errors import LapError
from lapmodel.models.networks import ConfNet, DownPath, EDDeconv, Encoder, count_parameters, num_stages, stage_channels
from lapmodel.models.vgg import VGG16Relu33, load_vgg, vgg16_keys


@pytest.mark.parametrize("size", [64, 128, 256])
def test_shapes(size):
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size)
    nf, z = 8, 16
    assert EDDeconv(3, 1, size, nf, z, activation=None)(x).shape == (2, 1, size, size)
    a = EDDeconv(3, 3, size, nf, z)(x)
    assert a.shape == (2, 3, size, size) and a.abs().max() <= 1  # tanh
    v = Encoder(3, 6, size, nf)(x)
    assert v.shape == (2, 6) and v.abs().max() <= 1
    full, quarter = ConfNet(3, size, nf, z)(x)
    assert full.shape == (2, 2, size, size) and quarter.shape == (2, 2, size // 4, size // 4)
    assert (full > 0).all() and (quarter > 0).all()  # softplus


@pytest.mark.parametrize("size", [64, 128, 256])
def test_features_per_scale(size):
    down = DownPath(3, size, nf=8, zdim=16)
    x = torch.randn(1, 3, size, size)
    feats = down.features(x)
    n = num_stages(size)
    assert len(feats) == n + 1
    sides = [f.shape[-1] for f in feats]
    assert sides == [size // 2**(i + 1) for i in range(n)] + [1]
    assert [f.shape[1] for f in feats] == stage_channels(8, n) + [16] == down.channels
    assert torch.equal(feats[-1], down(x))


def test_ed_decoder_reuse():
    """The decoder of an EDDeconv decodes a code from its encoder (what LAP's aggregation does with a fused code)."""
    net = EDDeconv(3, 3, 64, nf=8, zdim=16)
    x = torch.randn(3, 3, 64, 64)
    code = net.encoder(x)
    assert code.shape == (3, 16, 1, 1)
    assert torch.equal(net.decoder(code), net(x))


def test_channel_plan_and_published_size():
    assert num_stages(64) == 4 and num_stages(128) == 5 and num_stages(256) == 6
    assert stage_channels(64, 4) == [64, 128, 256, 512]
    assert stage_channels(64, 6) == [64, 128, 256, 512, 512, 512]
    # the published 64 px Unsup3D nets at full width: depth/albedo nets 12.98 M, conf 7.68 M, encoders 1.74 M params
    assert count_parameters(Encoder(3, 6, 64, 32)) == 32 * 3 * 16 + 64 * 32 * 16 + 128 * 64 * 16 + 256 * 128 * 16 \
        + 256 * 256 * 16 + 6 * 256


@pytest.mark.parametrize("size", [0, 8, 48, 100])
def test_bad_size(size):
    with pytest.raises(LapError, match="image size"):
        num_stages(size)


# ---------------------------------------------------------------------------------------------------- VGG


def fake_vgg_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in torchvision's vgg16 key layout (features up to conv3_3, plus classifier keys to ignore)."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(shape, generator=g) * 0.1 for k, shape in vgg16_keys().items()}
    sd["features.17.weight"] = torch.randn(512, 256, 3, 3, generator=g)
    sd["classifier.0.weight"] = torch.randn(8, 8, generator=g)
    return sd


def test_vgg_forward_matches_reference():
    sd = fake_vgg_state()
    vgg = VGG16Relu33(sd)
    x = torch.rand(2, 3, 32, 32)
    ref = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1)
    for i in (0, 2, "M", 5, 7, "M", 10, 12, 14):
        if i == "M":
            ref = torch.nn.functional.max_pool2d(ref, 2)
        else:
            ref = torch.relu(torch.nn.functional.conv2d(ref, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"],
                                                        padding=1))
    out = vgg(x)
    assert out.shape == (2, 256, 8, 8)
    assert torch.allclose(out, ref, atol=1e-5)
    assert vgg.state_dict() == {}  # never stored in model checkpoints
    assert not list(vgg.parameters())


def test_vgg_from_file(tmp_path):
    p = tmp_path / "vgg16-397923af.pth"
    torch.save(fake_vgg_state(), p)
    vgg = load_vgg(p)
    # the file's weights, not some others: the same features as the network built from the state dict itself
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(vgg(x), VGG16Relu33(fake_vgg_state())(x))
    assert not torch.allclose(vgg(x), VGG16Relu33(fake_vgg_state(seed=1))(x))
    assert load_vgg(None) is None


def test_vgg_wrong_files(tmp_path):
    with pytest.raises(LapError, match="does not exist"):
        load_vgg(tmp_path / "missing.pth")
    sd = fake_vgg_state()
    del sd["features.12.weight"]
    torch.save(sd, tmp_path / "a.pth")
    with pytest.raises(LapError, match="missing features.12.weight"):
        load_vgg(tmp_path / "a.pth")
    sd = fake_vgg_state()
    sd["features.5.weight"] = torch.zeros(128, 64, 5, 5)
    torch.save(sd, tmp_path / "b.pth")
    with pytest.raises(LapError, match=r"features.5.weight has shape \(128, 64, 5, 5\)"):
        load_vgg(tmp_path / "b.pth")
    (tmp_path / "c.pth").write_bytes(b"not a torch file")
    with pytest.raises(LapError, match="cannot be read"):
        load_vgg(tmp_path / "c.pth")
    torch.save([1, 2], tmp_path / "d.pth")
    with pytest.raises(LapError, match="not a state dict"):
        load_vgg(tmp_path / "d.pth")
