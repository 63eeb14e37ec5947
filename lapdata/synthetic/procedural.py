"""``procedural``: a built-in parametric 3D head that needs no file (quickstart, tests, CI).

The head is a closed mesh built from horizontal cross-sections: at height y the section is a superellipse of
half-width w(y), front depth zf(y) and back depth zb(y) (smooth PCHIP profiles through a few key heights), with a
relief height field added on the front (eye sockets and eyeballs, brow ridge, nose bridge/tip/alae, lips, chin,
cheeks) and ears on the sides, plus a neck cylinder. Identity parameters (face width and length, jaw, eye spacing and
depth, nose length/width/height, mouth width and lips, chin, cheeks, brow ridge, ears) move these; a mild per-view
expression (smile, mouth open, brow raise) moves the mouth and brows. Everything is a function of |x|, so the head is
exactly left-right symmetric (the triangulation is mirrored too). Albedo is painted in the head's equirectangular
UV layout by ``lapdata.synthetic.albedo`` (symmetric noise, hair on the scalp, painted eyes).

Units: object units of about 10 cm (head width ~1.5). See ``lapdata.synthetic.base`` for the pose/depth conventions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from scipy.interpolate import PchipInterpolator

from lapdata.synthetic.albedo import FaceLayout, hair_from_uv_region, paint_texture, random_background, sample_appearance
from lapdata.synthetic.base import IdentityParams, Pose, SynthView, sample_light
from lapdata.synthetic.mesh import FRAME_EYE_Y, FRAME_IOD, FaceMesh, composite_view, frame_for_eyes, render_mesh


@dataclass(frozen=True)
class ProceduralConfig:
    fov_deg: float = 10.0
    rows: int = 0  # mesh rows (latitude); 0 = automatic: 0.4 x size in 64..200
    cols: int = 0  # mesh columns (longitude), even; 0 = automatic
    texture: int = 0  # texture side; 0 = automatic (2 x size, 256..2048)
    ssaa: int = 1  # supersampling factor (anti-aliased edges, costs ssaa^2)
    expression_scale: float = 1.0  # 0 = neutral face in every view
    light: str = "random"  # random | frontal
    background: str = "random"  # random | gray
    iod: float = FRAME_IOD  # framing of a frontal view: inter-ocular distance / image side (lapdata.faces.align)
    eye_y: float = FRAME_EYE_Y  # eye line / image side, from the top
    identity_scale: float = 1.0  # std-dev multiplier of the identity parameters
    device: str = "cpu"


# identity parameters: name -> (mean, std, lo, hi)
PARAMS: dict[str, tuple[float, float, float, float]] = {
    "face_width": (1.0, 0.05, 0.88, 1.12),
    "face_length": (1.0, 0.05, 0.88, 1.12),
    "jaw_width": (1.0, 0.08, 0.8, 1.2),
    "cheek_width": (1.0, 0.05, 0.9, 1.1),
    "eye_spacing": (1.0, 0.05, 0.88, 1.12),
    "eye_depth": (0.075, 0.015, 0.04, 0.11),
    "eye_height": (0.0, 0.02, -0.05, 0.05),
    "brow_ridge": (0.045, 0.015, 0.01, 0.08),
    "nose_length": (0.42, 0.04, 0.32, 0.52),
    "nose_width": (1.0, 0.12, 0.75, 1.3),
    "nose_height": (0.23, 0.04, 0.14, 0.32),
    "nose_tip": (1.0, 0.15, 0.6, 1.4),
    "mouth_width": (1.0, 0.08, 0.8, 1.2),
    "mouth_gap": (0.19, 0.02, 0.14, 0.24),
    "upper_lip": (0.035, 0.01, 0.015, 0.06),
    "lower_lip": (0.045, 0.012, 0.02, 0.07),
    "chin": (0.05, 0.02, 0.0, 0.1),
    "chin_length": (1.0, 0.07, 0.85, 1.15),
    "cheeks": (0.04, 0.015, 0.0, 0.08),
    "ears": (0.12, 0.02, 0.07, 0.17),
    "forehead_slope": (0.0, 0.05, -0.1, 0.1),
}
EXPRESSIONS = ("smile", "mouth_open", "brow_raise")

# cross-section profiles: y, half-width, front depth, back depth (before identity scaling)
_PROFILE = np.array(
    [
        # y      w      zf     zb
        [1.15, 0.00, 0.00, 0.00],
        [1.10, 0.30, 0.28, 0.36],
        [1.00, 0.47, 0.48, 0.60],
        [0.80, 0.63, 0.72, 0.86],
        [0.50, 0.71, 0.84, 0.98],
        [0.20, 0.74, 0.88, 1.00],
        [0.00, 0.74, 0.88, 0.93],
        [-0.20, 0.73, 0.88, 0.78],
        [-0.40, 0.68, 0.87, 0.60],
        [-0.60, 0.60, 0.86, 0.48],
        [-0.78, 0.47, 0.83, 0.38],
        [-0.92, 0.32, 0.76, 0.30],
        [-1.00, 0.18, 0.62, 0.22],
        [-1.04, 0.00, 0.40, 0.00],
    ]
)
_SUPER = 2.4  # superellipse exponent of the sections (> 2: squarer, flatter face)
EYE_Y = 0.05


def _g(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x)


def _smoothstep(a: float, b: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def sample_params(rng: np.random.Generator, scale: float = 1.0) -> dict[str, float]:
    out = {}
    for k, (m, s, lo, hi) in PARAMS.items():
        out[k] = float(np.clip(m + s * scale * rng.standard_normal(), lo, hi))
    return out


class _Shape:
    """The head surface for one identity + expression: positions from (y, phi) grid parameters."""

    def __init__(self, p: dict[str, float], expr: Sequence[float]):
        self.p = p
        smile, mopen, brow = (float(e) for e in expr)
        self.smile, self.mopen, self.brow_raise = smile, mopen, brow
        prof = _PROFILE.copy()
        y = prof[:, 0]
        lower = y < 0.3
        prof[lower, 0] = 0.3 + (y[lower] - 0.3) * p["face_length"]
        prof[:, 1] *= p["face_width"]
        jaw = np.clip((0.0 - y) / 0.9, 0, 1)  # 0 above the cheekbones, 1 at the chin
        prof[:, 1] *= 1 + (p["jaw_width"] - 1) * jaw + (p["cheek_width"] - 1) * _g((y + 0.1) / 0.25)
        prof[:, 2] += p["forehead_slope"] * np.clip((y - 0.3) / 0.7, 0, 1)
        self.ymax, self.ymin = float(prof[0, 0]), float(prof[-1, 0])
        self.w = PchipInterpolator(prof[::-1, 0], prof[::-1, 1])
        self.zf = PchipInterpolator(prof[::-1, 0], prof[::-1, 2])
        self.zb = PchipInterpolator(prof[::-1, 0], prof[::-1, 3])
        # feature positions
        self.eye_y = EYE_Y + p["eye_height"]
        self.eye_x = 0.30 * p["eye_spacing"] * p["face_width"]
        self.tip_y = self.eye_y - p["nose_length"] * p["face_length"]
        self.mouth_y = self.tip_y - p["mouth_gap"] * p["face_length"]
        self.mouth_w = 0.24 * p["mouth_width"] * (1 + 0.12 * smile)
        self.chin_y = self.mouth_y - 0.30 * p["chin_length"] * p["face_length"]
        self.brow_y = self.eye_y + 0.13 + 0.03 * brow

    def section(self, y: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """Base head (no relief): (..., 3) points for heights y and angles phi (0 = front, +pi/2 = +x side)."""
        s, c = np.sin(phi), np.cos(phi)
        e = 2.0 / _SUPER
        sx = np.sign(s) * np.abs(s) ** e
        sz = np.sign(c) * np.abs(c) ** e
        w = np.maximum(self.w(y), 0)
        zd = np.where(c >= 0, np.maximum(self.zf(y), 0), np.maximum(self.zb(y), 0))
        return np.stack([w * sx, y, zd * sz], -1)

    def relief(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Front height field (added to z) at object coordinates x, y (symmetric in x)."""
        p = self.p
        ax = np.abs(x)
        h = np.zeros_like(x)
        # eye sockets, eyeballs and lids
        dx, dy = ax - self.eye_x, y - self.eye_y
        h -= p["eye_depth"] * _g(dx / 0.13) * _g(dy / 0.075)
        h += 0.045 * _g(dx / 0.075) * _g(dy / 0.045)
        # brow ridge and forehead
        h += p["brow_ridge"] * _g((y - self.brow_y + 0.02) / 0.06) * _g(ax / 0.42)
        # nose: bridge rising from the root to the tip, tip bulb, alae
        nl = self.eye_y - self.tip_y
        t = np.clip((self.eye_y - y) / nl, 0, 1)
        prof = p["nose_height"] * (0.18 + 0.82 * t**1.3)
        below = np.clip((self.tip_y - y) / 0.045, 0, None)
        prof = prof * np.where(y < self.tip_y, np.exp(-below**2), 1.0) * np.where(y > self.eye_y + 0.05, _g((y - self.eye_y - 0.05) / 0.05), 1.0)
        sig = (0.045 + 0.035 * t) * p["nose_width"]
        h += prof * _g(ax / sig)
        h += 0.06 * p["nose_tip"] * p["nose_height"] / 0.23 * _g(ax / (0.05 * p["nose_width"])) * _g((y - self.tip_y - 0.015) / 0.045)
        h += 0.07 * p["nose_height"] / 0.23 * _g((ax - 0.075 * p["nose_width"]) / 0.035) * _g((y - self.tip_y - 0.005) / 0.035)
        # philtrum ridge toward the upper lip, lips, mouth seam (smile lifts the corners)
        corner = (ax / self.mouth_w) ** 2
        my = self.mouth_y + 0.03 * self.smile * corner
        h += p["upper_lip"] * _g((y - my - 0.035) / 0.028) * _g(ax / (0.85 * self.mouth_w))
        lo = my - 0.045 - 0.04 * max(self.mopen, 0.0)
        h += p["lower_lip"] * _g((y - lo) / 0.033) * _g(ax / (0.75 * self.mouth_w))
        h -= (0.015 + 0.03 * max(self.mopen, 0)) * _g((y - my + 0.004) / (0.008 + 0.015 * max(self.mopen, 0))) * _g(ax / (0.9 * self.mouth_w))
        h += 0.02 * _g((y - self.mouth_y - 0.07) / 0.04) * _g(ax / 0.06)
        # chin and cheeks
        h += p["chin"] * _g(ax / 0.16) * _g((y - self.chin_y - 0.08) / 0.09)
        h += p["cheeks"] * _g((ax - 0.36) / 0.13) * _g((y - self.eye_y + 0.2) / 0.14)
        # smile: raised cheeks
        h += 0.02 * max(self.smile, 0) * _g((ax - 0.3) / 0.1) * _g((y - self.mouth_y - 0.12) / 0.1)
        return h

    def surface(self, y: np.ndarray, phi: np.ndarray) -> np.ndarray:
        pts = self.section(y, phi)
        front = _smoothstep(0.15, 0.7, np.cos(phi)) * _smoothstep(self.ymin + 0.02, self.chin_y - 0.05, y)
        pts[..., 2] += front * self.relief(pts[..., 0], y)
        # ears: outward bumps on the sides
        side = np.abs(np.sin(phi))
        ear = self.p["ears"] * _g((y - self.eye_y + 0.12) / 0.13) * _g((np.abs(phi) - math.pi / 2 + 0.12) / 0.13) * side
        pts[..., 0] += np.sign(np.sin(phi)) * ear
        return pts

    def uv_of(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Approximate (u, v) of front points given by object x, y (inverts the base section)."""
        w = np.maximum(self.w(y), 1e-6)
        s = np.clip(np.abs(x) / w, 0, 1) ** (_SUPER / 2)
        phi = np.sign(x) * np.arcsin(s)
        return np.stack([phi / (2 * math.pi) + 0.5, (y - self.ymin) / (self.ymax - self.ymin)], -1)


def _grid(rows: int, cols: int, ymin: float, ymax: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y (R+1,), phi (C+1,), faces (F, 3)) of a lat-long grid; triangulation mirrored about phi = 0."""
    t = np.linspace(0, math.pi, rows + 1)
    y = 0.5 * (ymax + ymin) + 0.5 * (ymax - ymin) * np.cos(t)  # dense near the poles
    phi = np.linspace(-math.pi, math.pi, cols + 1)
    idx = np.arange((rows + 1) * (cols + 1)).reshape(rows + 1, cols + 1)
    a, b = idx[:-1, :-1], idx[:-1, 1:]
    c, d = idx[1:, :-1], idx[1:, 1:]
    left = (np.arange(cols) < cols // 2)[None, :].repeat(rows, 0)
    # quad a b / c d split along a-d on one half and b-c on the other (mirror images); CCW seen from outside
    t1 = np.where(left[..., None], np.stack([a, c, d], -1), np.stack([a, c, b], -1))
    t2 = np.where(left[..., None], np.stack([a, d, b], -1), np.stack([b, c, d], -1))
    faces = np.concatenate([t1.reshape(-1, 3), t2.reshape(-1, 3)])
    return y, phi, faces


def _neck(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Neck cylinder (open tube) from the jaw down below the frame: (verts (N, 3), faces (F, 3))."""
    ys = np.linspace(-0.55, -2.2, rows + 1)
    phi = np.linspace(-math.pi, math.pi, cols + 1)
    Y, P = np.meshgrid(ys, phi, indexing="ij")
    r = 0.44 + 0.06 * np.clip((Y + 1.6) / -0.6, 0, 1)
    v = np.stack([r * np.sin(P), Y, -0.12 + 0.9 * r * np.cos(P)], -1).reshape(-1, 3)
    idx = np.arange((rows + 1) * (cols + 1)).reshape(rows + 1, cols + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    f = np.concatenate([np.stack([a, c, d], -1).reshape(-1, 3), np.stack([a, d, b], -1).reshape(-1, 3)])
    return v, f


class ProceduralBackend:
    """Parametric head rendered with the project's rasterizer (see the module doc)."""

    name = "procedural"
    has_geometry = True

    def __init__(self, config: ProceduralConfig = ProceduralConfig()):
        self.config = config

    def describe(self) -> dict[str, Any]:
        from lapdata.core.config import to_dict

        return {"backend": self.name, **to_dict(self.config)}

    # ---------------------------------------------------------------------------------------------- identities
    def sample_identity(self, rng: np.random.Generator) -> IdentityParams:
        shape = sample_params(rng, self.config.identity_scale)
        app = sample_appearance(rng)
        return IdentityParams(seed=int(rng.integers(0, 2**31 - 1)), coeffs={"shape": shape, "appearance": app})

    def sample_expression(self, rng: np.random.Generator) -> list[float]:
        s = self.config.expression_scale
        if s <= 0:
            return [0.0] * len(EXPRESSIONS)
        return [float(np.clip(rng.normal(0.2, 0.4) * s, -0.6, 1.0)), float(np.clip(rng.normal(0, 0.3) * s, 0, 0.8)),
                float(np.clip(rng.normal(0, 0.4) * s, -0.8, 0.8))]

    # ---------------------------------------------------------------------------------------------- geometry
    def _sizes(self, size: int) -> tuple[int, int, int]:
        c = self.config
        rows = c.rows or int(np.clip(size * 0.4, 64, 200))
        cols = c.cols or 2 * rows
        cols += cols % 2
        tex = c.texture or int(np.clip(2 * size, 256, 2048))
        return rows, cols, tex

    def build_mesh(self, params: IdentityParams, expression: Sequence[float], size: int) -> FaceMesh:
        """The posed-independent mesh of one identity + expression (object frame)."""
        rows, cols, _ = self._sizes(size)
        sh = _Shape(params.coeffs["shape"], expression)
        y, phi, faces = _grid(rows, cols, sh.ymin, sh.ymax)
        Y, P = np.meshgrid(y, phi, indexing="ij")
        head = sh.surface(Y, P).reshape(-1, 3)
        uv = np.stack([P / (2 * math.pi) + 0.5, (Y - sh.ymin) / (sh.ymax - sh.ymin)], -1).reshape(-1, 2)
        # face region: front, between hairline and chin bottom, ears excluded
        hair_y = self._hairline(P)
        face_v = (np.cos(P) > math.cos(math.radians(68))) & (Y < hair_y) & (Y > sh.chin_y - 0.06)
        face_v = face_v.reshape(-1)
        nv, nf = _neck(24, cols)
        n0 = len(head)
        verts = np.concatenate([head, nv])
        allf = np.concatenate([faces, nf + n0])
        uv = np.concatenate([uv, np.zeros((len(nv), 2))])
        texw = np.concatenate([np.ones(n0), np.zeros(len(nv))])
        skin = np.asarray(params.coeffs["appearance"]["skin"])
        vcol = np.concatenate([np.tile(skin, (n0, 1)), np.tile(skin * 0.93, (len(nv), 1))])
        face_tri = np.concatenate([face_v[faces].all(1), np.zeros(len(nf), bool)])
        # landmarks: 5 points (eye centres image-left first, nose tip, mouth corners image-left first)
        lm_xy = np.array([[-sh.eye_x, sh.eye_y], [sh.eye_x, sh.eye_y], [0, sh.tip_y + 0.015],
                          [-sh.mouth_w * 0.95, sh.mouth_y], [sh.mouth_w * 0.95, sh.mouth_y]])
        front = (np.cos(P.reshape(-1)) > 0.3)
        d = ((head[:, :2][None] - lm_xy[:, None]) ** 2).sum(-1) + 1e3 * (~front)[None]
        lms = d.argmin(1)
        extent, ay = frame_for_eyes(2 * sh.eye_x, sh.eye_y, self.config.iod, self.config.eye_y)
        anchor = np.array([0.0, ay, float(sh.zf(ay))])
        dev = torch.device(self.config.device)
        f32 = dict(dtype=torch.float32, device=dev)
        return FaceMesh(
            verts=torch.as_tensor(verts, **f32),
            faces=torch.as_tensor(allf, dtype=torch.int64, device=dev),
            uv=torch.as_tensor(uv, **f32),
            tex_weight=torch.as_tensor(texw, **f32),
            vcolor=torch.as_tensor(vcol, **f32),
            face_tri=torch.as_tensor(face_tri, device=dev),
            pivot=torch.tensor([0.0, -0.05, 0.0], **f32),
            anchor=torch.as_tensor(anchor, **f32),
            extent=float(extent),
            landmarks=torch.as_tensor(lms, dtype=torch.int64, device=dev),
        )

    @staticmethod
    def _hairline(phi: np.ndarray) -> np.ndarray:
        a = np.abs(phi)
        front = 0.62 + 0.04 * _g(phi / 0.25)  # slight widow's peak lowers the centre... and temples higher
        return np.where(a < math.radians(60), front - 0.04 * (a / math.radians(60)) ** 2,
                        np.interp(a, [math.radians(60), math.radians(85), math.radians(100), math.radians(125), math.pi],
                                  [0.58, 0.33, 0.25, -0.25, -0.35]))

    def layout(self, params: IdentityParams, tex: int) -> FaceLayout:
        sh = _Shape(params.coeffs["shape"], (0.0, 0.0, 0.0))
        uv = sh.uv_of
        ex, ey = sh.eye_x, sh.eye_y
        t = np.linspace(0, 2 * math.pi, 24, endpoint=False)

        def eye(sign: float) -> np.ndarray:
            hw, hh = 0.085, 0.036
            x = sign * ex + hw * np.cos(t)
            yy = ey + np.where(np.sin(t) > 0, hh, 0.8 * hh) * np.sin(t) + 0.006 * np.cos(t) * sign
            return uv(x, yy)

        def brow(sign: float) -> np.ndarray:
            s = np.linspace(-1, 1, 9)
            x = sign * (ex + 0.11 * s - 0.01)
            yy = sh.brow_y + 0.02 - 0.02 * s**2 - 0.01 * s * sign * sign
            return uv(x, yy)

        mw = sh.mouth_w
        s = np.linspace(-1, 1, 17)
        upper = np.stack([mw * s, sh.mouth_y + 0.055 * (1 - s**2) ** 0.7 - 0.01 * _g(s / 0.15)], -1)
        lower = np.stack([mw * s[::-1], sh.mouth_y - 0.07 * (1 - s[::-1] ** 2) ** 0.8], -1)
        lips = np.concatenate([upper, lower])
        mouth = np.stack([mw * 0.98 * s, sh.mouth_y + 0.0 * s], -1)
        cheeks = np.array([[-0.33, ey - 0.22], [0.33, ey - 0.22]])
        T = tex

        def hair_fn(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            phi = (u - 0.5) * 2 * math.pi
            y = sh.ymin + v * (sh.ymax - sh.ymin)
            return y > self._hairline(phi)

        return FaceLayout(
            brows=[brow(-1), brow(1)],
            eyes=[eye(-1), eye(1)],
            lips=uv(lips[:, 0], lips[:, 1]),
            mouth=uv(mouth[:, 0], mouth[:, 1]),
            cheeks=uv(cheeks[:, 0], cheeks[:, 1]),
            scale=float(abs(uv(np.array([ex]), np.array([ey]))[0, 0] - 0.5) * 2),
            hair=hair_from_uv_region(hair_fn, T),
            painted_eyes=True,
            symmetric=True,
        )

    # ---------------------------------------------------------------------------------------------- rendering
    def texture(self, params: IdentityParams, size: int) -> torch.Tensor:
        _, _, tex = self._sizes(size)
        t = paint_texture(self.layout(params, tex), params.coeffs["appearance"], tex)
        return torch.as_tensor(t, device=torch.device(self.config.device))

    def render_views(
        self, params: IdentityParams, poses: Sequence[Pose], size: int, rng: np.random.Generator
    ) -> list[SynthView]:
        c = self.config
        tex = self.texture(params, size * c.ssaa)
        out = []
        neutral = None
        for pose in poses:
            expr = self.sample_expression(rng)
            light = sample_light(rng, c.light)
            bg = random_background(rng, size, c.background)
            mesh = self.build_mesh(params, expr, size * c.ssaa)
            if neutral is None:
                neutral = mesh
            r = render_mesh(mesh, mesh.verts, pose, size * c.ssaa, tex, c.fov_deg)
            v = composite_view(r, light, torch.as_tensor(bg, device=tex.device), c.ssaa)
            rc = render_mesh(mesh, mesh.verts, Pose(0.0, 0.0, 0.0), size * c.ssaa, tex, c.fov_deg)
            vc = composite_view(rc, light, torch.as_tensor(bg, device=tex.device), c.ssaa)
            out.append(
                SynthView(
                    image=v["image"], pose=pose, depth=v["depth"], canon_depth=vc["depth"], normal=v["normal"],
                    mask=v["mask"], light=[float(x) for x in light], expression=[float(e) for e in expr],
                    landmarks=v["landmarks"], meta={"expression_names": list(EXPRESSIONS)},
                )
            )
        return out
