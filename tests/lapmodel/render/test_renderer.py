"""lapmodel.render.renderer against closed forms: identity view, tilted plane and sphere (reprojected depth and normals),
a known yaw moves a point where the pinhole says, flip symmetry, gradients, float64 gradcheck, CPU vs CUDA."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from lapdata.geometry import camera as G
from lapdata.core.errors import LapError
from lapmodel.render import renderer as R

FOV = 10.0


def _rays(S: int, dtype=torch.float64) -> torch.Tensor:
    K = G.intrinsics(FOV, S, dtype=dtype)
    xy = G.pixel_grid(S, S, dtype=dtype)
    return torch.stack([(xy[..., 0] - K[0, 2]) / K[0, 0], (xy[..., 1] - K[1, 2]) / K[1, 1], torch.ones(S, S, dtype=dtype)], -1)


def _erode(mask: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Erode by k pixels, treating outside the image as empty."""
    m = torch.nn.functional.pad(mask.float().unsqueeze(1), (k, k, k, k))
    return (-torch.nn.functional.max_pool2d(-m, 2 * k + 1, 1, 0)).squeeze(1) > 0.5


def _view(rx=0.0, ry=0.0, rz=0.0, tx=0.0, ty=0.0, tz=0.0, dtype=torch.float64):
    return torch.tensor([[rx, ry, rz, tx, ty, tz]], dtype=dtype)


def _smooth_depth(S, B=1, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")
    d = []
    for _ in range(B):
        a = torch.randn(4, generator=g)
        d.append(1.0 - 0.05 * torch.exp(-(xx * xx + yy * yy) * 2) + 0.01 * (a[0] * xx + a[1] * yy + a[2] * xx * yy))
    return torch.stack(d).to(dtype)


def test_view_to_rt():
    v = torch.tensor([[0.1, -0.2, 0.3, 0.01, 0.02, 0.03]])
    rot, t = R.view_to_rt(v)
    assert torch.allclose(rot, G.euler_to_rotation(v[:, :3])) and torch.equal(t, v[:, 3:])
    rot0, t0 = R.view_to_rt(torch.zeros(2, 6))
    assert torch.allclose(rot0, torch.eye(3).expand(2, 3, 3)) and (t0 == 0).all()
    with pytest.raises(ValueError):
        R.view_to_rt(torch.zeros(2, 5))


def test_identity_view_reproduces_canonical():
    S = 32
    depth = _smooth_depth(S, B=2)
    img = torch.rand(2, 3, S, S)
    out = R.render(depth, img, torch.zeros(2, 6), FOV)
    # the mesh covers the canonical frame up to the outer pixel edges: every pixel comes back
    inner = (slice(None), slice(None), slice(None))
    assert (out.mask[inner] == 1).all()
    assert torch.allclose(out.depth[inner], depth[inner], atol=1e-5)
    assert torch.allclose(out.image.permute(0, 2, 3, 1)[inner], img.permute(0, 2, 3, 1)[inner], atol=1e-4)
    ident = G.normalize_pixels(G.pixel_grid(S, S), S, S)
    assert torch.allclose(out.grid[inner], ident.expand(2, S, S, 2)[inner], atol=1e-4)
    assert out.image.shape == (2, 3, S, S) and out.grid.shape == (2, S, S, 2) and out.mask.dtype == depth.dtype


def test_tilted_plane_reprojected_depth_and_normals():
    S = 48
    d = _rays(S)
    a, b = 2.0, -1.0  # canonical plane through the rotation centre: Z = 1 + a X + b Y
    canon = (1.0 / (1 - a * d[..., 0] - b * d[..., 1]))[None]
    view = _view(rx=0.05, ry=0.12, rz=0.3, tx=0.003, ty=-0.002, tz=0.02)
    depth = R.render_depth(canon, view, FOV)
    rot, t = R.view_to_rt(view)
    n = rot[0] @ torch.tensor([a, b, -1.0], dtype=torch.float64)  # plane normal after the view
    c = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) + t[0]
    true = (n @ c) / (d @ n)
    mask = R.valid_mask(depth) > 0
    assert mask.sum() > 0.6 * S * S
    # away from the silhouette (the mesh's border ring carries the border depth, off the analytic plane)
    inner = _erode(mask, 2)
    assert torch.allclose(depth[inner], true.expand_as(depth)[inner], atol=1e-9)
    normal = R.depth_to_normal(depth, FOV)[0]
    nn_ = n * torch.sign(n[2])  # facing the camera: +z (Unsup3D)
    inner = _erode(mask, 3)[0]
    assert torch.allclose(normal[inner], (nn_ / nn_.norm()).expand(S, S, 3)[inner], atol=1e-6)


def test_sphere_reprojected_depth_and_normals():
    S = 48
    d = _rays(S)
    C0, r = torch.tensor([0.0, 0.0, 1.5], dtype=torch.float64), 0.6

    def hit(C):
        bq = d @ C
        disc = bq**2 - (d * d).sum(-1) * (C @ C - r * r)
        return (bq - disc.clamp(min=0).sqrt()) / (d * d).sum(-1), disc > 0

    canon, ok = hit(C0)
    assert ok.all() and canon.min() > 0.85
    yaw = math.radians(8.0)
    view = _view(ry=yaw, tx=0.01)
    depth = R.render_depth(canon[None], view, FOV)[0]
    rot, t = R.view_to_rt(view)
    cen = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    C1 = rot[0] @ (C0 - cen) + cen + t[0]
    true, ok1 = hit(C1)
    mask = _erode((R.valid_mask(depth[None]) > 0) & ok1, 2)[0]  # away from the border ring
    assert mask.sum() > 0.5 * S * S
    assert (depth - true)[mask].abs().max() < 1e-5  # chord error of 1 px triangles is ~1e-6
    normal = R.depth_to_normal(depth[None], FOV)[0]
    P = d * true.unsqueeze(-1)
    tn = (C1 - P) / r  # Unsup3D orientation: the camera-facing side has +z
    inner = _erode(mask[None], 1)[0]
    cos = (normal * tn).sum(-1)[inner]
    assert cos.min() > math.cos(math.radians(0.5))


def test_known_yaw_moves_point_where_pinhole_says():
    S = 64
    i0, j0 = 28.0, 37.0
    yy, xx = torch.meshgrid(torch.arange(S, dtype=torch.float64), torch.arange(S, dtype=torch.float64), indexing="ij")
    blob = torch.exp(-((xx - j0) ** 2 + (yy - i0) ** 2) / (2 * 1.5**2))[None, None]
    canon = torch.full((1, S, S), 0.95, dtype=torch.float64)
    view = _view(rx=0.04, ry=math.radians(15.0), tx=0.002, ty=-0.001)
    out = R.render(canon, blob, view, FOV)
    w = out.image[0, 0]
    cx, cy = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
    K = G.intrinsics(FOV, S, dtype=torch.float64)
    P = 0.95 * torch.linalg.solve(K, torch.tensor([j0, i0, 1.0], dtype=torch.float64))
    rot, t = R.view_to_rt(view)
    cen = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    Q = rot[0] @ (P - cen) + cen + t[0]
    u, v = K[0, 0] * Q[0] / Q[2] + K[0, 2], K[1, 1] * Q[1] / Q[2] + K[1, 2]
    assert abs(cx - u) < 0.2 and abs(cy - v) < 0.2
    assert abs(u - j0) > 3  # the yaw really moved it


def test_flip_symmetry():
    S = 40
    depth = _smooth_depth(S, seed=3, dtype=torch.float64)
    img = torch.rand(1, 3, S, S, dtype=torch.float64)
    v = _view(0.05, 0.2, 0.1, 0.004, -0.003, 0.01)
    vm = v * torch.tensor([1.0, -1.0, -1.0, -1.0, 1.0, 1.0], dtype=torch.float64)
    a = R.render(depth, img, v, FOV)
    b = R.render(depth.flip(-1), img.flip(-1), vm, FOV)
    both = (a.mask > 0) & (b.mask.flip(-1) > 0)
    assert (a.mask != b.mask.flip(-1)).float().mean() < 0.01  # only ties on the silhouette may differ
    # the grid's cell diagonals mirror too, so the two meshes differ by the chord error: depth'' h^2 / 8 ~ 1e-4
    assert (a.depth - b.depth.flip(-1))[both].abs().max() < 2e-4
    inner = _erode(both, 1)
    diff = (a.image - b.image.flip(-1)).permute(0, 2, 3, 1)[inner].abs()
    assert diff.max() < 5e-3


def test_shade_closed_form():
    albedo = torch.full((1, 3, 2, 2), 0.5)
    normal = torch.tensor([0.0, 0.0, 1.0]).expand(1, 2, 2, 3).clone()
    normal[0, 0, 0] = torch.tensor([0.0, 0.0, -1.0])  # facing away: no diffuse
    light = torch.tensor([[0.2, 0.7, 1.0, 0.0]])
    shading, image = R.shade(albedo, normal, light)
    c = 1 / math.sqrt(2)
    assert torch.allclose(shading[0, 0], torch.tensor([[0.2, 0.2 + 0.7 * c], [0.2 + 0.7 * c, 0.2 + 0.7 * c]]), atol=1e-6)
    assert torch.allclose(image, albedo * shading)
    with pytest.raises(ValueError):
        R.shade(albedo, normal, torch.zeros(1, 3))


def test_gradients_reach_depth_albedo_light_view():
    S = 24
    depth = _smooth_depth(S, B=2).requires_grad_()
    albedo = torch.rand(2, 3, S, S, requires_grad=True)
    light = torch.tensor([[0.3, 0.6, 0.2, -0.1], [0.5, 0.5, 0.0, 0.3]], requires_grad=True)
    view = torch.tensor([[0.02, 0.1, 0.01, 0.0, 0.0, 0.01], [-0.03, -0.15, 0.0, 0.01, 0.0, 0.0]], requires_grad=True)
    _, canon_im = R.shade(albedo, R.depth_to_normal(depth, FOV), light)
    out = R.render(depth, canon_im, view, FOV)
    loss = (out.image - 0.5).abs().mean() + out.depth.mean()
    loss.backward()
    for x in (depth, albedo, light, view):
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_gradcheck_render_parts():
    S = 6
    torch.manual_seed(0)
    depth = (1.0 + 0.02 * torch.rand(1, S, S, dtype=torch.float64)).requires_grad_()
    view = _view(0.03, 0.07, 0.05, 0.001, 0.002, 0.0).requires_grad_()
    mask = R.valid_mask(R.render_depth(depth, view, FOV)) > 0

    def depth_fn(d, v):
        out = R.render_depth(d, v, FOV)
        assert torch.equal(R.valid_mask(out) > 0, mask)
        return out[mask]

    assert torch.autograd.gradcheck(depth_fn, (depth, view), eps=1e-7, atol=1e-5)
    vd = (1.0 + 0.02 * torch.rand(1, S, S, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda d, v: R.inverse_warp_grid(d, v, FOV), (vd, view))
    canon = torch.rand(1, 2, S, S, dtype=torch.float64, requires_grad=True)
    grid = (torch.rand(1, S, S, 2, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()
    assert torch.autograd.gradcheck(R.warp_canonical, (canon, grid))
    normal = torch.nn.functional.normalize(torch.randn(1, S, S, 3, dtype=torch.float64) + torch.tensor([0, 0, 2.0], dtype=torch.float64), dim=-1)
    normal.requires_grad_()
    light = torch.tensor([[0.3, 0.6, 0.2, -0.1]], dtype=torch.float64, requires_grad=True)
    alb = torch.rand(1, 3, S, S, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(R.shade, (alb, normal, light))


def test_turntable():
    S = 16
    depth = _smooth_depth(S, B=2)
    img = torch.rand(2, 3, S, S)
    yaws = [-0.3, 0.0, 0.3]
    frames = R.turntable(depth, img, yaws, FOV, background=1.0)
    assert frames.shape == (2, 3, 3, S, S)
    for t, yaw in enumerate(yaws):  # frame t of face b = face b rendered at yaw t, background where no surface
        view = torch.zeros(2, 6)
        view[:, 1] = yaw
        ref = R.render(depth, img, view, FOV)
        m = (ref.mask.unsqueeze(1) > 0).expand_as(ref.image)
        assert bool((~m).any()) == (yaw != 0.0), yaw  # turned away, the mesh no longer covers the frame
        assert torch.allclose(frames[:, t][m], ref.image[m], atol=1e-6) and (frames[:, t][~m] == 1.0).all(), yaw
    assert not torch.allclose(frames[:, 0], frames[:, 2])


def test_errors_and_backends():
    with pytest.raises(ValueError):
        R.render_depth(torch.ones(4, 4), torch.zeros(1, 6))
    with pytest.raises(ValueError):
        R.render_depth(torch.ones(1, 4, 4), torch.zeros(2, 6))
    with pytest.raises(ValueError):
        R.render_depth(torch.ones(1, 4, 4), torch.zeros(1, 6), backend="opengl")
    if importlib.util.find_spec("nvdiffrast") is None:
        with pytest.raises(LapError, match="nvdiffrast"):
            R.render_depth(torch.ones(1, 4, 4), torch.zeros(1, 6), backend="nvdiffrast")


@pytest.mark.gpu
def test_cuda_matches_cpu():
    S = 64
    depth = _smooth_depth(S, B=4)
    img = torch.rand(4, 3, S, S)
    view = torch.tensor([[0.05, 0.3, 0.0, 0.0, 0.0, 0.0]]).repeat(4, 1) * torch.linspace(-1, 1, 4)[:, None]
    a = R.render(depth, img, view, FOV)
    b = R.render(depth.cuda(), img.cuda(), view.cuda(), FOV)
    assert (a.mask != b.mask.cpu()).float().mean() < 1e-3
    both = (a.mask > 0) & (b.mask.cpu() > 0)
    assert (a.depth - b.depth.cpu())[both].abs().max() < 1e-5
    if importlib.util.find_spec("nvdiffrast") is not None:
        c = R.render_depth(depth.cuda(), view.cuda(), FOV, backend="nvdiffrast").cpu()
        assert (a.depth - c).abs().gt(1e-3).float().mean() < 0.01  # tie-break on edges may differ
