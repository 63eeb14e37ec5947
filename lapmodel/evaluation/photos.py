"""Depth on real photos: the keypoint depth-correlation protocol of Unsup3D's and LAP's Table 3 (3DFAW, DepthNet).

Per photo: the face is cropped exactly as ``lapmodel reconstruct`` crops it (``inference.faces.load_files``:
a pre-aligned rule or detection + alignment), and the photo's 3D keypoints (``evaluation.keypoints``) go through
that same photo -> crop matrix (x, y; z scaled by the same factor). The model's depth in the photo's own view
(``Reconstruction.recon_depth``, where the re-render has a surface) is sampled at the keypoints' (x, y) and compared
with their z:

* ``kp_corr``: the Pearson correlation over the keypoints of one photo (DepthNet's ``pearsons``), mean and median
  over the photos;
* ``depthnet``: DepthNet's summed score: per keypoint, |correlation across the photos| of the photo-centred depths,
  summed over the keypoints (K for the ground truth: 66 on 3DFAW's layout; ``table3_scale`` = score * 66 / K).

Baselines scored in the same run, on the same photos and keypoints:

* ``prior``: the model's untrained depth (its prior: ``photogeo.map_depth`` of a zero raw depth) in the identity
  view; the same map for every photo;
* ``mean_template``: the keypoints' own mean shape (per keypoint, the mean of the photo-centred z over the evaluated
  photos), not posed: an oracle generic face. A model that does not beat it has not learned face shape.

Whether depth depends on the face: ``canon_spread`` = the mean over the face interior of the per-pixel standard
deviation of the canonical depth across photos (``photos``) and across identities (``identities``: each identity's
canonical depth is its photos aggregated as one set by a set model, else the mean of its photos' maps), divided by
the relief of the mean map. Near 0 = one map for everyone.

Set models (LAP) also give the set-size curve: each identity's first photos (a fixed order, ``evalset.set_order``)
in disjoint sets of N, every N scored on the same photos (a multiple of the lcm of the set sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from lapdata.core import pictures
from lapdata.core.errors import LapError
from lapmodel.evaluation import metrics
from lapmodel.evaluation.baselines import canon_spread
from lapmodel.evaluation.evalset import set_order
from lapmodel.evaluation.keypoints import KeypointSet
from lapmodel.models.model import Model

CURVE_PHOTOS = 60  # photos per identity for the set-size curve (a multiple of lcm(1..6))


@dataclass
class PhotoBatch:
    """Photos cropped for the model and their keypoints in the crop: images (B, 3, S, S), points (B, K, 3) (x, y
    crop pixels, z larger = farther, in crop pixels), identities, files, rules; skipped {"path", "reason"}."""

    images: Tensor
    points: Tensor
    identities: list[str]
    files: list[str]
    rules: list[str]
    skipped: list[dict] = field(default_factory=list)


def map_points(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(2, 3) photo -> crop similarity, (K, 3) points -> (K, 3): x, y transformed, z scaled by the same factor."""
    out = np.empty_like(pts)
    out[:, :2] = pts[:, :2] @ matrix[:, :2].T + matrix[:, 2]
    out[:, 2] = pts[:, 2] * math.hypot(matrix[0, 0], matrix[1, 0])
    return out


def crop_photos(kps: KeypointSet, size: int, aligned: bool | None = None, detector: Any = None) -> PhotoBatch:
    """Crop every annotated photo of ``kps`` as reconstruct does and map its keypoints into the crop. Photos with no
    keypoints (NaN rows), missing, unreadable or without a detected face are skipped with a reason."""
    from lapmodel.inference.faces import load_files

    has = np.isfinite(kps.points).all(-1).all(-1)
    skipped = [{"path": str(f), "reason": "no keypoints"} for f, h in zip(kps.files, has) if not h]
    idx = [i for i in range(len(kps)) if has[i]]
    missing = [i for i in idx if not kps.files[i].is_file()]
    skipped += [{"path": str(kps.files[i]), "reason": "photo not found"} for i in missing]
    idx = [i for i in idx if i not in set(missing)]
    if not idx:
        raise LapError(f"{kps.source}: none of its {len(kps)} photos can be scored ({skipped[0]['reason'] if skipped else 'empty'}"
                       f": e.g. {skipped[0]['path'] if skipped else ''}); check --photo-root")
    names = [str(i) for i in idx]
    faces = load_files([kps.files[i] for i in idx], names, size, aligned, detector)
    skipped += faces.skipped
    kept = [int(n) for n in faces.names]
    pts = np.stack([map_points(m, kps.points[i]) for m, i in zip(faces.matrices, kept)]) if kept else \
        np.zeros((0, kps.num_points, 3))
    return PhotoBatch(faces.images, torch.from_numpy(pts), [kps.identities[i] for i in kept],
                      [str(kps.files[i]) for i in kept], faces.rules, skipped)


def view_keypoint_depth(rec, points: Tensor) -> Tensor:
    """The model's depth in each photo's view at its keypoints: Reconstruction (B rows), points (B, K, 3) -> (B, K)."""
    return metrics.sample_at_points(rec.recon_depth.double(), rec.recon_mask > 0.5, points[..., :2])


def prior_view_depth(cfg, size: int) -> tuple[Tensor, Tensor]:
    """The untrained model's depth in the identity view: (S, S) depth and (S, S) bool mask (``cfg``: ModelConfig)."""
    from lapmodel.models import photogeo

    d = photogeo.map_depth(torch.zeros(1, size, size), cfg)
    zeros = torch.zeros(1, 6)
    light = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    r = photogeo.render(torch.full((1, 3, size, size), 0.5), d, light, zeros, cfg, flip=False)
    return r.recon_depth[0].double(), r.mask[0] > 0.5


def summarize(values: Tensor) -> dict[str, float]:
    """(B,) per-photo scores -> mean, median, std and n over the finite ones."""
    v = values[torch.isfinite(values)].double()
    if len(v) == 0:
        return {"mean": math.nan, "median": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(v.mean()), "median": float(v.median()), "std": float(v.std(unbiased=False)), "n": len(v)}


def score_rows(pred: Tensor, gt: Tensor) -> dict[str, Any]:
    """kp_corr summary + DepthNet score of keypoint depths pred vs gt, both (B, K)."""
    per = metrics.keypoint_correlation(pred, gt)
    score, _ = metrics.depthnet_score(pred, gt)
    k = gt.shape[1]
    return {"kp_corr": summarize(per), "depthnet": {"score": score, "keypoints": k, "table3_scale": score * 66 / k}}


def curve_sets(identities: Sequence[str], set_sizes: Sequence[int], cap: int = CURVE_PHOTOS
               ) -> dict[int, list[list[int]]]:
    """{N: disjoint sets (row indices) of N photos of one identity}; every N covers the same photos: each identity's
    first ``m`` photos in ``set_order``, m = the largest multiple of lcm(set sizes) <= min(its photos, cap)."""
    lcm = math.lcm(*set_sizes)
    rows: dict[str, list[int]] = {}
    for i, name in enumerate(identities):
        rows.setdefault(name, []).append(i)
    out: dict[int, list[list[int]]] = {n: [] for n in set_sizes}
    for name in sorted(rows):
        r = rows[name]
        m = min(len(r), max(cap, lcm)) // lcm * lcm
        chosen = [r[j] for j in set_order(name, len(r))[:m]]
        for n in set_sizes:
            out[n].extend(chosen[a:a + n] for a in range(0, m, n))
    return out


def example_rows(batch: PhotoBatch, rec, pred: Tensor, idx: Sequence[int]) -> list[list[Any]]:
    """Rows of examples.png: input with its keypoints coloured by depth (near = bright), the model's view depth
    with the same keypoints coloured by the model's depth there, canonical depth, canonical normals."""
    rows = []
    for i in idx:
        img = pictures.to_uint8(batch.images[i])
        gt = batch.points[i].numpy()
        rows.append([draw_points(img, gt[:, :2], gt[:, 2]),
                     draw_points(pictures.depth_colors(rec.recon_depth[i], rec.recon_mask[i] > 0.5), gt[:, :2],
                                 pred[i].numpy()),
                     pictures.depth_colors(rec.canon_depth[i]), pictures.normal_colors(rec.canon_normal[i])])
    return rows


def draw_points(img: np.ndarray, xy: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 with one pixel per point coloured by z (viridis, near = bright; NaN points grey)."""
    out = img.copy()
    ok = np.isfinite(z)
    zz = np.where(ok, z, np.nan)
    if ok.sum() >= 2:
        lo, hi = np.nanmin(zz), np.nanmax(zz)
        near = 1 - (zz - lo) / max(hi - lo, 1e-12)
    else:
        near = np.zeros_like(z)
    from matplotlib import colormaps

    cols = (colormaps["viridis"](np.nan_to_num(near))[:, :3] * 255).astype(np.uint8)
    cols[~ok] = 128
    s = img.shape[0]
    xi = np.clip(np.rint(xy[:, 0]).astype(int), 0, s - 1)
    yi = np.clip(np.rint(xy[:, 1]).astype(int), 0, s - 1)
    out[yi, xi] = cols
    return out


def _identity_maps(model: Model, batch: PhotoBatch, rec, sets: bool, max_set: int = 6) -> Tensor:
    """(I, S, S) one canonical depth per identity: a set model aggregates its first ``max_set`` photos, otherwise
    the mean of its photos' single-photo maps."""
    from lapmodel.inference.reconstruct import run_model

    maps = []
    for name in sorted(set(batch.identities)):
        rows = [i for i, n in enumerate(batch.identities) if n == name]
        if sets:
            maps.append(run_model(model, batch.images[rows[:max_set]], as_set=True).canon_depth[0])
        else:
            maps.append(rec.canon_depth[rows].mean(0))
    return torch.stack(maps)


def set_size_curve(model: Model, batch: PhotoBatch, set_sizes: Sequence[int]) -> dict[str, Any]:
    """{N: kp_corr summary} of the photos reconstructed in disjoint sets of N of one identity (same photos every N)."""
    from lapmodel.inference.reconstruct import run_model

    out: dict[str, Any] = {}
    for n, sets in curve_sets(batch.identities, sorted(set_sizes)).items():
        preds, gts = [], []
        for rows in sets:
            rec = run_model(model, batch.images[rows], as_set=True)
            preds.append(view_keypoint_depth(rec, batch.points[rows]))
            gts.append(batch.points[rows][..., 2])
        if preds:
            out[str(n)] = {**score_rows(torch.cat(preds), torch.cat(gts)), "sets": len(sets)}
    return out


def evaluate_photos(model: Model, kps: KeypointSet, out_dir: str | Path, *, size: int, aligned: bool | None = None,
                    set_sizes: Sequence[int] = (), batch_size: int = 32, examples: int = 8) -> dict[str, Any]:
    """The real-photo protocol (module doc) on ``kps``; writes ``keypoints.csv`` (per photo) and ``examples.png``
    into ``out_dir`` and returns the ``keypoints`` section of eval.json."""
    from lapmodel.inference.reconstruct import run_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    batch = crop_photos(kps, size, aligned)
    if len(batch.files) == 0:
        raise LapError(f"{kps.source}: no photo could be cropped ({batch.skipped[0]['reason']}: {batch.skipped[0]['path']})")
    rec = run_model(model, batch.images, batch_size=batch_size, progress=True)
    gt = batch.points[..., 2]
    pred = view_keypoint_depth(rec, batch.points)
    pd, pm = prior_view_depth(model.cfg, size)
    prior = metrics.sample_at_points(pd.expand(len(gt), -1, -1), pm.expand(len(gt), -1, -1), batch.points[..., :2])
    gtc = gt - gt.nanmean(1, keepdim=True)
    template = gtc.nanmean(0, keepdim=True).expand_as(gt)
    sets = model.accepts_sets
    doc: dict[str, Any] = {
        "source": kps.source, "keypoints_per_photo": kps.num_points,
        "counts": {"photos": len(kps), "scored": len(batch.files), "skipped": len(batch.skipped),
                   "identities": len(set(batch.identities))},
        "rows": {"model": score_rows(pred, gt), "prior": score_rows(prior, gt),
                 "mean_template": score_rows(template, gt)},
        "canon_spread": {"photos": canon_spread(rec.canon_depth),
                         "identities": canon_spread(_identity_maps(model, batch, rec, sets))},
        "set_size": set_size_curve(model, batch, set_sizes) if sets and set_sizes else {},
        "skipped": batch.skipped[:50],
    }
    per = [metrics.keypoint_correlation(x, gt) for x in (pred, prior, template)]
    lines = ["file,identity,crop_rule,kp_corr,prior,mean_template"] + [
        f"{f},{n},{r},{a:.5f},{b:.5f},{c:.5f}" for f, n, r, a, b, c in
        zip(batch.files, batch.identities, batch.rules, *(p.tolist() for p in per))]
    from lapdata.core.atomic import write_text

    write_text(out / "keypoints.csv", "\n".join(lines) + "\n")
    idx = np.linspace(0, len(batch.files) - 1, min(examples, len(batch.files))).round().astype(int).tolist()
    grid = pictures.image_grid(example_rows(batch, rec, pred, idx),
                               col_labels=("photo + keypoint depth", "model view depth", "canonical depth", "normals"),
                               row_labels=[f"{batch.identities[i]} r={float(per[0][i]):.2f}" for i in idx],
                               cell=max(112, size))
    pictures.save_png(out / "keypoints_examples.png", grid)
    return doc


def format_keypoint_table(doc: dict[str, Any], title: str = "real photos"):
    """A rich Table of the keypoint protocol: model and baselines, canonical-depth spread, set-size curve."""
    from rich.table import Table

    t = Table(title=title)
    for c in ("method", "kp depth corr mean", "median", "photos", "DepthNet score (x66/K)"):
        t.add_column(c, justify="left" if c == "method" else "right")

    def add(name: str, r: dict[str, Any]) -> None:
        k, d = r["kp_corr"], r["depthnet"]
        t.add_row(name, f"{k['mean']:.3f}", f"{k['median']:.3f}", str(k["n"]), f"{d['table3_scale']:.2f}")

    for name, r in doc["rows"].items():
        add(name.replace("_", " "), r)
    for n, r in doc.get("set_size", {}).items():
        add(f"set of {n}", r)
    sp = doc["canon_spread"]
    t.caption = (f"canonical depth spread (std / relief): across photos {sp['photos']:.4f}, across identities "
                 f"{sp['identities']:.4f}; {doc['counts']['scored']} of {doc['counts']['photos']} photos scored")
    return t
