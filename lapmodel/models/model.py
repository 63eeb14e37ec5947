"""``Model``: what training, evaluation and inference call on a model. ``Unsup3D`` and ``LAPModel`` implement it
(they name it as a base class), and nothing outside a model asks it what it can do in any other way.

A model is an ``nn.Module`` (callers also use ``parameters()``, ``train()`` / ``eval()``, ``state_dict()``):

* training (``lapmodel.training.train``): ``model(batch)`` (``forward``: a ``lapmodel.io.data.Batch`` -> the model's
  output dataclass), ``loss(output, batch)``, ``trainable_parameters()``, ``view_network()`` (its own learning
  rate), ``compile_networks()``, ``step`` (set by the loop), ``perceptual`` (None: the perceptual loss is off); the picture grids are drawn from the output's type
  (``lapmodel.viz.pictures.picture_panels``);
* inference and evaluation: ``image_size``, ``accepts_sets`` and ``reconstruct(images, as_set)`` only (the tests'
  stand-in models define just these).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor, nn

from lapmodel.config import ModelConfig
from lapmodel.models.outputs import Reconstruction


@runtime_checkable
class Model(Protocol):
    """The interface of a lapmodel model (see the module docstring for who calls what)."""

    accepts_sets: ClassVar[bool]   # reconstruct(images, as_set=True) aggregates the photos into one identity (LAP)
    cfg: ModelConfig               # the model's config (image size, camera, depth range, loss weights)
    perceptual: nn.Module | None   # the frozen perceptual network of the loss (VGG16 relu3_3 or MobileNetV2); None: off
    step: int                      # the training step, set by the training loop (the flip-weight schedule reads it)

    @property
    def image_size(self) -> int:
        """The side S of the images the model takes (B, 3, S, S)."""
        return self.cfg.image_size

    @abstractmethod
    def forward(self, batch: Any) -> Any:
        """One training forward pass: a ``lapmodel.io.data.Batch`` -> the model's output dataclass."""

    @abstractmethod
    def loss(self, out: Any, batch: Any = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The scalar loss of ``out`` (what ``forward`` returned) and detached scalars for the log."""

    @abstractmethod
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates (LAP: those of the current stage)."""

    @abstractmethod
    def view_network(self) -> nn.Module:
        """The per-photo viewpoint network (training scales its learning rate by ``optim.view_lr_scale``)."""

    @abstractmethod
    def compile_networks(self) -> None:
        """``torch.compile`` the model's networks in place (state-dict keys unchanged)."""

    @abstractmethod
    def reconstruct(self, images: Tensor, as_set: bool = False) -> Reconstruction:
        """images (K, 3, S', S') in [0, 1] -> Reconstruction of K rows. ``as_set`` (only when ``accepts_sets``): the K
        photos are one identity."""
