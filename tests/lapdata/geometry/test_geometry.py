"""lapdata.geometry.camera against hand-computed values and closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from lapdata.geometry import camera as G


def test_intrinsics_values():
    K = G.intrinsics(10.0, 64)
    f = 31.5 / math.tan(math.radians(5.0))
    assert torch.allclose(K, torch.tensor([[f, 0, 31.5], [0, f, 31.5], [0, 0, 1.0]]))
    K2 = G.intrinsics(60.0, (30, 50))
    assert K2[0, 2] == 24.5 and K2[1, 2] == 14.5 and K2[0, 0] == K2[1, 1]
    with pytest.raises(ValueError):
        G.intrinsics(0.0, 64)


def test_depth_to_points_project_roundtrip():
    depth = 1 + torch.rand(2, 5, 7, dtype=torch.float64)
    K = G.intrinsics(30.0, (5, 7), dtype=torch.float64)
    pts = G.depth_to_points(depth, K)
    assert pts.shape == (2, 5, 7, 3)
    assert torch.allclose(pts[..., 2], depth)
    uv = G.project(pts, K)
    assert torch.allclose(uv, G.pixel_grid(5, 7, dtype=torch.float64).expand(2, -1, -1, -1))
    # centre pixel of an odd image lies on the optical axis
    assert torch.allclose(pts[:, 2, 3, :2], torch.zeros(2, 2, dtype=torch.float64))
    r = G.camera_to_raster(pts.reshape(2, -1, 3), K)
    assert torch.allclose(r[..., 2], depth.reshape(2, -1))


def test_euler_single_axes_and_order():
    a = math.pi / 2
    Rx = G.euler_to_rotation(torch.tensor([[a, 0.0, 0.0]]))[0]
    assert torch.allclose(Rx @ torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    Ry = G.euler_to_rotation(torch.tensor([[0.0, a, 0.0]]))[0]
    assert torch.allclose(Ry @ torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    Rz = G.euler_to_rotation(torch.tensor([[0.0, 0.0, a]]))[0]
    assert torch.allclose(Rz @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    ang = torch.tensor([[0.3, -0.5, 0.7]])
    R = G.euler_to_rotation(ang)[0]
    rx = G.euler_to_rotation(torch.tensor([[0.3, 0, 0]]))[0]
    ry = G.euler_to_rotation(torch.tensor([[0, -0.5, 0]]))[0]
    rz = G.euler_to_rotation(torch.tensor([[0, 0, 0.7]]))[0]
    assert torch.allclose(R, rz @ ry @ rx, atol=1e-6)
    assert torch.allclose(R @ R.T, torch.eye(3), atol=1e-6) and abs(torch.det(R).item() - 1) < 1e-6
    with pytest.raises(ValueError):
        G.euler_to_rotation(torch.zeros(3))


def test_yaw_moves_point_like_pinhole():
    # a point 0.1 in front of the rotation centre (0, 0, 1), yaw 20 degrees: x = -0.1 sin, z = 1 - 0.1 cos
    yaw = math.radians(20.0)
    R = G.euler_to_rotation(torch.tensor([[0.0, yaw, 0.0]], dtype=torch.float64))
    p = torch.tensor([[[0.0, 0.0, 0.9]]], dtype=torch.float64)
    q = G.transform_points(p, R, center=torch.tensor([0.0, 0.0, 1.0]))[0, 0]
    assert torch.allclose(q, torch.tensor([-0.1 * math.sin(yaw), 0.0, 1 - 0.1 * math.cos(yaw)], dtype=torch.float64))
    K = G.intrinsics(10.0, 64, dtype=torch.float64)
    uv = G.project(q.view(1, 1, 3), K)[0, 0]
    f = 31.5 / math.tan(math.radians(5))
    assert abs(uv[0].item() - (31.5 + f * q[0].item() / q[2].item())) < 1e-9 and abs(uv[1].item() - 31.5) < 1e-9


def test_transform_inverse_roundtrip():
    p = torch.randn(3, 4, 5, 3, dtype=torch.float64)
    R = G.euler_to_rotation(torch.randn(3, 3, dtype=torch.float64))
    t = torch.randn(3, 3, dtype=torch.float64)
    c = torch.tensor([0.0, 0.0, 1.0])
    q = G.transform_points(p, R, t, c)
    assert torch.allclose(G.inverse_transform_points(q, R, t, c), p)
    assert torch.allclose(q[:, 0, 0], (R @ (p[:, 0, 0] - c.double()).unsqueeze(-1)).squeeze(-1) + c + t)


def test_grid_faces_layout():
    f = G.grid_faces(3, 4)
    assert f.shape == (12, 3) and f.dtype == torch.int64
    assert f[0].tolist() == [0, 4, 1] and f[6].tolist() == [1, 4, 5]
    assert f.max() == 11


def test_normalize_pixels():
    xy = torch.tensor([[0.0, 0.0], [9.0, 4.0], [4.5, 2.0]])
    assert torch.allclose(G.normalize_pixels(xy, 5, 10), torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]))


def test_depth_to_normals_plane_and_sphere():
    S, fov = 32, 30.0
    K = G.intrinsics(fov, S, dtype=torch.float64)
    # plane Z = 2 + a X + b Y through the pinhole: depth = 2 / (1 - a dx - b dy)
    a, b = 0.4, -0.3
    xy = G.pixel_grid(S, S, dtype=torch.float64)
    dx, dy = (xy[..., 0] - K[0, 2]) / K[0, 0], (xy[..., 1] - K[1, 2]) / K[1, 1]
    depth = (2.0 / (1 - a * dx - b * dy))[None]
    n = G.depth_to_normals(depth, fov, eps=0.0)[0]  # exact unit length (eps only guards zero length)
    true = torch.tensor([-a, -b, 1.0], dtype=torch.float64) / math.sqrt(a * a + b * b + 1)
    assert torch.allclose(n[1:-1, 1:-1], true.expand(S - 2, S - 2, 3), atol=1e-9)
    assert torch.allclose(n[0, 0], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    # sphere of radius 1 at (0, 0, 4), seen through the middle: normal = (C - P) / r (points away from camera)
    C = torch.tensor([0.0, 0.0, 4.0], dtype=torch.float64)
    d = torch.stack([dx, dy, torch.ones_like(dx)], -1)
    bq = (d * C).sum(-1)
    disc = bq**2 - (d * d).sum(-1) * 15.0
    t = (bq - disc.clamp(min=0).sqrt()) / (d * d).sum(-1)
    n = G.depth_to_normals(t[None], fov)[0]
    true = C - d * t.unsqueeze(-1)
    inner = (xy - (S - 1) / 2).norm(dim=-1) < 8
    cos = (n * true).sum(-1)[inner]
    assert cos.min() > math.cos(math.radians(0.5))


def test_depth_to_normals_gradcheck():
    depth = (1 + 0.1 * torch.rand(1, 5, 5, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda d: G.depth_to_normals(d, 10.0), (depth,))


def test_look_at_and_object_to_camera():
    eye = torch.tensor([[1.0, 2.0, 5.0]])
    target = torch.tensor([[0.0, 0.5, 0.0]])
    R, t = G.look_at(eye, target)
    assert torch.allclose(R[0] @ R[0].T, torch.eye(3), atol=1e-6)
    assert torch.allclose(R[0] @ eye[0] + t[0], torch.zeros(3), atol=1e-5)
    tc = R[0] @ target[0] + t[0]
    assert torch.allclose(tc[:2], torch.zeros(2), atol=1e-5) and tc[2] > 0
    up = R[0] @ torch.tensor([0.0, 1.0, 0.0])
    assert up[1] < 0  # world up is image up (camera -y)
    with pytest.raises(ValueError):
        G.look_at(torch.tensor([[0.0, 5.0, 0.0]]), torch.zeros(1, 3))
    v, f = G.cube_mesh(2.0)
    cam = G.object_to_camera(v[None] + 3.0, torch.zeros(1, 3), 10.0)
    assert torch.allclose(cam.mean(1), torch.tensor([[0.0, 0.0, 10.0]]), atol=1e-6)
    # y-up object: its top (+y) ends up at camera -y (image up); its front (+z) faces the camera (-z)
    top = G.object_to_camera(torch.tensor([[[0.0, 1.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]]), torch.zeros(1, 3), 5.0, center=torch.zeros(3))
    assert top[0, 0, 1] < 0 and top[0, 2, 2] < 5.0


def test_mesh_primitives_and_normals():
    v, f = G.sphere_mesh(12, 24, radius=2.0)
    assert torch.allclose(v.norm(dim=-1), torch.tensor(2.0), atol=1e-6)
    vn = G.vertex_normals(v[None], f)[0]
    assert ((vn * v / 2).sum(-1) > 0.99).all()
    fn = G.face_normals(v[None], f)[0]
    centres = v[f].mean(1)
    assert ((fn * centres).sum(-1) > 0).all()
    v, f = G.cube_mesh()
    assert f.shape == (12, 3) and v.abs().max() == 0.5
    with pytest.raises(ValueError):
        G.sphere_mesh(1, 3)
