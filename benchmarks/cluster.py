"""The Ray engine and object storage on this machine: ingest with the local and the Ray engine, and shard reads from
a local S3 server against local disk (issue 12).

    python benchmarks/cluster.py [--per-id N] [--id-filter] [--work DIR]

1. Ingest of the shared celebrity sets (``../shared/data/faces/celebrity-sets``, pre-aligned 112 px; up to
   ``--per-id`` photos per identity, all with 0) through the real command line, as a user runs it:
   ``--engine local --workers 2``; ``--engine ray`` (a one-machine Ray started by the command: start-up included);
   ``--engine ray --ray-address auto`` into a running ``ray start --head`` (steady state). CPU-seconds are the
   machine's (``/proc/stat`` busy time over the run: every process, Ray's daemons included; run it on an
   otherwise idle machine). The three outputs are checked to be the same shards (sha256 of every tar).
2. Reading every shard of that dataset with the one shard reader (``lapdata.dataset.reader.tar_samples``, verified) from
   local disk and from a local S3 server (moto's server mode on 127.0.0.1, in this process: its CPU is counted).

Prints two tables (markdown) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETS = REPO.parent / "shared" / "data" / "faces" / "celebrity-sets"
BIN = Path(sys.executable).parent
REPEAT = 5  # passes over the shards in the read table


def busy_seconds() -> float:
    """Machine-wide CPU-seconds spent so far (user + nice + system + irq + softirq, all cores)."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    ticks = sum(int(parts[i]) for i in (0, 1, 2, 5, 6))
    return ticks / os.sysconf("SC_CLK_TCK")


def subset(dst: Path, per_id: int) -> int:
    n = 0
    for d in sorted(p for p in SETS.iterdir() if p.is_dir()):
        files = sorted(d.glob("*.jpg"))[: per_id or None]
        (dst / d.name).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, dst / d.name / f.name)
        n += len(files)
    return n


def run(cmd: list[str], env: dict) -> tuple[float, float]:
    c0, t0 = busy_seconds(), time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0, busy_seconds() - c0


def tar_digests(ds: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((ds / "shards").glob("*.tar"))}


def ingest_table(work: Path, photos: int, src: Path, id_filter: bool, env: dict) -> Path:
    base = [str(BIN / "lapdata"), "ingest", "folders", str(src), "--min-images", "2", "--no-progress",
            "--samples-per-shard", "1"] + (["--id-filter"] if id_filter else [])
    rows, outs = [], {}
    cases = [("local, --workers 2", ["--workers", "2"]),
             ("ray, started by the command", ["--engine", "ray"]),
             ("ray, running cluster (--ray-address auto)", ["--engine", "ray", "--ray-address", "auto"])]
    for name, extra in cases:
        out = work / f"out-{len(outs)}"
        shutil.rmtree(out, ignore_errors=True)
        started = "auto" in extra
        if started:
            subprocess.run([str(BIN / "ray"), "start", "--head", "--num-cpus", "2", "--include-dashboard=false",
                            "--disable-usage-stats"], env=env, check=True, capture_output=True)
        try:
            wall, cpu = run(base + ["--out", str(out)] + extra, env)
        finally:
            if started:
                subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True)
        outs[name] = out
        rows.append((name, wall, cpu))
    ref = tar_digests(outs[cases[0][0]])
    same = all(tar_digests(o) == ref for o in outs.values())
    print(f"\n### ingest: {photos} photos, pre-aligned{' + --id-filter' if id_filter else ''}; "
          f"{len(ref)} shards; outputs identical across engines: {'yes' if same else 'NO'}\n")
    print("| engine | wall s | CPU-s (machine) | photos/CPU-s | photos/s | CPU overhead vs local |")
    print("|---|---|---|---|---|---|")
    local_cpu = rows[0][2]
    for name, wall, cpu in rows:
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {photos / cpu:.1f} | {photos / wall:.1f} | "
              f"{cpu / local_cpu:.2f}x |")
    if not same:
        sys.exit("the engines wrote different shards")
    return outs[cases[0][0]]


def read_table(ds: Path, env: dict) -> None:
    import logging

    import fsspec
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request

    from lapdata.core import storage
    from lapdata.dataset.reader import tar_samples

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = f"http://{host}:{port}"
    fsspec.filesystem("s3").mkdir("bench")
    tars = sorted((ds / "shards").glob("*.tar"))
    for t in tars:
        storage.upload(t, f"s3://bench/ds/shards/{t.name}")
    nbytes = sum(t.stat().st_size for t in tars)
    print(f"\n### reading {len(tars)} shards ({nbytes / 2**20:.1f} MiB) {REPEAT} times, verified, one process\n")
    print("| source | samples | images | wall s | CPU-s | MiB/s | images/s | ratio to disk |")
    print("|---|---|---|---|---|---|---|---|")
    base = None
    for name, urls in (("local disk", [str(t) for t in tars]),
                       ("local S3 server (moto, 127.0.0.1)", [f"s3://bench/ds/shards/{t.name}" for t in tars])):
        c0, t0 = time.process_time(), time.perf_counter()
        samples = images = 0
        for _ in range(REPEAT):
            for s in tar_samples(urls):
                samples += 1
                images += sum(1 for k in s if k[:3].isdigit())
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        base = base or wall
        print(f"| {name} | {samples} | {images} | {wall:.2f} | {cpu:.2f} | {REPEAT * nbytes / 2**20 / wall:.1f} | "
              f"{images / wall:.0f} | {wall / base:.2f}x |")
    server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-id", type=int, default=0, help="photos per identity (0: all 5,453)")
    ap.add_argument("--id-filter", action="store_true", help="ingest with --id-filter (dlib 128-D: model actors)")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    a = ap.parse_args()
    if not SETS.is_dir():
        sys.exit(f"{SETS}: the shared celebrity sets are not here")
    work = Path(a.work or tempfile.mkdtemp(prefix="lap-cluster-"))
    src = work / "src"
    shutil.rmtree(src, ignore_errors=True)
    photos = subset(src, a.per_id)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "LAPDATA_STAGING": str(work / "staging")}
    print(f"machine: {os.cpu_count()} CPUs ({platform()}), {time.strftime('%Y-%m-%d')}")
    ds = ingest_table(work, photos, src, a.id_filter, env)
    read_table(ds, env)


def platform() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return sys.platform


if __name__ == "__main__":
    main()
