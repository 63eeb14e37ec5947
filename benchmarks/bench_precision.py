"""The whole training step (forward, loss, backward, Adam; renderer included, no data loading) under fp32 and bf16
autocast, with contiguous and channels_last tensors: images per CPU-second of one thread.

    OMP_NUM_THREADS=1 python benchmarks/bench_precision.py                 # Unsup3D-re and LAP, 64 px, nf 32
    OMP_NUM_THREADS=1 python benchmarks/bench_precision.py --kinds lap --size 128 --nf 64

CPU time (``time.process_time``) of the steps after a warm-up, so a loaded machine gives the same figure. What
``precision: auto`` picks on this machine is printed last (``lapmodel.training.setup.autocast_dtype``).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lapdata.core.config import load_config  # noqa: E402
from lapmodel.config import TrainConfig  # noqa: E402
from lapmodel.io.data import Batch  # noqa: E402
from lapmodel.models.build import build_model  # noqa: E402
from lapmodel.training.setup import autocast_dtype  # noqa: E402


def step_rate(kind: str, size: int, nf: int, batch: int, precision: str, channels_last: bool, steps: int) -> float:
    over = {"model.image_size": size, "model.nf": nf, "model.nf_encoder": nf, "model.zdim": 4 * nf,
            "model.zdim_conf": 2 * nf, "model.lap.refine_size": size, "model.lap.refine_nf": nf // 2,
            "model.lap.target_size": size, "vgg_weights": None, "perceptual": "none"}
    cfg = load_config(TrainConfig, REPO / "pipelines" / f"{kind}.yaml", overrides=over)
    torch.manual_seed(0)
    model = build_model(cfg)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    if kind == "lap":  # 4 identities x 4 photos: the same 16 images per step as Unsup3D-re's batch
        n = 4
        x = Batch(images=torch.rand(batch // n, n, 3, size, size), valid=torch.ones(batch // n, n, dtype=torch.bool))
    else:
        x = torch.rand(batch, 3, size, size).contiguous(memory_format=fmt)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
    for i in range(steps + 2):
        if i == 2:
            t = time.process_time()
        with ctx():
            out = model(x)
            loss, _ = model.loss(out, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.process_time() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", nargs="+", default=["unsup3d", "lap"])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--nf", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"| model | precision | memory format | images / CPU-s | vs fp32 contiguous |\n|---|---|---|---|---|")
    for kind in a.kinds:
        base = None
        for prec in ("fp32", "bf16"):
            for cl in (False, True):
                r = step_rate(kind, a.size, a.nf, a.batch, prec, cl, a.steps)
                base = base or r
                print(f"| {kind} {a.size} px nf {a.nf} | {prec} | {'channels_last' if cl else 'contiguous'} | "
                      f"{r:.1f} | {r / base:.2f}x |", flush=True)
    print(f"precision auto on this machine: {autocast_dtype('auto', torch.device('cpu')) or 'fp32'}")


if __name__ == "__main__":
    main()
