"""Training checkpoints: model, optimizer, config, step, RNG states and data position, in one file.

Written to ``name.tmp`` then ``os.replace``d (never half-written). Loaded with ``torch.load(weights_only=True)``:
everything stored is tensors and plain containers (RNG states included). ``load_model(path)`` rebuilds the model from
the checkpoint alone (its config), for reconstruct / evaluate / the next training stage.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lapdata.atomic import atomic_path
from lapdata.config import to_dict
from lapdata.errors import LapError

FORMAT = "lapmodel-checkpoint-1"


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
    """Read a checkpoint (weights_only); LapError naming the file when it is missing or not a lapmodel checkpoint."""
    p = Path(path)
    if not p.is_file():
        raise LapError(f"{p}: checkpoint not found")
    if p.stat().st_size == 0:
        raise LapError(f"{p}: empty file (0 bytes), not a checkpoint")
    try:
        doc = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any load failure is a user error about this file
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise LapError(f"{p}: cannot be read as a checkpoint ({type(e).__name__}{': ' + first if first else ''})") \
            from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "model" not in doc or "config" not in doc:
        raise LapError(f"{p}: not a lapmodel checkpoint (no {FORMAT!r} format tag with model and config)")
    return doc


def checkpoint_config(doc: dict[str, Any]):
    """The TrainConfig stored in a loaded checkpoint."""
    from lapdata.config import load_config

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
