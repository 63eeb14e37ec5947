"""Ingest benchmarks: throughput (photos/s per core), shard read throughput vs loose files, peak memory flatness.

    python benchmarks/bench_ingest.py [--data ../shared/data/faces] [--per-id 100] [--ids 12] [--copies 4]
                                      [--skip-filter] [--skip-memory] [--out /tmp/lap-bench]

Prints one table. Cases:

* ingest pre-aligned: celebrity-sets (ArcFace 112 crops, fixed crop rule), ``--per-id`` photos of ``--ids``
  identities, 1 worker -> photos/s (= per core);
* ingest detect+align: wild-photos/identities.csv (dlib HOG + 68 landmarks + similarity align), 1 worker;
* ingest pre-aligned + ``--id-filter`` (dlib 128-D embeddings, robust centre), 1 worker;
* read: decoded images/s from the shards with webdataset (1 process, and a 2-worker torch DataLoader) vs decoding the
  same photos as loose JPEG files (1 process) -> ratio;
* memory: peak RSS of ``lapdata ingest`` (a child process, sampled every 0.2 s) over the celebrity sets copied
  ``--copies`` times under new identity names (symlinks; 5.4k photos per copy -> 21k+ with 4), against one copy:
  flat = the peak does not grow with the number of photos.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def subset_folders(src: Path, dst: Path, per_id: int, ids: int, copies: int = 1) -> int:
    """Symlinked copy of celebrity-sets: ``ids`` identities x ``per_id`` photos, ``copies`` times under new names."""
    if dst.exists():
        shutil.rmtree(dst)
    n = 0
    names = sorted(p.name for p in src.iterdir() if p.is_dir())[:ids]
    for c in range(copies):
        for name in names:
            files = sorted((src / name).glob("*"))[:per_id]
            d = dst / (name if copies == 1 else f"{name}_copy{c}")
            d.mkdir(parents=True)
            for f in files:
                (d / f.name).symlink_to(f.resolve())
                n += 1
    return n


def time_ingest(kind: str, src: Path, out: Path, **kw) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of this process, stats) of one in-process ingest (1 worker)."""
    from lapdata.ingest.config import IngestConfig
    from lapdata.ingest.run import run_ingest

    if out.exists():
        shutil.rmtree(out)
    cfg = IngestConfig(kind=kind, src=str(src), out=str(out), progress=False, **kw)
    t0, c0 = time.perf_counter(), time.process_time()
    st = run_ingest(cfg)
    return time.perf_counter() - t0, time.process_time() - c0, st


def rate(n: int, wall: float, cpu: float, unit: str = "photos") -> str:
    """Throughput per core: n / CPU seconds (robust on a shared machine) and n / wall seconds."""
    return f"{n / cpu:.1f} {unit}/CPU-s ({n / wall:.1f}/wall-s)"


def read_shards(out: Path, workers: int) -> tuple[int, float, float]:
    import webdataset as wds

    from lapdata.dataset.sample import decode_image
    from lapdata.dataset.reader import shard_urls

    urls = [u for s in ("train", "val", "test") for u in shard_urls(out, s)]

    def decode(d):
        n = 0
        for k, v in d.items():
            if k.endswith(".jpg"):
                decode_image(v)
                n += 1
        return n

    t0, c0 = time.perf_counter(), time.process_time()
    if workers <= 1:
        n = sum(decode(d) for d in wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    else:
        import torch

        ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False, nodesplitter=None,
                            workersplitter=wds.split_by_worker).map(decode)
        dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
        n = sum(int(x) for x in dl)
    return n, time.perf_counter() - t0, time.process_time() - c0  # CPU: the parent only when workers > 1


def read_loose(files: list[Path]) -> tuple[int, float]:
    from lapdata.dataset.sample import decode_image

    t0, c0 = time.perf_counter(), time.process_time()
    for f in files:
        decode_image(f.read_bytes())
    return len(files), time.perf_counter() - t0, time.process_time() - c0


def peak_rss_of(cmd: list[str]) -> tuple[float, float, list[float]]:
    """Run cmd; (peak RSS MiB of the process tree, seconds, RSS samples MiB)."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples: list[float] = []

    def tree_rss(pid: int) -> float:
        total = 0
        pids = [pid]
        try:
            out = subprocess.run(["ps", "-o", "pid=,rss=", "--ppid", str(pid)], capture_output=True, text=True).stdout
            pids += [int(l.split()[0]) for l in out.splitlines() if l.strip()]
        except Exception:
            pass
        for q in pids:
            try:
                with open(f"/proc/{q}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024

    t0 = time.perf_counter()
    stop = False

    def sampler():
        while not stop:
            samples.append(tree_rss(p.pid))
            time.sleep(0.2)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    p.wait()
    stop = True
    th.join()
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} failed with {p.returncode}")
    return max(samples or [0.0]), time.perf_counter() - t0, samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "faces"))
    ap.add_argument("--per-id", type=int, default=100)
    ap.add_argument("--ids", type=int, default=12)
    ap.add_argument("--filter-per-id", type=int, default=30)
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--mem-per-id", type=int, default=0, help="photos per identity in the memory test (0 = all)")
    ap.add_argument("--skip-filter", action="store_true")
    ap.add_argument("--skip-detect", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--out", default="/tmp/lap-bench")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    data = Path(a.data)
    work = Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str]] = []
    celeb = data / "celebrity-sets"

    # pre-aligned
    n = subset_folders(celeb, work / "celeb-src", a.per_id, a.ids)
    sec, cpu, st = time_ingest("folders", work / "celeb-src", work / "celeb")
    rows.append(("ingest pre-aligned (celebrity-sets), 1 worker", f"{n} photos, {sec:.1f} s wall, {cpu:.1f} s CPU",
                 rate(n, sec, cpu)))

    # read throughput
    files = [p for p in (work / "celeb-src").rglob("*.jpg")]
    nl, tl, cl = read_loose(files)
    n1, t1, c1 = read_shards(work / "celeb", 1)
    n2, t2, _ = read_shards(work / "celeb", 2)
    rows.append(("read loose source JPEGs (112 px), 1 process", f"{nl} images, {tl:.2f} s wall, {cl:.2f} s CPU",
                 rate(nl, tl, cl, "images")))
    rows.append(("read shards (128 px, webdataset), 1 process", f"{n1} images, {t1:.2f} s wall, {c1:.2f} s CPU",
                 rate(n1, t1, c1, "images") + f"; ratio shards/loose x{(n1 / t1) / (nl / tl):.2f} wall"))
    rows.append(("read shards, DataLoader 2 workers", f"{n2} images, {t2:.2f} s wall",
                 f"{n2 / t2:.0f} images/wall-s; ratio shards/loose x{(n2 / t2) / (nl / tl):.2f} wall"))

    if not a.skip_detect:
        csv = data / "wild-photos" / "identities.csv"
        sec, cpu, st = time_ingest("csv", csv, work / "wild", min_images=1)
        n = st["photos"]
        rows.append(("ingest detect+align (wild-photos, dlib), 1 worker", f"{n} photos ({st['status_counts'].get('ok', 0)}"
                     f" ok), {sec:.1f} s wall, {cpu:.1f} s CPU", rate(n, sec, cpu)))

    if not a.skip_filter:
        n = subset_folders(celeb, work / "celebf-src", a.filter_per_id, a.ids)
        sec, cpu, st = time_ingest("folders", work / "celebf-src", work / "celebf", id_filter=True)
        rows.append(("ingest pre-aligned + --id-filter (dlib), 1 worker", f"{n} photos ({st['reason_counts'].get('id_outlier', 0)}"
                     f" outliers), {sec:.1f} s wall, {cpu:.1f} s CPU", rate(n, sec, cpu)))

    if not a.skip_memory:
        for copies in (1, a.copies):
            n = subset_folders(celeb, work / f"mem{copies}-src", a.mem_per_id or 10**9, 10**3, copies)
            out = work / f"mem{copies}"
            if out.exists():
                shutil.rmtree(out)
            cmd = [sys.executable, "-m", "lapdata", "ingest", "folders", str(work / f"mem{copies}-src"), "--out",
                   str(out), "--no-progress", "--samples-per-shard", "8"]
            import resource

            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            peak, sec, samples = peak_rss_of(cmd)
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
            samples = [v for v in samples if v > 0]
            q = [samples[max(0, int(len(samples) * f) - 1)] for f in (0.25, 0.5, 0.75, 1.0)] if samples else []
            rows.append((f"peak RSS, ingest {n} photos (celebrity sets x{copies})", f"{sec:.0f} s wall, {cpu:.0f} s CPU,"
                         f" {n / max(cpu, 1e-9):.0f} photos/CPU-s", f"{peak:.0f} MiB (RSS at 25/50/75/100%: "
                         + "/".join(f"{v:.0f}" for v in q) + ")"))

    w = max(len(r[0]) for r in rows)
    print(f"\nbench_ingest  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  {platform.node()}  "
          f"{os.cpu_count()} cpu  python {platform.python_version()}")
    w2 = max(len(r[1]) for r in rows)
    print(f"{'case':<{w}}  {'work':<{w2}}  result")
    for r in rows:
        print(f"{r[0]:<{w}}  {r[1]:<{w2}}  {r[2]}")


if __name__ == "__main__":
    main()
