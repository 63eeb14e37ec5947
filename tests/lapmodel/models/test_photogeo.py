"""lapmodel.models.photogeo: the photo-geometric core shared by Unsup3D and LAP (hand values, shapes, gradients)."""

import math

import pytest
import torch

from lapmodel.models import photogeo

from lapmodel.render import renderer
from lapmodel.config import ModelConfig
from lapmodel.models.lap import LAPModel
from lapmodel.models.unsup3d import Unsup3D

TINY = dict(image_size=32, nf=16, nf_encoder=16, zdim=32, zdim_conf=16)


def test_depth_mapping_range_border_and_prior():
    cfg = ModelConfig(depth_prior=0.0)
    d = photogeo.map_depth(torch.randn(2, 1, 32, 32) * 5, cfg)
    assert d.shape == (2, 32, 32) and d.min() >= 0.9 and d.max() <= 1.1
    torch.testing.assert_close(d[:, :, 0], torch.full((2, 32), 0.7 * 1.1 + 0.3 * 0.9))
    torch.testing.assert_close(d[:, :, -1], torch.full((2, 32), 0.7 * 1.1 + 0.3 * 0.9))
    assert (d[:, :, 1:-1] != photogeo.border_depth(cfg)).all()  # 1 column pinned at 32 px (S // 32)
    # no prior: a zero raw depth is the middle of the range
    torch.testing.assert_close(photogeo.map_depth(torch.zeros(1, 32, 32), cfg)[:, :, 1:-1],
                               torch.full((1, 32, 30), 1.0))
    # prior: the centre is nearer than the corners, symmetric left-right, zero outside the ellipse
    p = photogeo.depth_prior(32, 1.0, (0.75, 0.9))
    assert p[0, 0] == 0 and p.min() < -0.99 and torch.equal(p, p.flip(-1))
    d = photogeo.map_depth(torch.zeros(1, 32, 32), ModelConfig(depth_prior=1.0))
    assert d[0, 16, 16] < d[0, 2, 16] and torch.allclose(d, d.flip(-1))
    # hand value: r = -cap at the centre pixel; d = 1 + 0.1 tanh(r - mean r)
    r = p
    want = 1.0 + 0.1 * math.tanh(float(r[16, 16] - r.mean()))
    assert d[0, 16, 16].item() == pytest.approx(want, abs=1e-6)


def test_light_and_view_mappings_hand_values():
    cfg = ModelConfig()
    assert photogeo.map_light(torch.tensor([[-1.0, 1.0, 0.5, -0.5]]), cfg).tolist() == [[0.0, 1.0, 0.5, -0.5]]
    v = photogeo.map_view(torch.tensor([[1.0, -0.5, 0.0, 1.0, -1.0, 1.0]]), cfg)
    torch.testing.assert_close(v, torch.tensor([[math.radians(60), -math.radians(30), 0, 0.1, -0.1, 0.0]]))


def test_border_columns():
    assert [photogeo.border_columns(s) for s in (16, 32, 64, 128, 256)] == [1, 1, 2, 4, 8]


def test_depth_smoothness_hand_value():
    cfg = ModelConfig()
    d = torch.zeros(1, 32, 32)
    d[:, :, 16:] = 0.02  # one step of 0.1 depth ranges in x, on 32 rows; none in y
    k = photogeo.border_columns(32)
    want = 0.02 / 0.2 * 32 / (32 * (32 - 2 * k - 1))
    assert photogeo.depth_smoothness(d, cfg).item() == pytest.approx(want, rel=1e-6)
    # rows alternating with period 2 are invisible to central-difference normals but not to the smoothness term
    stripes = 1.0 + 0.01 * (torch.arange(32) % 2).float().view(1, 32, 1).expand(1, 32, 32)
    n = renderer.depth_to_normal(stripes)
    assert torch.allclose(n[:, 2:-2, 2:-2, 2], torch.ones(1, 28, 28), atol=1e-6)
    assert photogeo.depth_smoothness(stripes, cfg) > 0.04


def test_render_identity_view_reproduces_the_canonical_image():
    cfg = ModelConfig(**TINY)
    torch.manual_seed(0)
    albedo = torch.rand(2, 3, 32, 32)
    depth = photogeo.map_depth(torch.randn(2, 32, 32) * 0.1, cfg)
    light = torch.tensor([[0.5, 0.5, 0.2, -0.1]] * 2)
    r = photogeo.render(albedo, depth, light, torch.zeros(2, 6), cfg)
    assert r.mask.all() and r.recon_flip.shape == r.recon.shape
    torch.testing.assert_close(r.recon, r.canon_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(r.recon_depth, depth, atol=1e-5, rtol=0)
    # a non-default depth range renders (the drift this module removed: LAP ignored model.min/max_depth)
    wide = ModelConfig(**TINY, min_depth=4.0, max_depth=6.0)
    dw = photogeo.map_depth(torch.zeros(2, 32, 32), wide)
    rw = photogeo.render(albedo, dw, light, torch.zeros(2, 6), wide, flip=False)
    assert rw.mask.all() and rw.recon_flip is None


def test_flat_init_starts_at_the_prior_for_both_models():
    cfg = ModelConfig(**TINY)
    x = torch.rand(2, 3, 32, 32)
    prior = photogeo.map_depth(torch.zeros(1, 32, 32), cfg)
    u = Unsup3D(cfg)
    torch.testing.assert_close(u(x).canon_depth, prior.expand(2, -1, -1))
    lap = LAPModel(ModelConfig(**{**TINY, "kind": "lap"}))
    torch.testing.assert_close(lap.reconstruct(x).canon_depth, prior.expand(2, -1, -1))
    # the default init does not start flat
    assert not torch.allclose(Unsup3D(ModelConfig(**TINY, depth_init="default"))(x).canon_depth, prior)


def test_reconstruction_loss_terms_and_gradcheck():
    cfg = ModelConfig(**TINY, lam_perc=0.0)
    torch.manual_seed(1)
    albedo = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    raw = (torch.randn(1, 16, 16, dtype=torch.float64) * 0.1).requires_grad_()
    img = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    light = torch.tensor([[0.4, 0.6, 0.3, 0.2]], dtype=torch.float64)
    view = torch.tensor([[0.05, 0.1, 0.0, 0.01, 0.0, 0.0]], dtype=torch.float64)
    conf = torch.full((1, 2, 16, 16), 0.5, dtype=torch.float64)

    r = photogeo.render(albedo, photogeo.map_depth(raw, cfg), light, view, cfg)
    total, logs = photogeo.reconstruction_loss(r, img, cfg, conf=conf, lam_flip=0.5, prefix="x_")
    assert set(logs) == {"x_l1", "x_l1_flip", "x_depth_sm"}
    want = logs["x_l1"] + 0.5 * logs["x_l1_flip"] + cfg.lam_depth_sm * logs["x_depth_sm"]
    torch.testing.assert_close(total.detach(), want)
    assert torch.isfinite(total)
    # the renderer runs in fp32 (outside autocast): gradcheck the smoothness term and the mappings in float64
    assert torch.autograd.gradcheck(lambda r_: photogeo.depth_smoothness(photogeo.map_depth(r_, cfg), cfg), (raw,))
    total.backward()
    assert raw.grad is not None and raw.grad.abs().sum() > 0 and torch.isfinite(raw.grad).all()


def test_flip_weight_schedule():
    cfg = ModelConfig(lam_flip=0.5, lam_flip_start_step=10)
    assert photogeo.flip_weight(cfg, 0) == 1.0 and photogeo.flip_weight(cfg, 10) == 0.5


def test_view_logs_give_the_spread_of_the_yaw_and_the_views_at_the_limit():
    cfg = ModelConfig(xyz_rotation_range=60.0)
    view = torch.zeros(4, 6)
    view[:, 1] = torch.deg2rad(torch.tensor([-10.0, 10.0, 59.9, -60.0]))
    logs = photogeo.view_logs(view[:2], cfg)
    assert logs["yaw_std_deg"].item() == pytest.approx(200 ** 0.5, rel=1e-5) and logs["yaw_at_limit"].item() == 0.0
    assert photogeo.view_logs(view[:1], cfg)["yaw_std_deg"].item() == 0.0
    assert photogeo.view_logs(view, cfg)["yaw_at_limit"].item() == 0.5
