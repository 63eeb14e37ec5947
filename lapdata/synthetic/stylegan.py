"""``stylegan``: InterfaceGAN pose editing over a generator the user supplies (as in the LAP paper's synthetic set).

Inputs (local files, nothing is downloaded):

* ``generator``: the file as published, recognised from its content (``lapdata.synthetic.stylegan_files``):
  rosinality's StyleGAN2 ``.pt``, NVlabs' stylegan2-ada-pytorch ``.pkl``, InterfaceGAN's StyleGAN1 ``.pth``, or a
  TorchScript module mapping a latent batch to images (N, 3, H, W) in [-1, 1] (``output_range`` "0,1" for
  [0, 1]) with an optional TorchScript ``mapping`` z -> w ((N, D) or (N, L, D)).
* ``boundary``: an InterfaceGAN boundary, a .npy unit normal of D values ((D,) or (1, D); W+ also (L, D)). Its
  latent space is ``boundary_space`` (z | w | wp), or read from the file name as InterfaceGAN names its files
  (``*_w_boundary.npy`` W, ``*_wp_boundary.npy`` W+, ``*_boundary.npy`` Z); a declared space that contradicts
  the name, a name that says nothing, or a size that is not the space's is one LapError.

The edit is InterfaceGAN's (``edit.py``, ``utils/manipulator.linear_interpolate``,
``models/stylegan_generator.py``): z ~ N(0, I) (seeded) rescaled to norm sqrt(z_dim) (its ``preprocess``);
in Z or W the latent's own boundary component is replaced by the view's distance ``d = yaw * yaw_scale``
(``x - <x, n> n + d n``), in W+ ``d n`` is added to every layer; a Z edit is mapped to w afterwards. Then, AFTER
the edit, truncation: ``w_avg + psi (w - w_avg)`` on the first ``truncation_layers`` layers of w+ (InterfaceGAN:
psi 0.7, 8 layers), with the model's tracked w_avg (NVlabs ``mapping.w_avg``, InterfaceGAN ``truncation.w_avg``,
rosinality ``latent_avg``; a file without one, e.g. a rosinality training checkpoint or a TorchScript mapping,
uses the mean of 4096 mapped samples, seed 0). A generator without a mapping network is not truncated.
``yaw_scale`` maps degrees to boundary distance (default 0.05: +-60 degrees -> +-3, InterfaceGAN's editing range;
negate it for a boundary pointing the other way). Views carry pose labels only (the requested yaw), no 3D ground
truth; noise is the generator's stored noise, so the views of an identity differ only by the edit.

Everything is validated when the backend is built, before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as Fn

from lapdata.core.errors import LapError

from lapdata.synthetic.base import IdentityParams, Pose, SynthView
from lapdata.synthetic.stylegan_files import ScriptNet, read_generator
from lapdata.synthetic.stylegan_ops import StyleNet

SPACE_NAMES = {"z": "Z", "w": "W", "wp": "W+"}
W_AVG_SAMPLES = 4096


@dataclass(frozen=True)
class StyleGANConfig:
    generator: str = ""
    boundary: str = ""
    boundary_space: str = "auto"  # z | w | wp | auto (from InterfaceGAN's file names)
    mapping: str = ""  # TorchScript generators only
    latent_dim: int = 0  # TorchScript: z size of the mapping network (0 = its z_dim attribute, else the boundary's)
    yaw_scale: float = 0.05  # boundary distance per degree of yaw
    truncation: float = 0.7  # psi, after the edit, on the first truncation_layers layers (InterfaceGAN's default)
    truncation_layers: int = 8  # layers of w+ truncated (InterfaceGAN's 8)
    output_range: str = "-1,1"  # TorchScript generator output range: "-1,1" or "0,1"
    batch: int = 8  # generator batch size
    device: str = "cpu"


def load_boundary(path: str) -> np.ndarray:
    """The boundary as a float64 unit vector (D,) or, for a per-layer W+ boundary, (L, D)."""
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
    if b.ndim not in (1, 2) or b.size == 0:
        raise LapError(f"{p}: pose boundary must be a vector (D,) or (1, D), got shape {tuple(np.shape(b))}")
    n = np.linalg.norm(b)
    if not np.isfinite(n) or n == 0:
        raise LapError(f"{p}: pose boundary is zero or not finite")
    return b / n


def boundary_space(path: str, declared: str = "auto") -> str:
    """z | w | wp: ``declared``, or InterfaceGAN's naming (``*_w_boundary``, ``*_wp_boundary``, ``*_boundary`` = Z);
    a declaration that contradicts the name, or no declaration for a name outside that scheme, is a LapError."""
    if declared not in ("auto", *SPACE_NAMES):
        raise LapError(f"boundary space must be auto, z, w or wp, got {declared!r}")
    stem = Path(path).name.lower().removesuffix(".npy")
    named = next((s for suffix, s in (("_wp_boundary", "wp"), ("_w_boundary", "w"), ("_z_boundary", "z"),
                                      ("_boundary", "z")) if stem.endswith(suffix)), None)
    if declared == "auto":
        if named is None:
            raise LapError(f"{path}: the boundary's latent space is not in its name (InterfaceGAN: *_boundary.npy Z, "
                           "*_w_boundary.npy W, *_wp_boundary.npy W+); declare --boundary-space z|w|wp")
        return named
    if named is not None and named != declared:
        raise LapError(f"{path}: named as a {SPACE_NAMES[named]}-space boundary (InterfaceGAN's naming) but declared "
                       f"{SPACE_NAMES[declared]}; a boundary only works in the space it was trained in")
    return declared


def truncate(w: torch.Tensor, w_avg: torch.Tensor | None, psi: float, layers: int, num_ws: int) -> torch.Tensor:
    """InterfaceGAN's truncation: w (N, D) is broadcast to (N, num_ws, D) when the generator takes w+
    (``num_ws`` > 0), then ``w_avg + psi (w - w_avg)`` on the first ``layers`` layers; a generator taking one w
    (``num_ws`` 0) has it applied to the whole w. No ``w_avg`` or psi 1: broadcast only."""
    if w.dim() == 2 and num_ws > 0:
        w = w[:, None].repeat(1, num_ws, 1)
    if psi == 1 or w_avg is None:
        return w
    if w.dim() == 3:
        w = w.clone()
        w[:, :layers] = w_avg + psi * (w[:, :layers] - w_avg)
        return w
    return w_avg + psi * (w - w_avg)


class StyleGANBackend:
    """InterfaceGAN pose edits of a user-supplied generator (see the module doc)."""

    name = "stylegan"
    has_geometry = False
    framing = "ffhq"  # FFHQ-aligned output: build-synthetic detects and aligns each view (lapdata.synthetic.framing)

    def __init__(self, config: StyleGANConfig):
        self.config = config
        if not config.generator:
            raise LapError("--backend stylegan needs --generator FILE (rosinality .pt, NVlabs .pkl, InterfaceGAN "
                           ".pth or TorchScript)")
        if not config.boundary:
            raise LapError("--backend stylegan needs --pose-boundary pose.npy (an InterfaceGAN boundary)")
        if config.output_range not in ("-1,1", "0,1"):
            raise LapError(f"output_range must be '-1,1' or '0,1', got {config.output_range!r}")
        if not (0 <= config.truncation_layers and config.truncation >= 0):
            raise LapError(f"truncation {config.truncation} / truncation layers {config.truncation_layers}: must be "
                           ">= 0")
        self.space = boundary_space(config.boundary, config.boundary_space)
        self.boundary = load_boundary(config.boundary)
        self._net: StyleNet | None = None
        self._w_avg: torch.Tensor | None = None
        self.z_dim, self.w_shape, self.image_shape = self._validate()

    def __getstate__(self):
        st = dict(self.__dict__)
        st["_net"], st["_w_avg"] = None, None
        return st

    def _load(self) -> StyleNet:
        if self._net is None:
            c = self.config
            net = read_generator(c.generator, c.device, c.mapping, c.latent_dim)
            if isinstance(net, ScriptNet):
                net.z_dim = net.z_dim or int(self.boundary.size)  # no latent_dim, no z_dim attribute: the boundary's
                net.w_dim, net.num_ws, net.resolution = self._probe(net)
            self._net, self._w_avg = net, self._mean_w(net)
        return self._net

    def _mean_w(self, net: StyleNet) -> torch.Tensor | None:
        """The truncation centre: the model's tracked w_avg, else the mean of 4096 mapped samples (seed 0)."""
        w = net.tracked_w_avg()
        if w is not None or self.config.truncation == 1 or (isinstance(net, ScriptNet) and not net.has_mapping):
            return w
        z = torch.randn(W_AVG_SAMPLES, net.z_dim, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            return net.z_to_w(z.to(self.config.device)).mean(0)

    def _probe(self, net: ScriptNet) -> tuple[int, int, int]:
        """A TorchScript generator's (w_dim, num_ws, resolution), from a dry run; LapError when it fails."""
        c, dev = self.config, torch.device(self.config.device)
        try:
            with torch.no_grad():
                w = net.z_to_w(torch.zeros(1, net.z_dim, device=dev))
        except Exception as e:  # noqa: BLE001
            msg = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            raise LapError(f"{c.mapping}: mapping network fails on a latent of size {net.z_dim} ({msg}); "
                           "set latent_dim") from None
        if not isinstance(w, torch.Tensor) or w.dim() not in (2, 3) or w.shape[0] != 1:
            raise LapError(f"{c.mapping}: mapping output must be (N, D) or (N, L, D), got "
                           f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
        try:
            with torch.no_grad():
                img = net.ws_to_image(w)
        except Exception as e:  # noqa: BLE001
            msg = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            raise LapError(f"{c.generator}: generator fails on a latent of shape {tuple(w.shape)} ({msg})") from None
        if not isinstance(img, torch.Tensor) or img.dim() != 4 or img.shape[1] not in (1, 3) or min(img.shape[2:]) < 8:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise LapError(f"{c.generator}: generator output {shape} is not an image batch (N, 3, H, W)")
        return int(w.shape[-1]), int(w.shape[1]) if w.dim() == 3 else 0, int(img.shape[-1])

    def _validate(self) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        c, net = self.config, self._load()
        b, where = self.boundary, f"{c.boundary}: {SPACE_NAMES[self.space]}-space pose boundary"
        if isinstance(net, ScriptNet) and not net.has_mapping and self.space != "z":
            raise LapError(f"{where}, but {Path(c.generator).name} has no mapping network (its input is its latent "
                           "z): give --mapping, or use a Z-space boundary")
        if self.space == "wp" and net.num_ws == 0:
            raise LapError(f"{where}, but {Path(c.generator).name} takes one w per image, not W+")
        want = {"z": [(net.z_dim,)], "w": [(net.w_dim,)], "wp": [(net.w_dim,), (net.num_ws, net.w_dim)]}[self.space]
        if b.shape not in want and not (self.space == "wp" and b.size == net.num_ws * net.w_dim):
            raise LapError(f"{where} has {b.size} values but the generator's {SPACE_NAMES[self.space]} latent has "
                           f"{' or '.join(str(int(np.prod(s))) for s in want)} ({net.kind})")
        if self.space == "wp" and b.ndim == 1 and b.size != net.w_dim:
            self.boundary = b.reshape(net.num_ws, net.w_dim)
        w_shape = (net.num_ws, net.w_dim) if net.num_ws else (net.w_dim,)
        return net.z_dim, w_shape, (3, net.resolution, net.resolution)

    def describe(self) -> dict[str, Any]:
        from lapdata.core.config import to_dict

        net = self._load()
        w_avg = ("model" if net.tracked_w_avg() is not None else
                 f"mean of {W_AVG_SAMPLES} mapped samples" if self._w_avg is not None else "none (not truncated)")
        return {**to_dict(self.config), "backend": self.name, "generator_kind": net.kind, "latent_dim": self.z_dim,
                "w_shape": list(self.w_shape), "image_shape": list(self.image_shape),
                "boundary_space_used": self.space, "w_avg": w_avg}

    def sample_identity(self, rng: np.random.Generator) -> IdentityParams:
        z = rng.standard_normal(self.z_dim).astype(np.float32)
        return IdentityParams(seed=int(rng.integers(0, 2**31 - 1)), coeffs={"z": z.round(5).tolist()})

    def latents(self, params: IdentityParams, poses: Sequence[Pose]) -> torch.Tensor:
        """(P, *w_shape) generator inputs: the identity edited to each pose's boundary distance, then truncated."""
        c, net = self.config, self._load()
        dev = torch.device(c.device)
        z = torch.as_tensor(np.asarray(params.coeffs["z"], np.float32), device=dev)[None]
        z = z / z.norm(dim=1, keepdim=True) * float(np.sqrt(self.z_dim))  # InterfaceGAN's preprocess
        n = torch.as_tensor(self.boundary, dtype=torch.float32, device=dev)
        d = torch.tensor([p.yaw * c.yaw_scale for p in poses], dtype=torch.float32, device=dev)
        with torch.no_grad():
            if self.space == "z":
                w = net.z_to_w(z - (z @ n)[:, None] * n + d[:, None] * n)
            else:
                w = net.z_to_w(z)
                if self.space == "w":
                    w = w - (w * n).sum(-1, keepdim=True) * n
                    w = w + d.view(-1, *([1] * (w.dim() - 1))) * n
                else:
                    w = truncate(w, None, 1.0, 0, net.num_ws) + d.view(-1, 1, 1) * n
            return truncate(w, self._w_avg, c.truncation, c.truncation_layers, net.num_ws)

    def render_views(
        self, params: IdentityParams, poses: Sequence[Pose], size: int, rng: np.random.Generator
    ) -> list[SynthView]:
        c, net = self.config, self._load()
        ws = self.latents(params, poses)
        native_range = not isinstance(net, ScriptNet) or c.output_range == "-1,1"
        imgs = []
        with torch.no_grad():
            for i in range(0, len(ws), max(1, c.batch)):
                x = net.ws_to_image(ws[i: i + c.batch]).float()
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                x = (x + 1) / 2 if native_range else x
                if x.shape[-2:] != (size, size):
                    x = Fn.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                       antialias=x.shape[-1] > size)
                imgs.append((x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
        arr = np.concatenate(imgs)
        d = [float(p.yaw * c.yaw_scale) for p in poses]
        return [SynthView(image=arr[k], pose=Pose(p.yaw, 0.0, 0.0), meta={"boundary_distance": d[k]})
                for k, p in enumerate(poses)]
