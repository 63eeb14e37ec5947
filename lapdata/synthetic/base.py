"""The synthetic backend interface: an identity (seed + parameters) in, views with pose labels out.

Conventions shared by every backend (and by the ground truth written to the shards):

* Pose labels are degrees. ``yaw > 0``: the head turns toward the image's right (the subject's left),
  ``pitch > 0``: the face looks up, ``roll > 0``: the head tilts counter-clockwise in the image. The object frame is
  x right, y up, z out of the face toward the camera; the rotation is ``R = Rz(roll) @ Ry(yaw) @ Rx(-pitch)``
  about the head's pivot (``lapdata.synthetic.mesh.pose_rotation``).
* Camera: perspective, ``fov_deg`` (default 10, Unsup3D's), principal point at the image centre; the world is
  scaled so that the face anchor (the point between eyes and mouth) sits at depth 1.0 (Unsup3D's depth scale).
* Depth maps are camera-space z (distance along the optical axis), NaN where there is no face (background *and*
  non-face parts such as neck, hair, back of the head): ``isfinite(depth) == mask`` always.
* Normals: unit, camera space of ``lapdata.geometry.camera`` (x right, y down, z forward) with Unsup3D's sign:
  n = dP/dx x dP/dy, so a surface facing the camera has (0, 0, 1) (``geometry.depth_to_normals`` gives the same
  from the depth map); shading = ambient + diffuse * relu(<n, normalize(lx, ly, 1)>); zero outside the mask.
* Light: ``[ambient, diffuse, lx, ly]`` (Unsup3D's mapped light).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Pose:
    """Head pose in degrees (see the module doc for the signs)."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0

    def as_list(self) -> list[float]:
        return [float(self.yaw), float(self.pitch), float(self.roll)]


@dataclass
class IdentityParams:
    """One synthetic identity: its seed and the backend's parameters (JSON-able lists/floats in ``coeffs``)."""

    seed: int
    coeffs: dict[str, Any] = field(default_factory=dict)  # e.g. {"identity": [...100 floats], "skin": [...]}
    extra: dict[str, Any] = field(default_factory=dict)  # backend objects not written to the shards (latents, ...)


@dataclass
class SynthView:
    """One rendered view.

    image: (H, W, 3) uint8. depth / canon_depth: (H, W) float32, NaN outside the face (None for 2D backends).
    normal: (H, W, 3) float32 unit (0 outside the face). mask: (H, W) bool face mask.
    landmarks: (K, 2) float32 pixel coordinates (x, y) of facial landmarks when the backend knows them
    (68 iBUG points for ict, 5 points for procedural), used to align the face for the identity filter.
    """

    image: np.ndarray
    pose: Pose
    depth: np.ndarray | None = None
    canon_depth: np.ndarray | None = None
    normal: np.ndarray | None = None
    mask: np.ndarray | None = None
    light: list[float] | None = None
    expression: list[float] | None = None
    landmarks: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """What build-synthetic needs from a backend.

    ``name``: e.g. "procedural". ``has_geometry``: True when views carry depth/normal/mask ground truth.
    Backends must be picklable (the build sends them to worker processes): heavy state (models) is loaded lazily.
    Optional ``framing``: a backend whose images are not rendered in the ``lap`` framing names the framing they come
    in (a key of ``lapdata.synthetic.framing.SOURCE_FRAMINGS``, e.g. "ffhq"); build-synthetic then generates its
    views larger, detects the face on each and aligns it to the lap template, as ingest does with a photo.
    """

    name: str
    has_geometry: bool

    def sample_identity(self, rng: np.random.Generator) -> IdentityParams: ...

    def render_views(
        self, params: IdentityParams, poses: Sequence[Pose], size: int, rng: np.random.Generator
    ) -> list[SynthView]: ...

    def describe(self) -> dict[str, Any]:
        """JSON-able description of the backend's configuration (written to stats.json)."""
        ...


def default_poses(
    n: int = 15,
    yaw_range: tuple[float, float] = (-45.0, 45.0),
    rng: np.random.Generator | None = None,
    pitch_jitter: float = 5.0,
    roll_jitter: float = 3.0,
) -> list[Pose]:
    """``n`` yaws evenly spaced over ``yaw_range`` (inclusive) with small pitch/roll jitter.

    The jitter is uniform in +-``pitch_jitter`` / +-``roll_jitter`` degrees (0 when ``rng`` is None)."""
    if n < 1:
        raise ValueError("need at least one pose")
    lo, hi = float(yaw_range[0]), float(yaw_range[1])
    yaws = [0.5 * (lo + hi)] if n == 1 else list(np.linspace(lo, hi, n))
    out = []
    for y in yaws:
        if rng is None:
            p, r = 0.0, 0.0
        else:
            p = float(rng.uniform(-pitch_jitter, pitch_jitter))
            r = float(rng.uniform(-roll_jitter, roll_jitter))
        out.append(Pose(float(y), p, r))
    return out


def frontal_index(poses: Sequence[Pose]) -> int:
    """Index of the most frontal pose (smallest yaw^2 + pitch^2; first on ties)."""
    return int(np.argmin([p.yaw**2 + p.pitch**2 for p in poses]))


def identity_seed(seed: int, index: int) -> int:
    """Seed of identity ``index`` derived from the run's ``seed`` (SeedSequence: independent streams)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(1, np.uint32)[0])


def sample_light(rng: np.random.Generator, mode: str = "random") -> list[float]:
    """[ambient, diffuse, lx, ly]; "frontal": a fixed light along the optical axis."""
    if mode == "frontal":
        return [0.45, 0.6, 0.0, 0.0]
    ambient = float(rng.uniform(0.35, 0.65))
    diffuse = float(rng.uniform(0.35, 0.75))
    ang = float(rng.uniform(0, 2 * math.pi))
    r = float(rng.uniform(0.0, 0.8))
    return [ambient, diffuse, r * math.cos(ang), r * math.sin(ang)]
