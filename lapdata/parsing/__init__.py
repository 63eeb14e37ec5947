"""Face parsing for LAP's Relaxed Consistency Loss: 19-class CelebAMask-HQ label maps and the RCL masks.

- ``labels``: the 19 classes (``CLASSES``, ``CLASS_ID``: the project's ids), the published parsers' orders
  (``FACE_PARSING_CLASSES``, ``read_label_order``, ``order_lookup``), palette, ``colorize``, ``class_counts``.
- ``masks``: ``RCLMaskConfig``, ``label_to_masks`` (torch, any leading dims, CPU/GPU) / ``label_to_masks_np``
  -> (M, M_re); ``face_fraction``.
- ``base``: ``ParseResult`` and the ``FaceParser`` protocol (images in, label maps out).
- ``bisenet``: ``BiSeNet``, ``load_bisenet`` (face-parsing.PyTorch / facexlib weights), ``BiSeNetParser``.
- ``landmarks``: ``LandmarkParser`` (dlib 68 landmarks -> polygons), the offline default.
- ``parse``: ``ParseConfig``, ``parse_masks`` (the ``lapdata parse-masks`` step over a shard dataset).

Only the light modules are imported here; import bisenet / landmarks / parse explicitly.
"""

from .base import FaceParser, ParseResult
from .labels import CLASS_ID, CLASSES, NUM_CLASSES, class_counts, colorize
from .masks import RCLMaskConfig, face_fraction, label_to_masks, label_to_masks_np

__all__ = [
    "CLASSES",
    "CLASS_ID",
    "NUM_CLASSES",
    "FaceParser",
    "ParseResult",
    "RCLMaskConfig",
    "class_counts",
    "colorize",
    "face_fraction",
    "label_to_masks",
    "label_to_masks_np",
]
