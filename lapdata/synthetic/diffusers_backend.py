"""``diffusers``: a local diffusers pipeline driven by pose-conditioning images from a 3D backend (ControlNet style).

For each identity a 3D backend (``procedural`` by default, or ``ict`` when a model folder is given) renders
conditioning maps (``condition``: "normal" -- RGB = (n + 1) / 2 of the ground-truth normals, black background; or
"depth" -- near = white) of *its* identity at the requested poses; the pipeline then paints a photo for each map,
every view of an identity starting from the *same* seed (``IdentityParams.seed``), so that appearance stays as
consistent as the pipeline allows. Views carry pose labels only (no 3D ground truth: the painted face need not
follow the conditioning geometry exactly).

The pipeline is loaded from a local folder, never downloaded: ``DiffusionPipeline.from_pretrained(path,
local_files_only=True)`` (e.g. a StableDiffusionControlNetPipeline saved with ``save_pretrained``). A single-file
checkpoint (``model.safetensors``) is refused with one line saying how to convert it: diffusers'
``from_single_file`` needs the base pipeline's component configs, and when ``local_files_only=True`` finds none
cached it turns ``local_files_only`` off and fetches them from the Hub (diffusers ``loaders/single_file.py``); an
SD checkpoint also holds no ControlNet. The user's one offline conversion, with a local config folder of the base
model (``config=DIR``) and the ControlNet passed in, gives the folder this backend loads. It is called
with the keyword arguments its ``__call__`` accepts among ``prompt``, ``negative_prompt``, ``image`` /
``control_image`` (the conditioning maps as PIL images), ``num_inference_steps``, ``guidance_scale``,
``generator``, ``height``, ``width`` and ``output_type="np"``.

:class:`PoseControlPipeline` is a minimal pipeline of this kind that needs no text encoder: a pixel-space
``UNet2DModel`` that sees the noisy image concatenated with the conditioning map, and any diffusers scheduler.
Train one on rendered pairs or use it (tiny and random) in tests; folders saved from it are recognised by their
``model_index.json``.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as Fn
from PIL import Image

from lapdata.core.errors import LapError

from lapdata.synthetic.base import IdentityParams, Pose, SynthView

try:  # diffusers is an optional dependency (pyproject extra "diffusers")
    from diffusers import DiffusionPipeline, ImagePipelineOutput

    _HAVE_DIFFUSERS = True
except ImportError:  # pragma: no cover
    DiffusionPipeline = object  # type: ignore[assignment,misc]
    ImagePipelineOutput = None  # type: ignore[assignment]
    _HAVE_DIFFUSERS = False


class PoseControlPipeline(DiffusionPipeline):  # type: ignore[misc,valid-type]
    """Pixel-space conditional diffusion: unet(cat(x_t, cond), t) -> noise; components ``unet`` (UNet2DModel with
    in_channels = 3 + 3) and ``scheduler`` (e.g. DDIMScheduler)."""

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, image, num_inference_steps: int = 20, generator=None, output_type: str = "np",
                 height: int | None = None, width: int | None = None, **unused):
        cond = _to_tensor(image).to(self.unet.device, self.unet.dtype) * 2 - 1  # (N, 3, H, W) in [-1, 1]
        N, _, H, W = cond.shape
        gens = generator if isinstance(generator, list) else [generator] * N
        x = torch.stack([torch.randn((3, H, W), generator=g, device="cpu") for g in gens]).to(cond)
        self.scheduler.set_timesteps(num_inference_steps)
        x = x * getattr(self.scheduler, "init_noise_sigma", 1.0)
        for t in self.scheduler.timesteps:
            inp = self.scheduler.scale_model_input(x, t)
            eps = self.unet(torch.cat([inp, cond], 1), t).sample
            x = self.scheduler.step(eps, t, x).prev_sample
        img = ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
        if output_type == "pil":
            img = [Image.fromarray((i * 255 + 0.5).astype(np.uint8)) for i in img]
        return ImagePipelineOutput(images=img)


def _to_tensor(image) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image if image.dim() == 4 else image[None]
    if isinstance(image, Image.Image):
        image = [image]
    arrs = [np.asarray(im.convert("RGB"), np.float32) / 255.0 for im in image]
    return torch.as_tensor(np.stack(arrs)).permute(0, 3, 1, 2)


@dataclass(frozen=True)
class DiffusersConfig:
    pipeline: str = ""
    prompt: str = "a studio portrait photo of a person's face, neutral background, sharp focus"
    negative_prompt: str = "cartoon, drawing, blurry, deformed"
    steps: int = 25
    guidance: float = 5.0
    condition: str = "normal"  # normal | depth
    condition_size: int = 0  # size of the conditioning maps (0 = the output size)
    device: str = "cpu"


def load_pipeline(path: str, device: str = "cpu"):
    """``DiffusionPipeline.from_pretrained(path, local_files_only=True)`` with one-line errors."""
    if not _HAVE_DIFFUSERS:
        raise LapError("--backend diffusers needs the diffusers package (pip install 'lap-toolkit[diffusers]')")
    p = Path(path).expanduser()
    if p.is_file():  # a single-file checkpoint (module doc: why it is not loaded here)
        raise LapError(f"{p}: a single-file checkpoint; --pipeline takes a diffusers folder: convert it once, offline, "
                       f"with from_single_file(FILE, config=LOCAL_BASE_CONFIG_DIR, local_files_only=True)"
                       f".save_pretrained(DIR) (docs/synthetic.md)")
    if not p.is_dir():
        raise LapError(f"{p}: diffusers pipeline folder does not exist")
    idx = p / "model_index.json"
    if not idx.is_file():
        raise LapError(f"{p}: not a diffusers pipeline folder (model_index.json is missing; save it with save_pretrained)")
    try:
        cls_name = json.loads(idx.read_text()).get("_class_name")
    except ValueError:
        raise LapError(f"{idx}: not valid JSON") from None
    cls = PoseControlPipeline if cls_name == PoseControlPipeline.__name__ else DiffusionPipeline
    try:
        pipe = cls.from_pretrained(str(p), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - diffusers raises many kinds
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise LapError(f"{p}: cannot load the diffusers pipeline {cls_name} offline ({msg})") from None
    pipe = pipe.to(device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


class DiffusersBackend:
    """Pose-conditioned painting of 3D-backend renders with a local diffusers pipeline (see the module doc)."""

    name = "diffusers"
    has_geometry = False
    framing = "approx-lap"  # painted near the conditioning's lap framing: detected and aligned (synthetic.framing)

    def __init__(self, config: DiffusersConfig, condition_backend):
        if config.condition not in ("normal", "depth"):
            raise LapError(f"diffusers condition must be 'normal' or 'depth', got {config.condition!r}")
        if not config.pipeline:
            raise LapError("--backend diffusers needs --pipeline DIR (a local diffusers pipeline folder)")
        self.config = config
        self.cond = condition_backend
        self._pipe = load_pipeline(config.pipeline, config.device)
        self._params = set(inspect.signature(self._pipe.__call__).parameters)
        if not ({"image", "control_image"} & self._params or "kwargs" in self._params):
            raise LapError(f"{config.pipeline}: pipeline {type(self._pipe).__name__} takes no conditioning image "
                           "(expected an `image` or `control_image` argument, e.g. a ControlNet pipeline)")

    def __getstate__(self):
        st = dict(self.__dict__)
        st["_pipe"] = None
        return st

    @property
    def pipe(self):
        if self._pipe is None:
            self._pipe = load_pipeline(self.config.pipeline, self.config.device)
        return self._pipe

    def describe(self) -> dict[str, Any]:
        from lapdata.core.config import to_dict

        return {"backend": self.name, "pipeline_class": type(self.pipe).__name__,
                "condition_backend": self.cond.describe(), **to_dict(self.config)}

    def sample_identity(self, rng: np.random.Generator) -> IdentityParams:
        base = self.cond.sample_identity(rng)
        return IdentityParams(seed=base.seed, coeffs={"condition": base.coeffs}, extra={"base": base})

    def condition_images(self, params: IdentityParams, poses: Sequence[Pose], size: int,
                         rng: np.random.Generator) -> list[Image.Image]:
        base = params.extra.get("base") or IdentityParams(seed=params.seed, coeffs=params.coeffs["condition"])
        views = self.cond.render_views(base, poses, size, rng)
        out = []
        for v in views:
            if self.config.condition == "normal":
                m = np.where(v.mask[..., None], (v.normal + 1) * 127.5, 0)
            else:
                d = v.depth
                fin = np.isfinite(d)
                lo, hi = (np.nanmin(d), np.nanmax(d)) if fin.any() else (0.0, 1.0)
                g = np.where(fin, 55 + 200 * (hi - np.nan_to_num(d, nan=hi)) / max(hi - lo, 1e-6), 0)
                m = np.repeat(g[..., None], 3, -1)
            out.append(Image.fromarray(np.clip(m, 0, 255).astype(np.uint8)))
        return out

    def render_views(
        self, params: IdentityParams, poses: Sequence[Pose], size: int, rng: np.random.Generator
    ) -> list[SynthView]:
        c = self.config
        cs = c.condition_size or size
        conds = self.condition_images(params, poses, cs, rng)
        pipe = self.pipe
        kw: dict[str, Any] = {}
        accepts = self._params
        anykw = "kwargs" in accepts
        key = "control_image" if "control_image" in accepts else "image"
        if "prompt" in accepts:
            kw["prompt"] = [c.prompt] * len(conds)
        if "negative_prompt" in accepts and c.negative_prompt:
            kw["negative_prompt"] = [c.negative_prompt] * len(conds)
        if "guidance_scale" in accepts:
            kw["guidance_scale"] = c.guidance
        for k, v in (("height", cs), ("width", cs)):
            if k in accepts or anykw:
                kw[k] = v
        gdev = "cpu" if isinstance(pipe, PoseControlPipeline) else c.device
        gens = [torch.Generator(device=gdev).manual_seed(int(params.seed)) for _ in conds]  # same seed per identity
        out = pipe(**{key: conds}, num_inference_steps=c.steps, generator=gens, output_type="np", **kw)
        imgs = out.images if hasattr(out, "images") else out[0]
        arr = np.stack([np.asarray(i, np.float32) / (255.0 if np.asarray(i).dtype == np.uint8 else 1.0) for i in imgs])
        x = torch.as_tensor(arr).permute(0, 3, 1, 2)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = Fn.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
        u8 = (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return [SynthView(image=u8[k], pose=p, meta={"condition": c.condition}) for k, p in enumerate(poses)]
