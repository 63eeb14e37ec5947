"""LAP training throughput per stage (aggregate / personalize / finetune), data from shards.

Measures optimizer steps of the full LAP model (pipelines/lap.yaml networks: aggregation at 128 px, refiner at
128 px) with batches of B identities x a random set of 1..6 photos streamed from WebDataset shards through
``lapmodel.io.data.make_loader`` (the training loader), forward + loss + backward + Adam step, and prints images/s
(valid views per second) and identities/s, against the reference throughput of the published LAP networks alone
(no data, no renderer) on an H100: 1,337 images/s (tf32) / 1,732 images/s (bf16) (DEVELOPERS.md).

    python benchmarks/bench_lap.py                                  # CPU, reduced batch (8 identities)
    python benchmarks/bench_lap.py --device cuda --batch 64 --precision tf32 bf16   # the H100 figure

The shards are written once to a temporary folder (random smooth pictures with label maps: the content does not
change the speed). Perceptual loss off unless --vgg PATH is given (the reference has it on: say which).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from lapmodel.config import LAP_STAGES

REFERENCE = {"tf32": 1337.0, "bf16": 1732.0}


def write_shards(out: Path, identities: int, views: int, size: int, seed: int = 0) -> Path:
    import webdataset as wds

    from lapdata.dataset.sample import IdentitySample, View, encode_sample, sample_key

    rng = np.random.default_rng(seed)
    d = out / "shards"
    d.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    per = 32
    n_shards = math.ceil(identities / per)
    for s in range(n_shards):
        with wds.TarWriter(str(d / f"train-{s:06d}.tar")) as w:
            for i in range(s * per, min(identities, (s + 1) * per)):
                vs = []
                for j in range(views):
                    face = ((xx / 0.6) ** 2 + (yy / 0.8) ** 2) < 1
                    img = np.clip(rng.uniform(0.2, 0.8, 3) * (0.7 + 0.3 * np.cos(3 * xx + j))[..., None], 0, 1)
                    img[~face] *= 0.3
                    seg = face.astype(np.uint8)
                    vs.append(View(image=(img * 255).astype(np.uint8), seg=seg, meta={"photo_id": f"{i}-{j}"}))
                w.write(encode_sample(IdentitySample(sample_key(f"id{i}"), f"id{i}", "train", vs)))
        (d / f"train-{s:06d}.json").write_text(json.dumps({"samples": min(per, identities - s * per)}))
    return out


def bench_stage(stage: str, cfg, urls, device: torch.device, precision: str, steps: int, warmup: int) -> dict:
    from lapmodel.io.data import make_loader
    from lapmodel.models.build import build_model

    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    model.set_stage(stage)
    params = model.trainable_parameters(stage)
    opt = torch.optim.Adam(params, lr=1e-4)
    loader = make_loader(urls, cfg.data, cfg.model.image_size, cfg.batch, pin_memory=device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
    amp = torch.bfloat16 if precision == "bf16" else None
    images = identities = 0
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            images = identities = 0
        batch = next(loader).to(device, non_blocking=True)
        ctx = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
        with ctx:
            out = model(batch)
        loss, _ = model.loss(out, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        images += int(batch.valid.sum())
        identities += batch.valid.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"stage": stage, "precision": precision, "images_per_s": images / dt, "identities_per_s": identities / dt,
            "step_s": dt / steps, "mean_set": images / max(identities, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=None, help="identities per step (default 64 on cuda, 8 on cpu)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--refine-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 cuda, 3 cpu)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--precision", nargs="+", default=None, help="fp32 | tf32 | bf16 (default: tf32 bf16 on cuda)")
    ap.add_argument("--stages", nargs="+", default=list(LAP_STAGES))
    ap.add_argument("--vgg", default=None, help="vgg16-397923af.pth: perceptual loss on (as the paper)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--shards", default=None, help="use these shards instead of writing temporary ones")
    a = ap.parse_args()

    from lapdata.core.config import load_config
    from lapmodel.config import TrainConfig
    from lapmodel.io.data import expand_shards

    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    batch = a.batch or (64 if cuda else 8)
    steps = a.steps or (20 if cuda else 3)
    warmup = a.warmup if a.warmup is not None else (5 if cuda else 1)
    precisions = a.precision or (["tf32", "bf16"] if cuda else ["fp32"])
    workers = a.workers if a.workers is not None else (8 if cuda else 0)
    tmp = tempfile.TemporaryDirectory(prefix="bench_lap_")
    if a.shards:
        urls = expand_shards(a.shards)
    else:
        n_ids = max(2 * batch, 16)
        t = time.perf_counter()
        urls = expand_shards(str(write_shards(Path(tmp.name), n_ids, 6, a.size)))
        print(f"wrote {n_ids} identities x 6 views at {a.size} px in {time.perf_counter() - t:.1f} s")
    cfg = load_config(TrainConfig, "pipelines/lap.yaml", {
        "model.image_size": a.size, "model.lap.refine_size": a.refine_size, "batch": batch, "data.workers": workers,
        "data.shuffle_buffer": 64, "data.shuffle_initial": 8, "vgg_weights": a.vgg, "data.fields": ["image", "seg"]})
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if cuda else torch.get_num_threads()} "
          f"{'GPU' if cuda else 'CPU threads'}), {a.size} px, refiner {a.refine_size} px, batch {batch} identities x "
          f"set 1..{cfg.data.max_set}, {steps} timed steps after {warmup} warm-up, perceptual "
          f"{'on' if a.vgg else 'off'}, loader workers {workers}")
    rows = []
    for prec in precisions:
        for st in a.stages:
            r = bench_stage(st, cfg, urls, dev, prec, steps, warmup)
            rows.append(r)
            ref = REFERENCE.get(prec, REFERENCE["tf32"])
            print(f"  {st:<12} {prec:<5} {r['images_per_s']:9.1f} images/s  {r['identities_per_s']:8.2f} identities/s"
                  f"  {r['step_s']:.3f} s/step  mean set {r['mean_set']:.2f}  (reference {ref:,.0f} images/s: "
                  f"{r['images_per_s'] / ref:.3f}x)", flush=True)
    print("\n| stage | precision | images/s | identities/s | s/step | vs reference |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ref = REFERENCE.get(r["precision"], REFERENCE["tf32"])
        print(f"| {r['stage']} | {r['precision']} | {r['images_per_s']:.1f} | {r['identities_per_s']:.2f} | "
              f"{r['step_s']:.3f} | {r['images_per_s'] / ref:.3f}x of {ref:,.0f} |")
    tmp.cleanup()


if __name__ == "__main__":
    main()
