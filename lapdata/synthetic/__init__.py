"""Synthetic multi-pose identity sets (LAP's curriculum data) with interchangeable backends.

``base`` (the backend interface and conventions), ``mesh`` (posing/rasterizing/shading a textured face mesh with
``lapdata.geometry.raster``), ``albedo`` (procedural skin textures and backgrounds), backends ``procedural`` (built in, no
files), ``ict`` (ICT-FaceKit), ``stylegan`` (InterfaceGAN pose edits), ``diffusers_backend`` (pose-conditioned
diffusion), and ``build`` (``lapdata build-synthetic``: shards + manifests via ``lapdata.dataset.writer``).
Import each from its module; this package imports nothing.
"""
