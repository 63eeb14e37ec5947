"""``build_model``: the model a training config names (Unsup3D-re or LAP), with its perceptual network."""

from __future__ import annotations

from lapdata.core.errors import LapError
from lapmodel.config import MODEL_KINDS, TrainConfig
from lapmodel.models.model import Model
from lapmodel.models.perceptual import load_perceptual


def build_model(cfg: TrainConfig, training: bool = True) -> Model:
    """The model ``cfg.model.kind`` names. ``training``: load the perceptual network (``cfg.perceptual``)."""
    kind = cfg.model.kind
    if kind not in MODEL_KINDS:
        raise LapError(f"model.kind {kind!r} is not one of {list(MODEL_KINDS)}")
    perceptual = load_perceptual(cfg.perceptual, cfg.vgg_weights, cfg.mobilenet_weights) \
        if training and cfg.model.lam_perc > 0 else None
    if kind == "unsup3d":
        from lapmodel.models.unsup3d import Unsup3D

        return Unsup3D(cfg.model, perceptual)
    if kind == "lap":
        from lapmodel.models.lap import LAPModel

        return LAPModel(cfg.model, perceptual)
    raise LapError(f"model.kind {kind!r} has no builder in lapmodel.models.build.build_model")
