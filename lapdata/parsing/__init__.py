"""Face parsing for LAP's Relaxed Consistency Loss: 19-class CelebAMask-HQ label maps and the RCL masks.

- ``labels``: the 19 classes (``CLASSES``, ``CLASS_ID``: the project's ids), the published parsers' orders
  (``FACE_PARSING_CLASSES``, ``read_label_order``, ``order_lookup``), palette, ``colorize``, ``class_counts``.
- ``masks``: ``RCLMaskConfig``, ``label_to_masks`` (torch, any leading dims, CPU/GPU) / ``label_to_masks_np``
  -> (M, M_re); ``face_fraction``.
- ``base``: ``ParseResult`` and the ``FaceParser`` protocol (images in, label maps out).
- ``bisenet``: ``BiSeNet``, ``load_bisenet`` (face-parsing.PyTorch / facexlib weights), ``BiSeNetParser``.
- ``landmarks``: ``LandmarkParser`` (dlib 68 landmarks -> polygons), the offline default.
- ``parse``: ``ParseConfig``, ``parse_masks`` (the ``lapdata parse-masks`` step over a shard dataset).

Import each from its module (``lapdata.parsing.masks``, ...); this package imports nothing.
"""
