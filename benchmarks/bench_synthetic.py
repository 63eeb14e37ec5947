"""Synthetic-data throughput: views/s of the procedural and ict backends, identity-filter throughput, and the projected
time of the paper-scale job (30k identities x 15 poses at 1024 px).

    python benchmarks/bench_synthetic.py [--sizes 256,1024] [--views 6] [--ict DIR] [--device cpu|cuda] [--threads 1]

How the numbers are made:
* views/s: one identity is sampled, then ``--views`` views at the default yaw spread are rendered by
  ``backend.render_views`` (includes everything a build does per view: mesh deformation, two rasterizations --
  the view and its canonical frontal depth --, shading, background, ground-truth maps; the per-identity texture is
  painted once and amortised over the views, as in a 15-pose build). A warm-up render is not timed. Wall time.
* identity filter: ``lapdata.faces.embed.DlibEmbedder.embed_image`` on 256 px views with known landmarks (what
  build-synthetic does), views/s. ArcFace needs a user .onnx (``--id-model``) and is timed the same way.
* projection: 30,000 x 15 = 450,000 views; time = 450,000 x (1/render_rate(1024) + 1/filter_rate) / workers,
  with workers = the number of parallel processes you run (one per core on CPU; one process per GPU). Shard encoding
  (16-bit PNG depth etc.) is not included (measure it with a real build's stats.json timings).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lapdata.synthetic.base import default_poses


def bench_backend(backend, size: int, views: int) -> float:
    rng = np.random.default_rng(0)
    p = backend.sample_identity(rng)
    poses = default_poses(views, (-60, 60), rng, 5, 3)
    backend.render_views(p, poses[:1], size, rng)  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    backend.render_views(p, poses, size, rng)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return views / (time.perf_counter() - t)


def bench_filter(embedder, views) -> float:
    embedder.embed_image(views[0].image, [views[0].landmarks])
    t = time.perf_counter()
    for v in views:
        embedder.embed_image(v.image, [np.asarray(v.landmarks, np.float64)])
    return len(views) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256,1024")
    ap.add_argument("--views", type=int, default=6)
    ap.add_argument("--ict", default="", help="ICT-FaceKit FaceXModel folder (skipped when empty)")
    ap.add_argument("--ict-cache", default="/tmp/lap-bench-cache")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--id-model", default="", help="ArcFace .onnx to time as well")
    ap.add_argument("--workers", type=int, default=1, help="parallel processes assumed by the projection")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]

    from lapdata.synthetic.procedural import ProceduralBackend, ProceduralConfig

    backends = {"procedural": ProceduralBackend(ProceduralConfig(device=args.device))}
    if args.ict:
        from lapdata.synthetic.ict import ICTBackend, ICTConfig

        backends["ict"] = ICTBackend(args.ict, ICTConfig(device=args.device), cache_dir=args.ict_cache)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} thread(s)"
    print(f"device: {dev}")
    print(f"{'backend':<12}{'size':>6}{'views/s':>10}{'s/view':>9}")
    rates: dict[tuple[str, int], float] = {}
    for name, b in backends.items():
        for s in sizes:
            r = bench_backend(b, s, args.views)
            rates[(name, s)] = r
            print(f"{name:<12}{s:>6}{r:>10.2f}{1 / r:>9.3f}")

    from lapdata.faces.embed import DlibEmbedder

    b = backends.get("ict", backends["procedural"])
    rng = np.random.default_rng(1)
    views = b.render_views(b.sample_identity(rng), default_poses(args.views), 256, rng)
    frates = {"dlib": bench_filter(DlibEmbedder(), views)}
    if args.id_model:
        from lapdata.faces.embed import ArcFaceEmbedder

        frates["arcface"] = bench_filter(ArcFaceEmbedder(args.id_model), views)
    for k, r in frates.items():
        print(f"identity filter {k}: {r:.1f} views/s ({1000 / r:.1f} ms/view)")

    n = 30_000 * 15
    print(f"\nprojection, paper scale (30k identities x 15 poses = {n:,} views at 1024 px, {args.workers} worker(s)):")
    for name in backends:
        if (name, 1024) not in rates:
            continue
        for k, fr in frates.items():
            sec = n * (1 / rates[(name, 1024)] + 1 / fr) / args.workers
            print(f"  {name:<11} + {k} filter: {sec / 3600:8.1f} h")


if __name__ == "__main__":
    main()
