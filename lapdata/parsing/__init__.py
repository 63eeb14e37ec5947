"""Face parsing for LAP's Relaxed Consistency Loss: 19-class CelebAMask-HQ label maps and the RCL masks.

- ``labels``: the 19 classes, palette, ``colorize``, ``class_counts``.
- ``masks``: ``RCLMaskConfig``, ``label_to_masks`` (torch) / ``label_to_masks_np`` -> (M, M_re).
- ``bisenet``: BiSeNet (ResNet-18 context path) loading face-parsing.PyTorch and facexlib weights.
- ``landmarks``: the offline default parser from dlib's 68 landmarks.
- ``parse``: the ``lapdata parse-masks`` step over a shard dataset.

Only light modules are imported here; import bisenet/landmarks/parse explicitly.
"""

from .labels import CLASSES, NUM_CLASSES, class_counts, colorize
from .masks import RCLMaskConfig, face_fraction, label_to_masks, label_to_masks_np

__all__ = [
    "CLASSES",
    "NUM_CLASSES",
    "RCLMaskConfig",
    "class_counts",
    "colorize",
    "face_fraction",
    "label_to_masks",
    "label_to_masks_np",
]
