"""``resolve_device``: the one meaning of ``--device`` in every command (``auto`` = CUDA when present, else CPU)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lapdata.core.errors import LapError

if TYPE_CHECKING:  # torch loads only when a device is resolved (the CLIs' --help and data commands stay fast)
    import torch


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` -> a usable torch.device; LapError naming the fault."""
    import torch

    if isinstance(name, torch.device):
        return name
    name = (name or "auto").strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise LapError(f"--device {name!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LapError(f"--device {name}: this torch build has no usable CUDA device (use --device auto or cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LapError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise LapError(f"--device {name}: MPS is not available")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise LapError(f"--device {name!r}: unsupported device type {dev.type!r}; use auto, cpu or cuda")
    return dev
