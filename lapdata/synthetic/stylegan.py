"""``stylegan``: InterfaceGAN pose editing over a generator the user supplies (as in the LAP paper's synthetic set).

Inputs (local files, nothing is downloaded):

* ``generator``: a TorchScript module (``torch.jit.save``) mapping a latent batch (N, D) -- or (N, L, D) w+ when the
  mapping network returns that -- to images (N, 3, H, W) in [-1, 1] (``output_range`` "0,1" for [0, 1]).
* ``mapping`` (optional): a TorchScript module z (N, Dz) -> w (N, D) or (N, L, D); the pose edit is done in w.
  Dz is the module's ``z_dim`` attribute when it has one, else ``latent_dim``, else D.
* ``boundary``: the InterfaceGAN pose boundary, a .npy normal vector of D values ((D,) or (1, D)).

An identity is a latent: z ~ N(0, I) (seeded), w = mapping(z) (or z). Its pose component is removed,
``w0 = w - <w, n> n`` (n = the unit boundary normal), and view k is ``w0 + yaw_k * yaw_scale * n``: ``yaw_scale``
maps degrees to the signed distance along the boundary (default 0.05: +-60 degrees -> +-3, InterfaceGAN's usual
editing range; negate it if your boundary points the other way). The views carry pose labels only (the requested
yaw; pitch and roll 0), no 3D ground truth.

Everything is validated when the backend is built, before any work: files exist and load, the boundary size
matches the latent, and a dry run of the generator returns an image batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as Fn

from lapdata.errors import LapError

from .base import IdentityParams, Pose, SynthView


@dataclass(frozen=True)
class StyleGANConfig:
    generator: str = ""
    boundary: str = ""
    mapping: str = ""
    latent_dim: int = 0  # z size for the mapping network (0 = its z_dim attribute, else the boundary size)
    yaw_scale: float = 0.05  # boundary distance per degree of yaw
    truncation: float = 1.0  # psi: w = w_mean + psi (w - w_mean), w_mean over 256 samples (mapping only)
    output_range: str = "-1,1"  # generator output range: "-1,1" or "0,1"
    batch: int = 8  # generator batch size
    device: str = "cpu"


def _load_script(path: str, what: str, device: str) -> torch.jit.ScriptModule:
    p = Path(path).expanduser()
    if not p.is_file():
        raise LapError(f"{p}: {what} file does not exist")
    try:
        m = torch.jit.load(str(p), map_location=device)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LapError(f"{p}: not a TorchScript {what} ({msg[:160]})") from None
    m.eval()
    return m


def load_boundary(path: str) -> np.ndarray:
    p = Path(path).expanduser()
    if not p.is_file():
        raise LapError(f"{p}: pose boundary file does not exist")
    try:
        b = np.load(p, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise LapError(f"{p}: not a .npy array ({type(e).__name__})") from None
    b = np.asarray(b, np.float64)
    if b.ndim == 2 and b.shape[0] == 1:
        b = b[0]
    if b.ndim != 1 or b.size == 0:
        raise LapError(f"{p}: pose boundary must be a vector (D,) or (1, D), got shape {tuple(np.shape(b))}")
    n = np.linalg.norm(b)
    if not np.isfinite(n) or n == 0:
        raise LapError(f"{p}: pose boundary is zero or not finite")
    return b / n


class StyleGANBackend:
    """InterfaceGAN pose edits of a user-supplied generator (see the module doc)."""

    name = "stylegan"
    has_geometry = False
    framing = "ffhq"  # FFHQ-aligned output: build-synthetic detects and aligns each view (lapdata.synthetic.framing)

    def __init__(self, config: StyleGANConfig):
        self.config = config
        if not config.generator:
            raise LapError("--backend stylegan needs --generator G.pt (a TorchScript generator)")
        if not config.boundary:
            raise LapError("--backend stylegan needs --pose-boundary pose.npy (an InterfaceGAN boundary)")
        if config.output_range not in ("-1,1", "0,1"):
            raise LapError(f"output_range must be '-1,1' or '0,1', got {config.output_range!r}")
        self.boundary = load_boundary(config.boundary)
        self._modules: tuple | None = None
        self.z_dim, self.w_shape, self.image_shape = self._validate()

    def __getstate__(self):
        st = dict(self.__dict__)
        st["_modules"] = None
        return st

    def _nets(self):
        if self._modules is None:
            c = self.config
            g = _load_script(c.generator, "generator", c.device)
            m = _load_script(c.mapping, "mapping network", c.device) if c.mapping else None
            self._modules = (g, m)
        return self._modules

    def _validate(self) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        c = self.config
        g, m = self._nets()
        D = int(self.boundary.size)
        dev = torch.device(c.device)
        if m is not None:
            z_dim = int(c.latent_dim or getattr(m, "z_dim", 0) or D)
            try:
                with torch.no_grad():
                    w = m(torch.zeros(1, z_dim, device=dev))
            except Exception as e:  # noqa: BLE001
                raise LapError(f"{c.mapping}: mapping network fails on a latent of size {z_dim} "
                               f"({str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__}); "
                               "set latent_dim") from None
            if not isinstance(w, torch.Tensor) or w.dim() not in (2, 3) or w.shape[0] != 1:
                raise LapError(f"{c.mapping}: mapping output must be (N, D) or (N, L, D), got "
                               f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
            if w.shape[-1] != D:
                raise LapError(f"{c.boundary}: pose boundary has {D} values but the mapping network's latent w has "
                               f"{w.shape[-1]}")
            w_shape = tuple(w.shape[1:])
        else:
            z_dim = int(c.latent_dim or D)
            if z_dim != D:
                raise LapError(f"{c.boundary}: pose boundary has {D} values but the latent has {z_dim}")
            w = torch.zeros(1, D, device=dev)
            w_shape = (D,)
        try:
            with torch.no_grad():
                img = g(w)
        except Exception as e:  # noqa: BLE001
            msg = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            raise LapError(f"{c.generator}: generator fails on a latent of shape {tuple(w.shape)} ({msg}); does the "
                           f"pose boundary ({D} values) match its latent?") from None
        if not isinstance(img, torch.Tensor) or img.dim() != 4 or img.shape[1] not in (1, 3) or min(img.shape[2:]) < 8:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise LapError(f"{c.generator}: generator output {shape} is not an image batch (N, 3, H, W)")
        return z_dim, w_shape, tuple(img.shape[1:])

    def describe(self) -> dict[str, Any]:
        from lapdata.config import to_dict

        return {"backend": self.name, "latent_dim": self.z_dim, "w_shape": list(self.w_shape),
                "image_shape": list(self.image_shape), **to_dict(self.config)}

    def sample_identity(self, rng: np.random.Generator) -> IdentityParams:
        z = rng.standard_normal(self.z_dim).astype(np.float32)
        return IdentityParams(seed=int(rng.integers(0, 2**31 - 1)), coeffs={"z": z.round(5).tolist()})

    def latents(self, params: IdentityParams, poses: Sequence[Pose]) -> torch.Tensor:
        """(P, *w_shape) edited latents: pose component removed, then stepped along the boundary."""
        c = self.config
        g, m = self._nets()
        dev = torch.device(c.device)
        z = torch.as_tensor(np.asarray(params.coeffs["z"], np.float32), device=dev)[None]
        with torch.no_grad():
            w = m(z) if m is not None else z
            if m is not None and c.truncation != 1.0:
                gen = torch.Generator(device="cpu").manual_seed(0)
                zs = torch.randn(256, self.z_dim, generator=gen).to(dev)
                w_mean = m(zs).mean(0, keepdim=True)
                w = w_mean + c.truncation * (w - w_mean)
        n = torch.as_tensor(self.boundary, dtype=w.dtype, device=dev)
        w0 = w - (w * n).sum(-1, keepdim=True) * n  # remove the pose component (per layer for w+)
        d = torch.tensor([p.yaw * c.yaw_scale for p in poses], dtype=w.dtype, device=dev)
        return w0 + d.view(-1, *([1] * (w.dim() - 1))) * n

    def render_views(
        self, params: IdentityParams, poses: Sequence[Pose], size: int, rng: np.random.Generator
    ) -> list[SynthView]:
        c = self.config
        g, _ = self._nets()
        ws = self.latents(params, poses)
        imgs = []
        with torch.no_grad():
            for i in range(0, len(ws), max(1, c.batch)):
                x = g(ws[i : i + c.batch]).float()
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                x = (x + 1) / 2 if c.output_range == "-1,1" else x
                if x.shape[-2:] != (size, size):
                    x = Fn.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                       antialias=x.shape[-1] > size)
                imgs.append((x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
        arr = np.concatenate(imgs)
        d = [float(p.yaw * c.yaw_scale) for p in poses]
        return [SynthView(image=arr[k], pose=Pose(p.yaw, 0.0, 0.0), meta={"boundary_distance": d[k]})
                for k, p in enumerate(poses)]
