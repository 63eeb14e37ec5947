"""The quality ladder: does lapmodel learn 3D? Each rung trains and evaluates exactly as a user would
(``lapdata build-synthetic`` -> ``lapmodel train`` -> ``lapmodel evaluate``) and prints a table and a final JSON line.

    python benchmarks/quality.py rung0                         # direct optimisation of a depth map through the renderer
    python benchmarks/quality.py rung1                         # overfit 4 identities (train = test), 32 px
    python benchmarks/quality.py rung2 --backend ict --size 64 # Unsup3D-re on held-out identities
    python benchmarks/quality.py rung3                         # LAP stage 1 vs Unsup3D-re at equal images seen
    python benchmarks/quality.py rung4                         # the three LAP stages and the Table 2 ablations (GPU budget)
    python benchmarks/quality.py rung5 --seed 1 --scale 0.3    # real photos: pipelines/photos.yaml, keypoint curves
    python benchmarks/quality.py rung2 --set model.lam_depth_sm=0   # any config override (an ablation of a deviation)

Every rung reports, for the model and for the flat baseline (a constant depth on the face), SIDE (x1e-2) and MAD
(degrees) on the evaluation identities, their ratio model / flat, the images seen in training and the CPU-seconds of
training (the process's own CPU time: the data loader runs in-process, ``--threads`` OpenMP threads). The published
anchor: Unsup3D on its BFM faces scores 0.29x flat in SIDE and 0.38x flat in MAD (0.793 / 16.51 against a constant
depth's 2.723 / 43.34); LAP 0.721 / 15.53.

Data go to ``--work`` (default ``.scratch/quality``) and are reused by later runs (build-synthetic resumes). The ICT
backend needs the ICT-FaceKit FaceXModel folder: ``--ict-model DIR`` or ``../shared/data/ict-facekit`` (unpacked
into the work folder). Curves of SIDE / MAD against images seen come from checkpoints kept every ``--eval-every``
steps and go to ``WORK/<run>/curve.json`` and ``curve.png``; pictures to ``WORK/<run>/eval*/examples.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lapdata.core.config import load_config  # noqa: E402
from lapdata.core.pictures import new_figure, save_figure  # noqa: E402
from lapdata.synthetic.build import SynthConfig, run_synthetic  # noqa: E402
from lapmodel.config import TrainConfig  # noqa: E402
from lapmodel.evaluation.evaluate import EvaluateConfig, evaluate_checkpoint  # noqa: E402
from lapmodel.training.train import train  # noqa: E402

ANCHOR = {"unsup3d": {"side": 0.793, "mad": 16.51}, "lap": {"side": 0.721, "mad": 15.53},
          "flat": {"side": 2.723, "mad": 43.34}}

# ------------------------------------------------------------------------------------------------ data


def ict_model(args) -> str:
    if args.ict_model:
        return args.ict_model
    tar = REPO.parent / "shared" / "data" / "ict-facekit" / "FaceXModel.tar.xz"
    dest = Path(args.work) / "ict"
    if not (dest / "FaceXModel").is_dir():
        if not tar.is_file():
            raise SystemExit("the ict backend needs --ict-model DIR (ICT-FaceKit's FaceXModel folder)")
        tmp = Path(tempfile.mkdtemp(dir=args.work, prefix=".ict-"))
        with tarfile.open(tar) as tf:  # unpacked aside, then renamed: a concurrent run never sees half a folder
            tf.extractall(tmp, filter="data")
        dest.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp / "FaceXModel", dest / "FaceXModel")
        except OSError:
            if not (dest / "FaceXModel").is_dir():
                raise
        shutil.rmtree(tmp, ignore_errors=True)
    return str(dest / "FaceXModel")


def dataset(args, backend: str, ids: int, size: int, seed: int = 0, poses: int = 15,
            fractions=(0.75, 0.125, 0.125)) -> Path:
    """Build (or reuse) a synthetic dataset; returns its folder."""
    out = Path(args.work) / f"data-{backend}-{ids}x{poses}-{size}px-s{seed}"
    cfg = SynthConfig(backend=backend, out=str(out), identities=ids, poses=poses, size=size, seed=seed,
                      yaw_range=tuple(args.yaw), fractions=fractions, id_filter="none", samples_per_shard=32,
                      device=args.device, image_ext="png", workers=args.data_workers, progress=False,
                      model=ict_model(args) if backend == "ict" else "")
    t = time.process_time()
    st = run_synthetic(cfg)
    if st.get("failed"):
        raise SystemExit(f"{out}: build-synthetic failed")
    print(f"data {out.name}: {st.get('num_ok', '?')} views ({time.process_time() - t:.0f} CPU-s in this process)")
    return out


def parsed(args, data: Path) -> Path:
    """A copy of ``data`` with RCL label maps (``lapdata parse-masks``, ground-truth parser): LAP's RCL reads them."""
    from lapdata.parsing.parse import ParseConfig, parse_masks

    out = data.with_name(data.name + "-parsed")
    stats = out / "stats.json"
    if stats.is_file() and "parse_masks" in (json.loads(stats.read_text()).get("config") or {}):
        return out
    if not out.exists():
        shutil.copytree(data, out)
    t = time.process_time()
    rep = parse_masks(out, ParseConfig(parser="ground-truth"), progress=False)
    if not rep.swapped:
        raise SystemExit(f"{out}: parse-masks failed ({rep.failed_shards or rep.audit_faults})")
    print(f"parse-masks {out.name}: {time.process_time() - t:.0f} CPU-s")
    return out


# ------------------------------------------------------------------------------------------------ train + eval


def train_run(args, name: str, config: str, shards: list[str], steps: int, batch: int, over: dict[str, Any],
              stage: str | None = None, init: str | None = None) -> dict[str, Any]:
    """lapmodel train into WORK/name; returns {out, cpu_s, images}. Skips a finished run (its result.json)."""
    out = Path(args.work) / name
    res_file = out / "result.json"
    if res_file.is_file() and not args.fresh:
        doc = json.loads(res_file.read_text())
        if (doc["steps"], doc["batch"]) != (steps, batch):
            raise SystemExit(f"{out}: trained with {doc['steps']} steps x batch {doc['batch']}, not {steps} x {batch}; "
                             "pass --tag NAME for a new run or --fresh to retrain")
        return doc
    base = {"data.shards": shards, "data.workers": args.loader_workers, "steps": steps, "batch": batch,
            "device": args.device, "precision": args.precision, "out": str(out), "log_every": max(1, args.eval_every // 5),
            "picture_every": args.eval_every, "ckpt_every": args.eval_every, "keep_every": args.eval_every,
            "seed": args.seed, "init": init}
    for kv in args.set:
        k, v = kv.split("=", 1)
        over = {**over, k: yaml_value(v)}
    cfg = load_config(TrainConfig, REPO / "pipelines" / config, overrides={**base, **over})
    t, w = time.process_time(), time.time()
    r = train(cfg, resume=(out / "last.pt").exists(), stage=stage, progress=False, log=lambda m: None)
    cpu, wall = time.process_time() - t, time.time() - w
    images = images_seen(out, r.step, batch)
    doc = {"out": str(out), "cpu_s": cpu, "wall_s": wall, "images_per_s": images / max(wall, 1e-9), "steps": r.step,
           "batch": batch, "images": images, "threads": torch.get_num_threads(), "device": args.device}
    res_file.write_text(json.dumps(doc))
    return doc


def yaml_value(v: str) -> Any:
    import yaml

    return yaml.safe_load(v)


def images_seen(out: Path, steps: int, batch: int) -> int:
    """Views the model trained on: from log.jsonl's set size (LAP) or steps x batch (Unsup3D)."""
    log = out / "log.jsonl"
    if log.is_file():
        rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        sizes = [r["set_size"] for r in rows if "set_size" in r]
        if sizes:
            return int(round(steps * batch * sum(sizes) / len(sizes)))
    return steps * batch


def evaluate_run(args, run: dict[str, Any], shards: str, tag: str = "", set_sizes=()) -> dict[str, Any]:
    """lapmodel evaluate of every kept checkpoint (the curve) and of last.pt (the row)."""
    out = Path(run["out"])
    ckpts = sorted((out / "checkpoints").glob("step-*.pt"))
    curve = []
    per_image = run["images"] / max(1, run["steps"])
    for ck in ckpts:
        step = int(ck.stem.split("-")[1])
        r = evaluate_checkpoint(EvaluateConfig(str(ck), shards=shards, out=str(out / f"eval{tag}-{step:06d}"), baselines=True,
                                               identity=False, max_identities=args.eval_ids, device=args.device),
                                progress=False)
        curve.append(row_of(r, step, int(step * per_image)))
    last = evaluate_checkpoint(EvaluateConfig(str(out / "last.pt"), shards=shards, out=str(out / f"eval{tag}"), baselines=True,
                                              identity=False, max_identities=args.eval_ids,
                                              set_sizes=tuple(set_sizes), device=args.device), progress=False)
    row = row_of(last, run["steps"], run["images"])
    row.update(cpu_s=run["cpu_s"], wall_s=run.get("wall_s"), images_per_s=run.get("images_per_s"))
    # the same model untrained: with the flat start it is the ellipsoid prior seen frontally, the floor any gain
    # must be measured from
    from lapmodel.io.checkpoint import checkpoint_config, load_checkpoint
    from lapmodel.models.build import build_model

    cfg = checkpoint_config(load_checkpoint(out / "last.pt"))
    torch.manual_seed(cfg.seed)
    init = evaluate_checkpoint(EvaluateConfig("untrained", shards=shards, out=str(out / f"eval{tag}-init"), baselines=True,
                                              identity=False, max_identities=args.eval_ids),
                               model=build_model(cfg, training=False).eval(), progress=False)
    row["init"] = row_of(init, 0, 0)
    if last.set_size:
        row["set_size"] = {int(n): {"side": v["side"]["mean"], "mad": v["mad"]["mean"]} for n, v in last.set_size.items()}
    (out / f"curve{tag}.json").write_text(json.dumps(curve, indent=1))
    plot_curve(curve, out / f"curve{tag}.png", out.name)
    return row


def row_of(r, step: int, images: int) -> dict[str, Any]:
    m, f = r.rows["model"], r.rows["flat"]
    return {"step": step, "images": images, "side": m["side"]["mean"], "side_std": m["side"]["std"],
            "mad": m["mad"]["mean"], "mad_std": m["mad"]["std"], "flat_side": f["side"]["mean"],
            "flat_mad": f["mad"]["mean"], "side_ratio": m["side"]["mean"] / f["side"]["mean"],
            "mad_ratio": m["mad"]["mean"] / f["mad"]["mean"], "depth_corr": m["depth_corr"]["mean"],
            "views": m["mad"]["n"]}


def plot_curve(curve: list[dict], path: Path, title: str) -> None:
    if not curve:
        return
    fig, axes = new_figure(2, width=4.0, height=3.2)
    x = [c["images"] for c in curve]
    for ax, k, lab in ((axes[0], "side", "SIDE x1e-2"), (axes[1], "mad", "MAD (deg)")):
        ax.plot(x, [c[k] for c in curve], "o-", label="model")
        ax.plot(x, [c[f"flat_{k}"] for c in curve], "--", color="gray", label="flat")
        ax.set_xlabel("images seen")
        ax.set_title(lab)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    rows = [x for r in rows for x in ([r] + ([{**r["init"], "name": "  untrained (prior)", "cpu_s": 0.0}]
                                             if "init" in r else []))]
    print(f"\n{title}")
    print(f"| {'run':<28} | SIDE x1e-2 | flat | ratio | MAD deg | flat | ratio | depth corr | images | CPU-s |")
    print("|" + "---|" * 10)
    for r in rows:
        print(f"| {r['name']:<28} | {r['side']:.3f} | {r['flat_side']:.3f} | {r['side_ratio']:.2f} | {r['mad']:.2f} | "
              f"{r['flat_mad']:.2f} | {r['mad_ratio']:.2f} | {r['depth_corr']:.2f} | {r['images']} | "
              f"{r.get('cpu_s', float('nan')):.0f} |")


# ------------------------------------------------------------------------------------------------ rungs

SMALL = {"model.nf": 32, "model.nf_encoder": 32, "model.zdim": 128, "model.zdim_conf": 64, "vgg_weights": None}
LAP_SMALL = {"model.lap.refine_nf": 16, "data.fields": ["image", "seg"], "data.max_set": 6}


def rung0(args) -> list[dict[str, Any]]:
    """Direct optimisation: a free depth map, known albedo / lights / views, fitted through the renderer."""
    from lapmodel.evaluation import scores as E
    from lapmodel.evaluation.evalset import iter_evalsets
    from lapmodel.models import photogeo
    from lapmodel.config import ModelConfig

    data = dataset(args, args.backend, 8, args.size, fractions=(1.0, 0.0, 0.0))
    es = next(iter(iter_evalsets(str(data / "shards"), args.size, max_identities=1)))
    cfg = ModelConfig(image_size=args.size, depth_prior=0.0)
    torch.manual_seed(args.seed)
    # ground truth: the identity's frontal depth (filled with its far value off the face), a random smooth albedo
    k = int(torch.stack([v for v in es.depth]).isfinite().flatten(1).sum(1).argmax())  # the view with most face
    gt = E.fill_nan(es.depth[k:k + 1].double(), es.mask[k:k + 1]).float().clamp(0.9, 1.1)
    n = 15
    views = torch.zeros(n, 6)
    views[:, 1] = torch.linspace(-math.radians(40), math.radians(40), n)
    views[:, 0] = torch.randn(n) * math.radians(5)
    lights = torch.cat([torch.full((n, 1), 0.5), torch.full((n, 1), 0.6), torch.rand(n, 2) - 0.5], 1)
    albedo = es.images[k:k + 1].expand(n, -1, -1, -1)
    with torch.no_grad():
        target = photogeo.render(albedo, gt.expand(n, -1, -1), lights, views, cfg, flip=False)
    free = torch.full_like(gt, 1.0).requires_grad_()
    opt = torch.optim.Adam([free], lr=args.lr or 1e-3)
    t = time.process_time()
    rows = []
    mask = es.mask[k:k + 1] & es.depth[k:k + 1].isfinite()
    for step in range(args.steps or 1000):
        r = photogeo.render(albedo, free.expand(n, -1, -1), lights, views, cfg, flip=False)
        loss = ((r.recon - target.recon).abs() * r.mask[:, None] * target.mask[:, None]).mean()
        # the model's smoothness term (model.lam_depth_sm; 0 for a free fit): without it, rows alternating with
        # period 2 are a null space of the central-difference normals and SIDE stalls while MAD converges
        loss = loss + args.sm * photogeo.depth_smoothness(free, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    cpu = time.process_time() - t
    with torch.no_grad():
        dm = E.depth_metrics(free.detach(), torch.ones_like(free), gt, mask, cfg.fov_deg, cfg.fov_deg)
        fm = E.depth_metrics(torch.full_like(gt, float(gt[mask].median())), torch.ones_like(free), gt, mask,
                             cfg.fov_deg, cfg.fov_deg)
    side, fside, mad, fmad = (float(x) for x in (dm["side"] * 100, fm["side"] * 100, dm["mad"], fm["mad"]))
    rows.append({"name": f"rung0 {args.backend} {args.size}px", "side": side, "flat_side": fside, "mad": mad,
                 "flat_mad": fmad, "side_ratio": side / fside, "mad_ratio": mad / fmad,
                 "depth_corr": float(dm["depth_corr"]), "images": 0, "cpu_s": cpu, "step": args.steps or 1000})
    return rows


def rung1(args) -> list[dict[str, Any]]:
    """Overfit: train and evaluate on the same few identities (Unsup3D-re)."""
    ids = args.ids or 4
    data = dataset(args, args.backend, ids, args.size, seed=args.data_seed, fractions=(1.0, 0.0, 0.0))
    sh = str(data / "shards")
    run = train_run(args, f"rung1-{args.backend}-{ids}ids-{args.size}px-d{args.data_seed}{args.tag}", "unsup3d.yaml", [sh],
                    args.steps or 1500, args.batch or 8,
                    {**SMALL, "model.image_size": args.size, "optim.lr": args.lr or 3e-4})
    row = evaluate_run(args, run, sh)
    row["name"] = f"rung1 {args.backend} {ids} ids {args.size}px"
    return [row]


def rung2(args) -> list[dict[str, Any]]:
    """Generalise: Unsup3D-re trained on many identities, evaluated on held-out ones."""
    ids = args.ids or 240
    data = dataset(args, args.backend, ids, args.size)
    run = train_run(args, f"rung2-{args.backend}-{ids}ids-{args.size}px{args.tag}", "unsup3d.yaml",
                    [str(data / "shards" / "train-*.tar")], args.steps or 2000, args.batch or 16,
                    {**SMALL, "model.image_size": args.size, "optim.lr": args.lr or 3e-4})
    row = evaluate_run(args, run, str(data / "shards" / "test-*.tar"))
    row["name"] = f"rung2 {args.backend} {args.size}px held-out"
    return [row]


def lap_setup(args) -> tuple[list[str], str, int, int, dict[str, Any], dict[str, Any]]:
    """What rungs 3 and 4 share: the parsed dataset's train / test shards, the steps, LAP's identities per step,
    LAP's config overrides, and the Unsup3D-re row (the rung-2 run of the same settings; trained when missing)."""
    ids = args.ids or 240
    data = parsed(args, dataset(args, args.backend, ids, args.size))
    train_sh, test_sh = [str(data / "shards" / "train-*.tar")], str(data / "shards" / "test-*.tar")
    steps, batch = args.steps or 2000, args.batch or 16
    common = {**SMALL, "model.image_size": args.size, "optim.lr": args.lr or 3e-4}
    plain = dataset(args, args.backend, ids, args.size)
    u = train_run(args, f"rung2-{args.backend}-{ids}ids-{args.size}px{args.tag}", "unsup3d.yaml",
                  [str(plain / "shards" / "train-*.tar")], steps, batch, common)
    ru = evaluate_run(args, u, test_sh)
    ru["name"] = "Unsup3D-re"
    # LAP: identities per step chosen so that the views per step match (mean set size 3.5 for 1..6)
    lap_batch = max(1, round(batch / 3.5))
    lap_common = {**common, **LAP_SMALL, "model.lap.refine_size": args.size, "model.lap.target_size": args.size}
    return train_sh, test_sh, steps, lap_batch, lap_common, ru


def rung3(args) -> list[dict[str, Any]]:
    """LAP stage 1 (sets of 1..6) against Unsup3D-re at the same number of images seen; the set-size curve."""
    train_sh, test_sh, steps, lap_batch, lap_common, ru = lap_setup(args)
    lap = train_run(args, f"rung3-lap-{args.backend}-{args.size}px{args.tag}", "lap.yaml", train_sh, steps, lap_batch,
                    lap_common, stage="aggregate")
    rl = evaluate_run(args, lap, test_sh, set_sizes=(1, 2, 3, 4, 5, 6))
    rl["name"] = "LAP stage 1 (single photo)"
    rows = [ru, rl]
    for n, v in sorted(rl.get("set_size", {}).items()):
        rows.append({**rl, "name": f"LAP stage 1, set of {n}", "side": v["side"], "mad": v["mad"],
                     "side_ratio": v["side"] / rl["flat_side"], "mad_ratio": v["mad"] / rl["flat_mad"]})
    return rows


# Table 2 of the paper at ladder scale: (row, stage-1 overrides, stage-2/3 overrides)
ABLATIONS = [
    ("w/o adaptive aggregation (mean)", {"model.lap.adaptive": False}, {}),
    ("w/o relaxed consistency loss", {"model.lap.rcl": False}, {}),
    ("vector injection (1x1 only)", {}, {"model.lap.injection": "vector"}),
    ("w/o filtered connection", {}, {"model.lap.filtered_connection": "none"}),
]


def rung4(args) -> list[dict[str, Any]]:
    """The three LAP stages against Unsup3D-re at the same number of images seen, and Table 2's ablation rows.

    The budget of the rung-2 run (steps x batch views) is split 60 / 20 / 20 % over aggregate / personalize /
    finetune; a stage-1 ablation retrains all three stages, a stage-2 ablation reuses the full model's stage 1.
    ``--ablations`` names rows of ABLATIONS by index (default: all)."""
    train_sh, test_sh, steps, lap_batch, lap_common, ru = lap_setup(args)
    s1, s2 = max(1, round(steps * 0.6)), max(1, round(steps * 0.2))
    base = f"rung4-{args.backend}-{args.size}px-{steps}{args.tag}"

    def three_stages(tag: str, over1: dict, over2: dict, stage1: dict | None = None) -> tuple[dict, dict]:
        a = stage1 or train_run(args, f"{base}-aggregate{tag}", "lap.yaml", train_sh, s1, lap_batch,
                                {**lap_common, **over1}, stage="aggregate")
        p = train_run(args, f"{base}-personalize{tag}", "lap.yaml", train_sh, s2, lap_batch,
                      {**lap_common, **over1, **over2}, stage="personalize", init=str(Path(a["out"]) / "last.pt"))
        f = train_run(args, f"{base}-finetune{tag}", "lap.yaml", train_sh, s2, lap_batch,
                      {**lap_common, **over1, **over2}, stage="finetune", init=str(Path(p["out"]) / "last.pt"))
        row = evaluate_run(args, f, test_sh)
        row.update(images=a["images"] + p["images"] + f["images"], cpu_s=a["cpu_s"] + p["cpu_s"] + f["cpu_s"])
        return a, row

    a, full = three_stages("", {}, {})
    r1 = evaluate_run(args, a, test_sh)
    r1["name"], full["name"] = "LAP stage 1 only", "LAP (3 stages)"
    rows = [ru, r1, full]
    picked = [int(i) for i in args.ablations.split(",")] if args.ablations else range(len(ABLATIONS))
    for i in picked:
        name, over1, over2 = ABLATIONS[i]
        _, r = three_stages(f"-abl{i}", over1, over2, stage1=None if over1 else a)
        r["name"] = name
        rows.append(r)
    return rows


# ------------------------------------------------------------------------------------------------ real photos

HELD_OUT = ("Barack_Obama", "Hugh_Jackman", "Jennifer_Lopez")  # manifests/celebrity-sets_split.parquet's test split
SHARED = REPO.parent / "shared" / "data"


def kp_curve(ckpts: list[tuple[int, Path]], kps, out: Path, set_sizes=()) -> list[dict[str, Any]]:
    """The keypoint protocol (lapmodel.evaluation.photos) on each (images seen, checkpoint)."""
    from lapmodel.evaluation.photos import evaluate_photos
    from lapmodel.io.checkpoint import load_model

    rows = []
    for images, ck in ckpts:
        d = evaluate_photos(load_model(ck), kps, out / f"kp-{ck.parent.name}-{ck.stem}", size=64,
                            set_sizes=set_sizes if ck == ckpts[-1][1] else ())
        m = d["rows"]["model"]
        rows.append({"images": images, "checkpoint": str(ck), "kp": m["kp_corr"]["mean"],
                     "kp_median": m["kp_corr"]["median"], "depthnet66": m["depthnet"]["table3_scale"],
                     "spread_ids": d["canon_spread"]["identities"], "spread_photos": d["canon_spread"]["photos"],
                     "template": d["rows"]["mean_template"]["kp_corr"]["mean"],
                     "prior": d["rows"]["prior"]["kp_corr"]["mean"],
                     "set_size": {n: v["kp_corr"]["mean"] for n, v in d["set_size"].items()}})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def kept_checkpoints(phases: list[tuple[Path, int]]) -> list[tuple[int, Path]]:
    """[(images seen, checkpoint)] over consecutive training folders, each with its views per step."""
    out, base = [], 0
    for folder, per_step in phases:
        cks = [(int(p.stem.split("-")[1]), p) for p in (folder / "checkpoints").glob("step-*.pt")]
        log = folder / "log.jsonl"
        if (folder / "last.pt").is_file() and log.is_file():  # the phase's end, when it is not a kept step
            last = int(json.loads(log.read_text().splitlines()[-1])["step"])
            if last not in {s for s, _ in cks}:
                cks.append((last, folder / "last.pt"))
        for step, ck in sorted(cks):
            out.append((base + step * per_step, ck))
        if cks:
            base += max(cks)[0] * per_step
    return out


def rung5(args) -> list[dict[str, Any]]:
    """Real photos: the photos recipe (pipelines/photos.yaml: ICT synthetic -> the celebrity collections, LAP's three
    stages and Unsup3D-re at equal images), scored on the 3 held-out identities with their MediaPipe 3D keypoints
    (Table 3's protocol) at every kept checkpoint. ``--steps`` scales every phase of the recipe (1.0: its own)."""
    from lapmodel.evaluation.keypoints import read_keypoints, select
    from lapmodel.recipes.runner import run_pipeline

    f = args.scale
    env = {"SEED": str(args.seed), **{k: str(max(1, round(v * f))) for k, v in
                                      (("SYN_STEPS", 300), ("SINGLE_STEPS", 1200), ("SET_STEPS", 2000),
                                       ("REFINE_STEPS", 400), ("U3D_SYN_STEPS", 300), ("U3D_STEPS", 4260))}}
    out = Path(args.work) / f"photos-x{f:g}-s{args.seed}{args.tag}"
    train_steps = ["synthetic", "photos", "masks-synthetic", "masks-photos", "stage1", "stage2", "stage3",
                   "unsup3d-synthetic", "unsup3d-real"]
    t = time.process_time()
    run_pipeline(REPO / "pipelines" / "photos.yaml", out, only=train_steps, progress=False, log=lambda m: None,
                 environ={**os.environ, **env})
    cpu = time.process_time() - t
    kps = select(read_keypoints(SHARED / "keypoints3d" / "celebrity-sets.npz", SHARED / "faces"), HELD_OUT, (),
                 args.eval_per_id)
    tr = out / "train"
    lap = kept_checkpoints([(tr / "aggregate" / "synthetic", 16), (tr / "aggregate" / "singles", 16),
                            (tr / "aggregate" / "sets", 17.5), (tr / "personalize" / "sets", 17.5),
                            (tr / "finetune" / "sets", 17.5)])
    u3d = kept_checkpoints([(out / "unsup3d-re" / "synthetic", 16), (out / "unsup3d-re" / "real", 16)])
    rl = kp_curve(lap, kps, out, set_sizes=(1, 2, 3, 4, 5, 6))
    ru = kp_curve(u3d, kps, out)
    (out / "kp_curves.json").write_text(json.dumps({"lap": rl, "unsup3d": ru, "cpu_s": cpu}, indent=1))
    plot_kp_curves(rl, ru, out / "kp_curves.png", f"real photos, held-out identities (seed {args.seed})")
    return [{"name": "LAP (3 stages)", **rl[-1]}, {"name": "Unsup3D-re", **ru[-1]}]


def plot_kp_curves(lap: list[dict], u3d: list[dict], path: Path, title: str) -> None:
    fig, ax = new_figure(2, width=4.5, height=3.4)
    for rows, lab in ((lap, "LAP"), (u3d, "Unsup3D-re")):
        if rows:
            ax[0].plot([r["images"] for r in rows], [r["kp"] for r in rows], "o-", label=lab, ms=3)
            ax[1].plot([r["images"] for r in rows], [r["spread_ids"] for r in rows], "o-", label=lab, ms=3)
    if lap:
        ax[0].axhline(lap[0]["template"], ls="--", c="gray", label="mean template (oracle)")
        ax[0].axhline(lap[0]["prior"], ls=":", c="gray", label="untrained prior")
    ax[0].set(xlabel="images seen", ylabel="keypoint depth corr (mean)", title="depth on held-out photos")
    ax[1].set(xlabel="images seen", ylabel="canonical depth spread / relief", title="across identities", yscale="log")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("rung", choices=["rung0", "rung1", "rung2", "rung3", "rung4", "rung5"])
    ap.add_argument("--backend", choices=["procedural", "ict"], default="ict")
    ap.add_argument("--size", type=int, default=None, help="image side (rung1: 32, others 64)")
    ap.add_argument("--ids", type=int, default=0, help="identities in the dataset")
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.0)
    ap.add_argument("--yaw", type=float, nargs=2, default=(-45.0, 45.0))
    ap.add_argument("--sm", type=float, default=0.1, help="rung0: weight of the depth smoothness term")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-ids", type=int, default=None, help="evaluate on at most this many identities")
    ap.add_argument("--seed", type=int, default=0, help="model initialisation seed")
    ap.add_argument("--data-seed", type=int, default=0, help="rung1: seed of the synthetic identities")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="auto", help="training precision (auto: bf16 on CPUs with native bf16)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (GPU machines: benchmarks/gpu_suite.sh)")
    ap.add_argument("--loader-workers", type=int, default=0, help="DataLoader workers (0: in-process, CPU-s exact)")
    ap.add_argument("--data-workers", type=int, default=1, help="processes building the synthetic data")
    ap.add_argument("--work", default=str(REPO / ".scratch" / "quality"))
    ap.add_argument("--ict-model", default=None)
    ap.add_argument("--set", nargs="*", default=[], help="config overrides KEY=VALUE for training")
    ap.add_argument("--scale", type=float, default=1.0, help="rung5: fraction of the photos recipe's steps")
    ap.add_argument("--eval-per-id", type=int, default=120, help="rung5: held-out photos scored per identity")
    ap.add_argument("--ablations", default="", help="rung4: indices of the Table 2 rows to run, e.g. 0,2 (default all)")
    ap.add_argument("--tag", default="", help="suffix of the run folder (ablations)")
    ap.add_argument("--fresh", action="store_true", help="retrain even when the run folder holds a result")
    args = ap.parse_args(argv)
    args.size = args.size or (32 if args.rung in ("rung0", "rung1") else 64)
    torch.set_num_threads(args.threads)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    rows = globals()[args.rung](args)
    title = f"{args.rung} ({time.strftime('%Y-%m-%d')}, {torch.get_num_threads()} thread(s), CPU)"
    if args.rung == "rung5":
        print(f"\n{title}\n| run | kp corr mean | median | DepthNet (x66/K) | spread (identities) | images |\n" + "|---" * 6 + "|")
        for r in rows:
            print(f"| {r['name']} | {r['kp']:.3f} | {r['kp_median']:.3f} | {r['depthnet66']:.1f} | "
                  f"{r['spread_ids']:.4f} | {r['images']} |")
    else:
        print_table(title, rows)
    print("JSON " + json.dumps({"rung": args.rung, "backend": args.backend, "size": args.size, "rows": rows}))


if __name__ == "__main__":
    main()
