"""The Unsup3D renderer as stateless pure functions (shapes in docstrings).

Pipeline (Unsup3D's ``Renderer``): canonical depth (B, H, W) -> 3D points through the pinhole (``lapdata.geometry.camera``
conventions: camera at the origin looking along +z, x right, y down, f = (S-1)/2 / tan(fov/2)) -> grid mesh (two
triangles per pixel cell) -> rigid transform of the view: rotate about the point (0, 0, 1) by R = Rz Ry Rx, then
translate by t -> perspective projection -> z-buffered rasterization (``lapdata.geometry.raster``, both sides drawn) ->
reprojected depth in the view (background and out-of-range depth clamped to [lo - m, hi + m], m = (hi - lo) / 2,
as Unsup3D does with its depth range (0.9, 1.1)) -> for each view pixel its 3D point is moved back by the inverse
transform and projected into the canonical frame, giving a sampling grid in [-1, 1] -> ``grid_sample`` of the
canonical albedo / image (bilinear, ``align_corners=True``, border padding).

One deliberate difference from Unsup3D: the mesh covers the canonical frame up to its outer pixel edges (a ring of
vertices at -0.5 and S - 0.5 carrying the border depth), not only the span of the pixel centres, so an identity view
reproduces every pixel (a mesh through the pixel centres would leave the last row and column on its boundary).

Gradients reach the canonical depth and the view through the rasterizer's differentiable depth (barycentrics
recomputed from the vertex positions of each pixel's visible triangle) and through the inverse warp; the canonical
image through ``grid_sample``; albedo and light through ``shade``. Visibility itself (which triangle is in front)
is not differentiated, as in Unsup3D's neural_renderer depth and nvdiffrast without antialiasing.

Normals follow Unsup3D: from depth by central differences of the 3D points, a surface facing the camera has
normal (0, 0, 1); shading = ambient + diffuse * relu(<n, normalize(dx, dy, 1)>).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lapdata.geometry import camera as G
from lapdata.core.errors import LapError
from lapdata.geometry.raster import rasterize

ROTATION_CENTER = (0.0, 0.0, 1.0)  # Unsup3D rotates about the point at the mean of its depth range
DEPTH_RANGE = (0.9, 1.1)  # Unsup3D's (min_depth, max_depth)
BACKGROUND_DEPTH = 10.0  # the far plane (neural_renderer's far in Unsup3D), before clamping

__all__ = [
    "Rendered",
    "view_to_rt",
    "warp_points",
    "render_depth",
    "inverse_warp_grid",
    "warp_canonical",
    "depth_to_normal",
    "shade",
    "render",
    "turntable",
    "valid_mask",
]


def _check_depth(depth: Tensor, name: str) -> None:
    if depth.dim() != 3:
        raise ValueError(f"renderer: {name} must be (B, H, W), got {tuple(depth.shape)}")


def _check_view(view: Tensor, batch: int) -> None:
    if view.dim() != 2 or view.shape[1] != 6 or view.shape[0] != batch:
        raise ValueError(f"renderer: view must be (B={batch}, 6) [rx, ry, rz, tx, ty, tz], got {tuple(view.shape)}")


def view_to_rt(view: Tensor) -> tuple[Tensor, Tensor]:
    """view (B, 6) [rx, ry, rz (radians), tx, ty, tz] -> R (B, 3, 3) = Rz Ry Rx, t (B, 3).

    The view transform of a point p is R (p - c) + c + t with c = (0, 0, 1) (``ROTATION_CENTER``), like Unsup3D.
    """
    if view.dim() != 2 or view.shape[1] != 6:
        raise ValueError(f"renderer: view must be (B, 6) [rx, ry, rz, tx, ty, tz], got {tuple(view.shape)}")
    return G.euler_to_rotation(view[:, :3]), view[:, 3:]


def _center(like: Tensor) -> Tensor:
    return torch.tensor(ROTATION_CENTER, dtype=like.dtype, device=like.device)


def warp_points(canon_depth: Tensor, view: Tensor, fov_deg: float = 10.0, *, extend: bool = False) -> Tensor:
    """3D points of the canonical pixels after the view transform: (B, H, W), (B, 6) -> (B, H, W, 3) camera space.

    ``extend=True`` adds a ring of vertices on the canonical image's outer pixel edges (x = -0.5 and W - 0.5,
    y = -0.5 and H - 0.5) with the depth of the nearest border pixel -> (B, H + 2, W + 2, 3): the mesh then covers
    the whole canonical frame (every pixel's area, not only the span of the pixel centres), so the identity view
    reproduces every pixel and no border pixel centre sits on the mesh's outer edge.
    """
    _check_depth(canon_depth, "canon_depth")
    B, H, W = canon_depth.shape
    _check_view(view, B)
    K = G.intrinsics(fov_deg, (H, W), dtype=canon_depth.dtype, device=canon_depth.device)
    R, t = view_to_rt(view.to(canon_depth.dtype))
    if extend:
        dev, dt = canon_depth.device, canon_depth.dtype
        d = F.pad(canon_depth.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)  # (B, H+2, W+2)
        xs = torch.cat([torch.tensor([-0.5]), torch.arange(W, dtype=torch.float64), torch.tensor([W - 0.5])]).to(dev, dt)
        ys = torch.cat([torch.tensor([-0.5]), torch.arange(H, dtype=torch.float64), torch.tensor([H - 0.5])]).to(dev, dt)
        X = ((xs - K[0, 2]) / K[0, 0]).view(1, 1, -1) * d
        Y = ((ys - K[1, 2]) / K[1, 1]).view(1, -1, 1) * d
        pts = torch.stack([X, Y, d], -1)
    else:
        pts = G.depth_to_points(canon_depth, K)
    return G.transform_points(pts, R, t, _center(canon_depth))


@functools.lru_cache(maxsize=4)
def _nvdiffrast_context(device: str):
    import nvdiffrast.torch as dr  # noqa: PLC0415 - optional backend

    return dr.RasterizeCudaContext(device=device)


def _zbuf_nvdiffrast(verts: Tensor, faces: Tensor, H: int, W: int) -> Tensor:
    """Optional backend: nvdiffrast (non-commercial licence, never required). verts (B, V, 3) as for ``rasterize``."""
    try:
        import nvdiffrast.torch as dr  # noqa: PLC0415
    except ImportError:
        raise LapError(
            "renderer backend 'nvdiffrast' needs the nvdiffrast package (pip install nvdiffrast; NVIDIA source code "
            "licence, non-commercial); use backend='torch'"
        ) from None
    if verts.device.type != "cuda":
        raise ValueError(f"renderer backend 'nvdiffrast' needs CUDA tensors, got {verts.device}")
    near, far = 0.1, 100.0  # only orders depths; the depth itself is interpolated from the vertices
    x, y, z = verts.float().unbind(-1)
    w = z
    clip = torch.stack(
        [((x + 0.5) / W * 2 - 1) * w, ((y + 0.5) / H * 2 - 1) * w, (far + near) / (far - near) * z - 2 * far * near / (far - near), w],
        -1,
    ).contiguous()
    tri = faces.to(device=verts.device, dtype=torch.int32).contiguous()
    rast, _ = dr.rasterize(_nvdiffrast_context(str(verts.device)), clip, tri, resolution=[H, W])
    depth, _ = dr.interpolate(z.unsqueeze(-1).contiguous(), rast, tri)
    covered = rast[..., 3] > 0
    return torch.where(covered, depth[..., 0], torch.full_like(depth[..., 0], float("inf"))).to(verts.dtype)


def render_depth(
    canon_depth: Tensor,
    view: Tensor,
    fov_deg: float = 10.0,
    *,
    depth_range: tuple[float, float] = DEPTH_RANGE,
    backend: str = "torch",
) -> Tensor:
    """Depth of the canonical surface seen from ``view``: canon_depth (B, H, W), view (B, 6) -> (B, H, W).

    Empty pixels get ``BACKGROUND_DEPTH``; the result is clamped to [lo - m, hi + m] (m = (hi - lo) / 2,
    ``depth_range`` = (lo, hi)), so the background reads hi + m, as in Unsup3D. ``backend``: "torch" (default,
    ``lapdata.geometry.raster``) or "nvdiffrast" (optional, CUDA, only if ``import nvdiffrast.torch`` works).
    """
    pts = warp_points(canon_depth, view, fov_deg, extend=True)
    B, H, W = canon_depth.shape
    K = G.intrinsics(fov_deg, (H, W), dtype=canon_depth.dtype, device=canon_depth.device)
    verts = G.camera_to_raster(pts.reshape(B, -1, 3), K)
    faces = G.grid_faces(H + 2, W + 2, device=canon_depth.device)
    if backend == "torch":
        zbuf = rasterize(verts, faces, H, W).zbuf
    elif backend == "nvdiffrast":
        zbuf = _zbuf_nvdiffrast(verts, faces, H, W)
    else:
        raise ValueError(f"renderer: unknown backend {backend!r} (use 'torch' or 'nvdiffrast')")
    zbuf = torch.where(torch.isfinite(zbuf), zbuf, torch.full_like(zbuf, BACKGROUND_DEPTH))
    lo, hi = depth_range
    m = (hi - lo) / 2
    return zbuf.clamp(min=lo - m, max=hi + m)


def valid_mask(view_depth: Tensor, depth_range: tuple[float, float] = DEPTH_RANGE) -> Tensor:
    """(B, H, W) float 0/1: 1 where ``render_depth`` found a surface (depth below the clamped background)."""
    lo, hi = depth_range
    return (view_depth < hi + (hi - lo) / 2).to(view_depth.dtype)


def inverse_warp_grid(view_depth: Tensor, view: Tensor, fov_deg: float = 10.0) -> Tensor:
    """Sampling grid into the canonical frame: view_depth (B, H, W), view (B, 6) -> (B, H, W, 2) (x, y) in [-1, 1].

    Each view pixel's 3D point goes back through the inverse view transform R^T (p - t - c) + c, then through the
    pinhole; coordinates are normalised for ``grid_sample(align_corners=True)``.
    """
    _check_depth(view_depth, "view_depth")
    B, H, W = view_depth.shape
    _check_view(view, B)
    K = G.intrinsics(fov_deg, (H, W), dtype=view_depth.dtype, device=view_depth.device)
    R, t = view_to_rt(view.to(view_depth.dtype))
    pts = G.inverse_transform_points(G.depth_to_points(view_depth, K), R, t, _center(view_depth))
    return G.normalize_pixels(G.project(pts, K), H, W)


def warp_canonical(canon: Tensor, grid: Tensor) -> Tensor:
    """Sample a canonical map into the view: canon (B, C, H, W), grid (B, H', W', 2) -> (B, C, H', W').

    Bilinear, ``align_corners=True`` (pixel centres at -1 and 1, as the grid); positions outside the centres'
    span repeat the border pixel (``padding_mode="border"``), matching the rendered mesh, which covers the canonical
    frame up to its outer pixel edges (see ``warp_points(extend=True)``). Unsup3D pads with zeros; the difference
    only shows within half a pixel of the canonical border.
    """
    if canon.dim() != 4 or grid.dim() != 4 or grid.shape[-1] != 2 or grid.shape[0] != canon.shape[0]:
        raise ValueError(f"warp_canonical: need canon (B, C, H, W) and grid (B, H, W, 2), got {tuple(canon.shape)}, {tuple(grid.shape)}")
    return F.grid_sample(canon, grid.to(canon.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def depth_to_normal(depth: Tensor, fov_deg: float = 10.0) -> Tensor:
    """Unit normals from depth (Unsup3D): (B, H, W) -> (B, H, W, 3); facing the camera = (0, 0, 1) (z away from the
    camera); the one-pixel border is (0, 0, 1)."""
    _check_depth(depth, "depth")
    return G.depth_to_normals(depth, fov_deg)


def shade(albedo: Tensor, normal: Tensor, light: Tensor) -> tuple[Tensor, Tensor]:
    """Lambertian shading: albedo (B, C, H, W), normal (B, H, W, 3), light (B, 4) = [ambient, diffuse, dx, dy].

    Returns shading (B, 1, H, W) = ambient + diffuse * relu(<n, normalize(dx, dy, 1)>) and image = albedo * shading.
    ``light`` is already mapped (ambient, diffuse >= 0), as the model's light network outputs after its activations.
    """
    if light.dim() != 2 or light.shape[1] != 4:
        raise ValueError(f"shade: light must be (B, 4) [ambient, diffuse, dx, dy], got {tuple(light.shape)}")
    amb, dif = light[:, 0].view(-1, 1, 1, 1), light[:, 1].view(-1, 1, 1, 1)
    d = torch.cat([light[:, 2:4], torch.ones_like(light[:, :1])], 1)
    d = d / (d.pow(2).sum(1, keepdim=True) + 1e-7).sqrt()
    cos = (normal * d.view(-1, 1, 1, 3)).sum(-1).clamp(min=0).unsqueeze(1)  # (B, 1, H, W)
    shading = amb + dif * cos
    return shading, albedo * shading


@dataclass
class Rendered:
    """What ``render`` returns.

    image: (B, C, H, W) canonical image warped into the view, zero where ``mask`` is 0
    depth: (B, H, W)    depth in the view (background = hi + m of the depth range)
    mask:  (B, H, W)    float 0/1, 1 where a surface was rendered
    grid:  (B, H, W, 2) sampling grid into the canonical frame, [-1, 1]
    """

    image: Tensor
    depth: Tensor
    mask: Tensor
    grid: Tensor


def render(
    canon_depth: Tensor,
    canon_image: Tensor,
    view: Tensor,
    fov_deg: float = 10.0,
    *,
    depth_range: tuple[float, float] = DEPTH_RANGE,
    backend: str = "torch",
) -> Rendered:
    """Reproject a canonical image with its depth into a view (Unsup3D's reconstruction path).

    canon_depth (B, H, W), canon_image (B, C, H, W) (albedo, shaded image, or any map), view (B, 6) -> Rendered.
    """
    depth = render_depth(canon_depth, view, fov_deg, depth_range=depth_range, backend=backend)
    grid = inverse_warp_grid(depth, view, fov_deg)
    mask = valid_mask(depth, depth_range)
    image = warp_canonical(canon_image, grid) * mask.unsqueeze(1).to(canon_image.dtype)
    return Rendered(image=image, depth=depth, mask=mask, grid=grid)


def turntable(
    canon_depth: Tensor,
    canon_image: Tensor,
    yaws: Sequence[float],
    fov_deg: float = 10.0,
    *,
    depth_range: tuple[float, float] = DEPTH_RANGE,
    background: float = 0.0,
    backend: str = "torch",
) -> Tensor:
    """Render a yaw sweep (radians) for pictures: (B, H, W), (B, C, H, W), T yaws -> (B, T, C, H, W).

    Every frame is ``render`` with view [0, yaw, 0, 0, 0, 0]; pixels without a surface get ``background``.
    """
    _check_depth(canon_depth, "canon_depth")
    B, H, W = canon_depth.shape
    T = len(yaws)
    if T == 0:
        raise ValueError("turntable: need at least one yaw")
    view = torch.zeros(B * T, 6, dtype=canon_depth.dtype, device=canon_depth.device)
    view[:, 1] = torch.tensor(list(yaws), dtype=canon_depth.dtype, device=canon_depth.device).repeat(B)
    rep = lambda x: x.unsqueeze(1).expand(B, T, *x.shape[1:]).reshape(B * T, *x.shape[1:])  # noqa: E731
    out = render(rep(canon_depth), rep(canon_image), view, fov_deg, depth_range=depth_range, backend=backend)
    m = out.mask.unsqueeze(1).to(out.image.dtype)
    img = out.image + (1 - m) * background
    return img.reshape(B, T, *canon_image.shape[1:])
