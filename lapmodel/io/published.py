"""Weight files published with the reference implementations, read into lapmodel's model classes.

Two layouts are recognised (both ``torch.save``'d dicts, read with ``weights_only=True``):

* **Unsup3D** (elliottwu/unsup3d, ``pretrained_{celeba,synface,cat,syncar}/checkpoint030.pth``): the state dicts
  ``netD``, ``netA``, ``netL``, ``netV`` and (all but syncar) ``netC`` of its 64 px networks, as its trainer saves
  them (``unsup3d/trainer.py``) with ``optimizerD`` ... , ``epoch`` and ``metrics_trace`` (a pickled
  ``unsup3d.meters.MetricsTrace``, read as a :class:`PickledRecord`: no code of the file is imported or run). They
  load into ``models.unsup3d.Unsup3D``: the light / view encoders have the same keys; the depth, albedo and
  confidence networks are one flat ``network`` Sequential there and encoder + decoder here (:func:`unsup3d_key`).
* **LAP demo** (TencentYoutuResearch/3DFaceReconstruction-LAP, ``demo/checkpoint300.pth``): ``netD``, ``netA``
  (aggregation), ``netL``, ``netV`` and ``refine_netA``, ``refine_netD`` at 128 px. They load into ``LAPModel`` with
  ``model.lap.arch: official`` (``models.lap_official``), renamed per network (:data:`LAP_DEMO_NETWORKS`).

The model config is the official one (:func:`unsup3d_config`, :func:`lap_demo_config`): the experiment's
``experiments/train_*.yml`` for Unsup3D (the experiment is read from the file's path, ``pretrained_cat/...``, or
declared: ``lapmodel import --experiment``), the demo's constants for LAP, and the official mappings (no depth
prior, default init, covered-pixel loss, no smoothness, the official border). Every entry of the file and every
key of every network must be accounted for: anything else is a one-line ``LapError`` naming the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from lapdata.core.config import load_config
from lapdata.core.errors import LapError
from lapmodel.config import TrainConfig

PICKLED_CLASSES = ("unsup3d.meters.MetricsTrace",)  # objects Unsup3D's trainer pickles into its checkpoints


class PickledRecord:
    """Stands for a Python object pickled into a published file (Unsup3D's ``metrics_trace``): its attributes come
    from the file's data; no code is attached or run."""


def read_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of a lapmodel checkpoint or a published file (zip or legacy format), with
    :data:`PICKLED_CLASSES` read as :class:`PickledRecord`. LapError naming the file when it cannot be read."""
    p = Path(path)
    if not p.is_file():
        raise LapError(f"{p}: checkpoint not found")
    if p.stat().st_size == 0:
        raise LapError(f"{p}: empty file (0 bytes), not a checkpoint")
    try:
        with torch.serialization.safe_globals([(PickledRecord, name) for name in PICKLED_CLASSES]):
            return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any load failure is a user error about this file
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise LapError(f"{p}: cannot be read as a checkpoint ({type(e).__name__}{': ' + first if first else ''})") \
            from None


# ------------------------------------------------------------------------------------------- Unsup3D

UNSUP3D_NETWORKS = ("netD", "netA", "netL", "netV", "netC")
UNSUP3D_EXTRAS = re.compile(r"^(optimizer[DALVC]|epoch|metrics_trace)$")  # what its trainer saves besides the nets

# experiments/train_<name>.yml of elliottwu/unsup3d, as ModelConfig fields (the rest is shared, UNSUP3D_COMMON)
UNSUP3D_EXPERIMENTS: dict[str, dict[str, Any]] = {
    "celeba": {},
    "synface": {},
    "cat": {"z_translation_range": 0.1},  # and lam_flip_start_epoch 10 (training only; no step count in the file)
    "syncar": {"border_depth": 1.08, "min_diff_light": 0.5, "use_conf": False, "lam_perc": 0.01, "lam_flip": 1.0,
               "lam_depth_sm": 0.1},
}
UNSUP3D_COMMON: dict[str, Any] = {
    "kind": "unsup3d", "image_size": 64, "fov_deg": 10.0, "min_depth": 0.9, "max_depth": 1.1, "border_depth": None,
    "border_columns": 2, "xyz_rotation_range": 60.0, "xy_translation_range": 0.1, "z_translation_range": 0.0,
    "min_amb_light": 0.0, "max_amb_light": 1.0, "min_diff_light": 0.0, "max_diff_light": 1.0,
    "nf": 64, "nf_encoder": 32, "zdim": 256, "zdim_conf": 128, "use_conf": True, "lam_perc": 1.0, "lam_flip": 0.5,
    "lam_flip_start_step": 0,
    # the official mappings and losses (photogeo's deviations switched off)
    "depth_prior": 0.0, "depth_init": "default", "lam_depth_sm": 0.0, "uncovered": "ignore",
}

# the official 64 px EDDeconv / ConfNet ``network.<i>``: encoder layers with weights -> our DownPath's stages
_ENCODER_64 = {0: "stages.0.0", 1: "stages.0.1", 3: "stages.1.0", 4: "stages.1.1", 6: "stages.2.0",
               7: "stages.2.1", 9: "stages.3.0", 11: "stages.4.0"}
_DECODER_START_64 = 13  # network.<13 + j> is our decoder's (EDDeconv) or ConfNet's ``network.<j>``


def unsup3d_key(net: str, key: str) -> str | None:
    """Official key of network ``net`` (``network.11.weight``) -> key of ``models.unsup3d.Unsup3D``
    (``netD.encoder.stages.4.0.weight``); None for a key the official 64 px networks do not have."""
    if net in ("netL", "netV") or (net == "netC" and key.startswith("out_net")):
        return f"{net}.{key}"  # same layout
    m = re.fullmatch(r"network\.(\d+)\.(weight|bias)", key)
    if m is None:
        return None
    i, rest = int(m[1]), m[2]
    if i in _ENCODER_64:
        return f"{net}.encoder.{_ENCODER_64[i]}.{rest}"
    if i >= _DECODER_START_64:
        return f"{net}.{'network' if net == 'netC' else 'decoder.network'}.{i - _DECODER_START_64}.{rest}"
    return None


def unsup3d_experiment(path: str | Path) -> str | None:
    """The Unsup3D experiment a file's folder or name says (``pretrained_cat/checkpoint030.pth`` -> "cat")."""
    where = "/".join(Path(path).parts[-2:]).lower()
    for name in UNSUP3D_EXPERIMENTS:
        if re.search(rf"(^|[^a-z]){name}([^a-z]|$)", where):
            return name
    return None


def unsup3d_config(experiment: str, use_conf: bool = True) -> TrainConfig:
    """The TrainConfig of an official Unsup3D experiment (its model section; the run settings are ours)."""
    if experiment not in UNSUP3D_EXPERIMENTS:
        raise LapError(f"unknown Unsup3D experiment {experiment!r}: use one of {list(UNSUP3D_EXPERIMENTS)}")
    model = {**UNSUP3D_COMMON, **UNSUP3D_EXPERIMENTS[experiment], "use_conf": use_conf}
    return load_config(TrainConfig, {"model": model})


# ------------------------------------------------------------------------------------------- LAP demo

# the demo's network names -> LAPModel's submodules (the inner keys are the same: models.lap_official)
LAP_DEMO_NETWORKS = {"netD": "depth_agg", "netA": "albedo_agg", "netL": "light_net", "netV": "view_net",
                     "refine_netA": "refiner.albedo", "refine_netD": "refiner.depth"}
LAP_DEMO_IGNORED = ("finer_netA", "finer_netD")  # named in demo.py's loader, commented out: not used by the demo
LAP_DEMO_MODEL: dict[str, Any] = {  # demo.py's constants
    "kind": "lap", "image_size": 128, "fov_deg": 10.0, "min_depth": 0.9, "max_depth": 1.1, "border_depth": 1.05,
    "border_columns": 2, "border_corner": [20, 15], "xyz_rotation_range": 60.0, "xy_translation_range": 0.1,
    "z_translation_range": 0.0, "min_amb_light": 0.0, "max_amb_light": 1.0, "min_diff_light": 0.0,
    "max_diff_light": 1.0, "nf": 64, "nf_encoder": 32, "zdim": 512, "use_conf": False,
    "depth_prior": 0.0, "depth_init": "default", "lam_depth_sm": 0.0, "uncovered": "ignore",
    "lap": {"arch": "official", "stage": "finetune", "refiner": True, "refine_size": 128, "target_size": 128},
}


def lap_demo_config() -> TrainConfig:
    """The TrainConfig of the LAP demo's model (``demo.py``'s constants; the run settings are ours)."""
    return load_config(TrainConfig, {"model": LAP_DEMO_MODEL})


# ------------------------------------------------------------------------------------------- recognise + convert


@dataclass(frozen=True)
class Published:
    """A published file read into our layout: ``config`` (official), ``state`` (the model's full state dict),
    ``layout`` ("unsup3d" | "lap-demo"), ``experiment``, ``notes`` (what was assumed or ignored)."""

    config: TrainConfig
    state: dict[str, Tensor]
    layout: str
    experiment: str
    notes: tuple[str, ...] = ()


def layout_of(doc: Any) -> str | None:
    """"lap-demo", "unsup3d", or None for anything else (a lapmodel checkpoint, a foreign file)."""
    if not isinstance(doc, dict) or not all(isinstance(doc.get(n), dict) for n in ("netD", "netA", "netL", "netV")):
        return None
    return "lap-demo" if "refine_netD" in doc or "refine_netA" in doc else "unsup3d"


def _map_network(path: Path, net: str, sd: Any, rename, own: dict[str, Tensor]) -> dict[str, Tensor]:
    """One published state dict -> our keys; LapError on a key without a place or a shape that differs."""
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise LapError(f"{path}: entry {net!r} is not a state dict of tensors")
    out = {}
    for k, v in sd.items():
        ours = rename(net, k)
        if ours is None or ours not in own:
            raise LapError(f"{path}: {net} has key {k!r}, which the official network does not have "
                           "(not the published layout)")
        if tuple(v.shape) != tuple(own[ours].shape):
            raise LapError(f"{path}: {net}.{k} has shape {tuple(v.shape)}, the official network "
                           f"{tuple(own[ours].shape)} (another size or width than the published model)")
        out[ours] = v
    return out


def _fill(path: Path, doc: dict, nets: dict[str, str], rename, cfg: TrainConfig, extra: dict[str, Tensor]
          ) -> dict[str, Tensor]:
    """Map every network of ``nets`` (published name -> our prefix) and check the result covers the model that
    ``cfg`` builds exactly (built on the meta device: names and shapes, no memory)."""
    from lapmodel.models.build import build_model

    with torch.device("meta"):
        own = build_model(cfg, training=False).state_dict()
    state = dict(extra)
    for net in nets:
        if net not in doc:
            raise LapError(f"{path}: no {net} state dict (the published layout has {', '.join(nets)})")
        state.update(_map_network(path, net, doc[net], rename, own))
    missing = [k for k in own if k not in state]
    if missing:
        net = next((n for n, pre in nets.items() if missing[0].startswith(pre + ".")), "a network")
        raise LapError(f"{path}: {net} lacks {len(missing)} weight(s) of the official network, e.g. {missing[0]!r}")
    return state


def _check_entries(path: Path, doc: dict, allowed) -> None:
    bad = [k for k in doc if not allowed(k)]
    if bad:
        raise LapError(f"{path}: unrecognised entr{'y' if len(bad) == 1 else 'ies'} {bad[:4]} in a published "
                       "Unsup3D / LAP file")


def convert(path: str | Path, doc: dict, experiment: str | None = None) -> Published:
    """A published file's dict (from :func:`read_file`) -> :class:`Published`, checked key by key.

    ``experiment`` (Unsup3D only): declare the experiment instead of reading it from the path."""
    p = Path(path)
    layout = layout_of(doc)
    if layout is None:
        raise LapError(f"{p}: not a published Unsup3D / LAP file (needs netD, netA, netL, netV state dicts)")
    notes: list[str] = []
    if layout == "lap-demo":
        if experiment not in (None, "lap-demo"):
            raise LapError(f"{p}: a LAP demo file has no Unsup3D experiment (got --experiment {experiment})")
        _check_entries(p, doc, lambda k: k in LAP_DEMO_NETWORKS or k in LAP_DEMO_IGNORED or UNSUP3D_EXTRAS.match(k))
        notes += [f"ignored {k} (the official demo does not load it)" for k in LAP_DEMO_IGNORED if k in doc]
        cfg = lap_demo_config()
        rename = lambda net, k: f"{LAP_DEMO_NETWORKS[net]}.{k}"  # noqa: E731
        state = _fill(p, doc, LAP_DEMO_NETWORKS, rename, cfg, {"refiner_trained": torch.ones((), dtype=torch.bool)})
        return Published(cfg, state, layout, "lap-demo", tuple(notes))
    _check_entries(p, doc, lambda k: k in UNSUP3D_NETWORKS or UNSUP3D_EXTRAS.match(k))
    exp = experiment or unsup3d_experiment(p)
    if exp is None:
        exp = "celeba"
        notes.append("experiment not in the file's name: the celeba settings assumed (declare it with "
                     "`lapmodel import --experiment`)")
    cfg = unsup3d_config(exp, use_conf="netC" in doc)
    nets = {n: n for n in UNSUP3D_NETWORKS if n in doc}
    state = _fill(p, doc, nets, unsup3d_key, cfg, {})
    return Published(cfg, state, layout, exp, tuple(notes))


# ------------------------------------------------------------------------------------------- lapmodel import


@dataclass(frozen=True)
class ImportConfig:
    """What `lapmodel import` does; its command-line options derive from these fields."""

    path: str                            # the published file (Unsup3D checkpoint030.pth, LAP demo checkpoint300.pth)
    out: str                             # the lapmodel checkpoint to write (.pt); its config goes beside it (.yaml)
    experiment: Literal["celeba", "synface", "cat", "syncar"] | None = None  # Unsup3D experiment (default: the path's)
