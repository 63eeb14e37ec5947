"""Evaluate a model (`lapmodel evaluate`): on shards with ground-truth depth, the per-view scores of
`lapmodel.evaluation.scores` (SIDE / MAD, SSIM, depth correlation, identity cosine), their baselines and quality as
a function of the set size; on real photos with 3D keypoints, `lapmodel.evaluation.photos`.

Baselines (``baselines=True``): ``flat`` = a constant depth (the median of the gt) on the gt mask, ``mean_face`` =
the other evaluated identities' average gt depth in the same nominal pose (``evaluation.baselines.MeanFace``: a
generic face, correctly posed; a model that does not beat it has not learned shape), ``gt`` = the gt depth itself (a
sanity check: SIDE = MAD = 0). ``canon_spread`` (eval.json): how much the predicted canonical depth varies across
identities and across views (``evaluation.baselines.canon_spread``; near 0 = one map for everyone).

Outputs in ``out``: ``eval.json`` (all numbers; the keypoint protocol under ``keypoints``), ``set_size.png`` +
``set_size.json`` (Fig. 7a of the paper: metrics against N = 1..6 for set models), ``examples.png`` (input |
re-render | normals and depth of prediction and ground truth, `lapdata.core.pictures` colours).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from lapdata.core import pictures
from lapdata.core.errors import LapError
from lapmodel.evaluation import metrics
from lapmodel.evaluation.baselines import MeanFace, canon_spread
from lapmodel.evaluation.evalset import EvalSet, iter_evalsets, set_order
from lapmodel.evaluation.scores import (METRIC_KEYS, METRIC_LABELS, Embedder, baseline_metrics, fill_nan,
                                        mean_face_metrics, summarize, view_metrics)
from lapmodel.inference.reconstruct import run_model
from lapmodel.models.model import Model
from lapmodel.models.outputs import Reconstruction
from lapmodel.viz.curves import Curve, curves_png

EXAMPLE_COLUMNS = ("input", "re-render", "pred normal", "gt normal", "pred depth", "gt depth")


def example_row(es: EvalSet, rec: Reconstruction, i: int) -> list[Any]:
    """One row of examples.png: input, re-render, normals and depth (in the input's view) of prediction and ground
    truth on the evaluated pixels; None where the view has no ground truth."""
    from lapdata.geometry.camera import depth_to_normals

    pm = rec.recon_mask[i] > 0.5
    pd = fill_nan(rec.recon_depth[i:i + 1].double(), pm[None])
    row = [es.images[i], rec.recon_image[i].clamp(0, 1)]
    pn = depth_to_normals(pd, rec.fov_deg)[0]
    if bool(es.has_gt[i]):
        gm = es.mask[i] & torch.isfinite(es.depth[i])
        m = metrics.eval_mask(gm[None], pm[None])[0]
        gn = depth_to_normals(fill_nan(es.depth[i:i + 1].double(), gm[None]), es.fov_deg or rec.fov_deg)[0]
        return row + [pictures.normal_colors(pn, m), pictures.normal_colors(gn, m),
                      pictures.depth_colors(rec.recon_depth[i], m), pictures.depth_colors(es.depth[i], m)]
    return row + [pictures.normal_colors(pn, pm), None, pictures.depth_colors(rec.recon_depth[i], pm), None]


# --------------------------------------------------------------------------------------------- the run


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


@dataclass
class EvalResult:
    rows: dict[str, dict[str, dict[str, float]]]          # {"model" | "flat" | "gt": summary}
    set_size: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    keypoints: dict[str, Any] | None = None               # the real-photo keypoint protocol (evaluation.photos)
    canon_spread: dict[str, float] = field(default_factory=dict)  # {"identities", "views"}: evaluation.baselines


@dataclass
class _Tally:
    """What the evaluation gathers identity by identity (`_score_identity`)."""

    vals: dict[str, list[float]] = field(default_factory=dict)  # the model's scores: metric -> one value per view
    base: dict[str, dict[str, list[float]]] = field(default_factory=lambda: {"flat": {}, "gt": {}})
    mean_face: MeanFace = field(default_factory=MeanFace)
    canon_ids: list[Tensor] = field(default_factory=list)  # per identity: its views' mean canonical depth
    canon_views: list[Tensor] = field(default_factory=list)  # up to 4 views per identity
    per_id_curve: list[tuple[int, dict[int, dict[str, list[float]]]]] = field(default_factory=list)  # (views, {N: ..})
    ex_rows: list[list[Any]] = field(default_factory=list)  # rows of examples.png
    counts: dict[str, int] = field(default_factory=lambda: {"identities": 0, "views": 0, "views_with_gt": 0})
    fov_deg: float = 10.0  # the last identity's camera (the shards', else the model's): the mean face's
    side: int = 0          # the last identity's image side (examples.png's cells)


def evaluate_model(model: Model, evalsets: Iterable[EvalSet], cfg: EvaluateConfig, *, examples: int = 8,
                   progress: bool = True) -> EvalResult:
    """Evaluate ``model`` on EvalSets as ``cfg`` says (set sizes, baselines, identity embedder, erosion, batch
    size); writes eval.json, set_size.json / .png and examples.png into ``cfg.out``.

    Single-image metrics: every view reconstructed on its own (batched). Set-size curve (models that accept sets):
    for each N in ``cfg.set_sizes``, N views of an identity (the first N of `set_order`) are reconstructed together
    and scored on those N views; the same identities (those with >= max(N) views) serve every N.
    """
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    embedder = Embedder(cfg.id_model) if cfg.identity else None
    if embedder is not None and embedder.error:
        notes.append(embedder.error)
    set_sizes = sorted({int(n) for n in cfg.set_sizes if int(n) >= 1})
    if set_sizes and not model.accepts_sets:
        notes.append("set-size curve skipped: the model reconstructs single images (no as_set)")
        set_sizes = []
    tally = _Tally()
    it: Iterable = evalsets
    if progress:
        from tqdm import tqdm

        it = tqdm(evalsets, desc="evaluate", unit="identity", disable=None)
    for es in it:
        _score_identity(model, es, cfg, embedder, set_sizes, examples, tally)
    if tally.counts["views"] == 0:
        raise LapError("no samples in the shards")
    if tally.counts["views_with_gt"] == 0:
        notes.append("no view carries ground-truth depth: SIDE / MAD / depth correlation are not computed")
    if embedder is not None and embedder.error and embedder.error not in notes:
        notes.append(embedder.error)

    rows = {"model": summarize(tally.vals)}
    if cfg.baselines:
        rows["flat"] = summarize(tally.base["flat"])
        rows["mean_face"] = summarize(mean_face_metrics(tally.mean_face, cfg.erode, fov_deg=tally.fov_deg))
        rows["gt"] = summarize(tally.base["gt"])
    set_res = _set_size_summary(tally.per_id_curve, set_sizes, notes)
    spread = {"identities": canon_spread(torch.stack(tally.canon_ids)),
              "views": canon_spread(torch.stack(tally.canon_views))}
    result = EvalResult(rows=rows, set_size=set_res, notes=notes, counts=tally.counts, canon_spread=spread)
    _write_results(result, cfg, embedder, tally)
    return result


def _score_identity(model: Model, es: EvalSet, cfg: EvaluateConfig, embedder: Embedder | None,
                    set_sizes: Sequence[int], examples: int, tally: _Tally) -> None:
    """One identity: its views reconstructed one by one and scored, its baselines, its sets of each N, its example
    rows; all added to ``tally``."""
    counts = tally.counts
    counts["identities"] += 1
    counts["views"] += len(es.images)
    counts["views_with_gt"] += int(es.has_gt.sum())
    rec = run_model(model, es.images, batch_size=cfg.batch_size)
    _extend(tally.vals, view_metrics(es, rec, embedder, cfg.erode))
    tally.canon_ids.append(rec.canon_depth.mean(0))
    tally.canon_views.extend(rec.canon_depth[:4])
    tally.fov_deg, tally.side = es.fov_deg or rec.fov_deg, es.images.shape[-1]
    if cfg.baselines:
        for kind in ("flat", "gt"):
            _extend(tally.base[kind], baseline_metrics(es, kind, cfg.erode, rec.fov_deg))
        g = es.has_gt.nonzero().flatten().tolist()
        if es.poses is not None and g and all(es.poses[i] is not None for i in g):
            tally.mean_face.add(counts["identities"], [round(es.poses[i][0], 1) for i in g], es.depth[g], es.mask[g])
    if set_sizes:
        mine: dict[int, dict[str, list[float]]] = {}
        order = set_order(es.identity, len(es.images))
        for n in set_sizes:
            if len(es.images) >= n:
                srec = run_model(model, es.images[order[:n]], as_set=True)
                mine[n] = view_metrics(es, srec, embedder, cfg.erode, order[:n])
        tally.per_id_curve.append((len(es.images), mine))
    if len(tally.ex_rows) < examples:
        # views spread over the identity's poses, shown with normals and depth of prediction and ground truth
        n_ex = min(len(es.images), examples - len(tally.ex_rows), max(1, examples // 2))
        for i in np.linspace(0, len(es.images) - 1, n_ex).round().astype(int).tolist():
            tally.ex_rows.append(example_row(es, rec, i))


def _set_size_summary(per_id_curve: list[tuple[int, dict[int, dict[str, list[float]]]]], set_sizes: Sequence[int],
                      notes: list[str]) -> dict[int, dict[str, dict[str, float]]]:
    """{N: summary} of the set-size curve: the same identities for every N, those with >= max(N) views (else each N
    its own, noted)."""
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
    return set_res


def _write_results(result: EvalResult, cfg: EvaluateConfig, embedder: Embedder | None, tally: _Tally) -> None:
    """eval.json; set_size.json and set_size.png (with set sizes); examples.png (with example rows)."""
    out = Path(cfg.out)
    doc = {
        "counts": result.counts,
        "protocol": {"erode_px": cfg.erode, "side_scale": "x1e-2 (SIDE * 100)", "mad_unit": "degrees",
                     "depth": "predicted view depth vs gt view depth on erode(gt mask) & erode(pred mask)",
                     "normals": "both from depth via lapdata.geometry.camera.depth_to_normals",
                     "ssim_region": "eroded gt mask (pred mask where no gt)",
                     "identity": embedder.name if embedder is not None else "off"},
        "rows": result.rows,
        "canon_spread": result.canon_spread,
        "set_size": {str(n): v for n, v in result.set_size.items()},
        "notes": result.notes,
    }
    _write_json(out / "eval.json", doc)
    if result.set_size:
        _write_json(out / "set_size.json", doc["set_size"])
        plot_set_size(result.set_size, out / "set_size.png")
    if tally.ex_rows:
        grid = pictures.image_grid(tally.ex_rows, col_labels=EXAMPLE_COLUMNS, cell=max(96, tally.side))
        pictures.save_png(out / "examples.png", grid)


def _extend(acc: dict[str, list[float]], new: dict[str, list[float]]) -> None:
    for k, v in new.items():
        acc.setdefault(k, []).extend(v)


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
        result = evaluate_model(model, sets, cfg, progress=progress)
    if kps is not None:
        from lapmodel.evaluation.photos import evaluate_photos

        result.keypoints = evaluate_photos(model, kps, cfg.out, size=s, aligned=cfg.aligned, set_sizes=cfg.set_sizes,
                                           batch_size=cfg.batch_size)
        path = Path(cfg.out) / "eval.json"
        doc = json.loads(path.read_text()) if cfg.shards and path.is_file() else {}
        _write_json(path, {**doc, "keypoints": result.keypoints})
    return result
