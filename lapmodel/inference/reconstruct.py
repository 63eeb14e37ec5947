"""Reconstruct faces from photos with a trained model and write every output a person looks at.

Pipeline: paths (files or folders) -> `lapmodel.inference.faces.load_faces` (aligned crops via
`lapdata.faces.align.crop_prealigned`, or photos detected + aligned with `DlibDetector` / `largest_face` /
`align_face`, as `lapdata` does) ->
`reconstruct_images(model, images, out_dir, names)` (batched ``model.reconstruct``; ``as_set=True`` aggregates the
whole set into one identity with a LAP model) -> per photo ``out_dir/<name>/``:

    input.png  recon.png (re-render)  albedo.png  shading.png  canonical.png (shaded canonical image)
    depth.png + depth.json (16-bit canonical depth, range in the sidecar)  depth.npy
    depth_color.png (`lapdata.core.pictures.depth_colors`: near = bright)  view_depth.npy (depth in the photo's view)
    normal.png (canonical normals)  mesh.obj + mesh.mtl + mesh_texture.png (UVs = pixel coordinates)
    mesh.ply (vertex colours)  mesh.glb (texture embedded, for web viewers): all through `lapmodel.io.mesh`
    turntable.gif (textured face | grey shape, a yaw sweep)  summary.png (input | recon | albedo | depth | normals | shading)

plus ``out_dir/summary.png`` (one row per photo) and ``out_dir/reconstruct.json`` (what was done and skipped).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from lapdata.core import pictures
from lapdata.core.atomic import write_json
from lapdata.core.errors import LapError
from lapdata.faces.align import MAX_CROP_SIZE
from lapdata.core.paths import plain_name
from lapmodel.inference.faces import RESERVED, expand_paths, load_files, needs_detector, unique_names
from lapmodel.io import export
from lapmodel.models.model import Model
from lapmodel.models.outputs import Reconstruction
from lapmodel.viz.pictures import turntable_frames


def _model_device(model: Model) -> torch.device:
    """Where the model's weights are (the CPU for a model without parameters)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def run_model(model: Model, images: Tensor, as_set: bool = False, batch_size: int = 16,
              progress: bool = False) -> Reconstruction:
    """``model.reconstruct`` over batches (or once for the whole set), results on the CPU.

    images (B, 3, S, S) in [0, 1] -> Reconstruction with B rows.
    """
    if as_set and not model.accepts_sets:
        raise LapError("--as-set needs a model that aggregates photo sets (a LAP checkpoint); this one reconstructs "
                       "single images")
    dev = _model_device(model)
    model.eval()
    chunks = [images] if as_set else [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    outs: list[Reconstruction] = []
    it: Iterable = chunks
    if progress and len(chunks) > 1:
        from tqdm import tqdm

        it = tqdm(chunks, desc="reconstruct", unit="batch", disable=None)
    with torch.no_grad():
        for x in it:
            x = x.to(dev)
            outs.append(model.reconstruct(x, as_set=as_set))
    return cat_reconstructions(outs, len(images))


def _rows(t: Tensor, n: int) -> Tensor:
    """Broadcast a set-level (1, ...) field to n rows."""
    return t.expand(n, *t.shape[1:]) if t.shape[0] == 1 and n > 1 else t


def cat_reconstructions(recs: Sequence[Reconstruction], n_total: int | None = None) -> Reconstruction:
    """Concatenate per-batch Reconstructions on the CPU (set-level fields of size 1 are broadcast per image)."""
    fields = ("canon_depth", "canon_albedo", "canon_normal", "canon_shading", "canon_image", "view", "light",
              "recon_image", "recon_depth", "recon_mask")
    vals = {}
    for f in fields:
        parts = []
        for r in recs:
            n = r.recon_image.shape[0]
            parts.append(_rows(getattr(r, f).detach().float().cpu(), n))
        vals[f] = torch.cat(parts)
    return Reconstruction(**vals, fov_deg=float(recs[0].fov_deg), depth_range=tuple(recs[0].depth_range))


def write_reconstruction(
    out_dir: str | os.PathLike,
    image: Tensor,
    rec: Reconstruction,
    i: int,
    *,
    turntable: int = 24,
    mesh: bool = True,
    max_jump: float = 0.05,
) -> dict[str, str]:
    """Write every output of photo ``i`` of ``rec`` into ``out_dir``; returns {kind: path}. image (3, S, S)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fov = rec.fov_deg
    cd = rec.canon_depth[i]
    written: dict[str, Path] = {}
    pics = summary_row(image, rec, i)  # input | recon | albedo | depth | normals | shading
    written["input"] = pictures.save_png(out / "input.png", pics[0])
    written["recon"] = pictures.save_png(out / "recon.png", pics[1])
    written["albedo"] = pictures.save_png(out / "albedo.png", pics[2])
    written["shading"] = pictures.save_png(out / "shading.png", pics[5])
    written["canonical"] = pictures.save_png(out / "canonical.png", rec.canon_image[i].clamp(0, 1))
    written["depth"], written["depth_json"] = export.save_depth_png(out / "depth.png", cd)
    written["depth_npy"] = export.save_depth_npy(out / "depth.npy", cd)
    vd = rec.recon_depth[i].clone()
    vd[rec.recon_mask[i] < 0.5] = float("nan")
    written["view_depth_npy"] = export.save_depth_npy(out / "view_depth.npy", vd)
    written["depth_color"] = pictures.save_png(out / "depth_color.png", pics[3])
    written["normal"] = pictures.save_png(out / "normal.png", pics[4])
    if mesh:
        # the outer S//32 columns of a canonical depth are pinned to the border depth (Unsup3D): crop them off
        crop = max(1, cd.shape[-1] // 32)
        m = export.export_depth_mesh(out / "mesh", cd, rec.canon_albedo[i].clamp(0, 1), fov_deg=fov,
                                     max_jump=max_jump, crop=crop)
        written.update(m)
    if turntable > 0:
        frames = turntable_frames(cd, rec.canon_image[i].clamp(0, 1), n_frames=turntable, fov_deg=fov, shape=True,
                                  depth_range=rec.depth_range)
        written["turntable"] = pictures.write_gif(out / "turntable.gif", frames)
    written["summary"] = pictures.save_png(out / "summary.png", pictures.image_grid([pics], col_labels=SUMMARY_LABELS))
    return {k: str(v) for k, v in written.items()}


SUMMARY_LABELS = ("input", "recon", "albedo", "depth", "normals", "shading")


def summary_row(image: Tensor, rec: Reconstruction, i: int) -> list[np.ndarray]:
    """Pictures of one photo: input | re-render | albedo | canonical depth (`lapdata.core.pictures.depth_colors`) |
    canonical normals | shading (scaled to its maximum), (S, S, 3) uint8 each."""
    sh = rec.canon_shading[i]
    return [
        pictures.to_uint8(image),
        pictures.to_uint8(rec.recon_image[i].clamp(0, 1)),
        pictures.to_uint8(rec.canon_albedo[i].clamp(0, 1)),
        pictures.depth_colors(rec.canon_depth[i]),
        pictures.normal_colors(rec.canon_normal[i]),
        pictures.to_uint8((sh / max(float(sh.max()), 1e-6)).clamp(0, 1)),
    ]


def reconstruct_images(
    model: Model,
    images: Tensor,
    out_dir: str | os.PathLike,
    names: Sequence[str],
    as_set: bool = False,
    *,
    batch_size: int = 16,
    turntable: int = 24,
    mesh: bool = True,
    progress: bool = True,
    summary_rows: int = 32,
) -> dict[str, Any]:
    """Run ``model.reconstruct`` on images (B, 3, S, S) in [0, 1] and write each photo's outputs to out_dir/<name>/.

    as_set: one identity from all the images (LAP ``reconstruct(images, as_set=True)``): per-photo folders hold the
    per-view outputs, the shared canonical outputs are also written once to ``out_dir/set/``.
    ``out_dir/summary.png`` shows the first ``summary_rows`` photos (0: not written).
    Returns {"outputs": {name: {kind: path}}, "summary": path or None}.
    """
    if len(images) != len(names):
        raise ValueError(f"{len(images)} images but {len(names)} names")
    folded = [n.casefold() for n in names] + (list(RESERVED) if as_set else [])
    if any(plain_name(n) != n for n in names) or len(set(folded)) != len(folded):
        raise ValueError(f"output names must be distinct plain names (lapdata.core.paths.plain_name): {list(names)[:8]}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(images) == 0:
        return {"outputs": {}, "summary": None}
    rec = run_model(model, images, as_set=as_set, batch_size=batch_size, progress=progress)
    if rec.recon_image.shape[0] != len(images):
        raise LapError(f"model returned {rec.recon_image.shape[0]} reconstructions for {len(images)} images")
    outputs: dict[str, dict[str, str]] = {}
    rows = []
    it: Iterable = range(len(images))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="write", unit="photo", total=len(images), disable=None)
    for i in it:
        outputs[names[i]] = write_reconstruction(out / names[i], images[i], rec, i, turntable=turntable, mesh=mesh)
        if i < summary_rows:
            rows.append(summary_row(images[i], rec, i))
    if as_set:
        outputs["set"] = write_reconstruction(out / "set", images[0], rec, 0, turntable=turntable, mesh=mesh)
    summary = None
    if rows:
        grid = pictures.image_grid(rows, col_labels=SUMMARY_LABELS, row_labels=list(names[: len(rows)]))
        summary = str(pictures.save_png(out / "summary.png", grid))
    return {"outputs": outputs, "summary": summary}


@dataclass(frozen=True)
class ReconstructConfig:
    """What `lapmodel reconstruct` does; its command-line options derive from these fields."""

    paths: tuple[str, ...]               # photos and/or folders of photos
    checkpoint: str | None = None        # model checkpoint (.pt) or a published Unsup3D / LAP demo .pth; default: the packaged model
    out: str = "reconstructions"         # output folder (one subfolder per photo)
    as_set: bool = False                 # all photos are one identity: aggregate them (LAP models)
    size: int | None = None              # crop side in pixels (default: the model's)
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    aligned: bool | None = None          # inputs are aligned crops / photos to detect (default: square = crop)
    batch_size: int = 16                 # images per model call
    turntable: int = 24                  # frames of the turntable GIF (0: none)
    mesh: bool = True                    # write the meshes (OBJ + MTL + texture, PLY, GLB)

    def __post_init__(self) -> None:
        if isinstance(self.paths, (str, os.PathLike)):
            object.__setattr__(self, "paths", (str(self.paths),))
        if self.batch_size < 1 or self.turntable < 0 or (self.size is not None and not 8 <= self.size <= MAX_CROP_SIZE):
            raise LapError(f"reconstruct: batch_size must be >= 1 (got {self.batch_size}), turntable >= 0 "
                           f"({self.turntable}), size in 8..{MAX_CROP_SIZE} ({self.size})")


def reconstruct_paths(cfg: ReconstructConfig, *, model: Model | None = None, progress: bool = True,
                      chunk: int = 256) -> dict[str, Any]:
    """The `lapmodel reconstruct` command: load the checkpoint, crop the faces, reconstruct, write, report.

    Returns the report written to ``cfg.out/reconstruct.json``: counts, skipped files with reasons, outputs.
    ``model``: use this model instead of loading ``cfg.checkpoint``; ``chunk``: photos held in memory at once.
    """
    from lapdata.core.device import resolve_device

    paths, checkpoint, out_dir, as_set, size = cfg.paths, cfg.checkpoint, cfg.out, cfg.as_set, cfg.size
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise LapError(f"{out_dir}: --out is a file, not a folder")
    aligned, batch_size, turntable, mesh = cfg.aligned, cfg.batch_size, cfg.turntable, cfg.mesh
    if model is None:
        from lapmodel.io.checkpoint import load_model

        # LapError naming the file when missing or not a checkpoint
        from lapmodel.io.pretrained import resolve_checkpoint

        checkpoint = resolve_checkpoint(checkpoint)
        model = load_model(checkpoint, device=resolve_device(cfg.device))
    if as_set and not model.accepts_sets:
        raise LapError(f"{checkpoint}: --as-set needs a LAP checkpoint (this model reconstructs single images)")
    s = size or model.image_size
    files = expand_paths(paths)
    names = unique_names(files)
    # a set is reconstructed in one call; otherwise photos stream through in chunks (bounded memory)
    step = len(files) if as_set else max(chunk, 1)
    starts = range(0, len(files), step)
    detector = None
    photos, skipped, outputs, summary = [], [], {}, None
    it: Iterable = starts
    if progress:
        from tqdm import tqdm

        it = tqdm(starts, desc="reconstruct", unit="chunk", disable=None) if len(starts) > 1 else starts
    for k, a in enumerate(it):
        if detector is None and aligned is not True:
            from lapdata.faces.detectors import DlibDetector

            detector = DlibDetector() if any(needs_detector(f, aligned) for f in files[a : a + step]) else None
        faces = load_files(files[a : a + step], names[a : a + step], s, aligned, detector)
        for sk in faces.skipped:
            print(f"skipped {sk['path']}: {sk['reason']}")
        skipped.extend(faces.skipped)
        photos.extend({"name": n, "source": src, "crop_rule": r}
                      for n, src, r in zip(faces.names, faces.sources, faces.rules))
        res = reconstruct_images(model, faces.images, out_dir, faces.names, as_set=as_set, batch_size=batch_size,
                                 turntable=turntable, mesh=mesh, progress=progress and len(starts) == 1,
                                 summary_rows=32 if k == 0 else 0)
        outputs.update(res["outputs"])
        summary = summary or res["summary"]
    report = {
        "checkpoint": str(checkpoint),
        "as_set": as_set,
        "size": s,
        "done": len(photos),
        "skipped": len(skipped),
        "skipped_files": skipped,
        "photos": photos,
        "outputs": outputs,
        "summary": summary,
    }
    write_json(Path(out_dir) / "reconstruct.json", report, indent=1)
    return report
