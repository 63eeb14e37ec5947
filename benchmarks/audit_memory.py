"""Peak memory of `lapdata audit` on a synthetic dataset of N manifest rows (issue 21, defect 8).

    python benchmarks/audit_memory.py --rows 1000000 --keep /tmp/audit-1m   # builds once, then audits it

The dataset is written by the real writer (``lapdata.dataset.writer.write_shard`` per shard, then ``finalize_dataset``):
identities of ``--per-id`` photos (one in twenty a skipped duplicate row), 64 samples per shard, every view the
same tiny JPEG (the tars are small; what grows is the manifests). Then ``lapdata audit DIR --json`` runs as a
subprocess with and without ``--no-contents``; the child's own peak RSS comes from ``os.wait4``. Prints one line per
mode: rows, peak RSS, bytes per row, CPU seconds, faults.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build(out: Path, rows: int, per_id: int, per_shard: int = 64) -> None:
    from lapdata.dataset.manifests import finalize_dataset
    from lapdata.dataset.sample import IdentitySample, View, sample_key
    from lapdata.dataset.split import split_of
    from lapdata.dataset.writer import ShardResult, ShardTask, write_shard

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buf, format="JPEG", quality=90)
    jpg = buf.getvalue()
    n_ids = rows // per_id
    by_split: dict[str, list[int]] = {}
    for k in range(n_ids):
        by_split.setdefault(split_of(f"person{k:07d}", 0, (0.75, 0.125, 0.125)), []).append(k)
    for split, ids in sorted(by_split.items()):
        for s0 in range(0, len(ids), per_shard):
            samples, rws = [], []
            for k in ids[s0 : s0 + per_shard]:
                ident = f"person{k:07d}"
                views = []
                for j in range(per_id):
                    pid = hashlib.sha256(f"{ident}/{j}".encode()).hexdigest()[:16]
                    row = {"photo_id": pid, "identity": ident, "split": split, "source": "folders",
                           "path": f"{ident}/{j:04d}.jpg", "sha256": hashlib.sha256(pid.encode()).hexdigest(),
                           "orig_width": 112, "orig_height": 112, "num_faces": 1, "box": [8.0, 8.0, 104.0, 104.0],
                           "crop_rule": "aligned:arcface112;resize=64", "size": 64, "phash": f"{k * 31 + j:016x}"}
                    if j % 20 == 19:
                        row.update(status="skipped", reason="duplicate", dup_of=rws[-1]["photo_id"])
                    else:
                        row["status"] = "ok"
                        views.append(View(image=None, meta={"photo_id": pid, "path": row["path"]}, encoded=("jpg", jpg)))
                    rws.append(row)
                samples.append(IdentitySample(sample_key(ident), ident, split, views, {"chunk": 0}))
            write_shard(out, ShardTask(f"{split}-{s0 // per_shard:06d}", split, ()), ShardResult(samples, rws))
    finalize_dataset(out, config={"min_images": 1}, run={"planned_shards": None, "part": [0, 1], "failed_shards": []})


def audit_rss(out: Path, contents: bool) -> tuple[float, float, int, int]:
    """(peak RSS MB, CPU seconds, exit status, faults) of `lapdata audit out --json` in a child process."""
    cmd = [sys.executable, "-m", "lapdata", "audit", str(out), "--json"] + ([] if contents else ["--no-contents"])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryFile("w+") as fo:
        p = subprocess.Popen(cmd, stdout=fo, stderr=subprocess.STDOUT, env=env, text=True)
        _, status, ru = os.wait4(p.pid, 0)
        fo.seek(0)
        text = fo.read()
    try:
        faults = json.loads(text)["num_faults"]
    except (ValueError, KeyError):
        print(text[-2000:], file=sys.stderr)
        faults = -1
    return ru.ru_maxrss / 1024, ru.ru_utime + ru.ru_stime, os.waitstatus_to_exitcode(status), faults


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--per-id", type=int, default=10)
    ap.add_argument("--keep", default=None, help="dataset folder (built when absent, kept)")
    ap.add_argument("--modes", default="no-contents,contents")
    a = ap.parse_args(argv)
    out = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="lap-audit-mem-")) / "ds"
    if not (out / "stats.json").exists():
        t0 = time.process_time()
        build(out, a.rows, a.per_id)
        print(f"built {out}: {a.rows} rows in {time.process_time() - t0:.0f} CPU-s", flush=True)
    rows = json.loads((out / "stats.json").read_text())["photos"]
    for mode in a.modes.split(","):
        rss, cpu, rc, faults = audit_rss(out, mode == "contents")
        print(f"audit {mode:11s}: {rows} rows, peak RSS {rss:.0f} MB ({rss * 2**20 / rows:.0f} B/row), "
              f"{cpu:.0f} CPU-s, exit {rc}, {faults} faults", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
