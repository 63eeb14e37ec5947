"""Reconstruct latency per image: model.reconstruct alone (single image and batched) and the full write-out.

Reference: LAP reports 2.0 ms per image (GPU, batched; the paper's inference speed). This script measures whatever
device it runs on; on a CPU the GPU figure stays owed.

    python benchmarks/bench_reconstruct.py                       # Unsup3D 64 px, random weights, CPU
    python benchmarks/bench_reconstruct.py --checkpoint runs/u3d/last.pt --device cuda --batches 1,64,256
    python benchmarks/bench_reconstruct.py --kind lap --size 128

Random weights give the same latency as trained ones (same shapes, same work). Prints a table and, with --json,
writes the numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time

import torch


def build(kind: str, size: int, checkpoint: str | None, device: str):
    if checkpoint:
        from lapmodel.io.checkpoint import load_model

        return load_model(checkpoint, device=device)
    from lapmodel.config import ModelConfig, TrainConfig
    from lapmodel.models.build import build_model

    cfg = TrainConfig(model=ModelConfig(kind=kind, image_size=size))
    return build_model(cfg, training=False).to(device).eval()


def timeit(fn, reps: int, warmup: int, sync) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return ts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint")
    ap.add_argument("--kind", default="unsup3d", choices=("unsup3d", "lap"))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--writeout", type=int, default=4, help="images for the write-out timing (0: skip)")
    ap.add_argument("--json")
    a = ap.parse_args()

    from lapmodel.inference.reconstruct import reconstruct_images

    dev = torch.device(a.device)
    model = build(a.kind, a.size, a.checkpoint, a.device)
    s = model.image_size
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    rows = []
    for b in [int(x) for x in a.batches.split(",")]:
        x = torch.rand(b, 3, s, s, device=dev)

        def step():
            with torch.no_grad():
                model.reconstruct(x)

        ts = timeit(step, a.reps, 1 if b > 16 else 2, sync)
        med = statistics.median(ts)
        rows.append({"what": "model.reconstruct", "batch": b, "ms_per_batch": 1e3 * med, "ms_per_image": 1e3 * med / b})
    if a.writeout:
        imgs = torch.rand(a.writeout, 3, s, s)
        for tt, label in ((0, "model + all files, no turntable"), (24, "model + all files + 24-frame turntable")):
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                reconstruct_images(model, imgs.to(dev), d, [f"p{i}" for i in range(a.writeout)], turntable=tt,
                                   progress=False)
                el = time.perf_counter() - t0
            rows.append({"what": f"reconstruct_images: {label}", "batch": a.writeout, "ms_per_batch": 1e3 * el,
                         "ms_per_image": 1e3 * el / a.writeout})
    info = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "loadavg": open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?",
        "model": a.checkpoint or f"{a.kind} (random weights)", "size": s,
        "reference": "LAP paper: 2.0 ms/image on GPU",
    }
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    print(f"{'what':48s} {'batch':>6s} {'ms/batch':>10s} {'ms/image':>10s}")
    for r in rows:
        print(f"{r['what']:48s} {r['batch']:6d} {r['ms_per_batch']:10.1f} {r['ms_per_image']:10.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
