"""Renderer speed: forward and forward+backward of ``lapmodel.render.renderer.render`` (reprojected depth + warp).

    python benchmarks/bench_renderer.py                         # 64/128/256 px, batch 128, CUDA if present
    python benchmarks/bench_renderer.py --device cpu --batch 16 --sizes 64 128
    python benchmarks/bench_renderer.py --backend nvdiffrast    # optional backend, if installed
    python benchmarks/bench_renderer.py --mesh-sizes 256 1024      # also: a 26k-vertex mesh (ICT-FaceKit size)

Inputs look like Unsup3D's: a canonical face-like depth in (0.9, 1.1) and random views (yaw within +-30 degrees,
pitch and roll within +-6 degrees, translations within +-0.05). The loss is image.mean() + depth.mean().
Prints a table: device, size, batch, ms forward, ms forward+backward (median of --repeat runs after --warmup),
and on CPU also the process CPU time per forward+backward (less sensitive to other load on a shared machine).
Reference (issue 3): nvdiffrast on an H100 takes 3.3 / 5.3 / 14.5 ms at 64 / 128 / 256 px, batch 128.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import statistics
import time

import torch

from lapdata.geometry import camera as G
from lapdata.geometry.raster import interpolate, rasterize
from lapmodel.render.renderer import render


def make_inputs(batch: int, size: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    bump = torch.exp(-(xx**2 + (yy * 0.8) ** 2) * 2.5)  # a head-like dome
    nose = torch.exp(-((xx / 0.12) ** 2 + ((yy - 0.05) / 0.3) ** 2))
    amp = 0.05 + 0.02 * torch.rand(batch, 1, 1, generator=g)
    depth = 1.05 - amp * bump - 0.02 * nose
    image = torch.rand(batch, 3, size, size, generator=g)
    lim = torch.tensor([math.radians(6), math.radians(30), math.radians(6), 0.05, 0.05, 0.05])
    view = (torch.rand(batch, 6, generator=g) * 2 - 1) * lim
    return depth.to(device), image.to(device), view.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_render(batch: int, size: int, device: torch.device, backend: str, warmup: int, repeat: int) -> dict:
    depth, image, view = make_inputs(batch, size, device)
    fwd, full, cpu = [], [], []
    for it in range(warmup + repeat):
        d = depth.clone().requires_grad_()
        im = image.clone().requires_grad_()
        v = view.clone().requires_grad_()
        _sync(device)
        c0, t0 = time.process_time(), time.perf_counter()
        out = render(d, im, v, backend=backend)
        _sync(device)
        t1 = time.perf_counter()
        (out.image.mean() + out.depth.mean()).backward()
        _sync(device)
        t2, c2 = time.perf_counter(), time.process_time()
        if it >= warmup:
            fwd.append((t1 - t0) * 1e3)
            full.append((t2 - t0) * 1e3)
            cpu.append((c2 - c0) * 1e3)
    return {"fwd": statistics.median(fwd), "full": statistics.median(full), "cpu": statistics.median(cpu)}


def time_mesh(batch: int, size: int, device: torch.device, warmup: int, repeat: int) -> tuple[float, float]:
    """ms per call of rasterize + interpolate(vertex normals) of a 25k-vertex sphere filling ~60% of the image."""
    v, f = G.sphere_mesh(128, 198)  # 25,146 vertices, 50,292 faces (ICT-FaceKit: ~26k vertices)
    cam = (v + torch.tensor([0.0, 0.0, 3.6])).to(device).expand(batch, -1, -1).contiguous()
    f = f.to(device)
    K = G.intrinsics(40.0, size, device=device)
    times, cpu = [], []
    for it in range(warmup + repeat):
        _sync(device)
        c0, t0 = time.process_time(), time.perf_counter()
        frags = rasterize(G.camera_to_raster(cam, K), f, size, size)
        interpolate(G.vertex_normals(cam, f), f, frags)
        _sync(device)
        if it >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(times), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--backend", default="torch", choices=["torch", "nvdiffrast"])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    ap.add_argument("--mesh-sizes", type=int, nargs="*", default=[], help="also time a 25k-vertex mesh at these sizes")
    ap.add_argument("--mesh-batch", type=int, default=1)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads"
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, {name}, backend {args.backend}")
    print(f"{'device':8} {'size':>5} {'batch':>6} {'ms fwd':>10} {'ms fwd+bwd':>11} {'cpu ms fwd+bwd':>15}")
    for size in args.sizes:
        r = time_render(args.batch, size, device, args.backend, args.warmup, args.repeat)
        cpu = f"{r['cpu']:15.1f}" if device.type == "cpu" else f"{'-':>15}"
        print(f"{device.type:8} {size:5d} {args.batch:6d} {r['fwd']:10.1f} {r['full']:11.1f} {cpu}", flush=True)
    if args.mesh_sizes:
        print("\n25k-vertex mesh, rasterize + interpolate(vertex normals):")
        print(f"{'device':8} {'size':>5} {'batch':>6} {'ms':>10} {'cpu ms':>15}")
        for size in args.mesh_sizes:
            ms, cms = time_mesh(args.mesh_batch, size, device, args.warmup, args.repeat)
            cpu = f"{cms:15.1f}" if device.type == "cpu" else f"{'-':>15}"
            print(f"{device.type:8} {size:5d} {args.mesh_batch:6d} {ms:10.1f} {cpu}", flush=True)


if __name__ == "__main__":
    main()
