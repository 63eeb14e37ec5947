"""Camera geometry: pure typed functions, shapes in docstrings, no state (kornia style).

Conventions (used by the whole project: ``lapdata.geometry.raster``, ``lapdata.synthetic``, ``lapmodel.render.renderer``):

- Camera space: the camera sits at the origin looking along +z; x points right, y points down (image axes), z is
  depth (> 0 in front of the camera). Right-handed (x right, y down, z forward).
- Pixels: pixel (row i, col j) has its centre at x=j, y=i; x right, y down. The image spans [-0.5, W-0.5].
- Pinhole camera of an S x S image with field of view ``fov_deg`` (full angle): focal f = (S-1)/2 / tan(fov/2),
  principal point c = ((S-1)/2, (S-1)/2) (Unsup3D's camera). For H x W images the horizontal fov sets f (fx = fy)
  and c = ((W-1)/2, (H-1)/2). A camera-space point (X, Y, Z) projects to (f X/Z + cx, f Y/Z + cy).
- Normalised image coordinates (for ``grid_sample(..., align_corners=True)``): u_n = 2 x/(W-1) - 1.
- Rotations: ``euler_to_rotation([rx, ry, rz]) = Rz @ Ry @ Rx`` (x applied first), right-handed, radians, as in
  Unsup3D's ``get_rotation_matrix``; p' = R p for column vectors. A positive ry (yaw) moves a point that is nearer
  to the camera than the rotation centre towards -x (left in the image): Ry (0, 0, -d) = (-d sin ry, 0, -d cos ry).
- Normals: unit vectors in camera space; normals from depth follow Unsup3D: a surface facing the camera has normal
  (0, 0, 1) (z pointing away from the camera), i.e. n = (dP/dx) x (dP/dy).
- Meshes: ``verts`` (B, V, 3) float, ``faces`` (F, 3) int64 shared by the batch. ``camera_to_raster`` turns
  camera-space vertices into what ``lapdata.geometry.raster.rasterize`` takes (pixel x, pixel y, depth z).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


# world with y up and z towards the viewer (OBJ / ICT-FaceKit / OpenGL) -> camera space (y down, z forward)
Y_UP_TO_CAMERA = ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0))


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def focal_length(fov_deg: float, size: int | tuple[int, int]) -> float:
    """Focal length in pixels: (W-1)/2 / tan(fov/2). ``size`` is S or (H, W)."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
    _, w = _hw(size)
    return (w - 1) / 2.0 / math.tan(math.radians(fov_deg) / 2.0)


def intrinsics(
    fov_deg: float,
    size: int | tuple[int, int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Pinhole intrinsics K (3, 3) for an S x S (or H x W) image: [[f, 0, cx], [0, f, cy], [0, 0, 1]]."""
    h, w = _hw(size)
    f = focal_length(fov_deg, (h, w))
    return torch.tensor([[f, 0.0, (w - 1) / 2.0], [0.0, f, (h - 1) / 2.0], [0.0, 0.0, 1.0]], dtype=dtype, device=device)


def euler_to_rotation(angles: Tensor) -> Tensor:
    """Rotation matrices R = Rz(rz) @ Ry(ry) @ Rx(rx) from angles (B, 3) = [rx, ry, rz] in radians -> (B, 3, 3).

    Rx = [[1,0,0],[0,c,-s],[0,s,c]], Ry = [[c,0,s],[0,1,0],[-s,0,c]], Rz = [[c,-s,0],[s,c,0],[0,0,1]]
    (Unsup3D's ``get_rotation_matrix``). Applied to column vectors: p' = R p.
    """
    if angles.dim() != 2 or angles.shape[-1] != 3:
        raise ValueError(f"euler_to_rotation: angles must be (B, 3), got {tuple(angles.shape)}")
    rx, ry, rz = angles.unbind(-1)
    one, zero = torch.ones_like(rx), torch.zeros_like(rx)
    cx, sx, cy, sy, cz, sz = rx.cos(), rx.sin(), ry.cos(), ry.sin(), rz.cos(), rz.sin()
    m_x = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).view(-1, 3, 3)
    m_y = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(-1, 3, 3)
    m_z = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).view(-1, 3, 3)
    return m_z @ m_y @ m_x


def transform_points(points: Tensor, R: Tensor, t: Tensor | None = None, center: Tensor | None = None) -> Tensor:
    """Rigid transform about a centre: p' = R (p - c) + c + t.

    points (B, ..., 3), R (B, 3, 3), t (B, 3) or None, center (3,) / (B, 3) or None (origin) -> (B, ..., 3).
    """
    B = points.shape[0]
    flat = points.reshape(B, -1, 3)
    if center is not None:
        c = center.to(points).reshape(-1, 1, 3)
        flat = flat - c
    out = flat @ R.transpose(1, 2)
    if center is not None:
        out = out + c
    if t is not None:
        out = out + t.reshape(B, 1, 3)
    return out.reshape(points.shape)


def inverse_transform_points(
    points: Tensor, R: Tensor, t: Tensor | None = None, center: Tensor | None = None
) -> Tensor:
    """Inverse of ``transform_points``: p = R^T (p' - t - c) + c. Same shapes."""
    B = points.shape[0]
    flat = points.reshape(B, -1, 3)
    if t is not None:
        flat = flat - t.reshape(B, 1, 3)
    if center is not None:
        c = center.to(points).reshape(-1, 1, 3)
        flat = flat - c
    out = flat @ R
    if center is not None:
        out = out + c
    return out.reshape(points.shape)


def pixel_grid(height: int, width: int, *, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Pixel-centre coordinates (H, W, 2) as (x, y) = (col, row)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device), torch.arange(width, dtype=dtype, device=device), indexing="ij"
    )
    return torch.stack([xs, ys], -1)


def depth_to_points(depth: Tensor, K: Tensor) -> Tensor:
    """Back-project a depth map through the pinhole: depth (B, H, W), K (3, 3) or (B, 3, 3) -> points (B, H, W, 3).

    Pixel (i, j) with depth d goes to d * K^-1 (j, i, 1).
    """
    if depth.dim() != 3:
        raise ValueError(f"depth_to_points: depth must be (B, H, W), got {tuple(depth.shape)}")
    B, H, W = depth.shape
    K = K.to(depth)
    fx, fy = K[..., 0, 0].reshape(-1, 1, 1), K[..., 1, 1].reshape(-1, 1, 1)
    cx, cy = K[..., 0, 2].reshape(-1, 1, 1), K[..., 1, 2].reshape(-1, 1, 1)
    xy = pixel_grid(H, W, dtype=depth.dtype, device=depth.device)
    X = (xy[..., 0] - cx) / fx * depth
    Y = (xy[..., 1] - cy) / fy * depth
    return torch.stack([X, Y, depth], -1)


def project(points: Tensor, K: Tensor) -> Tensor:
    """Pinhole projection: points (B, ..., 3) camera space, K (3, 3) or (B, 3, 3) -> pixel coords (B, ..., 2) (x, y)."""
    K = K.to(points)
    shape = (-1,) + (1,) * (points.dim() - 2)
    fx, fy = K[..., 0, 0].reshape(shape), K[..., 1, 1].reshape(shape)
    cx, cy = K[..., 0, 2].reshape(shape), K[..., 1, 2].reshape(shape)
    X, Y, Z = points.unbind(-1)
    return torch.stack([fx * X / Z + cx, fy * Y / Z + cy], -1)


def camera_to_raster(points: Tensor, K: Tensor) -> Tensor:
    """Camera-space vertices (B, V, 3) -> rasterizer vertices (B, V, 3) = (pixel x, pixel y, depth z)."""
    return torch.cat([project(points, K), points[..., 2:3]], -1)


def normalize_pixels(xy: Tensor, height: int, width: int) -> Tensor:
    """Pixel coords (..., 2) -> [-1, 1] coords for ``grid_sample(align_corners=True)``: 2 x/(W-1) - 1."""
    scale = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], dtype=xy.dtype, device=xy.device)
    return xy * scale - 1.0


def grid_faces(height: int, width: int, *, device=None) -> Tensor:
    """Triangles of a grid mesh whose vertices are the H x W pixels (vertex id = i * W + j) -> (2 (H-1) (W-1), 3).

    Two triangles per cell, as Unsup3D's ``get_face_idx``: all (top-left, bottom-left, top-right) first, then all
    (top-right, bottom-left, bottom-right).
    """
    idx = torch.arange(height * width, device=device).view(height, width)
    tl, tr, bl, br = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    f1 = torch.stack([tl, bl, tr], -1).reshape(-1, 3)
    f2 = torch.stack([tr, bl, br], -1).reshape(-1, 3)
    return torch.cat([f1, f2], 0)


def depth_to_normals(depth: Tensor, fov_deg: float = 10.0, eps: float = 1e-12) -> Tensor:
    """Normals from a depth map by central differences of its 3D points (Unsup3D's ``get_normal_from_depth``).

    depth (B, H, W) -> normals (B, H, W, 3), unit, n = (P[i, j+1] - P[i, j-1]) x (P[i+1, j] - P[i-1, j]);
    a surface facing the camera gets (0, 0, 1). The one-pixel border is (0, 0, 1).
    Normalised as n / max(|n|, eps): exactly unit. (Unsup3D divides by |n| + 1e-7, which at 64 px and a 10 degree
    field of view, where |n| ~ 3e-5, shortens its normals by ~0.3%.)
    """
    B, H, W = depth.shape
    pts = depth_to_points(depth, intrinsics(fov_deg, (H, W), dtype=depth.dtype, device=depth.device))
    tu = pts[:, 1:-1, 2:] - pts[:, 1:-1, :-2]
    tv = pts[:, 2:, 1:-1] - pts[:, :-2, 1:-1]
    n = torch.cross(tu, tv, dim=-1)
    n = torch.nn.functional.pad(n.permute(0, 3, 1, 2), (1, 1, 1, 1), value=0.0).permute(0, 2, 3, 1)
    border = torch.ones(H, W, dtype=torch.bool, device=depth.device)
    border[1:-1, 1:-1] = False
    n = torch.where(border[..., None], torch.tensor([0.0, 0.0, 1.0], dtype=depth.dtype, device=depth.device), n)
    return n / n.pow(2).sum(-1, keepdim=True).sqrt().clamp_min(eps)


def face_normals(verts: Tensor, faces: Tensor, eps: float = 1e-12) -> Tensor:
    """Unit face normals (v1 - v0) x (v2 - v0): verts (B, V, 3), faces (F, 3) -> (B, F, 3)."""
    tri = verts[:, faces.long()]
    n = torch.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
    return n / (n.norm(dim=-1, keepdim=True) + eps)


def vertex_normals(verts: Tensor, faces: Tensor, eps: float = 1e-12) -> Tensor:
    """Area-weighted unit vertex normals (same orientation as ``face_normals``): (B, V, 3), (F, 3) -> (B, V, 3)."""
    faces = faces.long()
    tri = verts[:, faces]
    n = torch.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)  # (B, F, 3), |n| = 2 area
    out = torch.zeros_like(verts)
    idx = faces.reshape(1, -1, 1).expand(verts.shape[0], -1, 3)
    out = out.scatter_add(1, idx, n.repeat_interleave(3, dim=1))
    return out / (out.norm(dim=-1, keepdim=True) + eps)


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """World-to-camera rigid transform of a camera at ``eye`` looking at ``target``: p_cam = R p_world + t.

    eye (B, 3), target (B, 3), up (3,) world up direction (default (0, 1, 0), y-up world) -> R (B, 3, 3), t (B, 3).
    The camera's z axis points at the target, its y axis (image down) is opposite to ``up``, x = y x z (right).
    """
    if up is None:
        up = torch.tensor([0.0, 1.0, 0.0])
    up = up.to(eye).expand_as(eye)
    z = target - eye
    z = z / z.norm(dim=-1, keepdim=True)
    y = -up - (-up * z).sum(-1, keepdim=True) * z
    y_norm = y.norm(dim=-1, keepdim=True)
    if bool((y_norm < 1e-8).any()):
        raise ValueError("look_at: the up vector is parallel to the viewing direction")
    y = y / y_norm
    x = torch.cross(y, z, dim=-1)
    R = torch.stack([x, y, z], 1)  # rows are the camera axes in world coordinates
    t = -(R @ eye.unsqueeze(-1)).squeeze(-1)
    return R, t


def object_to_camera(
    verts: Tensor, angles: Tensor, distance: Tensor | float, center: Tensor | None = None, y_up: bool = True
) -> Tensor:
    """Place an object in front of the camera: rotate about its centre, then put the centre at (0, 0, distance).

    verts (B, V, 3) object coordinates (y up and z towards the viewer when ``y_up``, e.g. OBJ / ICT-FaceKit),
    angles (B, 3) [pitch rx, yaw ry, roll rz] radians applied in camera axes after the y-up flip (Rz Ry Rx),
    distance float or (B,), center (3,) / (B, 3) (default: bounding-box centre) -> camera-space verts (B, V, 3).
    """
    B = verts.shape[0]
    if center is None:
        center = (verts.amax(1) + verts.amin(1)) / 2
    c = center.to(verts).reshape(-1, 1, 3)
    p = verts - c
    if y_up:
        p = p @ torch.tensor(Y_UP_TO_CAMERA, dtype=verts.dtype, device=verts.device).T
    p = p @ euler_to_rotation(angles.to(verts)).transpose(1, 2)
    d = torch.as_tensor(distance, dtype=verts.dtype, device=verts.device).reshape(-1, 1)
    zero = torch.zeros_like(d)
    return p + torch.cat([zero, zero, d], -1).reshape(-1, 1, 3).expand(B, 1, 3)


def fov_to_fit(extent: float, distance: float, margin: float = 1.0) -> float:
    """Field of view (degrees) that fits an object of half-size ``extent`` at ``distance`` (times ``margin``)."""
    return math.degrees(2.0 * math.atan(extent * margin / distance))


def _orient_outward(verts: Tensor, faces: Tensor) -> Tensor:
    """Flip faces of a convex, origin-centred mesh so that (v1 - v0) x (v2 - v0) points outward."""
    tri = verts[faces]
    n = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    flip = (n * tri.mean(1)).sum(-1) < 0
    return torch.where(flip.unsqueeze(-1), faces[:, [0, 2, 1]], faces)


def cube_mesh(size: float = 1.0, *, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Axis-aligned cube of side ``size`` centred at the origin -> verts (8, 3), faces (12, 3) oriented outward."""
    h = size / 2.0
    verts = torch.tensor([[x, y, z] for x in (-h, h) for y in (-h, h) for z in (-h, h)], dtype=dtype)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = torch.tensor([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))], dtype=torch.int64)
    return verts, _orient_outward(verts, faces)


def sphere_mesh(rings: int = 32, segments: int = 64, radius: float = 1.0, *, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """UV sphere centred at the origin -> verts (2 + (rings-1) segments, 3), faces (2 segments (rings-1), 3) outward."""
    if rings < 2 or segments < 3:
        raise ValueError(f"sphere_mesh: need rings >= 2 and segments >= 3, got {rings}, {segments}")
    theta = torch.arange(1, rings, dtype=torch.float64) * math.pi / rings  # polar angle of the inner rings
    phi = torch.arange(segments, dtype=torch.float64) * 2 * math.pi / segments
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    ring = torch.stack([t.sin() * p.cos(), t.cos(), t.sin() * p.sin()], -1).reshape(-1, 3)
    verts = torch.cat([torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64), ring, torch.tensor([[0.0, -1.0, 0.0]], dtype=torch.float64)])
    idx = torch.arange(ring.shape[0]).view(rings - 1, segments) + 1
    nxt = torch.roll(idx, -1, dims=1)
    top = torch.stack([torch.zeros(segments, dtype=torch.int64), idx[0], nxt[0]], -1)
    bottom = torch.stack([torch.full((segments,), verts.shape[0] - 1), nxt[-1], idx[-1]], -1)
    a, b, c, d = idx[:-1], nxt[:-1], idx[1:], nxt[1:]
    mid = torch.cat([torch.stack([a, c, b], -1).reshape(-1, 3), torch.stack([b, c, d], -1).reshape(-1, 3)])
    faces = torch.cat([top, mid, bottom])
    return (verts * radius).to(dtype), _orient_outward(verts, faces)
