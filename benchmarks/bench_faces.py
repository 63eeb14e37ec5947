"""Face pipeline throughput on CPU: detection + landmarks + alignment, pre-aligned crops, dlib embeddings, pHash.

  OMP_NUM_THREADS=1 python benchmarks/bench_faces.py [--data ../shared/data/faces] [--n 20] [--json out.json]

Prints a table (items/s, one process). Needs ../shared/data/faces (wild-photos, celebrity-sets).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lapdata.faces.embed import DlibEmbedder
from lapdata.faces.align import align_face, crop_prealigned
from lapdata.faces.detectors import DlibDetector
from lapdata.faces.idfilter import phash

REPO = Path(__file__).resolve().parents[1]


def timed(fn, items, reps=1):
    t0 = time.perf_counter()
    n = 0
    for _ in range(reps):
        for it in items:
            fn(it)
            n += 1
    dt = time.perf_counter() - t0
    return n / dt, dt / n * 1000


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "faces"))
    ap.add_argument("--n", type=int, default=20, help="photos per measurement")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    data = Path(args.data)
    wild = sorted((data / "wild-photos").glob("img*.jpg"))[: args.n]
    wild_imgs = [np.asarray(Image.open(f).convert("RGB")) for f in wild]
    celeb = sorted((data / "celebrity-sets" / "Barack_Obama").glob("*.jpg"))[: args.n * 4]
    celeb_imgs = [np.asarray(Image.open(f).convert("RGB")) for f in celeb]
    mean_px = np.mean([x.shape[0] * x.shape[1] for x in wild_imgs]) / 1e6

    rows = []
    for ups, max_side in ((0, 1024), (1, 1024), (1, 640)):
        det = DlibDetector(upsample=ups, max_side=max_side)
        faces = {}

        def run(i, det=det, faces=faces):
            fs = det(wild_imgs[i])
            faces[i] = fs
            for f in fs:
                align_face(wild_imgs[i], f, 128)

        ips, ms = timed(run, range(len(wild_imgs)))
        nf = sum(len(v) for v in faces.values())
        rows.append((f"detect+landmarks+align (HOG, upsample={ups}, max_side={max_side})", f"{len(wild_imgs)} wild photos, {mean_px:.2f} MP avg, {nf} faces", ips, ms))
    det = DlibDetector()
    found = [(img, f) for img in wild_imgs for f in det(img)]
    ips, ms = timed(lambda p: align_face(p[0], p[1], 128), found, reps=5)
    rows.append(("align_face only (128 px)", f"{len(found)} faces x5", ips, ms))
    ips, ms = timed(lambda x: crop_prealigned(x, 128), celeb_imgs, reps=3)
    rows.append(("crop_prealigned arcface112 -> 128", f"{len(celeb_imgs)} crops x3", ips, ms))
    crops = [crop_prealigned(x, 128)[0] for x in celeb_imgs]
    emb = DlibEmbedder()
    emb(crops[:2])  # warm-up
    t0 = time.perf_counter()
    emb(crops)
    dt = time.perf_counter() - t0
    rows.append(("DlibEmbedder (5-pt + chip + ResNet, batch 64)", f"{len(crops)} crops", len(crops) / dt, dt / len(crops) * 1000))
    t0 = time.perf_counter()
    chips = emb.chips(crops)
    dt_chip = time.perf_counter() - t0
    rows.append(("  of which 5-pt predictor + get_face_chip", f"{len(crops)} crops", len(crops) / dt_chip, dt_chip / len(crops) * 1000))
    ips, ms = timed(phash, crops, reps=3)
    rows.append(("phash (64-bit DCT)", f"{len(crops)} crops x3", ips, ms))
    del chips

    head = f"bench_faces  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  {platform.processor() or platform.machine()}  cpus={os.cpu_count()}  OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}  load={os.getloadavg()[0]:.1f}"
    print(head)
    print(f"{'step':58s} {'items':36s} {'items/s':>9s} {'ms/item':>9s}")
    for name, what, ips, ms in rows:
        print(f"{name:58s} {what:36s} {ips:9.1f} {ms:9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"header": head, "rows": [dict(step=a, items=b, per_s=c, ms=d) for a, b, c, d in rows]}, indent=1))


if __name__ == "__main__":
    main()
