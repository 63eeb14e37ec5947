"""The model shipped inside the package, so that ``lapmodel reconstruct photo.jpg`` works with no checkpoint, offline.

``lapmodel/weights/default.pt`` is an ordinary lapmodel checkpoint (format, config, step) whose weights are stored
in fp16 and whose optimizer, RNG and data position are dropped (:func:`pack_checkpoint`); ``MODEL_CARD.md`` beside
it says how it was trained (the recipe, data and licences, steps, CPU-hours) and what it scores. A command whose
``--checkpoint`` is not given uses it (:func:`resolve_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lapdata.core.atomic import atomic_path
from lapdata.core.errors import LapError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_CHECKPOINT = WEIGHTS_DIR / "default.pt"
MODEL_CARD = WEIGHTS_DIR / "MODEL_CARD.md"


def resolve_checkpoint(path: str | None) -> str:
    """``path``, or the packaged default model when it is None / empty."""
    if path:
        return str(path)
    if not DEFAULT_CHECKPOINT.is_file():
        raise LapError(f"no --checkpoint given and this install has no packaged model ({DEFAULT_CHECKPOINT}); "
                       "give --checkpoint runs/.../last.pt")
    return str(DEFAULT_CHECKPOINT)


def pack_checkpoint(src: str | Path, dst: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """A checkpoint slimmed for shipping: floating-point weights cast to ``dtype``, no optimizer / RNG / data
    position. ``load_model`` reads it like any checkpoint (weights are cast back to the model's fp32)."""
    from lapmodel.io.checkpoint import load_checkpoint

    doc = load_checkpoint(src)
    slim = {
        "format": doc["format"],
        "model": {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in doc["model"].items()},
        "config": doc["config"],
        "step": doc["step"],
        "extra": {**doc.get("extra", {}), "packed_from": Path(src).name},
    }
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp, open(tmp, "wb") as f:
        torch.save(slim, f)
    return dst
