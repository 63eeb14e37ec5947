"""Pictures of real reconstructions for the docs: per photo, the input crop, the depth in the photo's view, the
canonical normals, and the bare shape turned to -40, -20, +20, +40 degrees (the turntable's geometry).

    python benchmarks/real_pictures.py --out docs/images/real-reconstructions.jpg PHOTO... [--checkpoint CK]

No ``--checkpoint``: the packaged model. Photos are cropped as ``lapmodel reconstruct`` crops them (detected and
aligned, or pre-aligned layouts by their rule); a ``--labels`` list names the rows.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lapdata.core import pictures  # noqa: E402
from lapmodel.inference.faces import load_faces  # noqa: E402
from lapmodel.inference.reconstruct import run_model  # noqa: E402
from lapmodel.io.checkpoint import load_model  # noqa: E402
from lapmodel.io.pretrained import resolve_checkpoint  # noqa: E402
from lapmodel.render import renderer  # noqa: E402
from lapmodel.viz.pictures import SHAPE_LIGHT  # noqa: E402

YAWS = (-40.0, -20.0, 20.0, 40.0)


def shape_views(depth: torch.Tensor, fov: float, depth_range: tuple[float, float]) -> list[np.ndarray]:
    """The bare geometry (grey, lit from the front-left) of a canonical depth (S, S) at the YAWS."""
    d = depth[None].float()
    normal = renderer.depth_to_normal(d, fov)
    _, grey = renderer.shade(torch.full((1, 3, *depth.shape), 0.8), normal, torch.tensor([SHAPE_LIGHT]))
    b = max(1, depth.shape[-1] // 24)  # the map's rim is stretched when turned: paint it the background's white
    grey = grey.clamp(0, 1)
    grey[..., :b, :] = grey[..., -b:, :] = grey[..., :, :b] = grey[..., :, -b:] = 1.0
    fr = renderer.turntable(d, grey, [math.radians(y) for y in YAWS], fov_deg=fov, depth_range=depth_range,
                            background=1.0)
    return [pictures.to_uint8(f) for f in fr[0].clamp(0, 1)]


def _label(path: str) -> str:
    """A row's name: the photo's stem, or its folder's when the stem is a number (collections name photos 0.jpg...)."""
    p = Path(path)
    return p.parent.name if p.stem.isdigit() else p.stem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--labels", nargs="*", default=None)
    ap.add_argument("--cell", type=int, default=128)
    a = ap.parse_args()
    model = load_model(resolve_checkpoint(a.checkpoint))
    faces = load_faces(a.photos, model.image_size)
    for sk in faces.skipped:
        print(f"skipped {sk['path']}: {sk['reason']}")
    with torch.no_grad():
        rec = run_model(model, faces.images)
    rows = []
    for i in range(len(faces.names)):
        m = rec.recon_mask[i] > 0.5
        rows.append([pictures.to_uint8(faces.images[i]), pictures.depth_colors(rec.recon_depth[i], m),
                     pictures.normal_colors(rec.canon_normal[i]),
                     *shape_views(rec.canon_depth[i], rec.fov_deg, rec.depth_range)])
    labels = a.labels if a.labels and len(a.labels) == len(rows) else [_label(p) for p in faces.sources]
    grid = pictures.image_grid(rows, row_labels=labels, cell=a.cell,
                               col_labels=["photo (crop)", "depth, photo's view", "normals", *[f"shape {y:+.0f}°" for y in YAWS]])
    out = Path(a.out)
    if out.suffix.lower() in (".jpg", ".jpeg"):
        from PIL import Image

        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(out, quality=88)
    else:
        pictures.save_png(out, grid)
    print(out)


if __name__ == "__main__":
    main()
