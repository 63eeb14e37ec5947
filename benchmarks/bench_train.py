"""Training-step throughput (images/s) of the Unsup3D model, data streamed from shards, and its parts.

    python benchmarks/bench_train.py                       # CPU, tiny default shards written to a temp folder
    python benchmarks/bench_train.py --device cuda --sizes 64 128 --batch 64 --steps 30 --precision bf16
    python benchmarks/bench_train.py --shards 'DATA/shards/train-{000000..000009}.tar' --compile

Columns: ``step`` = the whole training step (data wait + forward + loss + backward + Adam) in ms and images/s;
``nets`` = the five networks alone, forward + backward, no renderer, no data (compare with the reference 2,297
images/s of the published Unsup3D networks at 64 px on an H100, DEVELOPERS.md); ``render`` = the renderer share
(render of 2B images forward + backward) of the step; ``data`` = time spent waiting for the loader.
Timing only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from lapdata.dataset.sample import IdentitySample, View, encode_sample, sample_key
from lapmodel.render import renderer
from lapmodel.config import DataConfig, ModelConfig
from lapmodel.io.data import expand_shards, make_loader
from lapmodel.training.setup import autocast_dtype
from lapmodel.models.unsup3d import Unsup3D


def write_demo_shards(root: Path, size: int, n_ids: int = 64, views: int = 4) -> list[str]:
    rng = np.random.default_rng(0)
    path = root / f"bench-{size}.tar"
    with wds.TarWriter(str(path)) as tw:
        for i in range(n_ids):
            vs = [View(image=np.asarray(Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
                                        .resize((size, size), Image.BILINEAR))) for _ in range(views)]
            tw.write(encode_sample(IdentitySample(sample_key(f"id{i}"), f"id{i}", "train", vs), "jpg"))
    return [str(path)]


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench(size: int, args, dev: torch.device) -> dict:
    mcfg = ModelConfig(image_size=size, nf=args.nf, nf_encoder=args.nf_encoder, zdim=args.zdim,
                       zdim_conf=args.zdim_conf)
    torch.manual_seed(0)
    model = Unsup3D(mcfg).to(dev).train()
    if args.compile:
        model.compile_networks()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    amp = autocast_dtype(args.precision, dev)
    ctx = (lambda: torch.autocast(dev.type, dtype=amp)) if amp is not None else nullcontext
    tmp = tempfile.mkdtemp()
    urls = expand_shards(args.shards) if args.shards else write_demo_shards(Path(tmp), size)
    dcfg = DataConfig(workers=args.workers, shuffle_buffer=100, fields=("image",))
    loader = make_loader(urls, dcfg, size, args.batch, pin_memory=dev.type == "cuda")

    def step():
        t0 = time.perf_counter()
        batch = next(loader).to(dev, non_blocking=True)
        sync(dev)
        t1 = time.perf_counter()
        with ctx():
            out = model(batch)
        loss, _ = model.loss(out, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(dev)
        return t1 - t0, time.perf_counter() - t0

    for _ in range(args.warmup):
        step()
    data_t = step_t = 0.0
    for _ in range(args.steps):
        d, s = step()
        data_t += d
        step_t += s

    # the networks alone (no renderer, no data)
    x = torch.rand(args.batch, 3, size, size, device=dev)
    nets = [model.netD, model.netA, model.netL, model.netV, model.netC]

    def nets_step():
        outs = []
        with ctx():
            for net in nets:
                o = net(x)
                outs += list(o) if isinstance(o, tuple) else [o]
        sum(o.float().mean() for o in outs).backward()

    for _ in range(args.warmup):
        nets_step()
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        nets_step()
    sync(dev)
    nets_t = (time.perf_counter() - t0) / args.steps

    # the renderer alone (2B images: reconstruction + flipped), forward + backward
    d = (torch.rand(2 * args.batch, size, size, device=dev) * 0.2 + 0.9).requires_grad_()
    im = torch.rand(2 * args.batch, 3, size, size, device=dev, requires_grad=True)
    v = (torch.randn(2 * args.batch, 6, device=dev) * 0.1).requires_grad_()
    sync(dev)
    t0 = time.perf_counter()
    n_r = max(1, args.steps // 2)
    for _ in range(n_r):
        r = renderer.render(d, im, v, mcfg.fov_deg)
        (r.image.mean() + r.depth.mean()).backward()
    sync(dev)
    render_t = (time.perf_counter() - t0) / n_r
    n = args.steps
    return {"size": size, "batch": args.batch, "step_ms": 1e3 * step_t / n, "img_s": args.batch * n / step_t,
            "data_ms": 1e3 * data_t / n, "nets_img_s": args.batch / nets_t, "render_ms": 1e3 * render_t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--shards", default=None, help="shards to stream (default: a demo shard in a temp folder)")
    ap.add_argument("--nf", type=int, default=64, help="network width (published: 64)")
    ap.add_argument("--nf-encoder", type=int, default=32)
    ap.add_argument("--zdim", type=int, default=256)
    ap.add_argument("--zdim-conf", type=int, default=128)
    args = ap.parse_args()
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; precision {args.precision}; compile {args.compile}; nf {args.nf}; "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    print(f"{'size':>5} {'batch':>5} {'step ms':>9} {'images/s':>9} {'data ms':>8} {'nets img/s':>11} "
          f"{'render ms':>10} {'render share':>12}")
    for s in args.sizes:
        r = bench(s, args, dev)
        print(f"{r['size']:>5} {r['batch']:>5} {r['step_ms']:>9.1f} {r['img_s']:>9.1f} {r['data_ms']:>8.1f} "
              f"{r['nets_img_s']:>11.1f} {r['render_ms']:>10.1f} {r['render_ms'] / r['step_ms']:>11.0%}")


if __name__ == "__main__":
    main()
