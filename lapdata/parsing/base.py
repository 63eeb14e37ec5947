"""The one interface of all face parsers: RGB images in, 19-class CelebAMask-HQ label maps out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


@dataclass
class ParseResult:
    """One image's parse: ``seg`` (H, W) uint8 labels 0..18 of the input's size, or ``error`` (a one-line reason).

    ``info`` holds parser extras for the view metadata (e.g. the landmarks used).
    """

    seg: np.ndarray | None
    error: str | None = None
    info: dict | None = None

    @property
    def ok(self) -> bool:
        return self.seg is not None


class FaceParser(Protocol):
    """A parser: ``name`` (stored in the manifests' ``parser`` column) and a batched call."""

    name: str

    def __call__(self, images: Sequence[np.ndarray]) -> list[ParseResult]:
        """images: (H, W, 3) uint8 RGB arrays (sizes may differ) -> one ParseResult per image, in order."""
        ...
