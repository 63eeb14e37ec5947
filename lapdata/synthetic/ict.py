"""``ict``: the ICT-FaceKit morphable face model (the ``FaceXModel`` folder as its authors publish it).

The folder holds ``generic_neutral_mesh.obj`` (26,719 vertices, quads with UVs and materials),
``identity000.obj`` ... ``identity099.obj`` (the same topology displaced by one standard deviation along each PCA
identity mode), 53 ARKit-style expression blendshapes (``jawOpen.obj``, ``eyeBlink_L.obj``, ...; the list is in
``vertex_indices.json``), ``vertex_indices.json`` (68 iBUG landmark vertices) and ``ICTFaceModelMaterial.mtl``.

A face is ``neutral + sum_i c_i (identity_i - neutral) + sum_j e_j (expression_j - neutral)`` with
``c ~ N(0, identity_scale^2)`` truncated at ``truncation`` standard deviations and a mild random expression
``e`` per view. We keep the materials that make a head (``M_Face``, ``M_BackHead`` with the mouth and eye sockets,
teeth, gums, sclerae and irises) and drop the transparent overlays (lacrimal fluid, eye blend/occlusion, lashes).
The ground-truth face mask is the face area (vertices 0-9408, the ICT "full face area") minus the hair, plus the
eyes. The albedo is painted in the face's UV tile from the landmarks' UVs (``lapdata.synthetic.albedo``); the head
tile gets per-vertex skin/hair colours.

Loading parses ~160 OBJ files (about 20 s); the result is cached as a compact ``.npz`` (float32, kept vertices only)
in ``cache_dir`` (build-synthetic uses ``OUT/cache/``), keyed by the folder's file names, sizes and mtimes.
The folder is validated first: a missing file, a mesh with another vertex/face count than the neutral mesh, or a
neutral mesh without faces/UVs is one LapError naming the file.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy.special import expit

from lapdata.synthetic.albedo import FaceLayout, paint_texture, random_background, sample_appearance
from lapdata.synthetic.base import IdentityParams, Pose, SynthView, sample_light
from lapdata.synthetic.ict_model import KEEP_MATERIALS, MILD, ICTModel, load_model
from lapdata.synthetic.mesh import FRAME_EYE_Y, FRAME_IOD, FaceMesh, composite_view, frame_for_eyes, render_mesh, vertex_normals

@dataclass(frozen=True)
class ICTConfig:
    fov_deg: float = 10.0
    ssaa: int = 1
    texture: int = 0  # texture side; 0 = automatic (2 x size, 512..2048)
    identity_scale: float = 1.0  # std-dev of the identity coefficients
    truncation: float = 2.5  # |c| is clipped at this many standard deviations
    modes: int = 0  # identity modes used (0 = all)
    expression_scale: float = 1.0  # 0 = neutral expression in every view
    light: str = "random"  # random | frontal
    background: str = "random"  # random | gray
    iod: float = FRAME_IOD  # framing of a frontal view: inter-ocular distance / image side (lapdata.faces.align)
    eye_y: float = FRAME_EYE_Y  # eye line / image side, from the top
    device: str = "cpu"


# --------------------------------------------------------------------------------------------------- backend


def _mirror_pairs(names: Sequence[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        base = re.sub(r"_[LR]$", "", n)
        groups.setdefault(base, []).append(i)
    return groups


class ICTBackend:
    """ICT-FaceKit identities rendered with the project's rasterizer (see the module doc)."""

    name = "ict"
    has_geometry = True

    def __init__(self, folder: str | Path, config: ICTConfig = ICTConfig(), cache_dir: str | Path | None = None,
                 progress: bool = False):
        self.folder = str(folder)
        self.config = config
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self._model: ICTModel | None = load_model(folder, cache_dir, progress=progress)
        self._tensors: dict[str, torch.Tensor] | None = None

    def __getstate__(self):
        # workers reload from the cache (fast) instead of receiving ~100 MB of arrays through a pipe
        st = dict(self.__dict__)
        if self.cache_dir:
            st["_model"] = None
        st["_tensors"] = None
        return st

    @property
    def model(self) -> ICTModel:
        if self._model is None:
            self._model = load_model(self.folder, self.cache_dir)
        return self._model

    def describe(self) -> dict[str, Any]:
        from lapdata.core.config import to_dict

        m = self.model
        return {"backend": self.name, "model": self.folder, "identity_modes": int(m.id_basis.shape[0]),
                "expressions": len(m.expr_names), **to_dict(self.config)}

    @property
    def num_modes(self) -> int:
        K = self.model.id_basis.shape[0]
        return min(K, self.config.modes) if self.config.modes else K

    def _t(self) -> dict[str, torch.Tensor]:
        if self._tensors is None:
            m = self.model
            dev = torch.device(self.config.device)
            f32 = dict(dtype=torch.float32, device=dev)
            self._tensors = {
                "neutral": torch.as_tensor(m.neutral, **f32),
                "id": torch.as_tensor(m.id_basis[: self.num_modes], **f32),
                "expr": torch.as_tensor(m.expr_basis, **f32),
                "faces": torch.as_tensor(m.faces, dtype=torch.int64, device=dev),
                "rfaces": torch.as_tensor(m.rfaces, dtype=torch.int64, device=dev),
                "rv": torch.as_tensor(m.rv, dtype=torch.int64, device=dev),
                "ruv": torch.as_tensor(m.ruv, **f32),
            }
        return self._tensors

    # ---------------------------------------------------------------------------------------------- identities
    def sample_identity(self, rng: np.random.Generator) -> IdentityParams:
        c = self.config
        coeffs = rng.standard_normal(self.num_modes) * c.identity_scale
        coeffs = np.clip(coeffs, -c.truncation, c.truncation)
        app = sample_appearance(rng)
        return IdentityParams(seed=int(rng.integers(0, 2**31 - 1)),
                              coeffs={"identity": coeffs.round(5).tolist(), "appearance": app})

    def sample_expression(self, rng: np.random.Generator) -> list[float]:
        names = self.model.expr_names
        e = np.zeros(len(names))
        s = self.config.expression_scale
        if s <= 0 or not names:
            return e.tolist()
        for base, idx in _mirror_pairs(names).items():
            std = MILD.get(base, 0.0)
            if std == 0:
                continue
            shared = abs(rng.normal(0, std))
            for i in idx:
                e[i] = shared * (1 + 0.2 * rng.standard_normal())
        e = np.clip(e * s, 0, 1)
        return e.round(4).tolist()

    def vertices(self, params: IdentityParams, expression: Sequence[float]) -> torch.Tensor:
        """Kept-vertex positions (Vk, 3) of an identity + expression."""
        t = self._t()
        c = torch.as_tensor(np.asarray(params.coeffs["identity"], np.float32), device=t["neutral"].device)
        v = t["neutral"] + torch.einsum("k,kvd->vd", c, t["id"])
        if len(expression):
            e = torch.as_tensor(np.asarray(expression, np.float32), device=v.device)
            v = v + torch.einsum("k,kvd->vd", e, t["expr"])
        return v

    # ---------------------------------------------------------------------------------------------- appearance
    def _hair(self, v: np.ndarray) -> np.ndarray:
        """Per-vertex hair weight in [0, 1] from position (cm): scalp above a hairline ~5 cm over the brows, the
        sides above the ears and the back of the head; ears stay skin."""
        m = self.model
        x, y, z = v[:, 0], v[:, 1], v[:, 2]
        lm = m.landmarks
        if (lm >= 0).all():
            brow_y = float(v[lm[17:27], 1].mean())
            eye_y = float(v[lm[36:48], 1].mean())
            front_z = float(v[lm[27:31], 2].max())
        else:  # not the ICT mesh (e.g. a test mesh): no hair
            return np.zeros(len(v))

        def sig(t: np.ndarray, w: float) -> np.ndarray:
            return expit(t / w)

        depth = front_z - z  # distance behind the tip of the nose
        top = sig(y - (brow_y + 5.0 + 0.03 * x**2), 0.4)
        side = sig(depth - 10.5, 0.5) * sig(y - (brow_y + 0.5), 0.4)
        back = sig(depth - 14.5, 0.6) * sig(y - (eye_y - 5.0), 0.6)
        h = np.maximum(np.maximum(top, side), back)
        ear = (np.abs(x) > 0.8 * np.abs(x).max()) & (y < brow_y + 1.0) & (y > eye_y - 7.0) & (depth < 16.0)
        return np.where(ear, 0.0, h)

    def layout(self, v: np.ndarray) -> FaceLayout:
        """Feature polygons in the face UV tile from the 68 landmarks' UVs (neutral identity)."""
        m = self.model
        lm = m.landmarks
        if not (lm >= 0).all():
            # no landmarks (e.g. a tiny test mesh): a generic layout in the middle of the tile
            t = np.linspace(0, 2 * math.pi, 16, endpoint=False)
            eye = lambda cx: np.stack([cx + 0.06 * np.cos(t), 0.6 + 0.025 * np.sin(t)], -1)  # noqa: E731
            s = np.linspace(-1, 1, 9)
            return FaceLayout(
                brows=[np.stack([0.35 + 0.07 * s, 0.68 - 0.01 * s**2], -1), np.stack([0.65 + 0.07 * s, 0.68 - 0.01 * s**2], -1)],
                eyes=[eye(0.35), eye(0.65)], lips=np.stack([0.5 + 0.1 * np.cos(t), 0.3 + 0.03 * np.sin(t)], -1),
                mouth=np.stack([0.5 + 0.1 * s, 0.3 + 0 * s], -1), cheeks=np.array([[0.3, 0.45], [0.7, 0.45]]),
                scale=0.3, painted_eyes=True,
            )
        # UV of each landmark vertex: a render vertex of that kept vertex in the face tile
        uv_of = np.zeros((len(m.neutral), 2), np.float32)
        in_tile = (m.ruv[:, 0] < 1.0)
        uv_of[m.rv[in_tile]] = m.ruv[in_tile]
        L = uv_of[lm]
        seam = L[[48, 60, 61, 62, 63, 64, 54]]
        eye_l, eye_r = L[36:42].mean(0), L[42:48].mean(0)
        cheeks = np.stack([0.5 * (L[41] + L[48]) + np.array([-0.03, 0.0]), 0.5 * (L[46] + L[54]) + np.array([0.03, 0.0])])
        return FaceLayout(
            brows=[L[17:22], L[22:27]], eyes=[L[36:42], L[42:48]], lips=L[48:60], mouth=seam, cheeks=cheeks,
            scale=float(np.linalg.norm(eye_r - eye_l)), painted_eyes=False,
        )

    def _vertex_colours(self, app: dict, hair: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per kept-vertex (colour (Vk, 3), texture weight (Vk,))."""
        m = self.model
        skin = np.asarray(app["skin"], np.float32)
        hc = np.asarray(app["hair"], np.float32)
        col = np.tile(skin, (len(m.neutral), 1))
        texw = np.zeros(len(m.neutral), np.float32)
        names = m.mat_names
        face = names.index("M_Face") if "M_Face" in names else -1
        h = np.zeros(len(m.neutral)) if app["bald"] else hair
        for k, nme in enumerate(names):
            sel = m.vmat == k
            if nme == "M_Face" or nme not in KEEP_MATERIALS:
                texw[sel] = 1.0
            elif nme == "M_BackHead":
                col[sel] = skin * 0.97
            elif nme == "M_GumsTongue":
                col[sel] = np.array([0.55, 0.2, 0.2])
            elif nme == "M_Teeth":
                col[sel] = np.array([0.85, 0.82, 0.75])
        for side in ("Left", "Right"):
            idx, c = self._eye_colours(side, app)
            col[idx] = c
            texw[idx] = 0.0
        if face < 0:
            texw[:] = 1.0
        # hair over skin (texture weight goes down where the hair is)
        hs = (m.vmat == face) | (np.asarray(names)[m.vmat] == "M_BackHead")
        hh = np.where(hs, h, 0.0)
        col = col * (1 - hh[:, None]) + hc * hh[:, None]
        texw = texw * (1 - hh)
        return col.astype(np.float32), texw.astype(np.float32)

    def _eye_colours(self, side: str, app: dict) -> tuple[np.ndarray, np.ndarray]:
        """(kept-vertex indices, colours (n, 3)) of the sclera + iris of one eye ("Left"/"Right"), by the angle from
        the eye's axis (+z): iris within ~28 degrees, pupil within ~11 (both meshes get the same pattern, so
        whichever is in front shows it)."""
        m = self.model
        names = np.asarray(m.mat_names)
        idx = np.flatnonzero(np.isin(names[m.vmat], [f"M_Sclera{side}", f"M_Iris{side}"]))
        if len(idx) == 0:
            return idx, np.zeros((0, 3), np.float32)
        pts = m.neutral[idx]
        r = 0.5 * float(pts[:, 0].max() - pts[:, 0].min())
        c = np.array([pts[:, 0].mean(), pts[:, 1].mean(), pts[:, 2].max() - r])
        d = pts - c
        ang = np.degrees(np.arccos(np.clip(d[:, 2] / np.maximum(np.linalg.norm(d, axis=1), 1e-9), -1, 1)))
        sclera = np.array([0.8, 0.77, 0.72], np.float32)
        iris = np.asarray(app["iris"], np.float32)
        t_iris = np.clip((28.0 - ang) / 3.0, 0, 1)[:, None]
        t_pupil = np.clip((11.0 - ang) / 2.0, 0, 1)[:, None]
        col = sclera * (1 - t_iris) + iris * t_iris
        col = col * (1 - t_pupil) + np.array([0.03, 0.03, 0.03], np.float32) * t_pupil
        return idx, col.astype(np.float32)

    # ---------------------------------------------------------------------------------------------- rendering
    def build_mesh(self, params: IdentityParams, v: torch.Tensor, hair: np.ndarray) -> FaceMesh:
        m = self.model
        t = self._t()
        dev = v.device
        f32 = dict(dtype=torch.float32, device=dev)
        col, texw = self._vertex_colours(params.coeffs["appearance"], hair)
        vn = v.detach().cpu().numpy()
        lm = m.landmarks
        if (lm >= 0).all():
            eye_l, eye_r = vn[lm[36:42]].mean(0), vn[lm[42:48]].mean(0)
        else:
            c = vn.mean(0)
            span = vn.max(0) - vn.min(0)
            eye_l, eye_r = c + np.array([-0.2, 0.15, 0]) * span, c + np.array([0.2, 0.15, 0]) * span
        iod = float(np.linalg.norm(eye_r[:2] - eye_l[:2]))
        extent, ay = frame_for_eyes(iod, 0.5 * (eye_l[1] + eye_r[1]), self.config.iod, self.config.eye_y)
        front = vn[m.face_area]
        anchor = np.array([0.5 * (eye_l[0] + eye_r[0]), ay, float(np.percentile(front[:, 2], 90))])
        head = vn[~m.face_area] if (~m.face_area).any() else vn
        pivot = np.array([anchor[0], ay, float(0.5 * (head[:, 2].min() + head[:, 2].max()))])
        names = np.asarray(m.mat_names)
        eyes = np.char.startswith(names, "M_Sclera") | np.char.startswith(names, "M_Iris")
        mouth = np.isin(names, ["M_Teeth", "M_GumsTongue"])
        face_v = m.face_area & (hair < 0.5)
        face_tri = (face_v[m.faces].all(1) & (m.tri_mat == m.mat_names.index("M_Face") if "M_Face" in m.mat_names else True)) \
            | eyes[m.tri_mat] | mouth[m.tri_mat]
        rv = t["rv"]
        return FaceMesh(
            verts=v[rv],
            faces=t["rfaces"],
            uv=t["ruv"],
            tex_weight=torch.as_tensor(texw, **f32)[rv],
            vcolor=torch.as_tensor(col, **f32)[rv],
            face_tri=torch.as_tensor(face_tri, device=dev),
            pivot=torch.as_tensor(pivot, **f32),
            anchor=torch.as_tensor(anchor, **f32),
            extent=float(extent),
            landmarks=None,
        )

    def texture(self, params: IdentityParams, size: int, v0: np.ndarray) -> torch.Tensor:
        T = self.config.texture or int(np.clip(2 * size, 512, 2048))
        tex = paint_texture(self.layout(v0), params.coeffs["appearance"], T)
        return torch.as_tensor(tex, device=torch.device(self.config.device))

    def render_views(
        self, params: IdentityParams, poses: Sequence[Pose], size: int, rng: np.random.Generator
    ) -> list[SynthView]:
        c = self.config
        m = self.model
        t = self._t()
        S = size * c.ssaa
        v_id = self.vertices(params, [])
        v0 = v_id.detach().cpu().numpy()
        hair = self._hair(v0)
        tex = self.texture(params, S, v0)
        lm_k = torch.as_tensor(m.landmarks, device=v_id.device) if (m.landmarks >= 0).all() else None
        out = []
        for pose in poses:
            expr = self.sample_expression(rng)
            light = sample_light(rng, c.light)
            bg = torch.as_tensor(random_background(rng, size, c.background), device=v_id.device)
            v = self.vertices(params, expr)
            mesh = self.build_mesh(params, v, hair)
            normals = vertex_normals(v, t["faces"])[t["rv"]]
            if lm_k is not None:
                # landmarks: append the landmark vertices as isolated render vertices
                mesh.verts = torch.cat([mesh.verts, v[lm_k]])
                pad = len(lm_k)
                mesh.uv = torch.cat([mesh.uv, mesh.uv.new_zeros(pad, 2)])
                mesh.tex_weight = torch.cat([mesh.tex_weight, mesh.tex_weight.new_zeros(pad)])
                mesh.vcolor = torch.cat([mesh.vcolor, mesh.vcolor.new_zeros(pad, 3)])
                normals = torch.cat([normals, normals.new_zeros(pad, 3)])
                mesh.landmarks = torch.arange(len(mesh.verts) - pad, len(mesh.verts), device=v.device)
            r = render_mesh(mesh, mesh.verts, pose, S, tex, c.fov_deg, normals=normals)
            view = composite_view(r, light, bg, c.ssaa)
            rc = render_mesh(mesh, mesh.verts, Pose(0.0, 0.0, 0.0), S, None, c.fov_deg, normals=normals)
            canon = composite_view(rc, light, bg, c.ssaa)
            out.append(
                SynthView(
                    image=view["image"], pose=pose, depth=view["depth"], canon_depth=canon["depth"],
                    normal=view["normal"], mask=view["mask"], light=[float(x) for x in light], expression=expr,
                    landmarks=view["landmarks"], meta={"expression_names": list(m.expr_names)},
                )
            )
        return out
