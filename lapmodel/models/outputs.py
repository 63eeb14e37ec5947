"""Output dataclasses shared by the models, reconstruct, evaluate and the report (one place, no string lookups).

Shapes: B images (or B identities x N views flattened to B*N where noted), S = image side.
Value ranges follow Unsup3D: images in [0, 1] for pictures (models may work in [-1, 1] internally),
depth in the camera's units (canonical depth around 1.0), normals unit vectors (x right, y down, z away from camera).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Reconstruction:
    """What `model.reconstruct(images, ...)` returns: everything needed for pictures, meshes and metrics.

    canon_depth:   (B, S, S)     canonical (frontal) depth
    canon_albedo:  (B, 3, S, S)  canonical albedo in [0, 1]
    canon_normal:  (B, S, S, 3)  canonical normals
    canon_shading: (B, 1, S, S)  canonical Lambertian shading
    canon_image:   (B, 3, S, S)  shaded canonical image in [0, 1]
    view:          (B, 6)        rotation x, y, z (radians) and translation x, y, z
    light:         (B, 4)        ambient, diffuse, light direction x, y
    recon_image:   (B, 3, S, S)  re-render in the input's view, [0, 1]
    recon_depth:   (B, S, S)     depth in the input's view
    recon_mask:    (B, S, S)     1 where the re-render has a surface
    fov_deg:       float         camera field of view used
    depth_range:   (lo, hi)      the model's canonical depth range (the renderer's background lies beyond it)
    """

    canon_depth: Tensor
    canon_albedo: Tensor
    canon_normal: Tensor
    canon_shading: Tensor
    canon_image: Tensor
    view: Tensor
    light: Tensor
    recon_image: Tensor
    recon_depth: Tensor
    recon_mask: Tensor
    fov_deg: float = 10.0
    depth_range: tuple[float, float] = (0.9, 1.1)
