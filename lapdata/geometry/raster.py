"""Z-buffered triangle rasterizer in pure PyTorch (CPU and CUDA), differentiable like nvdiffrast.

The one mesh rasterizer of the project: the model's renderer (``lapmodel.render.renderer``) draws grid meshes of ~1 px
triangles with it, the synthetic generator (``lapdata.synthetic``) draws face meshes of any size up to 1024 px.

Conventions (see also ``lapdata.geometry.camera``):

- ``verts`` (B, V, 3): x, y in *pixel coordinates* (pixel (row i, col j) has its centre at x=j, y=i; x right,
  y down) and z = camera-space depth > 0 (smaller = nearer). Use ``geometry.camera_to_raster`` to get them from
  camera-space points.
- A pixel is covered when its centre lies inside the triangle. Pixels exactly on an edge or a vertex follow a
  consistent tie-break (the top-left rule: equivalent to nudging every sample point by an infinitesimal
  (+1, +eta), so pixels on left and top edges are in, on right and bottom edges out): an edge shared by two
  triangles belongs to exactly one of them, so a mesh has neither holes nor double coverage along its shared
  edges and vertices. Edge functions are evaluated from the lower-indexed endpoint of each edge so that the two
  triangles of a shared edge see exactly negated float values. (The strict side of the rule is implemented as
  ``value >= finfo.tiny``: a value in the subnormal range counts as zero.)
- Both sides are drawn (no back-face culling, like neural_renderer with ``fill_back=True`` in Unsup3D); the
  nearest surface wins. Triangles with a vertex at depth <= ``near``, degenerate triangles (zero screen area) and
  triangles with non-finite vertices are skipped; triangles partly outside the image are clipped to it.
- Depth is interpolated perspective-correctly: 1/z is linear in screen space. The depth test compares float32
  depths; equal depths go to the lower face index. At most 2**32 faces.

How it works. Visibility (which triangle wins a pixel) is computed without gradients: each triangle's pixel bounding
box is rounded up to a power-of-two window (Kw x Kh), triangles are grouped by window class, and for each class the
candidate pixels of a bounded chunk of triangles are enumerated as one (n, Kh, Kw) tensor, inside-tested with edge
functions, and resolved with a single ``scatter_reduce(amin)`` on int64 keys (float32 depth bits in the high 32 bits,
triangle index in the low 32: positive floats order like their bit patterns). The number of kernel launches is
bounded by the number of non-empty classes times the chunks, not by the triangle count. Barycentrics and depth are
then recomputed with autograd from the vertex positions of each pixel's winning triangle, so gradients reach the
vertex positions (x, y and z) through ``bary`` and ``zbuf`` — not through visibility changes (as nvdiffrast without
its antialiasing op).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


_KEY_EMPTY = torch.iinfo(torch.int64).max
_LOW32 = 0xFFFFFFFF
_CLASS_BASE = 32  # class id = log2(Kw) * 32 + log2(Kh)


@dataclass(frozen=True)
class Fragments:
    """What ``rasterize`` returns.

    face_id: (B, H, W) int64, index into ``faces`` of the nearest triangle covering the pixel centre, -1 where none
    bary:    (B, H, W, 3) perspective-correct barycentrics of the pixel centre in that triangle (0 where empty),
             differentiable w.r.t. the vertex positions
    zbuf:    (B, H, W) camera-space depth of the nearest surface, +inf where empty (differentiable)
    """

    face_id: Tensor
    bary: Tensor
    zbuf: Tensor

    @property
    def mask(self) -> Tensor:
        """(B, H, W) bool: pixel covered by a triangle."""
        return self.face_id >= 0


def _check_inputs(verts: Tensor, faces: Tensor, height: int, width: int) -> None:
    if verts.dim() != 3 or verts.shape[-1] != 3:
        raise ValueError(f"rasterize: verts must be (B, V, 3), got {tuple(verts.shape)}")
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"rasterize: faces must be (F, 3), got {tuple(faces.shape)}")
    if faces.dtype.is_floating_point or faces.dtype == torch.bool:
        raise TypeError(f"rasterize: faces must be an integer tensor, got {faces.dtype}")
    if not verts.dtype.is_floating_point:
        raise TypeError(f"rasterize: verts must be floating point, got {verts.dtype}")
    if faces.device != verts.device:
        raise ValueError(f"rasterize: faces on {faces.device} but verts on {verts.device}")
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"rasterize: image size must be positive, got {height}x{width}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= verts.shape[1]):
        raise ValueError(f"rasterize: face indices must lie in [0, {verts.shape[1] - 1}]")


def _ceil_log2(n: Tensor) -> Tensor:
    """Smallest k >= 0 with 2**k >= n, for integer n >= 1 (exact: bit length of n - 1)."""
    _, e = torch.frexp((n - 1).to(torch.float32))  # exact below 2**24
    return e.to(torch.int64)


def _default_budget(device: torch.device) -> int:
    return 1 << 24 if device.type == "cuda" else 1 << 21


def rasterize_face_ids(
    verts: Tensor,
    faces: Tensor,
    height: int,
    width: int,
    *,
    near: float = 1e-6,
    max_candidates: int | None = None,
) -> Tensor:
    """Visibility only (no gradients): index of the nearest triangle covering each pixel centre.

    verts (B, V, 3) pixel x, y and depth z; faces (F, 3) integer -> (B, H, W) int64, -1 where empty.
    ``max_candidates`` bounds the number of (triangle, pixel) candidates handled at once (memory ~ 60 bytes each);
    default 2**24 on CUDA, 2**21 on CPU.
    """
    return _rasterize_impl(verts, faces, height, width, near, max_candidates, count=False)


def count_coverage(verts: Tensor, faces: Tensor, height: int, width: int, *, near: float = 1e-6) -> Tensor:
    """Diagnostic: how many triangles cover each pixel centre, ignoring depth -> (B, H, W) int64.

    A grid mesh (a height field) seen without folds gives exactly 1 inside its outline (no holes, no double coverage
    of shared edges); a closed mesh gives 2 (front and back), since both sides are drawn.
    """
    return _rasterize_impl(verts, faces, height, width, near, None, count=True)


_EDGES = ((1, 2), (2, 0), (0, 1))  # edge e is opposite vertex e, traversed v_i -> v_j


def _edge_tables(faces: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per face and edge (F, 3): local index of the lower-indexed endpoint, of the other one, and +-1 (traversal)."""
    i = faces[:, [e[0] for e in _EDGES]]
    j = faces[:, [e[1] for e in _EDGES]]
    li = torch.tensor([e[0] for e in _EDGES], device=faces.device).expand_as(i)
    lj = torch.tensor([e[1] for e in _EDGES], device=faces.device).expand_as(j)
    swap = i > j
    return torch.where(swap, lj, li), torch.where(swap, li, lj), torch.where(swap, -1, 1)


@torch.compiler.disable  # data-dependent shapes (classes, chunks): keep it out of torch.compile graphs
@torch.no_grad()
def _rasterize_impl(
    verts: Tensor, faces: Tensor, height: int, width: int, near: float, max_candidates: int | None, count: bool
) -> Tensor:
    _check_inputs(verts, faces, height, width)
    H, W = int(height), int(width)
    B, F = verts.shape[0], faces.shape[0]
    dev = verts.device
    if B == 0 or F == 0:
        return torch.full((B, H, W), 0 if count else -1, dtype=torch.int64, device=dev)
    budget = int(max_candidates or _default_budget(dev))
    # candidates beyond a triangle's box (windows are powers of two) write empty keys past the image: pad the buffer
    n_pix = B * H * W
    keys = torch.full((n_pix + 2 * H * W + 2 * W,), 0 if count else _KEY_EMPTY, dtype=torch.int64, device=dev)
    faces = faces.long()
    dtype = verts.dtype
    tri = verts.detach().index_select(1, faces.reshape(-1)).reshape(B * F, 3, 3)  # (B*F, 3 verts, xyz)
    x, y, z = tri[..., 0], tri[..., 1], tri[..., 2]  # (B*F, 3) each
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])  # (B*F,)
    ok = torch.isfinite(tri).flatten(1).all(1) & (z.amin(1) > near) & (area != 0)
    # pixel bounding box, clipped to the image (clamp the floats first: far-off vertices may be huge)
    x0 = torch.ceil(x.amin(1).clamp(-1, W)).long().clamp(min=0)
    x1 = torch.floor(x.amax(1).clamp(-1, W)).long().clamp(max=W - 1)
    y0 = torch.ceil(y.amin(1).clamp(-1, H)).long().clamp(min=0)
    y1 = torch.floor(y.amax(1).clamp(-1, H)).long().clamp(max=H - 1)
    ok &= (x1 >= x0) & (y1 >= y0)
    kx = _ceil_log2((x1 - x0 + 1).clamp(min=1))
    ky = _ceil_log2((y1 - y0 + 1).clamp(min=1))
    cls = torch.where(ok, kx * _CLASS_BASE + ky, torch.full_like(kx, -1))
    counts = torch.bincount(cls + 1).tolist()  # the one host sync (plus one per non-empty class)
    sign_area = torch.sign(area)
    inv_area = 1.0 / area.abs().clamp_min(torch.finfo(dtype).tiny)
    base = (torch.arange(B * F, device=dev) // F) * (H * W) + y0 * W + x0  # flat index of each box's corner
    lo, hi, esign = _edge_tables(faces)
    for c in range(1, len(counts)):
        n_cls = counts[c]
        if n_cls == 0:
            continue
        cid = c - 1
        Kw, Kh = 1 << (cid // _CLASS_BASE), 1 << (cid % _CLASS_BASE)
        idx = torch.nonzero(cls == cid).squeeze(1)
        per = max(1, budget // (Kw * Kh))
        for s in range(0, n_cls, per):
            g = idx[s : s + per]
            f = g % F
            sel = lambda x: x.index_select(0, g)  # noqa: E731
            fsel = lambda x: x.index_select(0, f)  # noqa: E731
            target, key = _raster_chunk(
                sel(tri), fsel(lo), fsel(hi), fsel(esign), sel(sign_area), sel(inv_area), f,
                sel(x0), sel(x1), sel(y0), sel(y1), sel(base), W, Kw, Kh,
            )  # fmt: skip
            if count:
                keys.scatter_add_(0, target, (key != _KEY_EMPTY).long())
            else:
                keys.scatter_reduce_(0, target, key, reduce="amin", include_self=True)
    keys = keys[:n_pix]
    if count:
        return keys.view(B, H, W)
    return torch.where(keys == _KEY_EMPTY, torch.full_like(keys, -1), keys & _LOW32).view(B, H, W)


def _raster_chunk(
    t: Tensor,
    lo: Tensor,
    hi: Tensor,
    esign: Tensor,
    sa: Tensor,
    ia: Tensor,
    f: Tensor,
    x0: Tensor,
    x1: Tensor,
    y0: Tensor,
    y1: Tensor,
    base: Tensor,
    W: int,
    Kw: int,
    Kh: int,
) -> tuple[Tensor, Tensor]:
    """Inside test and depth of the (n, Kh, Kw) candidate pixels of n triangles.

    t (n, 3, 3) vertices; lo/hi/esign (n, 3) edge tables; sa/ia (n,) sign and 1/|area|; f (n,) face ids;
    x0, x1, y0, y1, base (n,) boxes and flat corner index. Returns flat targets and int64 keys
    (float32 depth bits << 32 | face), the empty key where the pixel centre is outside.
    """
    dev, dtype = t.device, t.dtype
    a = torch.gather(t, 1, lo.unsqueeze(-1).expand(-1, -1, 3))  # (n, 3 edges, xyz): lower-indexed endpoint
    c = torch.gather(t, 1, hi.unsqueeze(-1).expand(-1, -1, 3))
    s = esign.to(dtype) * sa.unsqueeze(1)  # (n, 3): orientation making inside <=> edge value >= 0
    A = s * (c[..., 0] - a[..., 0])  # edge direction, oriented (exact negation across a shared edge)
    Bc = s * (c[..., 1] - a[..., 1])
    owns = (Bc < 0) | ((Bc == 0) & (A > 0))  # top-left rule: sample nudged by (+1, +eta)
    thr = torch.where(owns, torch.zeros((), dtype=dtype, device=dev), torch.full((), torch.finfo(dtype).tiny, dtype=dtype, device=dev))
    ox = torch.arange(Kw, device=dev, dtype=dtype)
    oy = torch.arange(Kh, device=dev, dtype=dtype)
    px = x0.to(dtype).unsqueeze(1) + ox  # (n, Kw)
    py = y0.to(dtype).unsqueeze(1) + oy  # (n, Kh)
    ev = A[..., None, None] * (py[:, None, :, None] - a[..., 1, None, None]) - Bc[..., None, None] * (
        px[:, None, None, :] - a[..., 0, None, None]
    )  # (n, 3, Kh, Kw)
    inside = (ev >= thr[..., None, None]).all(1)  # (n, Kh, Kw)
    if Kw > 1:
        inside &= (px <= x1.unsqueeze(1)).unsqueeze(1)
    if Kh > 1:
        inside &= (py <= y1.unsqueeze(1)).unsqueeze(2)
    kz = ia.unsqueeze(1) / t[..., 2]  # (n, 3): 1 / (|area| z_e)
    zinv = (ev * kz[..., None, None]).sum(1)  # sum_e l_e / z_e
    depth = (1.0 / zinv).float()
    key = (depth.view(torch.int32).to(torch.int64) << 32) | f.view(-1, 1, 1)
    key = torch.where(inside, key, torch.full((), _KEY_EMPTY, dtype=torch.int64, device=dev))
    off = (torch.arange(Kh, device=dev) * W).view(Kh, 1) + torch.arange(Kw, device=dev).view(1, Kw)
    target = base.view(-1, 1, 1) + off  # (n, Kh, Kw)
    return target.reshape(-1), key.reshape(-1)


def fragments_from_face_ids(verts: Tensor, faces: Tensor, face_id: Tensor) -> Fragments:
    """Differentiable barycentrics and depth of each pixel centre in its given triangle.

    verts (B, V, 3), faces (F, 3), face_id (B, H, W) int64 (-1 = empty) -> Fragments.
    Screen barycentrics l_k are edge functions over the signed area; perspective-correct ones are
    (l_k / z_k) / sum_m (l_m / z_m) and the depth is 1 / sum_m (l_m / z_m).
    """
    B, H, W = face_id.shape
    dev, dtype = verts.device, verts.dtype
    valid = face_id >= 0
    vidx = faces.long()[face_id.clamp(min=0)]  # (B, H, W, 3)
    v = torch.gather(verts, 1, vidx.reshape(B, -1, 1).expand(-1, -1, 3)).reshape(B, H, W, 3, 3)
    # empty pixels get a harmless unit triangle at depth 1 so that no inf/nan can leak into the gradients
    dummy = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=dtype, device=dev)
    v = torch.where(valid[..., None, None], v, dummy)
    xs, ys, zs = v[..., 0], v[..., 1], v[..., 2]  # (B, H, W, 3)
    px = torch.arange(W, device=dev, dtype=dtype).view(1, 1, W)
    py = torch.arange(H, device=dev, dtype=dtype).view(1, H, 1)
    x0, x1, x2 = xs.unbind(-1)
    y0, y1, y2 = ys.unbind(-1)
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    w0 = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)
    w1 = (x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)
    w2 = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
    q = torch.stack([w0, w1, w2], -1) / (area.unsqueeze(-1) * zs)  # (B, H, W, 3) = l_k / z_k
    zinv = q.sum(-1)
    bary = torch.where(valid.unsqueeze(-1), q / zinv.unsqueeze(-1), torch.zeros((), dtype=dtype, device=dev))
    zbuf = torch.where(valid, 1.0 / zinv, torch.full((), float("inf"), dtype=dtype, device=dev))
    return Fragments(face_id=face_id, bary=bary, zbuf=zbuf)


def rasterize(
    verts: Tensor,
    faces: Tensor,
    height: int,
    width: int,
    *,
    near: float = 1e-6,
    max_candidates: int | None = None,
) -> Fragments:
    """Rasterize a batch of triangle meshes that share their faces.

    verts (B, V, 3): x, y pixel coordinates (x right, y down, pixel centres at integers), z = depth > 0;
    faces (F, 3) integer, shared by the batch -> Fragments with (B, H, W) face_id, (B, H, W, 3) bary, (B, H, W) zbuf.
    Gradients flow from ``bary`` and ``zbuf`` to ``verts``. Any triangle size; memory is bounded by
    ``max_candidates`` (see ``rasterize_face_ids``).
    """
    face_id = rasterize_face_ids(verts, faces, height, width, near=near, max_candidates=max_candidates)
    return fragments_from_face_ids(verts, faces, face_id)


def interpolate(attrs: Tensor, faces: Tensor, frags: Fragments) -> Tensor:
    """Interpolate per-vertex attributes at the pixel centres with the fragments' barycentrics.

    attrs (B, V, C) or (V, C) shared by the batch, faces (F, 3) -> (B, H, W, C); 0 where no triangle covers the pixel.
    Differentiable w.r.t. ``attrs`` and (through ``frags.bary``) the vertex positions.
    """
    B, H, W = frags.face_id.shape
    if attrs.dim() == 2:
        attrs = attrs.unsqueeze(0).expand(B, -1, -1)
    if attrs.dim() != 3 or attrs.shape[0] != B:
        raise ValueError(f"interpolate: attrs must be (B={B}, V, C) or (V, C), got {tuple(attrs.shape)}")
    C = attrs.shape[-1]
    vidx = faces.long()[frags.face_id.clamp(min=0)]  # (B, H, W, 3)
    a = torch.gather(attrs, 1, vidx.reshape(B, -1, 1).expand(-1, -1, C)).reshape(B, H, W, 3, C)
    return (a * frags.bary.unsqueeze(-1).to(a.dtype)).sum(-2)
