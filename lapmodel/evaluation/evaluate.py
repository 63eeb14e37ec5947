"""Evaluate a model on shards: SIDE / MAD against ground-truth depth (Unsup3D protocol), SSIM of the re-render,
depth correlation, identity cosine between input and re-render, and quality as a function of the set size.

Protocol per view (see `lapmodel.evaluation.metrics`): prediction = the model's depth *in the input's view*
(``Reconstruction.recon_depth``) and its mask ``recon_mask``; ground truth = the shard's view ``depth`` (NaN = no
surface) and ``mask``. Pixels = erode(gt mask) & erode(pred mask) (1 px, Unsup3D). Normals of both prediction and
ground truth come from their depth maps through the same function (`lapdata.geometry.camera.depth_to_normals`, as Unsup3D
derives its ground-truth normals), so conventions cannot disagree. SSIM and identity cosine compare the re-render
with the input on the face region (the eroded gt mask where the shard has one, else the predicted mask).
Views without ground-truth depth (real photos) still count for SSIM and identity cosine.

Baselines (``baselines=True``): ``flat`` = a constant depth (the median of the gt) on the gt mask, ``mean_face`` =
the other evaluated identities' average gt depth in the same nominal pose (``evaluation.baselines.MeanFace``: a
generic face, correctly posed; a model that does not beat it has not learned shape), ``gt`` = the gt depth itself (a
sanity check: SIDE = MAD = 0). ``canon_spread`` (eval.json): how much the predicted canonical depth varies across
identities and across views (``evaluation.baselines.canon_spread``; near 0 = one map for everyone).

Outputs in ``out_dir``: ``eval.json`` (all numbers), ``set_size.png`` + ``set_size.json`` (Fig. 7a of the paper:
metrics against N = 1..6 for set models), ``examples.png`` (input | re-render | normals and depth of prediction and
ground truth, `lapdata.core.pictures` colours).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from lapdata.core.errors import LapError
from lapdata.core import pictures
from lapmodel.evaluation import metrics
from lapmodel.evaluation.baselines import MeanFace, canon_spread
from lapmodel.evaluation.evalset import EvalSet, iter_evalsets, set_order
from lapmodel.models.model import Model
from lapmodel.models.outputs import Reconstruction
from lapmodel.viz.curves import Curve, curves_png

METRIC_KEYS = ("side", "mad", "ssim", "depth_corr", "id_cos")
METRIC_LABELS = {
    "side": "SIDE x1e-2",
    "mad": "MAD (deg)",
    "ssim": "SSIM",
    "depth_corr": "depth corr",
    "id_cos": "ID cosine",
}


# --------------------------------------------------------------------------------------------- per-view metrics


def _fill_nan(depth: Tensor, mask: Tensor) -> Tensor:
    """Replace depth outside ``mask`` (and NaN) by the largest valid depth of each image (a background plane)."""
    valid = mask & torch.isfinite(depth)
    big = torch.where(valid, depth, torch.full_like(depth, -math.inf)).flatten(1).amax(1)
    big = torch.where(torch.isfinite(big), big, torch.ones_like(big))
    return torch.where(valid, depth, big.view(-1, 1, 1).expand_as(depth))


def depth_metrics(pred_depth: Tensor, pred_mask: Tensor, gt_depth: Tensor, gt_mask: Tensor, fov_pred: float,
                  fov_gt: float, erode: int = 1) -> dict[str, Tensor]:
    """SIDE (raw, not x100), MAD (deg) and depth correlation per view: all (B, S, S) -> {name: (B,)} float64."""
    from lapdata.geometry.camera import depth_to_normals

    gt_valid = gt_mask & torch.isfinite(gt_depth)
    m = metrics.eval_mask(gt_valid, pred_mask > 0.5, erode)
    pd = _fill_nan(pred_depth.to(torch.float64), pred_mask > 0.5)
    gd = _fill_nan(gt_depth.to(torch.float64), gt_valid)
    n_pred = depth_to_normals(pd, fov_pred)
    n_gt = depth_to_normals(gd, fov_gt)
    return {
        "side": metrics.side(pd, gd, m),
        "mad": metrics.mad(n_pred, n_gt, m),
        "depth_corr": metrics.depth_correlation(pd, gd, m),
    }


def face_region(es_mask: Tensor, has_gt: Tensor, pred_mask: Tensor, erode: int = 1) -> Tensor:
    """Where SSIM is measured: the eroded gt mask where known, else the eroded predicted mask. (B, S, S) bool."""
    gt = metrics.erode_mask(es_mask, erode)
    pr = metrics.erode_mask(pred_mask > 0.5, erode)
    return torch.where(has_gt.view(-1, 1, 1), gt, pr)


class Embedder:
    """Identity embedder wrapper: ArcFace ONNX when a path is given, else dlib; None-safe (``error`` says why)."""

    def __init__(self, id_model: str | os.PathLike | None = None):
        self.fn: Callable | None = None
        self.name = "none"
        self.error: str | None = None
        try:
            from lapdata.faces import embed
        except ImportError as e:
            self.error = f"identity cosine skipped: lapdata.faces.embed unavailable ({e})"
            return
        try:
            self.fn = embed.ArcFaceEmbedder(id_model) if id_model else embed.DlibEmbedder()
            self.name = self.fn.name
        except LapError:
            raise
        except Exception as e:  # model files missing, dlib broken, ...
            self.error = f"identity cosine skipped: embedder failed to load ({type(e).__name__}: {e})"
            self.fn = None

    def cosine(self, a: Tensor, b: Tensor) -> Tensor | None:
        """Images (B, 3, S, S) x2 in [0, 1] -> (B,) cosine of their embeddings (None when unavailable)."""
        if self.fn is None:
            return None
        ua = [pictures.to_uint8(x) for x in a]
        ub = [pictures.to_uint8(x) for x in b]
        try:
            ea, eb = self.fn(ua), self.fn(ub)
        except Exception as e:
            self.error = f"identity cosine skipped: embedding failed ({type(e).__name__}: {e})"
            self.fn = None
            return None
        return metrics.identity_cosine(torch.as_tensor(np.asarray(ea)), torch.as_tensor(np.asarray(eb)))


def view_metrics(es: EvalSet, rec: Reconstruction, embedder: Embedder | None = None, erode: int = 1,
                 idx: Sequence[int] | None = None) -> dict[str, list[float]]:
    """All metrics for the views ``idx`` of ``es`` (default all) reconstructed as ``rec`` (same rows).

    Returns {metric: [value per view]}; NaN where a metric does not apply (no gt depth, no embedder).
    """
    sel = list(range(len(es.images))) if idx is None else list(idx)
    images, depth, mask, has = es.images[sel], es.depth[sel], es.mask[sel], es.has_gt[sel]
    b = len(sel)
    out = {k: [float("nan")] * b for k in METRIC_KEYS}
    rimg = rec.recon_image.detach().float().cpu().clamp(0, 1)
    rdepth = rec.recon_depth.detach().float().cpu()
    rmask = rec.recon_mask.detach().float().cpu()
    if has.any():
        g = has.nonzero().flatten()
        dm = depth_metrics(rdepth[g], rmask[g], depth[g], mask[g], rec.fov_deg, es.fov_deg or rec.fov_deg, erode)
        for k, v in dm.items():
            for j, gi in enumerate(g.tolist()):
                out[k][gi] = float(v[j])
    region = face_region(mask, has, rmask, erode)
    s = metrics.ssim(rimg, images, region)
    out["ssim"] = [float(x) for x in s]
    if embedder is not None:
        c = embedder.cosine(images, rimg)
        if c is not None:
            out["id_cos"] = [float(x) for x in c]
    return out


def baseline_metrics(es: EvalSet, kind: str, erode: int = 1, fov_deg: float = 10.0) -> dict[str, list[float]]:
    """Depth metrics of a baseline on the gt views: ``flat`` (constant = median gt depth) or ``gt`` (gt itself)."""
    out = {k: [] for k in METRIC_KEYS}
    g = es.has_gt.nonzero().flatten()
    if len(g) == 0:
        return out
    gt, m = es.depth[g], es.mask[g] & torch.isfinite(es.depth[g])
    if kind == "flat":
        med = torch.stack([gt[i][m[i]].median() if m[i].any() else torch.tensor(1.0) for i in range(len(g))])
        pred = med.view(-1, 1, 1).expand_as(gt).clone()
    elif kind == "gt":
        pred = gt.clone()
    else:
        raise ValueError(f"unknown baseline {kind!r}")
    fov = es.fov_deg or fov_deg
    dm = depth_metrics(pred, m.float(), gt, m, fov, fov, erode)
    for k, v in dm.items():
        out[k] = [float(x) for x in v]
    return out


def mean_face_metrics(mean_face: MeanFace, erode: int = 1, fov_deg: float = 10.0) -> dict[str, list[float]]:
    """Depth metrics of the mean-face baseline (``MeanFace.predictions``) on every view it covers."""
    pred, pmask, gt, gmask = mean_face.predictions()
    if len(pred) == 0:
        return {k: [] for k in METRIC_KEYS}
    dm = depth_metrics(pred, pmask.float(), torch.where(gmask, gt, torch.full_like(gt, math.nan)), gmask, fov_deg,
                       fov_deg, erode)
    return {k: [float(x) for x in dm[k]] if k in dm else [] for k in METRIC_KEYS}


EXAMPLE_COLUMNS = ("input", "re-render", "pred normal", "gt normal", "pred depth", "gt depth")


def example_row(es: EvalSet, rec: Reconstruction, i: int) -> list[Any]:
    """One row of examples.png: input, re-render, normals and depth (in the input's view) of prediction and ground
    truth on the evaluated pixels; None where the view has no ground truth."""
    from lapdata.geometry.camera import depth_to_normals

    pm = rec.recon_mask[i] > 0.5
    pd = _fill_nan(rec.recon_depth[i:i + 1].double(), pm[None])
    row = [es.images[i], rec.recon_image[i].clamp(0, 1)]
    pn = depth_to_normals(pd, rec.fov_deg)[0]
    if bool(es.has_gt[i]):
        gm = es.mask[i] & torch.isfinite(es.depth[i])
        m = metrics.eval_mask(gm[None], pm[None])[0]
        gn = depth_to_normals(_fill_nan(es.depth[i:i + 1].double(), gm[None]), es.fov_deg or rec.fov_deg)[0]
        return row + [pictures.normal_colors(pn, m), pictures.normal_colors(gn, m),
                      pictures.depth_colors(rec.recon_depth[i], m), pictures.depth_colors(es.depth[i], m)]
    return row + [pictures.normal_colors(pn, pm), None, pictures.depth_colors(rec.recon_depth[i], pm), None]


def summarize(values: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """{metric: per-view values} -> {metric: {mean, std, n}} over finite values; SIDE scaled x100 (x1e-2)."""
    res = {}
    for k in METRIC_KEYS:
        a = np.asarray(values.get(k, []), dtype=np.float64)
        a = a[np.isfinite(a)]
        if k == "side":
            a = a * metrics.SIDE_SCALE
        res[k] = {"mean": float(a.mean()) if len(a) else float("nan"), "std": float(a.std()) if len(a) else float("nan"),
                  "n": int(len(a))}
    return res


def _extend(acc: dict[str, list[float]], new: dict[str, list[float]]) -> None:
    for k, v in new.items():
        acc.setdefault(k, []).extend(v)


# --------------------------------------------------------------------------------------------- the run


@dataclass
class EvalResult:
    rows: dict[str, dict[str, dict[str, float]]]          # {"model" | "flat" | "gt": summary}
    set_size: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    keypoints: dict[str, Any] | None = None               # the real-photo keypoint protocol (evaluation.photos)
    canon_spread: dict[str, float] = field(default_factory=dict)  # {"identities", "views"}: evaluation.baselines


def evaluate_model(
    model: Model,
    evalsets: Iterable[EvalSet],
    out_dir: str | os.PathLike,
    *,
    set_sizes: Sequence[int] = (),
    baselines: bool = False,
    id_model: str | os.PathLike | None = None,
    identity: bool = True,
    erode: int = 1,
    batch_size: int = 32,
    examples: int = 8,
    progress: bool = True,
) -> EvalResult:
    """Evaluate ``model`` (anything with ``reconstruct(images[, as_set])``) on EvalSets; writes results to out_dir.

    Single-image metrics: every view reconstructed on its own (batched). Set-size curve (models whose reconstruct
    takes ``as_set``): for each N in ``set_sizes``, N views of an identity (the first N of `set_order`) are
    reconstructed together and scored on those N views; the same identities (those with >= max(N) views) serve every N.
    """
    from lapmodel.inference.reconstruct import run_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    embedder = Embedder(id_model) if identity else None
    if embedder is not None and embedder.error:
        notes.append(embedder.error)
    accepts_sets = model.accepts_sets
    set_sizes = sorted({int(n) for n in set_sizes if int(n) >= 1})
    if set_sizes and not accepts_sets:
        notes.append("set-size curve skipped: the model reconstructs single images (no as_set)")
        set_sizes = []
    vals: dict[str, list[float]] = {}
    base: dict[str, dict[str, list[float]]] = {"flat": {}, "gt": {}}
    mean_face = MeanFace()
    canon_ids: list[Tensor] = []  # per identity: its views' mean canonical depth
    canon_views: list[Tensor] = []  # up to 4 views per identity
    per_id_curve: list[tuple[int, dict[int, dict[str, list[float]]]]] = []  # (views of the identity, {N: metrics})
    ex_rows: list[list[Any]] = []
    counts = {"identities": 0, "views": 0, "views_with_gt": 0}

    it: Iterable = evalsets
    if progress:
        from tqdm import tqdm

        it = tqdm(evalsets, desc="evaluate", unit="identity", disable=None)
    for es in it:
        counts["identities"] += 1
        counts["views"] += len(es.images)
        counts["views_with_gt"] += int(es.has_gt.sum())
        rec = run_model(model, es.images, batch_size=batch_size)
        _extend(vals, view_metrics(es, rec, embedder, erode))
        canon_ids.append(rec.canon_depth.mean(0))
        canon_views.extend(rec.canon_depth[:4])
        if baselines:
            for kind in ("flat", "gt"):
                _extend(base[kind], baseline_metrics(es, kind, erode, rec.fov_deg))
            g = es.has_gt.nonzero().flatten().tolist()
            if es.poses is not None and g and all(es.poses[i] is not None for i in g):
                mean_face.add(counts["identities"], [round(es.poses[i][0], 1) for i in g], es.depth[g], es.mask[g])
        if set_sizes:
            mine: dict[int, dict[str, list[float]]] = {}
            order = set_order(es.identity, len(es.images))
            for n in set_sizes:
                if len(es.images) < n:
                    continue
                idx = order[:n]
                srec = run_model(model, es.images[idx], as_set=True)
                mine[n] = view_metrics(es, srec, embedder, erode, idx)
            per_id_curve.append((len(es.images), mine))
        if len(ex_rows) < examples:
            # views spread over the identity's poses, shown with normals and depth of prediction and ground truth
            n_ex = min(len(es.images), examples - len(ex_rows), max(1, examples // 2))
            for i in np.linspace(0, len(es.images) - 1, n_ex).round().astype(int).tolist():
                ex_rows.append(example_row(es, rec, i))
    if counts["views"] == 0:
        raise LapError("no samples in the shards")
    if counts["views_with_gt"] == 0:
        notes.append("no view carries ground-truth depth: SIDE / MAD / depth correlation are not computed")
    if embedder is not None and embedder.error and embedder.error not in notes:
        notes.append(embedder.error)

    rows = {"model": summarize(vals)}
    if baselines:
        rows["flat"] = summarize(base["flat"])
        rows["mean_face"] = summarize(mean_face_metrics(mean_face, erode, fov_deg=es.fov_deg or rec.fov_deg))
        rows["gt"] = summarize(base["gt"])
    # the curve uses the same identities for every N: those with >= max(N) views (else each N its own, noted)
    curve: dict[int, dict[str, list[float]]] = {n: {} for n in set_sizes}
    if set_sizes:
        full = [m for k, m in per_id_curve if k >= set_sizes[-1]]
        if full:
            for m in full:
                for n in set_sizes:
                    _extend(curve[n], m[n])
        else:
            notes.append(f"set-size curve: no identity has {set_sizes[-1]} views; each N uses the identities "
                         "with at least N views")
            for _, m in per_id_curve:
                for n, v in m.items():
                    _extend(curve[n], v)
    set_res = {n: summarize(curve[n]) for n in set_sizes}
    for n in set_sizes:
        set_res[n]["sets"] = {"n": len(curve[n].get("ssim", [])) // n}  # identities with >= N views
    spread = {"identities": canon_spread(torch.stack(canon_ids)), "views": canon_spread(torch.stack(canon_views))}
    result = EvalResult(rows=rows, set_size=set_res, notes=notes, counts=counts, canon_spread=spread)

    doc = {
        "counts": counts,
        "protocol": {"erode_px": erode, "side_scale": "x1e-2 (SIDE * 100)", "mad_unit": "degrees",
                     "depth": "predicted view depth vs gt view depth on erode(gt mask) & erode(pred mask)",
                     "normals": "both from depth via lapdata.geometry.camera.depth_to_normals",
                     "ssim_region": "eroded gt mask (pred mask where no gt)",
                     "identity": embedder.name if embedder is not None else "off"},
        "rows": rows,
        "canon_spread": spread,
        "set_size": {str(n): v for n, v in set_res.items()},
        "notes": notes,
    }
    _write_json(out / "eval.json", doc)
    if set_sizes:
        _write_json(out / "set_size.json", doc["set_size"])
        plot_set_size(set_res, out / "set_size.png")
    if ex_rows:
        grid = pictures.image_grid(ex_rows, col_labels=EXAMPLE_COLUMNS, cell=max(96, es.images.shape[-1]))
        pictures.save_png(out / "examples.png", grid)
    return result


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=float))
    os.replace(tmp, path)


def plot_set_size(set_res: dict[int, dict[str, dict[str, float]]], path: str | os.PathLike) -> Path | None:
    """Metrics against the set size N (the paper's Fig. 7a): one panel per metric that has values, mean +- std."""
    ns = sorted(set_res)
    panels = {METRIC_LABELS[k]: [Curve("", ns, [set_res[n][k]["mean"] for n in ns],
                                       yerr=[set_res[n][k]["std"] for n in ns], fmt="o-")]
              for k in METRIC_KEYS if any(set_res[n][k]["n"] > 0 for n in ns)}
    return curves_png(path, panels, xlabel="images in the set (N)", title="Quality against set size",
                      xticks=ns, legend=False, width=3.2, height=3.0, dpi=110)


def format_table(result: EvalResult, title: str = "evaluation"):
    """A rich Table of the rows (model and baselines) and the set-size curve."""
    from rich.table import Table

    t = Table(title=title)
    t.add_column("method")
    for k in METRIC_KEYS:
        t.add_column(METRIC_LABELS[k], justify="right")
    t.add_column("views", justify="right")

    def cells(summ: dict[str, dict[str, float]]) -> list[str]:
        c = []
        for k in METRIC_KEYS:
            s = summ[k]
            c.append("-" if s["n"] == 0 else f"{s['mean']:.3f}±{s['std']:.3f}")
        return c + [str(max(summ[k]["n"] for k in METRIC_KEYS))]

    for name, summ in result.rows.items():
        if name != "model" and all(summ[k]["n"] == 0 for k in METRIC_KEYS):
            continue  # a baseline with nothing to compare (no gt depth in the shards)
        t.add_row(name, *cells(summ))
    for n, summ in sorted(result.set_size.items()):
        t.add_row(f"set N={n}", *cells(summ))
    return t


@dataclass(frozen=True)
class EvaluateConfig:
    """What `lapmodel evaluate` does; its command-line options derive from these fields."""

    checkpoint: str | None = None        # model checkpoint (.pt) or a published .pth; default: the packaged model
    out: str = "evaluation"              # output folder (eval.json, set_size.png, examples.png, keypoints.csv)
    shards: tuple[str, ...] = ()         # shards with ground-truth depth: paths, brace patterns, globs or a dataset folder
    keypoints: str | None = None         # real photos with 3D keypoints: a keypoints3d .npz, an AFLW2000-3D or 3DFAW folder
    photo_root: str | None = None        # folder the .npz's photo paths are relative to (default: the .npz's folder)
    identities: tuple[str, ...] = ()     # keypoints: score only these identities (e.g. held-out ones; default all)
    max_per_identity: int | None = None  # keypoints: at most this many photos per identity (evenly spaced)
    aligned: bool | None = None          # keypoints: photos are aligned crops / to detect (default: square = crop)
    set_sizes: tuple[int, ...] = ()      # set sizes of the set-size curve, e.g. 1,2,3,4,5,6 (LAP models)
    baselines: bool = False              # shards: add the flat-depth baseline and the ground-truth reference
    id_model: str | None = None          # ArcFace .onnx for the identity cosine (default: dlib 128-D)
    identity: bool = True                # compute the identity cosine between input and re-render
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    size: int | None = None              # image side (default: the model's)
    max_identities: int | None = None    # stop after this many identity samples
    batch_size: int = 32                 # images per model call
    erode: int = 1                       # pixels eroded from the gt and predicted masks (Unsup3D: 1)

    def __post_init__(self) -> None:
        for name in ("shards", "identities"):
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, (getattr(self, name),))
        if self.batch_size < 1 or self.erode < 0 or any(n < 1 for n in self.set_sizes) \
                or (self.size is not None and self.size < 8) or (self.max_identities is not None
                                                                  and self.max_identities < 1) \
                or (self.max_per_identity is not None and self.max_per_identity < 1):
            raise LapError(f"evaluate: batch_size must be >= 1 (got {self.batch_size}), erode >= 0 ({self.erode}), "
                           f"set sizes >= 1 ({list(self.set_sizes)}), size >= 8 ({self.size}), max_identities >= 1 "
                           f"({self.max_identities}), max_per_identity >= 1 ({self.max_per_identity})")
        if not self.shards and not self.keypoints:
            raise LapError("evaluate: give --shards (ground-truth depth) and/or --keypoints (real photos with 3D "
                           "keypoints)")


def evaluate_checkpoint(cfg: EvaluateConfig, *, model: Model | None = None, progress: bool = True) -> EvalResult:
    """The `lapmodel evaluate` command's work: load the checkpoint, evaluate on the shards and / or the keypoint
    photos, write ``eval.json`` (the keypoint protocol under its ``keypoints`` key), return.

    ``model``: evaluate this model instead of loading ``cfg.checkpoint`` (tests, benchmarks)."""
    from lapdata.core.device import resolve_device

    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise LapError(f"{cfg.out}: --out is a file, not a folder")
    if cfg.id_model is not None and not Path(cfg.id_model).is_file():
        raise LapError(f"{cfg.id_model}: identity model (ArcFace ONNX) not found")
    kps = None
    if cfg.keypoints:  # read (and refuse) the keypoints before any model work
        from lapmodel.evaluation.keypoints import read_keypoints, select

        kps = select(read_keypoints(cfg.keypoints, cfg.photo_root), cfg.identities, (), cfg.max_per_identity)
    if model is None:
        from lapmodel.io.checkpoint import load_model
        from lapmodel.io.pretrained import resolve_checkpoint

        # LapError naming the file when missing or not a checkpoint
        model = load_model(resolve_checkpoint(cfg.checkpoint), device=resolve_device(cfg.device))
    s = cfg.size or model.image_size
    result = EvalResult(rows={})
    if cfg.shards:
        sets = iter_evalsets(list(cfg.shards), s, max_identities=cfg.max_identities)
        result = evaluate_model(model, sets, cfg.out, set_sizes=cfg.set_sizes, baselines=cfg.baselines,
                                id_model=cfg.id_model, identity=cfg.identity, erode=cfg.erode,
                                batch_size=cfg.batch_size, progress=progress)
    if kps is not None:
        from lapmodel.evaluation.photos import evaluate_photos

        result.keypoints = evaluate_photos(model, kps, cfg.out, size=s, aligned=cfg.aligned, set_sizes=cfg.set_sizes,
                                           batch_size=cfg.batch_size)
        path = Path(cfg.out) / "eval.json"
        doc = json.loads(path.read_text()) if cfg.shards and path.is_file() else {}
        _write_json(path, {**doc, "keypoints": result.keypoints})
    return result
