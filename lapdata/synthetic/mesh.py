"""Posing, projecting, rasterizing and shading a textured face mesh (shared by the ``procedural`` and ``ict`` backends).

Rasterization is the project's one rasterizer (``lapdata.geometry.raster``); the camera follows ``lapdata.geometry.camera``
(focal = (S-1)/2/tan(fov/2), principal point ((S-1)/2, (S-1)/2), x right, y down, z = depth).
Conventions of poses, depth, normals and light: see ``lapdata.synthetic.base``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as Fn
from torch import Tensor

from lapdata.geometry import camera as geometry
from lapdata.faces.align import DEFAULT_EYE_Y, DEFAULT_IOD
from lapdata.geometry.raster import interpolate, rasterize

from lapdata.synthetic.base import Pose


@dataclass
class FaceMesh:
    """A renderable mesh in its object frame (x right, y up, z out of the face), any units.

    verts (V, 3) float32; faces (F, 3) int64; uv (V, 2) in [0, 1] (v up, OBJ convention) for the texture;
    tex_weight (V,) in [0, 1]: 1 = albedo from the texture, 0 = from ``vcolor`` (V, 3) (eyes, teeth, ...);
    face_tri (F,) bool: triangle belongs to the face region (the ground-truth mask);
    pivot (3,): rotation centre (inside the head); anchor (3,): point kept at the image centre (between eyes and
    mouth, on the face); extent: object-space height framed by the image at the anchor's distance;
    landmarks (K,) vertex indices projected as 2D landmarks (optional).
    """

    verts: Tensor
    faces: Tensor
    uv: Tensor
    tex_weight: Tensor
    vcolor: Tensor
    face_tri: Tensor
    pivot: Tensor
    anchor: Tensor
    extent: float
    landmarks: Tensor | None = None


def focal_length(fov_deg: float, size: int) -> float:
    """Focal length in pixels of ``lapdata.geometry.camera``'s camera: (S-1)/2/tan(fov/2)."""
    return float(geometry.intrinsics(fov_deg, size)[0, 0])


def pose_rotation(pose: Pose, dtype=torch.float32, device=None) -> Tensor:
    """R (3, 3) = Rz(roll) @ Ry(yaw) @ Rx(-pitch) in the object frame (x right, y up, z toward the camera).

    yaw > 0 turns the face toward +x (image right), pitch > 0 turns it toward +y (up), roll > 0 is
    counter-clockwise as seen by the camera."""
    y, p, r = (math.radians(a) for a in (pose.yaw, pose.pitch, pose.roll))
    cy, sy, cp, sp, cr, sr = math.cos(y), math.sin(y), math.cos(-p), math.sin(-p), math.cos(r), math.sin(r)
    rx = torch.tensor([[1, 0, 0], [0, cp, -sp], [0, sp, cp]], dtype=torch.float64)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
    rz = torch.tensor([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]], dtype=torch.float64)
    return (rz @ ry @ rx).to(dtype=dtype, device=device)


def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted outward vertex normals (``lapdata.geometry.camera.vertex_normals``): (V, 3), (F, 3) -> (V, 3)."""
    return geometry.vertex_normals(verts[None], faces)[0]


def frame_distance(extent: float, fov_deg: float) -> float:
    """Camera distance (object units) at which a frame of height ``extent`` fills the field of view."""
    return extent / (2.0 * math.tan(math.radians(fov_deg) / 2.0))


# a frontal view is framed like a real photo aligned by lapdata.faces.align (its ``lap`` template): FRAME_IOD is the
# inter-ocular distance / image side, FRAME_EYE_Y the eye line / image side from the top (one definition)
FRAME_IOD, FRAME_EYE_Y = DEFAULT_IOD, DEFAULT_EYE_Y


def frame_for_eyes(iod: float, eye_y: float, frame_iod: float = FRAME_IOD, frame_eye_y: float = FRAME_EYE_Y
                   ) -> tuple[float, float]:
    """(extent, anchor_y): the frame height and the anchor height (object units) that put a frontal face with
    inter-ocular distance ``iod`` and eye line ``eye_y`` (object units) at ``frame_iod`` x side and
    ``frame_eye_y`` x side from the top (the ``lap`` template of ``lapdata.faces.align`` by default)."""
    extent = iod / frame_iod
    return extent, eye_y - (0.5 - frame_eye_y) * extent


def camera_points(mesh: FaceMesh, verts: Tensor, pose: Pose, fov_deg: float = 10.0) -> tuple[Tensor, Tensor]:
    """Pose the mesh and express it in the normalised camera frame.

    verts (V, 3) object frame -> (points (V, 3): x right, y down, z = depth, in units of the camera distance, with
    the posed anchor at (0, 0, 1); R (3, 3) the object rotation about ``mesh.pivot``)."""
    R = pose_rotation(pose, verts.dtype, verts.device)
    dist = frame_distance(mesh.extent, fov_deg)
    p = (verts - mesh.pivot) @ R.T + mesh.pivot
    a = (mesh.anchor - mesh.pivot) @ R.T + mesh.pivot
    d = p - a
    cam = torch.stack([d[:, 0], -d[:, 1], dist - d[:, 2]], -1) / dist
    return cam, R


@dataclass
class MeshRender:
    """Full-resolution render of one view (tensors on the render device).

    albedo (H, W, 3) [0, 1]; normal (H, W, 3) unit, camera frame (x right, y down, z toward camera), 0 where empty;
    depth (H, W) +inf where empty; covered (H, W) bool (any triangle); face (H, W) bool (face-region triangle);
    landmarks (K, 2) pixel x, y or None."""

    albedo: Tensor
    normal: Tensor
    depth: Tensor
    covered: Tensor
    face: Tensor
    landmarks: Tensor | None


def render_mesh(
    mesh: FaceMesh,
    verts: Tensor,
    pose: Pose,
    size: int,
    texture: Tensor | None,
    fov_deg: float = 10.0,
    normals: Tensor | None = None,
) -> MeshRender:
    """Rasterize ``verts`` (V, 3) (the mesh's topology, possibly deformed) at ``pose`` into a ``size`` image.

    texture: (3, T, T) float [0, 1] sampled with the mesh's uv (None: vertex colours only)."""
    dev = verts.device
    cam, R = camera_points(mesh, verts, pose, fov_deg)
    x, y, z = cam.unbind(-1)
    f = focal_length(fov_deg, size)
    c = (size - 1) / 2.0
    pix = torch.stack([f * x / z + c, f * y / z + c, z], -1)  # (V, 3) pixel x, y and depth (anchor at 1)
    frags = rasterize(pix.unsqueeze(0), mesh.faces, size, size)
    fid = frags.face_id[0]
    covered = fid >= 0
    if normals is None:
        normals = vertex_normals(verts, mesh.faces)
    n_obj = normals @ R.T  # outward, object axes (x right, y up, z toward the camera)
    # lapdata.geometry.camera / Unsup3D convention: n = dP/dx x dP/dy in camera space = minus the outward camera-space
    # normal (nx, -ny, -nz): a surface facing the camera gets (0, 0, 1)
    n_cam = torch.stack([-n_obj[:, 0], n_obj[:, 1], n_obj[:, 2]], -1)
    attrs = torch.cat([mesh.uv, mesh.tex_weight[:, None], mesh.vcolor, n_cam], -1)  # (V, 9)
    a = interpolate(attrs, mesh.faces, frags)[0]  # (H, W, 9)
    uv, w, vcol, n = a[..., :2], a[..., 2:3], a[..., 3:6], a[..., 6:9]
    n = Fn.normalize(n, dim=-1, eps=1e-12) * covered[..., None]
    if texture is not None:
        grid = torch.stack([uv[..., 0] * 2 - 1, (1 - uv[..., 1]) * 2 - 1], -1)[None]  # v up -> row down
        tex = Fn.grid_sample(texture[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
        tex = tex[0].permute(1, 2, 0)
        albedo = w * tex + (1 - w) * vcol
    else:
        albedo = vcol
    face = covered & mesh.face_tri[fid.clamp(min=0)]
    depth = torch.where(covered, frags.zbuf[0], torch.full_like(frags.zbuf[0], float("inf")))
    lms = None
    if mesh.landmarks is not None:
        lms = pix[mesh.landmarks, :2]
    return MeshRender(albedo=albedo, normal=n, depth=depth, covered=covered, face=face, landmarks=lms)


def shade(albedo: Tensor, normal: Tensor, light: list[float]) -> Tensor:
    """Lambertian shading, Unsup3D style: albedo (H, W, 3), normal (H, W, 3), light [ambient, diffuse, lx, ly]
    -> (H, W, 3) = albedo * (ambient + diffuse * relu(<n, normalize(lx, ly, 1)>))."""
    amb, dif, lx, ly = light
    d = torch.tensor([lx, ly, 1.0], dtype=normal.dtype, device=normal.device)
    d = d / d.norm()
    s = amb + dif * (normal * d).sum(-1).clamp(min=0)
    return albedo * s[..., None]


def downsample(x: Tensor, factor: int) -> Tensor:
    """Box-filter (H, W, C) by an integer factor -> (H/f, W/f, C)."""
    if factor == 1:
        return x
    return Fn.avg_pool2d(x.permute(2, 0, 1)[None], factor)[0].permute(1, 2, 0)


def composite_view(
    r: MeshRender, light: list[float], background: Tensor, ssaa: int = 1
) -> dict[str, np.ndarray]:
    """Shade and composite a (possibly supersampled) render over ``background`` (S, S, 3) float [0, 1].

    Returns numpy arrays at the output size: image uint8 (S, S, 3), depth float32 NaN off the face, normal
    float32 (0 off the face), mask bool, landmarks (K, 2) float32 or None. With ``ssaa`` > 1 the image and the face
    coverage are box-filtered; depth/normals are averaged over the face samples of each output pixel; the mask is
    "more than half of the samples on the face"."""
    rgb = shade(r.albedo, r.normal, light).clamp(0, 1)
    cov = r.covered[..., None].to(rgb.dtype)
    face = r.face[..., None].to(rgb.dtype)
    rgb_ds = downsample(rgb * cov, ssaa)
    cov_ds = downsample(cov, ssaa)
    img = rgb_ds + (1 - cov_ds) * background
    face_ds = downsample(face, ssaa)[..., 0]
    mask = face_ds > 0.5
    dz = torch.where(r.face, r.depth, torch.zeros_like(r.depth))[..., None]
    depth = downsample(dz, ssaa)[..., 0] / face_ds.clamp(min=1e-6)
    depth = torch.where(mask, depth, torch.full_like(depth, float("nan")))
    n = Fn.normalize(downsample(r.normal * face, ssaa), dim=-1, eps=1e-12) * mask[..., None]
    lms = None if r.landmarks is None else (r.landmarks + 0.5) / ssaa - 0.5
    return {
        "image": (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy(),
        "depth": depth.float().cpu().numpy(),
        "normal": n.float().cpu().numpy(),
        "mask": mask.cpu().numpy(),
        "landmarks": None if lms is None else lms.float().cpu().numpy(),
    }
