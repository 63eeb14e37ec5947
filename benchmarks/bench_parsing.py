"""Parser throughput (images/s) and the face-fraction distribution behind --min-face-fraction's default.

    python benchmarks/bench_parsing.py                       # CPU: bisenet (random weights) + landmarks
    python benchmarks/bench_parsing.py --device cuda --batch-sizes 1 8 32
    python benchmarks/bench_parsing.py --weights 79999_iter.pth   # real weights (same speed, real labels)
    python benchmarks/bench_parsing.py --face-fractions docs/parse-masks-face-fraction.png \
        [--celeb-dataset /tmp/lap/parse-celeb]   # read the celebrity fractions from a parse-masks output

BiSeNet runs at 512 px (as trained) on 128 px inputs, batched; the landmark parser runs per image (dlib HOG +
68 landmarks, 128 px images upscaled to 256 for detection). Prints a table; no assertion on speed.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SHARED = Path(os.environ.get("LAP_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def _images(n: int, size: int) -> list[np.ndarray]:
    files = sorted(glob.glob(str(SHARED / "faces" / "lap-demo" / "*.png")))
    if files:
        ims = [np.array(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f in files]
    else:  # no shared data: noise (BiSeNet speed does not depend on content; dlib finds no faces)
        rng = np.random.default_rng(0)
        ims = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(8)]
    return [ims[i % len(ims)] for i in range(n)]


def bench_bisenet(device: str, batch_sizes: list[int], n: int, size: int, weights: str | None, input_size: int):
    from lapdata.parsing.bisenet import BiSeNet, BiSeNetParser

    model = weights if weights else BiSeNet()
    rows = []
    imgs = _images(n, size)
    for bs in batch_sizes:
        p = BiSeNetParser(model, device=device, batch_size=bs, input_size=input_size)
        p(imgs[:bs])  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        p(imgs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        rows.append((f"bisenet {input_size}px", device, bs, n, n / dt))
    return rows


def bench_landmarks(n: int, size: int):
    from lapdata.parsing.landmarks import LandmarkParser

    p = LandmarkParser()
    imgs = _images(n, size)
    p(imgs[:1])
    t = time.perf_counter()
    res = p(imgs)
    dt = time.perf_counter() - t
    ok = sum(r.ok for r in res)
    return [(f"landmarks ({ok}/{n} found)", "cpu", 1, n, n / dt)]


def _dataset_fractions(root: str) -> tuple[list[float], int]:
    """Face fractions of the parsed ok views of a parse-masks output (parse failures excluded), and the failures."""
    import pyarrow.parquet as pq

    t = pq.read_table(Path(root) / "photos.parquet", columns=["status", "parser", "face_fraction", "hard_reason"])
    d = t.to_pydict()
    ff, miss = [], 0
    for st, p, f, hr in zip(d["status"], d["parser"], d["face_fraction"], d["hard_reason"]):
        if st != "ok" or p is None:
            continue
        if (hr or "").startswith("parse_failed"):
            miss += 1
        else:
            ff.append(f)
    return ff, miss


def face_fractions(out_png: str, celeb_dataset: str | None = None) -> None:
    """Landmark-parse face fractions on the shared real photos, cropped as ingest stores them (128 px, lap framing:
    crop_prealigned's arcface112 rule for the celebrity sets, resize for lap-demo); histogram PNG with both sets.
    celeb_dataset: take the celebrity fractions from a parse-masks output of their ingest instead (same numbers
    without the ingest's duplicates, no re-parse)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lapdata.faces.align import crop_prealigned
    from lapdata.parsing.landmarks import LandmarkParser
    from lapdata.parsing.masks import face_fraction
    from lapdata.parsing.parse import DEFAULT_MIN_FACE_FRACTION as TH

    p = LandmarkParser()
    sets = {"celebrity-sets": sorted(glob.glob(str(SHARED / "faces" / "celebrity-sets" / "*" / "*.jpg"))),
            "lap-demo": sorted(glob.glob(str(SHARED / "faces" / "lap-demo" / "*.png")))}
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=110)
    for (name, files), colour in zip(sets.items(), ("#4477aa", "#ee7733")):
        ff, miss = [], 0
        if name == "celebrity-sets" and celeb_dataset:
            ff, miss = _dataset_fractions(celeb_dataset)
            files = [None] * (len(ff) + miss)
        else:
            for f in files:
                crop, _ = crop_prealigned(np.array(Image.open(f).convert("RGB")), 128)
                r = p.parse_one(crop)
                if r.ok:
                    ff.append(face_fraction(r.seg))
                else:
                    miss += 1
        f = np.array(ff)
        q = np.percentile(f, [0, 1, 5, 25, 50, 75, 95, 99, 100])
        print(f"{name}: {len(files)} photos, {miss} no face; face fraction percentiles 0/1/5/25/50/75/95/99/100: "
              + " ".join(f"{x:.3f}" for x in q))
        for th in (0.15, 0.2, 0.25, 0.3, 0.35, 0.4):
            print(f"  < {th:.2f}: {(f < th).sum()} ({100 * (f < th).mean():.2f} %)")
        ax.hist(f, bins=np.linspace(0, 1, 51), color=colour, alpha=0.75, density=True,
                label=f"{name} ({len(f)} faces, median {np.median(f):.2f})")
    ax.axvline(TH, color="#cc3311", ls="--", label=f"default min_face_fraction {TH:g}")
    ax.set_xlabel("face fraction (RCL face-group pixels / all pixels), 128 px crops")
    ax.set_ylabel("density")
    ax.set_title("landmark parser on the shared real photos", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png)
    print(f"figure: {out_png}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("-n", type=int, default=16, help="images per measurement")
    ap.add_argument("--size", type=int, default=128, help="input image side (stored faces)")
    ap.add_argument("--input-size", type=int, default=512, help="BiSeNet input side")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--skip-landmarks", action="store_true")
    ap.add_argument("--face-fractions", metavar="PNG", default=None)
    ap.add_argument("--celeb-dataset", default=None, help="with --face-fractions: a parse-masks output of the "
                    "ingested celebrity sets to read instead of re-parsing")
    a = ap.parse_args(argv)
    if a.face_fractions:
        face_fractions(a.face_fractions, a.celeb_dataset)
        return
    rows = bench_bisenet(a.device, a.batch_sizes, a.n, a.size, a.weights, a.input_size)
    if not a.skip_landmarks:
        rows += bench_landmarks(a.n, a.size)
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {dev}; torch {torch.__version__}; input images {a.size} px")
    print(f"{'parser':<28} {'device':<8} {'batch':>5} {'images':>6} {'images/s':>9}")
    for name, d, bs, n, ips in rows:
        print(f"{name:<28} {d:<8} {bs:>5} {n:>6} {ips:>9.2f}")


if __name__ == "__main__":
    sys.exit(main())
