"""VGG16 ``features`` up to relu3_3, defined natively (no torchvision), loaded from a local torchvision file.

The file is torchvision's ``vgg16-397923af.pth`` (keys ``features.{i}.weight`` / ``features.{i}.bias``; the
classifier keys are ignored). There is no download and no random fallback: without a file the caller switches the
perceptual loss off (and says so). The weights are frozen and held as *non-persistent buffers*, so they are moved
by ``.to(device)`` but never written into model checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lapdata.core.errors import LapError

# torchvision vgg16.features indices of the convs up to relu3_3, with (out, in) channels; "M" = 2x2 max-pool.
VGG16_RELU3_3 = ((0, 64, 3), (2, 64, 64), "M", (5, 128, 64), (7, 128, 128), "M", (10, 256, 128), (12, 256, 256),
                 (14, 256, 256))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg16_keys() -> dict[str, tuple[int, ...]]:
    """The keys (and shapes) of the torchvision state dict this module needs."""
    keys: dict[str, tuple[int, ...]] = {}
    for layer in VGG16_RELU3_3:
        if layer == "M":
            continue
        i, co, ci = layer
        keys[f"features.{i}.weight"] = (co, ci, 3, 3)
        keys[f"features.{i}.bias"] = (co,)
    return keys


class VGG16Relu33(nn.Module):
    """Frozen VGG16 features: images (B, 3, H, W) in [0, 1] -> relu3_3 (B, 256, H/4, W/4).

    ImageNet normalisation is done inside. Build with ``VGG16Relu33.from_file(path)`` or from a state dict.
    """

    def __init__(self, state_dict: dict[str, Tensor], source: str = "state dict"):
        super().__init__()
        need = vgg16_keys()
        missing = [k for k in need if k not in state_dict]
        if missing:
            raise LapError(f"{source}: not a torchvision VGG16 state dict (missing {missing[0]}"
                           f"{' and %d more' % (len(missing) - 1) if len(missing) > 1 else ''})")
        for k, shape in need.items():
            t = state_dict[k]
            if not isinstance(t, Tensor) or tuple(t.shape) != shape:
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise LapError(f"{source}: {k} has shape {got}, VGG16 needs {shape}")
            if not torch.isfinite(t).all():
                raise LapError(f"{source}: {k} holds NaN/inf values")
        for k in need:
            self.register_buffer(k.replace(".", "_"), state_dict[k].detach().float().clone(), persistent=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.source = source

    @classmethod
    def from_file(cls, path: str | Path) -> "VGG16Relu33":
        return cls(read_state_dict(path, "VGG16", "give torchvision's vgg16-397923af.pth"), str(path))

    def forward(self, x: Tensor) -> Tensor:
        h = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)  # (B, 3, H, W)
        for layer in VGG16_RELU3_3:
            if layer == "M":
                h = F.max_pool2d(h, 2, 2)  # (B, C, h, w) -> (B, C, h/2, w/2)
                continue
            i = layer[0]
            w = getattr(self, f"features_{i}_weight").to(h.dtype)
            b = getattr(self, f"features_{i}_bias").to(h.dtype)
            h = F.relu(F.conv2d(h, w, b, padding=1))  # 3x3 conv, same size
        return h  # relu3_3: (B, 256, H/4, W/4)

    def train(self, mode: bool = True) -> "VGG16Relu33":  # always frozen
        return super().train(False)


def load_vgg(path: str | Path | None) -> VGG16Relu33 | None:
    """The perceptual network from a local file, or None (perceptual loss off) when no path is given."""
    return None if path is None else VGG16Relu33.from_file(path)


def read_state_dict(path: str | Path, what: str, hint: str) -> dict:
    """A weight file's state dict (``weights_only``: no code runs), or a LapError naming the file and the fault."""
    p = Path(path)
    if not p.is_file():
        raise LapError(f"{p}: {what} weight file does not exist ({hint})")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling fault is a wrong file
        raise LapError(f"{p}: cannot be read as a PyTorch state dict ({type(e).__name__})") from None
    if not isinstance(sd, dict):
        raise LapError(f"{p}: holds a {type(sd).__name__}, not a state dict")
    return sd
