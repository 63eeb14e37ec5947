"""``lapdata build-synthetic``: multi-pose identity sets -> identity-grouped shards + manifests (like ``lapdata ingest``).

How a run goes:

1. Everything the run needs is checked first (backend files, generator/boundary shapes, pipeline folder, identity
   model): a bad input is one LapError before any work.
2. Identity ``i`` is named ``{backend}-s{seed}-{i:06d}``; its random stream is ``identity_seed(seed, i)`` (so the
   output is deterministic from ``--seed`` and independent of workers/parts); its split comes from
   ``lapdata.dataset.split.split_of(name, seed)`` (train/val/test by identity).
3. ``lapdata.dataset.writer.plan_shards`` groups identities into shards; ``write_dataset`` renders the unfinished ones
   (resume), in ``workers`` processes, for part ``I/N``.
4. Per identity: sample the identity, 15 poses (yaws evenly over ``yaw_range``, small pitch/roll jitter for the 3D
   backends), render the views; a backend that declares a ``framing`` (stylegan: FFHQ; diffusers) has each view
   detected and aligned to the lap framing, like an ingested photo (``lapdata.synthetic.framing``: ``det_model``
   or dlib; a view without a face is an error row, reason no_face); then the paper's identity filter: embed every view and drop those whose cosine to
   the frontal view is below the threshold (ArcFace 0.6 with ``--id-model``; dlib with its calibrated threshold
   otherwise; ``none`` disables). Dropped views are PHOTOS rows with status skipped, reason id_similarity and
   their id_score; failures of an identity are error rows (the run goes on).
5. Ground truth of the 3D backends goes into the shards (``View(depth, canon_depth, normal, mask)``: 16-bit PNG
   depth, see ``lapdata.dataset.sample``); pose, light, expression and landmarks into the view metadata (and PHOTOS
   yaw/pitch/roll); identity coefficients and appearance into the sample metadata.
6. ``DIR/contact_sheet.png``: a few identities across their poses (and their depth maps for 3D backends).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lapdata.core.errors import LapError
from lapdata.faces.align import MAX_CROP_SIZE
from lapdata.core.locks import writer_lock
from lapdata.dataset.sample import IdentitySample, View, encode_image, sample_key
from lapdata.dataset.schema import STATUS_ERROR, STATUS_OK, STATUS_SKIPPED

from lapdata.core.device import resolve_device
from lapdata.core.engine import EngineConfig, engine_of

from lapdata.synthetic.base import Backend, Pose, default_poses, identity_seed
from lapdata.synthetic.framing import FramedView, ViewFramer, make_framer
from lapdata.synthetic.frontal import IdentityFilter, filter_views
from lapdata.synthetic.sheet import write_contact_sheet

BACKENDS = ("procedural", "ict", "stylegan", "diffusers")
REASON_ID = "id_similarity"


@dataclass(frozen=True)
class SynthConfig(EngineConfig):
    backend: Literal["procedural", "ict", "stylegan", "diffusers"] = "procedural"  # procedural needs no files
    out: str = ""                       # output dataset folder (rerun the same command to resume)
    identities: int = 100               # number of identities
    poses: int = 15                     # views per identity (yaws evenly over --yaw-range)
    size: int = 256                     # image side in pixels
    yaw_range: tuple[float, float] = (-45.0, 45.0)  # LO,HI yaw in degrees (inside the model's +-60 range)
    pitch_jitter: float = 5.0           # 3D backends: uniform +- pitch degrees per view
    roll_jitter: float = 3.0            # 3D backends: uniform +- roll degrees per view
    seed: int = 0                       # run seed (identity i uses a seed derived from (seed, i)); also the split seed
    fractions: tuple[float, float, float] = (0.75, 0.125, 0.125)  # train,val,test fractions of the identities
    samples_per_shard: int = 64         # identities per shard
    workers: int = 1                    # worker processes (local engine; Ray uses the cluster's CPUs)
    part: tuple[int, int] = (0, 1)      # build part I/N (disjoint, deterministic); join the parts with lapdata merge
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    image_ext: Literal["jpg", "png"] = "jpg"  # image format of the views
    quality: int = 95                   # JPEG quality
    # identity filter
    id_filter: Literal["auto", "dlib", "arcface", "none"] = "auto"  # auto: arcface with --id-model, else dlib
    id_model: str = ""                  # ArcFace recognition .onnx (threshold 0.6)
    id_threshold: float = 0.0           # cosine-to-frontal threshold (0: the embedder's default)
    # 3D backends
    ssaa: int = 1                       # 3D backends: supersampling factor (anti-aliasing)
    expression_scale: float = 1.0       # 3D backends: scale of the mild per-view expressions (0: neutral)
    light: Literal["random", "frontal"] = "random"  # 3D backends: lighting
    background: Literal["random", "gray"] = "random"  # 3D backends: random (a new one per view) | gray
    iod: float = 0.0                    # 3D backends: inter-ocular distance / side (0: lapdata.faces.align' template)
    eye_y: float = 0.0                  # 3D backends: eye line / side from the top (0: lapdata.faces.align' template)
    fov_deg: float = 10.0               # 3D backends: camera field of view in degrees
    model: str = ""                     # ict: the ICT-FaceKit FaceXModel folder (or its .tar.xz)
    # stylegan
    generator: str = ""                 # stylegan: generator as published (rosinality .pt, NVlabs .pkl, InterfaceGAN .pth), TorchScript
    mapping: str = ""                   # stylegan: TorchScript mapping (z -> w) of a TorchScript generator, optional
    pose_boundary: str = ""             # stylegan: InterfaceGAN pose boundary .npy
    boundary_space: Literal["auto", "z", "w", "wp"] = "auto"  # stylegan: boundary latent space (auto: from its name)
    latent_dim: int = 0                 # stylegan: z size of a TorchScript mapping (0: its z_dim, else the boundary's)
    yaw_scale: float = 0.05             # stylegan: boundary distance per degree of yaw
    # stylegan and diffusers: each view is detected and aligned to the lap framing (lapdata.synthetic.framing)
    det_model: str = ""                 # stylegan/diffusers: insightface SCRFD .onnx that finds the faces (default: dlib)
    truncation: float = 0.7             # stylegan: psi, after the edit, with the model's w_avg (1: none)
    truncation_layers: int = 8          # stylegan: layers of w+ truncated (InterfaceGAN's 8)
    # diffusers
    pipeline: str = ""                  # diffusers: local pipeline folder (save_pretrained)
    prompt: str = "a studio portrait photo of a person's face, neutral background, sharp focus"  # diffusers
    steps: int = 25                     # diffusers: inference steps
    guidance: float = 5.0               # diffusers: classifier-free guidance scale
    condition: Literal["normal", "depth"] = "normal"  # diffusers: conditioning maps
    # output extras
    contact_identities: int = 6         # identities on the contact sheet
    progress: bool = True               # progress bar (only on a terminal)


# ------------------------------------------------------------------------------------------------ construction


def _framing(cfg: SynthConfig) -> dict[str, float]:
    """The 3D backends' framing (iod, eye_y), validated; lapdata.faces.align' alignment template where 0."""
    from lapdata.faces.align import DEFAULT_EYE_Y, DEFAULT_IOD

    iod, eye_y = cfg.iod or DEFAULT_IOD, cfg.eye_y or DEFAULT_EYE_Y
    if not (0.05 <= iod <= 0.8 and 0.05 <= eye_y <= 0.8):
        raise LapError(f"framing: need 0.05 <= iod, eye_y <= 0.8 (fractions of the side), got iod={iod}, eye_y={eye_y}")
    return {"iod": float(iod), "eye_y": float(eye_y)}


def make_backend(cfg: SynthConfig, cache_dir: str | Path | None = None) -> Backend:
    """The configured backend, validated (files, shapes) before any work."""
    dev = str(resolve_device(cfg.device))
    if cfg.light not in ("random", "frontal"):
        raise LapError(f"light must be random or frontal, got {cfg.light!r}")
    if cfg.background not in ("random", "gray"):
        raise LapError(f"background must be random or gray, got {cfg.background!r}")
    frame = _framing(cfg)
    if cfg.backend == "procedural":
        from lapdata.synthetic.procedural import ProceduralBackend, ProceduralConfig

        return ProceduralBackend(ProceduralConfig(fov_deg=cfg.fov_deg, ssaa=cfg.ssaa, light=cfg.light,
                                                  expression_scale=cfg.expression_scale, device=dev,
                                                  background=cfg.background, **frame))
    if cfg.backend == "ict":
        from lapdata.synthetic.ict import ICTBackend, ICTConfig

        if not cfg.model:
            raise LapError("--backend ict needs --model DIR (the ICT-FaceKit FaceXModel folder, or its .tar.xz)")
        return ICTBackend(cfg.model, ICTConfig(fov_deg=cfg.fov_deg, ssaa=cfg.ssaa, light=cfg.light,
                                               expression_scale=cfg.expression_scale, device=dev,
                                               background=cfg.background, **frame),
                          cache_dir=cache_dir, progress=cfg.progress)
    if cfg.backend == "stylegan":
        from lapdata.synthetic.stylegan import StyleGANBackend, StyleGANConfig

        return StyleGANBackend(StyleGANConfig(generator=cfg.generator, mapping=cfg.mapping,
                                              boundary=cfg.pose_boundary, boundary_space=cfg.boundary_space,
                                              latent_dim=cfg.latent_dim, yaw_scale=cfg.yaw_scale,
                                              truncation=cfg.truncation, truncation_layers=cfg.truncation_layers,
                                              device=dev))
    if cfg.backend == "diffusers":
        from lapdata.synthetic.diffusers_backend import DiffusersBackend, DiffusersConfig

        cond = make_backend(SynthConfig(**{**_asdict(cfg), "backend": "ict" if cfg.model else "procedural",
                                           "light": "frontal", "expression_scale": 0.0}), cache_dir)
        return DiffusersBackend(DiffusersConfig(pipeline=cfg.pipeline, prompt=cfg.prompt, steps=cfg.steps,
                                                guidance=cfg.guidance, condition=cfg.condition, device=dev), cond)
    raise LapError(f"unknown backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}")


def _asdict(cfg: SynthConfig) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def make_filter(cfg: SynthConfig) -> IdentityFilter | None:
    kind = cfg.id_filter
    if kind == "auto":
        kind = "arcface" if cfg.id_model else "dlib"
    if kind == "none":
        return None
    if kind == "arcface":
        if not cfg.id_model:
            raise LapError("--id-filter arcface needs --id-model FILE.onnx (an insightface recognition model)")
        from lapdata.faces.embed import ArcFaceEmbedder

        emb = ArcFaceEmbedder(cfg.id_model)
        return IdentityFilter(emb, cfg.id_threshold or emb.default_threshold, f"arcface:{Path(cfg.id_model).name}")
    if kind == "dlib":
        from lapdata.faces.embed import DlibEmbedder

        emb = DlibEmbedder()
        return IdentityFilter(emb, cfg.id_threshold or emb.default_threshold, "dlib")
    raise LapError(f"--id-filter must be auto, dlib, arcface or none, got {cfg.id_filter!r}")


def check_config(cfg: SynthConfig) -> None:
    if not cfg.out:
        raise LapError("--out DIR is required")
    if cfg.identities < 1:
        raise LapError(f"--identities must be >= 1, got {cfg.identities}")
    if cfg.poses < 1:
        raise LapError(f"--poses must be >= 1, got {cfg.poses}")
    if not 16 <= cfg.size <= MAX_CROP_SIZE:
        raise LapError(f"--size must be in 16..{MAX_CROP_SIZE}, got {cfg.size}")
    lo, hi = cfg.yaw_range
    if not (-90 <= lo <= hi <= 90):
        raise LapError(f"--yaw-range must be LO,HI with -90 <= LO <= HI <= 90, got {lo},{hi}")
    if cfg.ssaa < 1 or cfg.ssaa > 4:
        raise LapError(f"--ssaa must be 1..4, got {cfg.ssaa}")
    if cfg.image_ext not in ("jpg", "png"):
        raise LapError(f"image format must be jpg or png, got {cfg.image_ext!r}")
    if cfg.samples_per_shard < 1:
        raise LapError("--samples-per-shard must be >= 1")
    i, n = cfg.part
    checks = [(cfg.workers >= 1, f"--workers {cfg.workers}: must be >= 1"),
              (0 <= i < n, f"--part {i}/{n}: need 0 <= I < N"),
              (1 <= cfg.quality <= 100, f"--quality {cfg.quality}: must be in 1..100"),
              (-1.0 <= cfg.id_threshold <= 1.0, f"--id-threshold {cfg.id_threshold}: a cosine, must be in [-1, 1]"),
              (0 <= cfg.pitch_jitter <= 90 and 0 <= cfg.roll_jitter <= 90,
               f"--pitch-jitter/--roll-jitter {cfg.pitch_jitter}/{cfg.roll_jitter}: degrees, must be in 0..90"),
              (0 < cfg.fov_deg < 120, f"--fov-deg {cfg.fov_deg}: must be in (0, 120) degrees"),
              (cfg.expression_scale >= 0, f"--expression-scale {cfg.expression_scale}: must be >= 0"),
              (cfg.contact_identities >= 0, f"--contact-identities {cfg.contact_identities}: must be >= 0"),
              (cfg.steps >= 1 and cfg.guidance >= 0, f"--steps {cfg.steps} / --guidance {cfg.guidance}: need "
                                                     f"steps >= 1 and guidance >= 0"),
              (cfg.latent_dim >= 0, f"--latent-dim {cfg.latent_dim}: must be >= 0")]
    for ok, msg in checks:
        if not ok:
            raise LapError(msg)


def identity_name(cfg: SynthConfig, i: int) -> str:
    return f"{cfg.backend}-s{cfg.seed}-{i:06d}"


# ------------------------------------------------------------------------------------------------ one identity


def identity_poses(cfg: SynthConfig, backend: Backend, rng: np.random.Generator) -> list[Pose]:
    geo = backend.has_geometry
    return default_poses(cfg.poses, cfg.yaw_range, rng, cfg.pitch_jitter if geo else 0.0, cfg.roll_jitter if geo else 0.0)


def _round(x: Any, nd: int = 4) -> Any:
    if x is None:
        return None
    return np.round(np.asarray(x, np.float64), nd).tolist()


def render_identity(
    cfg: SynthConfig, backend: Backend, filt: IdentityFilter | None, identity: str, split: str, index: int,
    framer: ViewFramer | None = None,
) -> tuple[IdentitySample | None, list[dict]]:
    """Render, frame (``framer``: backends that declare a framing), filter and package one identity -> (sample or
    None when nothing is kept, PHOTOS rows)."""
    seed = identity_seed(cfg.seed, index)
    rng = np.random.default_rng(seed)
    source = f"synthetic:{cfg.backend}"
    base_row = {"identity": identity, "split": split, "source": source, "orig_width": cfg.size,
                "orig_height": cfg.size, "size": cfg.size, "num_faces": 1, "crop_rule": "synthetic:lap-frame"}
    path = f"{cfg.backend}:seed={cfg.seed}:identity={index}:view={{}}"
    poses: list[Pose] = []
    try:
        params = backend.sample_identity(rng)
        poses = identity_poses(cfg, backend, rng)
        views = backend.render_views(params, poses, framer.render_size if framer else cfg.size, rng)
        if len(views) != len(poses):
            raise RuntimeError(f"backend returned {len(views)} views for {len(poses)} poses")
    except Exception as e:  # noqa: BLE001 - a bad identity is data, the run goes on
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        n = max(len(poses), cfg.poses)
        return None, [{**base_row, "photo_id": f"{identity}-{k:02d}", "path": path.format(k), "status": STATUS_ERROR,
                       "error": msg} for k in range(n)]
    framed = [framer(v) for v in views] if framer else [None] * len(views)
    ok = [k for k, f in enumerate(framed) if not isinstance(f, str)]
    written = [f.view if isinstance(f, FramedView) else v for v, f in zip(views, framed)]
    if ok:
        embedded = [f.source if isinstance(f, FramedView) else v for v, f in zip(views, framed)]
        front, keep, sims, id_model = filter_views(filt, embedded, poses, ok)
    rows, kept = [], []
    for k, (v, p, f) in enumerate(zip(written, poses, framed)):
        pid = f"{identity}-{k:02d}"
        if isinstance(f, str):  # no face found on a generated view (or its crop failed): a counted error row
            rows.append({**base_row, "photo_id": pid, "path": path.format(k), "status": STATUS_ERROR,
                         "reason": f.split(":")[0], "error": f, "num_faces": 0 if f.startswith("no_face") else None,
                         "orig_width": framer.render_size,
                         "orig_height": framer.render_size, "yaw": v.pose.yaw, "pitch": v.pose.pitch,
                         "roll": v.pose.roll})
            continue
        data = encode_image(v.image, cfg.image_ext, cfg.quality)
        score = None if not np.isfinite(sims[k]) else float(sims[k])
        row = {**base_row, "photo_id": pid, "path": path.format(k), "sha256": hashlib.sha256(data).hexdigest(),
               "yaw": v.pose.yaw, "pitch": v.pose.pitch, "roll": v.pose.roll, "id_score": score,
               "id_model": id_model, "crop_rule": f"synthetic:{cfg.backend}:lap-frame,fov={cfg.fov_deg:g}",
               "landmarks": None if v.landmarks is None else np.asarray(v.landmarks, np.float32).reshape(-1).tolist(),
               **(f.row if isinstance(f, FramedView) else {})}
        if keep[k]:
            row["status"] = STATUS_OK
            meta = {"photo_id": pid, "pose": v.pose.as_list(), "view_index_in_identity": k, "frontal": k == front,
                    "id_score": score, "light": _round(v.light), "expression": _round(v.expression),
                    "landmarks": _round(v.landmarks, 2), "fov_deg": cfg.fov_deg, **v.meta,
                    **(f.meta if isinstance(f, FramedView) else {})}
            kept.append(View(image=None, encoded=(cfg.image_ext, data), meta=meta, depth=v.depth,
                             canon_depth=v.canon_depth, normal=v.normal, mask=v.mask))
        else:
            row.update(status=STATUS_SKIPPED, reason=REASON_ID)
        rows.append(row)
    if not kept:
        return None, rows
    smeta = {"source": source, "backend": cfg.backend, "seed": cfg.seed, "identity_index": index,
             "identity_seed": seed, "params_seed": params.seed, "coeffs": params.coeffs, "frontal_view": front,
             "num_poses": len(poses), "size": cfg.size}
    return IdentitySample(key=sample_key(identity), identity=identity, split=split, views=kept, meta=smeta), rows


def process_shard(task, *, cfg: SynthConfig, backend: Backend, filt: IdentityFilter | None,
                  framer: ViewFramer | None = None):
    """``lapdata.dataset.writer`` process function: render every identity of the shard."""
    import torch

    from lapdata.dataset.writer import ShardResult

    # one intra-op thread per worker: on a busy CPU, multi-threaded small ops get ~40x slower (spin-waits);
    # scale with --workers instead
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    res = ShardResult()
    for identity, index in task.items:
        sample, rows = render_identity(cfg, backend, filt, identity, task.split, int(index), framer)
        if sample is not None:
            res.samples.append(sample)
        res.rows.extend(rows)
    return res


# ------------------------------------------------------------------------------------------------ the run


def run_synthetic(cfg: SynthConfig, *, backend: Backend | None = None, filt: IdentityFilter | None | str = "config",
                  detector: Any = None) -> dict:
    """Build the dataset of ``cfg`` (resumable) -> the writer's stats (plus ``contact_sheet``).

    ``backend`` / ``filt`` / ``detector`` (the face detector of the views' framing) override the configured ones
    (tests use stand-ins)."""
    from lapdata.core import storage

    check_config(cfg)
    local = None if storage.is_url(cfg.out) else Path(cfg.out).expanduser()
    if local is not None and local.exists() and not local.is_dir():
        raise LapError(f"{local}: exists and is not a folder")
    with writer_lock(cfg.out, "lapdata build-synthetic"):  # one writer per output (lapdata.core.locks)
        return _run_synthetic(cfg, backend, filt, detector)


def _run_synthetic(cfg: SynthConfig, backend: Backend | None, filt: IdentityFilter | None | str, detector: Any) -> dict:
    from lapdata.core.config import to_dict
    from lapdata.dataset.split import split_of
    from lapdata.dataset.writer import WriteConfig, plan_shards, write_dataset

    from lapdata.core import staging, storage

    out = staging.mount(cfg.out) if storage.is_url(cfg.out) else Path(cfg.out).expanduser()
    if backend is None:
        backend = make_backend(cfg, cache_dir=out / "cache")
    if isinstance(filt, str):
        filt = make_filter(cfg)
    framer = make_framer(backend, cfg.size, cfg.det_model, detector)
    groups = []
    for i in range(cfg.identities):
        name = identity_name(cfg, i)
        groups.append((name, split_of(name, cfg.seed, cfg.fractions), i))
    tasks = plan_shards(groups, cfg.samples_per_shard)
    config = {"command": "build-synthetic", **to_dict(cfg), "backend_config": backend.describe(),
              "id_filter": None if filt is None else {"model": filt.name, "threshold": filt.threshold},
              "framing": None if framer is None else framer.describe()}
    process = functools.partial(process_shard, cfg=cfg, backend=backend, filt=filt, framer=framer)
    write = WriteConfig(workers=cfg.workers, part=cfg.part, config=json.loads(json.dumps(config, default=str)),
                        image_ext=cfg.image_ext, quality=cfg.quality, progress=cfg.progress, engine=engine_of(cfg),
                        model=True)
    stats = write_dataset(out, tasks, process, write)
    try:
        sheet = write_contact_sheet(out, cfg.contact_identities, cfg.poses)
        stats["contact_sheet"] = None if sheet is None else (storage.remote_of(sheet) or str(sheet))
    except Exception as e:  # noqa: BLE001 - a picture must not fail the run
        stats["contact_sheet"] = None
        stats["contact_sheet_error"] = f"{type(e).__name__}: {e}"
    staging.push_tree(out, skip=("cache/",))  # a dataset URL: the manifests and pictures (the shards are there)
    return stats


def summary_line(stats: dict, out: str | Path) -> str:
    """One line: views by status (skip reasons), identities by split, shards, contact sheet, failed shards."""
    sc, rc = stats.get("status_counts", {}), stats.get("reason_counts", {})
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(rc.items(), key=lambda kv: -kv[1]))
    line = (f"{stats.get('photos', 0)} views: {sc.get('ok', 0)} ok, {sc.get('skipped', 0)} skipped, "
            f"{sc.get('error', 0)} error" + (f" ({reasons})" if reasons else "") + "; "
            + f"{stats.get('identities_ok', 0)} identities ("
            + ", ".join(f"{k} {v}" for k, v in (stats.get("identities_by_split") or {}).items())
            + f") in {stats.get('shards', 0)} shards -> {out}")
    if stats.get("contact_sheet"):
        line += f"; contact sheet {stats['contact_sheet']}"
    failed = stats.get("failed") or []
    if failed:
        line += f"; {len(failed)} shards FAILED (rerun to retry): {failed[0]['shard']}: {failed[0]['error']}"
    return line
