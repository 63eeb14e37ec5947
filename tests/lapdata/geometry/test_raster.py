"""lapdata.geometry.raster against closed forms: cube and sphere (depth, coverage, normals), exact coverage on grid meshes,
perspective-correct interpolation, edge cases, float64 gradcheck, CPU vs CUDA."""

from __future__ import annotations

import math

import pytest
import torch

from lapdata.geometry import camera as G
from lapdata.geometry.raster import count_coverage, interpolate, rasterize, rasterize_face_ids


def _rays(K: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(H, W, 3) ray directions with z = 1 through the pixel centres (so ray parameter t = depth)."""
    xy = G.pixel_grid(H, W, dtype=torch.float64)
    K = K.double()
    return torch.stack([(xy[..., 0] - K[0, 2]) / K[0, 0], (xy[..., 1] - K[1, 2]) / K[1, 1], torch.ones(H, W, dtype=torch.float64)], -1)


def _ray_box(d: torch.Tensor, R: torch.Tensor, C: torch.Tensor, h: float):
    """Ray from the origin along d (H, W, 3) against the box {|R^T (p - C)| <= h}: depth (inf = miss), normal."""
    o = (-C.double()) @ R.double()  # origin in box frame (R^T (0 - C)) as row vector
    dl = d @ R.double()
    with torch.no_grad():
        inv = 1.0 / dl
        t1, t2 = (-h - o) * inv, (h - o) * inv
        tmin, tmax = torch.minimum(t1, t2), torch.maximum(t1, t2)
        tn, axis = tmin.max(-1)
        tf = tmax.min(-1).values
    hit = tn <= tf
    depth = torch.where(hit, tn, torch.full_like(tn, math.inf))
    nl = torch.nn.functional.one_hot(axis, 3).double() * -torch.sign(torch.gather(dl, -1, axis.unsqueeze(-1)))
    return depth, nl @ R.double().T  # outward normal in camera space


def test_cube_depth_coverage_normals():
    H = W = 64
    K = G.intrinsics(30.0, H)
    R = G.euler_to_rotation(torch.tensor([[0.4, 0.6, 0.1]]))[0]
    C = torch.tensor([0.1, -0.05, 4.0])
    v, f = G.cube_mesh(1.0)
    cam = (v @ R.T + C)[None]
    frags = rasterize(G.camera_to_raster(cam, K), f, H, W)
    depth, normal = _ray_box(_rays(K, H, W), R, C, 0.5)
    hit = torch.isfinite(depth)
    covered = frags.face_id[0] >= 0
    assert hit.sum() > 500
    # pixel-centre coverage of a polyhedron is exact up to ties on the silhouette
    assert (covered != hit).sum() <= 2
    both = covered & hit
    assert torch.allclose(frags.zbuf[0][both].double(), depth[both], atol=1e-4)
    assert torch.isinf(frags.zbuf[0][~covered]).all()
    fn = G.face_normals(cam, f)[0][frags.face_id[0].clamp(min=0)]
    agree = ((fn.double() * normal).sum(-1) > 0.999)[both]
    assert agree.float().mean() > 0.98  # disagreements only on pixels exactly at cube edges
    assert (fn[..., 2][both] < 0).all()  # visible faces point at the camera (outward normals, camera at origin)


def test_sphere_depth_coverage_normals():
    H = W = 96
    fov, dist, r = 40.0, 4.0, 1.0
    K = G.intrinsics(fov, H)
    v, f = G.sphere_mesh(48, 96, r)
    C = torch.tensor([0.0, 0.0, dist])
    cam = (v + C)[None]
    frags = rasterize(G.camera_to_raster(cam, K), f, H, W)
    covered = frags.face_id[0] >= 0
    # analytic silhouette: a circle of radius f tan(asin(r / d)) pixels
    rad = K[0, 0].item() * math.tan(math.asin(r / dist))
    area = math.pi * rad**2
    assert abs(covered.sum().item() - area) / area < 0.02
    d = _rays(K, H, W)
    b = (d * C.double()).sum(-1)
    disc = b**2 - (d * d).sum(-1) * (dist**2 - r**2)
    hit = disc > 0
    t = (b - disc.clamp(min=0).sqrt()) / (d * d).sum(-1)
    assert (covered & ~hit).sum() == 0  # the inscribed mesh never covers more than the sphere
    xy = G.pixel_grid(H, W, dtype=torch.float64) - (H - 1) / 2
    both = covered & hit & (xy.norm(dim=-1) < 0.9 * rad)  # away from grazing rays at the silhouette
    err = (frags.zbuf[0].double() - t)[both].abs()
    assert err.max() < 4e-3  # tessellation: sagitta r (1 - cos(pi/48)) ~ 2e-3
    nrm = interpolate(G.vertex_normals(cam, f), f, frags)[0].double()
    nrm = nrm / nrm.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    true_n = (d * t.unsqueeze(-1) - C.double()) / r
    cosang = (nrm * true_n).sum(-1)[both]
    assert math.degrees(math.acos(min(1.0, cosang.min().item()))) < 3.0


def _grid_verts(H, W, offset=0.0, jitter=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = G.pixel_grid(H, W) + offset
    xy = xy + jitter * (torch.rand(H, W, 2, generator=g) - 0.5)
    return torch.cat([xy, torch.ones(H, W, 1)], -1).reshape(1, -1, 3)


def test_grid_vertices_on_pixel_centres_exact_coverage():
    H, W = 17, 23
    faces = G.grid_faces(H, W)
    cnt = count_coverage(_grid_verts(H, W), faces, H, W)[0]
    # every pixel centre is a vertex: top-left rule gives all but the last row and column, each exactly once
    assert (cnt[:-1, :-1] == 1).all()
    assert (cnt[-1] == 0).all() and (cnt[:, -1] == 0).all()


def test_grid_half_offset_covers_image_once():
    H, W = 16, 16
    # vertices at the pixel corners, grid of (H+1) x (W+1)
    verts = _grid_verts(H + 1, W + 1, offset=-0.5)
    cnt = count_coverage(verts, G.grid_faces(H + 1, W + 1), H, W)[0]
    assert (cnt == 1).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jittered_grid_no_holes_no_double_cover(seed):
    H, W = 24, 24
    verts = _grid_verts(H, W, jitter=0.9, seed=seed)  # vertices move by < 0.45 px: topology is kept
    # snap some vertices exactly onto pixel centres and edges onto pixel rows to exercise the tie-break
    verts[0, ::5, :2] = verts[0, ::5, :2].round()
    faces = G.grid_faces(H, W)
    cnt = count_coverage(verts, faces, H, W)[0]
    assert cnt.max() <= 1
    assert (cnt[1:-1, 1:-1] == 1).all()
    fid = rasterize_face_ids(verts, faces, H, W)[0]
    assert ((fid >= 0) == (cnt == 1)).all()


def test_rotated_depth_grid_exactly_once():
    # the model renderer's case: a grid mesh from a depth map, seen after a small rotation (no folds)
    S = 32
    K = G.intrinsics(10.0, S)
    g = torch.Generator().manual_seed(0)
    depth = 1.0 + 0.02 * torch.randn(1, S, S, generator=g).cumsum(1).cumsum(2) / S
    pts = G.depth_to_points(depth, K)
    R = G.euler_to_rotation(torch.tensor([[0.05, -0.1, 0.2]]))
    pts = G.transform_points(pts, R, torch.tensor([[0.01, 0.0, 0.0]]), center=torch.tensor([0.0, 0.0, 1.0]))
    verts = G.camera_to_raster(pts.reshape(1, -1, 3), K)
    cnt = count_coverage(verts, G.grid_faces(S, S), S, S)[0]
    assert cnt.max() <= 1
    assert cnt.sum() > 0.6 * S * S


def test_closed_mesh_is_covered_twice():
    # both sides are drawn: a closed mesh covers its silhouette with its front and its back, without gaps
    v, f = G.sphere_mesh(16, 32)
    K = G.intrinsics(40.0, 48)
    verts = G.camera_to_raster((v + torch.tensor([0.0, 0.0, 4.0]))[None], K)
    cnt = count_coverage(verts, f, 48, 48)[0]
    inside = rasterize_face_ids(verts, f, 48, 48)[0] >= 0
    assert inside.sum() > 300 and (cnt[inside] == 2).all() and (cnt[~inside] == 0).all()


def test_perspective_correct_plane():
    H, W = 20, 28
    K = G.intrinsics(50.0, (H, W))
    # plane Z = 2 + 0.5 X + 0.3 Y, as two big triangles whose corners are far outside the image
    corners = torch.tensor([[-2.0, -2.0], [2.0, -2.0], [2.0, 2.0], [-2.0, 2.0]])
    Z = 2.0 + 0.5 * corners[:, 0] + 0.3 * corners[:, 1]
    cam = torch.cat([corners, Z[:, None]], -1)[None].double()
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    frags = rasterize(G.camera_to_raster(cam, K.double()), faces, H, W)
    d = _rays(K, H, W)
    t = 2.0 / (1.0 - 0.5 * d[..., 0] - 0.3 * d[..., 1])
    assert (frags.face_id >= 0).all()
    assert torch.allclose(frags.zbuf[0], t, atol=1e-9)
    pts = interpolate(cam, faces, frags)[0]
    assert torch.allclose(pts, d * t.unsqueeze(-1), atol=1e-9)
    assert torch.allclose(frags.bary.sum(-1), torch.ones(1, H, W, dtype=torch.float64))


def test_occlusion_order_independent_and_back_faces():
    tri = torch.tensor([[2.0, 2.0], [14.0, 3.0], [4.0, 13.0]])
    near = torch.cat([tri, torch.full((3, 1), 2.0)], -1)
    far = torch.cat([tri + 0.5, torch.full((3, 1), 3.0)], -1)
    verts = torch.cat([far, near])[None]
    for faces in (torch.tensor([[0, 1, 2], [3, 4, 5]]), torch.tensor([[3, 4, 5], [0, 1, 2]])):
        frags = rasterize(verts, faces, 16, 16)
        near_id = (faces[:, 0] == 3).nonzero().item()
        fid = frags.face_id[0]
        cover_near = rasterize(near[None], torch.tensor([[0, 1, 2]]), 16, 16).face_id[0] >= 0
        assert (fid[cover_near] == near_id).all()
        assert torch.allclose(frags.zbuf[0][cover_near], torch.tensor(2.0))
    # reversed winding (a back face) covers exactly the same pixels
    a = rasterize(near[None], torch.tensor([[0, 1, 2]]), 16, 16).face_id
    b = rasterize(near[None], torch.tensor([[0, 2, 1]]), 16, 16).face_id
    assert torch.equal(a, b) and (a >= 0).sum() > 30


def test_large_partly_outside_and_non_square():
    H, W = 30, 50
    verts = torch.tensor([[[-100.0, -100.0, 5.0], [400.0, -100.0, 5.0], [-100.0, 400.0, 5.0]]])
    frags = rasterize(verts, torch.tensor([[0, 1, 2]]), H, W)
    assert (frags.face_id == 0).all() and torch.allclose(frags.zbuf, torch.tensor(5.0))
    assert frags.face_id.shape == (1, H, W) and frags.bary.shape == (1, H, W, 3)


def test_degenerate_behind_camera_and_nan_are_skipped():
    verts = torch.tensor(
        [[[1.0, 1.0, 1.0], [5.0, 5.0, 1.0], [9.0, 9.0, 1.0],  # collinear
          [1.0, 1.0, -1.0], [9.0, 1.0, 1.0], [1.0, 9.0, 1.0],  # a vertex behind the camera
          [1.0, 1.0, float("nan")], [9.0, 1.0, 1.0], [1.0, 9.0, 1.0]]]  # not finite
    )
    faces = torch.arange(9).view(3, 3)
    frags = rasterize(verts, faces, 10, 10)
    assert (frags.face_id == -1).all() and torch.isinf(frags.zbuf).all() and (frags.bary == 0).all()


def test_chunking_and_batch_invariance():
    g = torch.Generator().manual_seed(3)
    B, F, S = 3, 60, 40
    verts = torch.cat([torch.rand(B, 3 * F, 2, generator=g) * 50 - 5, 1 + torch.rand(B, 3 * F, 1, generator=g)], -1)
    faces = torch.arange(3 * F).view(F, 3)
    ref = rasterize_face_ids(verts, faces, S, S)
    small = rasterize_face_ids(verts, faces, S, S, max_candidates=7)
    assert torch.equal(ref, small)
    for b in range(B):
        assert torch.equal(rasterize_face_ids(verts[b : b + 1], faces, S, S)[0], ref[b])
    # a brute-force z-buffer over all triangles agrees
    for b in range(B):
        best = torch.full((S, S), math.inf)
        for k in range(F):
            p = verts[b, 3 * k : 3 * k + 3]
            fr = rasterize(p[None], torch.tensor([[0, 1, 2]]), S, S)
            best = torch.minimum(best, fr.zbuf[0])
        fr = rasterize(verts[b : b + 1], faces, S, S)
        assert torch.allclose(fr.zbuf[0], best, atol=1e-5, rtol=0)


def test_interpolate_shapes_and_empty():
    verts = torch.tensor([[[1.0, 1.0, 2.0], [6.0, 1.0, 2.0], [1.0, 6.0, 2.0]]]).repeat(2, 1, 1)
    faces = torch.tensor([[0, 1, 2]])
    frags = rasterize(verts, faces, 8, 8)
    out = interpolate(torch.eye(3), faces, frags)  # (V, C) shared by the batch
    assert out.shape == (2, 8, 8, 3)
    assert torch.allclose(out, frags.bary)
    assert (out[~frags.mask] == 0).all()


def test_errors():
    v = torch.zeros(1, 3, 3)
    with pytest.raises(ValueError):
        rasterize(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), 4, 4)
    with pytest.raises(ValueError):
        rasterize(v, torch.tensor([[0, 1, 3]]), 4, 4)
    with pytest.raises(TypeError):
        rasterize(v, torch.tensor([[0.0, 1.0, 2.0]]), 4, 4)
    with pytest.raises(ValueError):
        rasterize(v, torch.tensor([[0, 1, 2]]), 0, 4)


def test_gradcheck_bary_zbuf():
    verts = torch.tensor(
        [[[0.3, 0.2, 2.0], [6.7, 0.6, 2.5], [0.4, 5.8, 1.5], [6.2, 6.4, 3.0]]], dtype=torch.float64, requires_grad=True
    )
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    mask = rasterize(verts, faces, 7, 7).mask

    def fn(v):
        fr = rasterize(v, faces, 7, 7)
        assert torch.equal(fr.mask, mask)  # visibility must not change under the perturbation
        return fr.bary[mask], fr.zbuf[mask]

    assert torch.autograd.gradcheck(fn, (verts,), eps=1e-6, atol=1e-6)
    attrs = torch.randn(1, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, a: interpolate(a, faces, rasterize(v, faces, 7, 7)), (verts, attrs), eps=1e-6, atol=1e-6)


def test_no_nan_gradients_with_empty_pixels():
    verts = torch.tensor([[[1.0, 1.0, 2.0], [6.0, 1.0, 2.0], [1.0, 6.0, 2.0]]], requires_grad=True)
    frags = rasterize(verts, torch.tensor([[0, 1, 2]]), 8, 8)
    loss = torch.where(frags.mask, frags.zbuf, torch.zeros(())).sum() + frags.bary.sum()
    loss.backward()
    assert torch.isfinite(verts.grad).all()


@pytest.mark.gpu
def test_cuda_matches_cpu():
    v, f = G.sphere_mesh(32, 64)
    K = G.intrinsics(40.0, 128)
    cam = torch.stack([v + torch.tensor([0.1 * b, 0.0, 4.0]) for b in range(4)])
    verts = G.camera_to_raster(cam, K)
    cpu = rasterize(verts, f, 128, 128)
    gpu = rasterize(verts.cuda(), f.cuda(), 128, 128)
    same = (cpu.face_id == gpu.face_id.cpu()).float().mean()
    assert same > 0.999
    both = cpu.mask & gpu.mask.cpu()
    assert torch.allclose(cpu.zbuf[both], gpu.zbuf.cpu()[both], atol=1e-5)
