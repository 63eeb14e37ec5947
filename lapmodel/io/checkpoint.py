"""Training checkpoints: model, optimizer, config, step, RNG states and data position, in one file.

Written to ``name.tmp`` then ``os.replace``d (never half-written). Loaded with ``torch.load(weights_only=True)``:
everything stored is tensors and plain containers (RNG states included). ``load_model(path)`` rebuilds the model from
the checkpoint alone (its config), for reconstruct / evaluate / the next training stage. Both also read the
files published with Unsup3D and the LAP demo (``lapmodel.io.published``), so ``--checkpoint`` and ``--init`` take them.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lapdata.core.atomic import atomic_path
from lapdata.core.config import to_dict
from lapdata.core.errors import LapError
from lapdata.core.logs import get_logger, warn_once

FORMAT = "lapmodel-checkpoint-1"
LOG = get_logger("checkpoint")


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (CPU and CUDA) RNG states as weights_only-loadable values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(path: str | Path, *, model: nn.Module, config: Any, step: int,
                    optimizer: torch.optim.Optimizer | None = None, scaler: Any = None,
                    data: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically. ``config``: the TrainConfig (dataclass) or its dict."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "model": unwrap(model).state_dict(),
        "config": config if isinstance(config, dict) else to_dict(config),
        "step": int(step),
        "rng": rng_state(),
        "data": dict(data or {}),
    }
    if optimizer is not None:
        doc["optimizer"] = optimizer.state_dict()
    if scaler is not None:
        doc["scaler"] = scaler.state_dict()
    if extra:
        doc["extra"] = extra
    # a file object, not the temporary path: torch names the zip's records after a path's file name (which holds
    # the pid here), and the same checkpoint must be the same bytes in any process
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(doc, f)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint (weights_only); LapError naming the file when it is missing or not a checkpoint.

    A file published with Unsup3D or the LAP demo (``lapmodel.io.published``) is read into the same form: its
    weights in our model's layout, its official model config, step 0 (``extra.published`` says what it was)."""
    from lapmodel.io import published

    p = Path(path)
    doc = published.read_file(p, map_location)
    if isinstance(doc, dict) and doc.get("format") == FORMAT and "model" in doc and "config" in doc:
        return doc
    if published.layout_of(doc) is not None:
        return published_checkpoint(p, doc)
    raise LapError(f"{p}: not a lapmodel checkpoint (no {FORMAT!r} format tag with model and config) nor a "
                   "published Unsup3D / LAP demo file (netD, netA, netL, netV state dicts)")


def published_checkpoint(path: str | Path, doc: dict[str, Any], experiment: str | None = None) -> dict[str, Any]:
    """A published file's dict -> a checkpoint dict of ours (model, config, step 0); logs what it was read as."""
    from lapmodel.io import published

    pub = published.convert(path, doc, experiment)
    what = "Unsup3D checkpoint" if pub.layout == "unsup3d" else "LAP demo checkpoint"
    LOG.info(f"{path}: read as a published {what} ({pub.experiment}), with the official model config")
    for note in pub.notes:
        warn_once(LOG, f"{path}: {note}")
    return {"format": FORMAT, "model": pub.state, "config": to_dict(pub.config), "step": 0, "data": {},
            "extra": {"published": {"source": str(path), "layout": pub.layout, "experiment": pub.experiment}}}


def checkpoint_config(doc: dict[str, Any]):
    """The TrainConfig stored in a loaded checkpoint."""
    from lapdata.core.config import load_config

    from lapmodel.config import TrainConfig

    return load_config(TrainConfig, doc["config"])


def load_model(path: str | Path, device: str | torch.device = "cpu", training: bool = False) -> nn.Module:
    """Rebuild the model from a checkpoint alone (its stored config + weights), in eval mode unless ``training``.

    With ``training`` the perceptual network is loaded from the stored ``vgg_weights`` path when that file exists.
    """
    from lapmodel.models.build import build_model

    doc = load_checkpoint(path)
    cfg = checkpoint_config(doc)
    model = build_model(cfg, training=training)
    try:
        model.load_state_dict(doc["model"])
    except RuntimeError as e:
        raise LapError(f"{path}: weights do not fit the stored config ({str(e).splitlines()[0][:160]})") from None
    model.to(device)
    return model.train(training)


def import_published(cfg) -> dict[str, Any]:
    """`lapmodel import` (``cfg``: ``lapmodel.io.published.ImportConfig``): read a published file strictly into our
    model, write it as a lapmodel checkpoint (step 0) at ``cfg.out`` and its official config beside it as YAML with
    ``init`` set to the checkpoint (``lapmodel train --config OUT.yaml`` fine-tunes it with the official settings).
    Returns {"checkpoint", "config", "layout", "experiment"}."""
    from dataclasses import replace

    import yaml

    from lapmodel.io import published
    from lapmodel.models.build import build_model

    src, out = Path(cfg.path), Path(cfg.out)
    doc = published.read_file(src)
    if published.layout_of(doc) is None:
        raise LapError(f"{src}: not a published Unsup3D / LAP demo file (needs netD, netA, netL, netV state dicts)")
    ck = published_checkpoint(src, doc, cfg.experiment)
    train_cfg = checkpoint_config(ck)
    model = build_model(train_cfg, training=False)
    model.load_state_dict(ck["model"])  # strict: every key of our model, nothing else
    save_checkpoint(out, model=model, config=train_cfg, step=0, extra=ck["extra"])
    yml = out.with_suffix(".yaml")
    yml.write_text(yaml.safe_dump(to_dict(replace(train_cfg, init=str(out))), sort_keys=False))
    info = ck["extra"]["published"]
    return {"checkpoint": str(out), "config": str(yml), "layout": info["layout"], "experiment": info["experiment"]}
