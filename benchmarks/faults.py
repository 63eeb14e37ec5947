"""The fault catalogue of issue 11 ("Hardening") and issue 21 (the new surfaces), run against the real command lines.

    python benchmarks/faults.py [--only SUBSTRING] [--keep DIR]

Every case builds its own bad input in a temporary folder and runs ``lapdata`` (and, for checkpoints, ``lapmodel``)
as a subprocess, exactly as a user would. A case passes when the command ends the way the contract says: a
one-line ``error: ...`` and exit 2 for an input that makes the run meaningless, a counted row (status error or
skipped, with its reason) for one bad record, an audit fault (exit 1) for a tampered dataset, never a traceback,
never a file written outside the output, and never a record without a row. Memory cases read the child's peak RSS
from ``wait4``. Prints one table (case, expected, observed, pass) and the summary line
``faults: N/N pass, M records lost without a row``; exit status 1 when a case fails. Issue 21's cases (object store on
a local S3 server, Ray addresses, concurrent writers, output names, empty paths, numbers) are in faults_issue21.py.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repository: the test builders (tests/builders.py) are shared with the tests
from tests.builders import (flip_first_jpeg, huge_png, jpeg_bytes, make_aligned_folders, pattern,  # noqa: E402
                            rewrite_parquet)

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------------------ running commands


@dataclass
class Run:
    rc: int
    out: str
    err: str
    rss_mb: float
    seconds: float

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.out + self.err

    @property
    def one_line_error(self) -> bool:
        lines = [ln for ln in self.err.splitlines() if ln.strip()]
        return self.rc == 2 and not self.traceback and len(lines) >= 1 and lines[-1].startswith("error: ") and \
            sum(ln.startswith("error: ") for ln in lines) == 1

    def last_error(self) -> str:
        lines = [ln for ln in self.err.splitlines() if ln.strip()]
        return (lines[-1] if lines else "")[:110]


def cli(*args: str, prog: str = "lapdata", timeout: float = 300, wait: bool = True, env: dict | None = None,
        cwd: str | Path | None = None):
    """Run ``python -m {prog} args`` -> a Run (no RSS: see ``cli_rss``), or the Popen when not ``wait``; ``env``:
    variables added to the children's environment, ``cwd``: their working folder."""
    cmd = [sys.executable, "-m", prog, *map(str, args)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**ENV, **(env or {})}, text=True,
                         errors="replace", cwd=cwd)
    if not wait:
        return p
    t0 = time.time()
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    return Run(p.returncode, out, err, float("nan"), time.time() - t0)


_LAUNCHER = ("import os, resource, subprocess, sys\n"
             "p = subprocess.Popen(sys.argv[3:])\n"
             "try:\n    rc = p.wait(timeout=float(sys.argv[2]))\nexcept subprocess.TimeoutExpired:\n"
             "    p.kill()\n    rc = p.wait()\n"
             "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
             "sys.exit(rc)\n")


def cli_rss(*args: str, prog: str = "lapdata", timeout: float = 300) -> Run:
    """Like ``cli`` but with the command's own peak RSS, measured by a small launcher process: a child forked
    from this harness would count the harness's resident pages in its peak."""
    cmd = [sys.executable, "-m", prog, *map(str, args)]
    t0 = time.time()
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe, \
            tempfile.NamedTemporaryFile("r") as peak:
        p = subprocess.run([sys.executable, "-c", _LAUNCHER, peak.name, str(timeout), *cmd], stdout=fo, stderr=fe,
                           env=ENV, text=True)
        fo.seek(0)
        fe.seek(0)
        rss = int(peak.read() or 0) / 1024
        return Run(p.returncode, fo.read(), fe.read(), rss, time.time() - t0)


# ------------------------------------------------------------------------------------------------ inputs


def folders(root: Path, n_ids: int = 3, per_id: int = 6, seed: int = 0) -> Path:
    """The catalogue's photo source: ``person{i}/{j}.jpg``, the test builders' aligned folders without faults."""
    return make_aligned_folders(root, n_ids, per_id, faults=False, seed=seed)


def count_inputs(root: Path) -> int:
    """Records of a folders source: each file or symlink in an identity folder; an empty or symlinked identity
    folder is one record (its row says why)."""
    n = 0
    for d in root.iterdir():
        if d.name.startswith(".") or not d.is_dir():
            continue
        if d.is_symlink():
            n += 1
            continue
        files = [f for f in d.rglob("*") if not f.name.startswith(".") and (f.is_symlink() or not f.is_dir())]
        n += max(1, len(files))
    return n


def rows(out: Path) -> list[dict]:
    return pq.read_table(out / "photos.parquet").to_pylist() if (out / "photos.parquet").exists() else []


def ingest(src: Path, out: Path | str, *extra: str, kind: str = "folders", env: dict | None = None) -> Run:
    return cli("ingest", kind, src, "--out", out, "--no-progress", "--size", "32", "--samples-per-shard", "1",
               "--min-images", "1", *extra, env=env)


def dataset(ws: Path, name: str = "ds", n_ids: int = 3) -> Path:
    out = ws / name
    r = ingest(folders(ws / f"{name}-src", n_ids=n_ids), out)
    assert r.rc == 0, r.err
    return out


def audit(out: Path) -> Run:
    return cli("audit", out, "--json")


def audit_faults(r: Run) -> list[str]:
    try:
        return json.loads(r.out)["faults"]
    except (ValueError, KeyError):
        return []


class _Zeros(io.RawIOBase):
    """``n`` zero bytes as a stream, never held in memory."""

    def __init__(self, n: int):
        self.n = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        k = min(len(b), self.n)
        b[:k] = bytes(k)
        self.n -= k
        return k


def add_zero_member(tar: Path, size: int) -> None:
    """Append a member of ``size`` zero bytes to a shard (a sample of its own, zzbig-0000)."""
    with tarfile.open(tar, "a") as tf:
        ti = tarfile.TarInfo("zzbig-0000-000.bin")
        ti.size = size
        tf.addfile(ti, io.BufferedReader(_Zeros(size)))


# ------------------------------------------------------------------------------------------------ the catalogue

Result = tuple[str, bool, int]  # observed, passed, records lost without a row
CASES: list[tuple[str, str, Callable[[Path], Result]]] = []


def case(name: str, expected: str):
    def deco(fn):
        CASES.append((name, expected, fn))
        return fn
    return deco


def lost_rows(src: Path, out: Path) -> int:
    return max(0, count_inputs(src) - len(rows(out)))


@case("1 parse-masks shard field outside", "exit 2 one line, victim untouched, audit fault")
def _(ws):
    ds = dataset(ws)
    victim = ws / "victim.tar"
    victim.write_bytes(b"precious")
    js = sorted((ds / "shards").glob("*.json"))[0]
    doc = json.loads(js.read_text())
    doc["shard"] = "../../victim"
    js.write_text(json.dumps(doc))
    r = cli("parse-masks", ds, "--parser", "ground-truth", "--no-progress")
    a = audit(ds)
    ok = r.one_line_error and victim.read_bytes() == b"precious" and a.rc == 1 and not (ws / "victim.parquet").exists()
    return f"rc {r.rc}: {r.last_error()[:60]}; audit rc {a.rc}", ok, 0


@case("1 json/parquet paths leave the dataset", "audit exit 1: absolute, '..', symlinked tar, never read")
def _(ws):
    ds = dataset(ws)
    js = sorted((ds / "shards").glob("*.json"))[0]
    doc = json.loads(js.read_text())
    doc["path"] = "/etc/passwd"
    js.write_text(json.dumps(doc))
    tars = sorted((ds / "shards").glob("*.tar"))
    (ws / "out.tar").write_bytes(tars[1].read_bytes())
    tars[1].unlink()
    tars[1].symlink_to(ws / "out.tar")
    rewrite_parquet(ds / "shards.parquet", "path", 2, "../x/shards/a.tar")
    a = audit(ds)
    f = "\n".join(audit_faults(a))
    ok = a.rc == 1 and "(absolute path)" in f and "resolves outside" in f and "('..' in the path)" in f
    return f"audit rc {a.rc}, {len(audit_faults(a))} faults", ok and not a.traceback, 0


@case("2 16-bit grey PNG (I;16) and other modes", "decoded right (not white) or one error row naming the mode")
def _(ws):
    src = ws / "src"
    d = src / "modes"
    d.mkdir(parents=True)
    buf = io.BytesIO()
    Image.fromarray(np.full((112, 112), 40000, np.uint16)).save(buf, format="PNG")
    (d / "i16.png").write_bytes(buf.getvalue())
    for name, im, fmt in (("la.png", Image.new("LA", (112, 112), (90, 255)), "PNG"),
                          ("cmyk.jpg", Image.new("CMYK", (112, 112), (0, 0, 0, 0)), "JPEG"),
                          ("p.png", Image.new("P", (112, 112), 3), "PNG"),
                          ("f.tif", Image.fromarray(np.full((112, 112), 5000.0, np.float32)), "TIFF")):
        b = io.BytesIO()
        im.save(b, format=fmt)
        (d / name).write_bytes(b.getvalue())
    out = ws / "out"
    r = ingest(src, out, "--no-dedup", "--size", "112")
    by = {x["path"]: x for x in rows(out)}
    sys.path.insert(0, str(REPO))
    from lapdata.dataset.sample import decode_sample
    from lapdata.dataset.reader import iter_samples

    mean = {v.meta["path"]: float(v.image.mean()) for s in iter_samples(out) for v in decode_sample(s).views}
    ok = (r.rc == 0 and abs(mean.get("modes/i16.png", 255) - 40000 / 257) < 3 and by["modes/f.tif"]["status"] == "error"
          and "mode F" in by["modes/f.tif"]["error"] and all(by[f"modes/{n}"]["status"] == "ok" for n in
                                                             ("la.png", "cmyk.jpg", "p.png")))
    return f"i16 stored mean {mean.get('modes/i16.png', 0):.1f} (want 155.6); F: {by['modes/f.tif']['status']}", ok, \
        lost_rows(src, out)


@case("2 shard JPEG with flipped bytes", "audit fault; parse-masks: one corrupt_image row, not re-hashed")
def _(ws):
    ds = dataset(ws)
    flip_first_jpeg(sorted((ds / "shards").glob("*.tar"))[0])
    a = audit(ds)
    r = cli("parse-masks", ds, "--parser", "ground-truth", "--min-face-fraction", "0", "--no-progress")
    bad = [x for x in rows(ds) if x["reason"] == "corrupt_image"]
    ok = a.rc == 1 and any("image_sha256" in f for f in audit_faults(a)) and r.rc == 0 and len(bad) == 1
    return f"audit rc {a.rc}; parse-masks rc {r.rc}, {len(bad)} corrupt_image row", ok and not r.traceback, 0


@case("3 non-UTF-8 file and identity names", "exit 0, one row each (escaped + flagged), rerun exit 0")
def _(ws):
    src = folders(ws / "src", n_ids=2)
    bad = os.fsencode(src) + b"/caf\xe9"
    os.mkdir(bad)
    for j in range(6):
        with open(bad + f"/{j}.jpg".encode(), "wb") as f:
            f.write(jpeg_bytes(pattern(9000 + j)))
    with open(os.fsencode(src / "person0") + b"/\xff.jpg", "wb") as f:
        f.write(jpeg_bytes(pattern(9100)))
    out = ws / "out"
    r1, r2 = ingest(src, out), ingest(src, out)
    rs = rows(out)
    esc = sum(bool(x["name_escaped"]) for x in rs)
    ok = r1.rc == 0 and r2.rc == 0 and len(rs) == 19 and esc == 7 and all(x["status"] == "ok" for x in rs)
    return f"rc {r1.rc}/{r2.rc}, {len(rs)} rows of 19, {esc} escaped", ok and not r1.traceback, max(0, 19 - len(rs))


def _audit_edit(ws: Path, edit: Callable[[Path], None], want: str) -> Result:
    ds = dataset(ws)
    edit(ds)
    a = audit(ds)
    return f"audit rc {a.rc}", a.rc == 1 and any(want in f for f in audit_faults(a)) and not a.traceback, 0


def _stats(ds: Path, **kw) -> None:
    st = json.loads((ds / "stats.json").read_text())
    for k, v in kw.items():
        if k == "failed":
            st["run"]["failed_shards"] = v
        else:
            st[k] = v
    (ds / "stats.json").write_text(json.dumps(st))


@case("4 stats complete: false", "audit exit 1")
def _(ws):
    return _audit_edit(ws, lambda ds: _stats(ds, complete=False), "incomplete")


@case("4 stats with failed shards", "audit exit 1")
def _(ws):
    return _audit_edit(ws, lambda ds: _stats(ds, failed=[{"shard": "train-000007", "error": "boom"}]), "failed")


@case("4 edited shards/*.parquet", "audit exit 1 (parquet_sha256)")
def _(ws):
    return _audit_edit(ws, lambda ds: rewrite_parquet(sorted((ds / "shards").glob("*.parquet"))[0], "reason", 0,
                                                      "x"), "parquet_sha256")


@case("4 edited photos.parquet sha256/path/reason/id_score", "audit exit 1 for each")
def _(ws):
    got = []
    for k, (col, val) in enumerate((("sha256", "0" * 64), ("path", "x.jpg"), ("reason", "dup"), ("id_score", 0.5))):
        obs, ok, _ = _audit_edit(ws / str(k), lambda ds: rewrite_parquet(ds / "photos.parquet", col, 1, val),
                                 "differs from")
        got.append(ok)
    return f"{sum(got)}/4 edits reported", all(got), 0


@case("4 re-encoded near duplicate across splits", "ingest removes the held-out copy (issue 21): audit exit 0")
def _(ws):
    sys.path.insert(0, str(REPO))
    from lapdata.dataset.split import split_of

    names = [f"person{i}" for i in range(40)]
    b = next(n for n in names if split_of(n, 0, (0.75, 0.125, 0.125)) != split_of(names[0], 0, (0.75, 0.125, 0.125)))
    src = ws / "src"
    for k, name in enumerate((names[0], b)):
        (src / name).mkdir(parents=True)
        for j in range(6):
            (src / name / f"{j}.jpg").write_bytes(jpeg_bytes(pattern(100 * k + j)))
    (src / b / "copy.jpg").write_bytes(jpeg_bytes(pattern(0), quality=70))
    out = ws / "out"
    r = ingest(src, out)
    a = audit(out)
    gone = [x for x in rows(out) if x["reason"] == "duplicate_other_split"]
    ok = r.rc == 0 and a.rc == 0 and len(gone) == 1 and gone[0]["identity"] == max(
        (names[0], b), key=lambda n: ("train", "val", "test").index(split_of(n, 0, (0.75, 0.125, 0.125))))
    return f"ingest rc {r.rc}; audit rc {a.rc}; {len(gone)} removed", ok, lost_rows(src, out)


@case("5 shard with a 100 MiB member", "not read: audit exit 1 (member limit), peak RSS < 400 MB")
def _(ws):
    ds = dataset(ws)
    add_zero_member(sorted((ds / "shards").glob("*.tar"))[0], 100 * 2**20)
    a = cli_rss("audit", ds, "--json")
    ok = a.rc == 1 and any("member limit" in f for f in audit_faults(a)) and a.rss_mb < 400
    return f"audit rc {a.rc}, peak RSS {a.rss_mb:.0f} MB", ok and not a.traceback, 0


@case("5 144-megapixel PNG", "skipped too_large unread, ingest peak RSS < 500 MB")
def _(ws):
    src = folders(ws / "src", n_ids=1)
    huge_png(src / "person0" / "huge.png", 12000, 12000)
    out = ws / "out"
    r = cli_rss("ingest", "folders", src, "--out", out, "--no-progress", "--size", "32", "--min-images", "1")
    by = {x["path"]: x for x in rows(out)}
    h = by.get("person0/huge.png", {})
    ok = r.rc == 0 and h.get("reason") == "too_large" and r.rss_mb < 500
    return f"rc {r.rc}, {h.get('status')}/{h.get('reason')}, peak RSS {r.rss_mb:.0f} MB", ok, lost_rows(src, out)


@case("6 top-level symlink to the source", "one error row (phantom refused), no phantom identity")
def _(ws):
    src = folders(ws / "src")
    (src / "alias").symlink_to(src, target_is_directory=True)
    out = ws / "out"
    r = ingest(src, out)
    rs = rows(out)
    ok = r.rc == 0 and len(rs) == 19 and not any(x["identity"] == "alias" and x["status"] == "ok" for x in rs)
    return f"rc {r.rc}, {len(rs)} rows (18 photos + 1)", ok, max(0, 19 - len(rs))


@case("6 self-looping symlink, empty identity folder", "an error row and a skipped (empty_folder) row")
def _(ws):
    src = folders(ws / "src")
    (src / "person0" / "loop.jpg").symlink_to("loop.jpg")
    (src / "nobody").mkdir()
    out = ws / "out"
    r = ingest(src, out)
    by = {x["path"]: x for x in rows(out)}
    ok = r.rc == 0 and by.get("person0/loop.jpg", {}).get("status") == "error" and \
        by.get("nobody/", {}).get("reason") == "empty_folder"
    return f"rc {r.rc}, {len(by)} rows of 20", ok, max(0, 20 - len(by))


@case("6 csv repeating a path, csv path ../../etc/passwd", "unique photo_ids, error rows, passwd never read")
def _(ws):
    src = folders(ws / "src", n_ids=2)
    lines = ["file,identity"] + [f"person{i}/{j}.jpg,p{i}" for i in range(2) for j in range(6)]
    lines += ["person0/0.jpg,p0", "../../../../../../etc/passwd,p0", "/etc/passwd,p1"]
    (src / "list.csv").write_text("\n".join(lines) + "\n")
    out = ws / "out"
    r = ingest(src / "list.csv", out, kind="csv")
    rs = rows(out)
    a = audit(out)
    passwd = [x for x in rs if "passwd" in (x["path"] or "")]
    ok = (r.rc == 0 and len(rs) == 15 and len({x["photo_id"] for x in rs}) == 15 and a.rc == 0
          and all(x["status"] == "error" and x["sha256"] is None for x in passwd) and len(passwd) == 2)
    return f"rc {r.rc}, {len(rs)} rows of 15, audit rc {a.rc}", ok, max(0, 15 - len(rs))


@case("7 parse-masks, one sample with invalid JSON", "exit 0: its rows bad_sample, the rest parsed, swapped")
def _(ws):
    ds = dataset(ws)
    tar = sorted((ds / "shards").glob("*.tar"))[0]
    with tarfile.open(tar) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf]
    with tarfile.open(tar, "w") as tf:
        for m, data in members:
            data = b"{not json" if m.name.endswith(".json") else data
            m.size = len(data)
            tf.addfile(m, io.BytesIO(data))
    r = cli("parse-masks", ds, "--parser", "ground-truth", "--min-face-fraction", "0", "--no-progress")
    bad = [x for x in rows(ds) if x["reason"] == "bad_sample"]
    return f"rc {r.rc}, {len(bad)} bad_sample rows", r.rc == 0 and len(bad) == 6 and not r.traceback, 0


@case("7 merge keeps duplicates.parquet", "same pairs and stats as the whole run")
def _(ws):
    src = folders(ws / "src", n_ids=4)
    (src / "person3" / "dup.jpg").write_bytes((src / "person2" / "0.jpg").read_bytes())
    w = ingest(src, ws / "whole")
    parts = [ingest(src, ws / f"p{i}", "--part", f"{i}/2") for i in range(2)]
    m = cli("merge", ws / "p0", ws / "p1", "--out", ws / "m")
    sw = json.loads((ws / "whole" / "stats.json").read_text()).get("cross_identity_duplicates")
    sm = json.loads((ws / "m" / "stats.json").read_text()).get("cross_identity_duplicates") \
        if (ws / "m" / "stats.json").exists() else None
    ok = w.rc == m.rc == 0 and all(p.rc == 0 for p in parts) and sw == sm and (ws / "m" / "duplicates.parquet").exists()
    return f"whole {sw}, merged {sm}", ok, 0


@case("8 resume from another source, same options", "exit 2 naming both sources, nothing rewritten")
def _(ws):
    out = ws / "out"
    ingest(folders(ws / "a"), out)
    (out / "stats.json").unlink()  # as after a run killed before finalize
    r = ingest(folders(ws / "b", n_ids=2, seed=500), out)
    ok = r.one_line_error and "another source" in r.err and str(ws / "a") in r.err and not (out / "stats.json").exists()
    return f"rc {r.rc}: {r.last_error()[:70]}", ok, 0


@case("8 kill -9 during ingest (2 workers), then rerun", "workers exit with the parent; rerun exit 0, audit ok")
def _(ws):
    src = folders(ws / "src", n_ids=10)
    out = ws / "out"
    p = cli("ingest", "folders", src, "--out", out, "--no-progress", "--size", "32", "--samples-per-shard", "1",
            "--min-images", "1", "--workers", "2", wait=False)
    deadline = time.time() + 120
    kids: set[int] = set()
    while time.time() < deadline and p.poll() is None:
        kids |= {int(x) for x in _children(p.pid)}
        if len(list((out / "shards").glob("*.json")) if (out / "shards").is_dir() else []) >= 1 and len(kids) >= 2:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    time.sleep(2.0)
    orphans = [k for k in kids if _alive(k)]
    for k in orphans:
        os.kill(k, signal.SIGKILL)
    r = ingest(src, out, "--workers", "2")
    a = audit(out)
    ok = not orphans and r.rc == 0 and a.rc == 0 and len(rows(out)) == 60
    return f"{len(kids)} children, {len(orphans)} left; rerun rc {r.rc}, audit {a.rc}", ok and len(kids) >= 2, \
        lost_rows(src, out)


def _children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _one_line_case(name: str, expected: str, make: Callable[[Path], list[str]], want: str, prog: str = "lapdata"):
    @case(name, expected)
    def _(ws):
        r = cli(*make(ws), prog=prog)
        return f"rc {r.rc}: {r.last_error()[:70]}", r.one_line_error and want in r.err, 0


def _afile(ws: Path) -> Path:
    (ws / "f.txt").write_text("x")
    return ws / "f.txt"


def _latin_csv(ws: Path) -> Path:
    p = ws / "l.csv"
    p.write_bytes("file,identity\na.jpg,Jos\xe9\n".encode("latin-1"))
    return p


def _latin_yaml(ws: Path) -> Path:
    p = ws / "c.yaml"
    p.write_bytes(b"parse_masks:\n  parser: caf\xe9\n")
    return p


def _not_parquet(ws: Path) -> Path:
    p = ws / "split.parquet"
    p.write_text("identity,split\n")
    return p


def _src(ws: Path) -> Path:
    return folders(ws / "src", n_ids=2) if not (ws / "src").exists() else ws / "src"


_one_line_case("9 ingest --out is a file", "exit 2 one line",
               lambda ws: ["ingest", "folders", _src(ws), "--out", _afile(ws)], "not a folder")
_one_line_case("9 merge --out is a file", "exit 2 one line",
               lambda ws: ["merge", _src(ws), "--out", _afile(ws)], "not a folder")
_one_line_case("9 non-UTF-8 CSV", "exit 2 one line", lambda ws: ["ingest", "csv", _latin_csv(ws), "--out", ws / "o"],
               "not UTF-8")
_one_line_case("9 non-UTF-8 YAML config", "exit 2 one line",
               lambda ws: ["parse-masks", ws, "--config", _latin_yaml(ws)], "not UTF-8")
_one_line_case("9 --split-manifest not parquet", "exit 2 one line",
               lambda ws: ["ingest", "folders", _src(ws), "--out", ws / "o", "--split-manifest", _not_parquet(ws)],
               "not a parquet")
_one_line_case("9 --samples-per-shard 0", "exit 2 one line",
               lambda ws: ["ingest", "folders", _src(ws), "--out", ws / "o", "--samples-per-shard", "0"], "--samples")
_one_line_case("9 build-synthetic --part 3/2", "exit 2 one line",
               lambda ws: ["build-synthetic", "--out", ws / "s", "--part", "3/2"], "--part 3/2")
_one_line_case("9 parse-masks --batch-size 0", "exit 2 one line",
               lambda ws: ["parse-masks", ws, "--batch-size", "0"], "--batch-size")
_one_line_case("9 audit on a non-dataset", "exit 2 one line", lambda ws: ["audit", ws], "not a lapdata dataset")
_one_line_case("10 ingest --size 0", "exit 2 one line",
               lambda ws: ["ingest", "folders", _src(ws), "--out", ws / "o", "--size", "0"], "--size 0")
_one_line_case("10 ingest --size -5", "exit 2 one line",
               lambda ws: ["ingest", "folders", _src(ws), "--out", ws / "o", "--size", "-5"], "--size -5")
_one_line_case("10 ingest --id-threshold 5", "exit 2 one line",
               lambda ws: ["ingest", "folders", _src(ws), "--out", ws / "o", "--id-threshold", "5"], "--id-threshold")


def _onnx(path: Path, out_dim: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.01, (out_dim, 3 * 112 * 112)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Flatten", ["data"], ["f"], axis=1),
                           helper.make_node("Gemm", ["f", "w"], ["fc1"], transB=1)], "g",
                          [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
                          [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", out_dim])], initializer=[w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 12)])
    m.ir_version = 7
    onnx.save(m, str(path))
    return path


_one_line_case("10 ONNX graph of the wrong shape as ArcFace", "exit 2 one line (embedding width)",
               lambda ws: ["ingest", "folders", _src(ws), "--out", ws / "o", "--id-filter", "--id-model",
                           _onnx(ws / "narrow.onnx", 10)], "values per face")


def _garbage_onnx(ws: Path) -> Path:
    (ws / "g.onnx").write_bytes(b"\x00garbage, not a model")
    return ws / "g.onnx"


_one_line_case("(known) garbage ONNX", "exit 2 one line",
               lambda ws: ["ingest", "folders", _src(ws), "--out", ws / "o", "--id-filter", "--id-model",
                           _garbage_onnx(ws)], "g.onnx")


class _Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@case("(known) malicious pickle checkpoint", "exit 2 one line, the payload never runs")
def _(ws):
    ck = ws / "evil.pt"
    marker = ws / "PWNED"
    ck.write_bytes(pickle.dumps({"format": "lapmodel", "model": _Evil(marker), "config": {}}))
    (ws / "p.jpg").write_bytes(jpeg_bytes(pattern(1)))
    r = cli("reconstruct", ws / "p.jpg", "--checkpoint", ck, "--out", ws / "o", "--device", "cpu", prog="lapmodel")
    return f"rc {r.rc}: {r.last_error()[:60]}; payload ran: {marker.exists()}", r.one_line_error and \
        not marker.exists(), 0


@case("(known) YAML !!python tag", "exit 2 one line, the payload never runs")
def _(ws):
    marker = ws / "PWNED"
    y = ws / "evil.yaml"
    y.write_text(f"parse_masks: !!python/object/apply:os.system ['touch {marker}']\n")
    r = cli("parse-masks", ws, "--config", y)
    return f"rc {r.rc}: {r.last_error()[:60]}", r.one_line_error and not marker.exists(), 0


@case("(known) tar members named ../x", "nothing written outside; audit exit 1")
def _(ws):
    ds = dataset(ws)
    tar = sorted((ds / "shards").glob("*.tar"))[0]
    with tarfile.open(tar, "a") as tf:
        for name in ("../../escaped.json", "../../escaped.000.jpg"):
            ti = tarfile.TarInfo(name)
            ti.size = 2
            tf.addfile(ti, io.BytesIO(b"{}"))
    a = audit(ds)
    r = cli("parse-masks", ds, "--parser", "ground-truth", "--no-progress")
    escaped = list(ws.rglob("escaped*")) + list(ws.parent.glob("escaped*"))
    ok = a.rc == 1 and not escaped and not a.traceback and not r.traceback and r.rc in (0, 1)
    return f"audit rc {a.rc}; parse-masks rc {r.rc}; files outside: {len(escaped)}", ok, 0


# ------------------------------------------------------------------------------------------------ lapmodel

# the tiny model, 1 step unless a case says otherwise; BASE leaves batch and device to --set (an option would win)
BASE = ["--set", "model.image_size=32", "--set", "model.nf=8", "--set", "model.zdim=16", "--set", "model.nf_encoder=8",
        "--set", "model.zdim_conf=16", "--set", "data.shuffle_buffer=4", "--set", "data.workers=0", "--no-progress"]
TINY = [*BASE, "--batch", "2", "--device", "cpu"]


def train(ws: Path, ds: Path, out: str, *extra: str) -> Run:
    return cli("train", "--config", "unsup3d", "--shards", ds, "--out", ws / out, *TINY, *extra, prog="lapmodel",
               timeout=120)


def _ckpt(ws: Path) -> Path:
    """A real (untrained) checkpoint of the tiny model, written by the library."""
    if not (ws / "ck.pt").exists():
        from lapdata.core.config import load_config, parse_overrides
        from lapmodel.config import TrainConfig
        from lapmodel.io.checkpoint import save_checkpoint
        from lapmodel.models.build import build_model
        from lapmodel.recipes.catalog import find_config

        sets = parse_overrides([BASE[i + 1] for i in range(0, 10, 2)])
        cfg = load_config(TrainConfig, find_config("unsup3d"), {**sets, "perceptual": "none"})
        save_checkpoint(ws / "ck.pt", model=build_model(cfg, training=False), config=cfg, step=0)
    return ws / "ck.pt"


def _empty(ws: Path) -> Path:
    (ws / "empty.pt").write_bytes(b"")
    return ws / "empty.pt"


@case("9 lapmodel: 0-byte checkpoint (reconstruct, evaluate, --init, --resume)", "exit 2 one line each")
def _(ws):
    ds = dataset(ws)
    (ws / "res").mkdir()
    (ws / "res" / "last.pt").write_bytes(b"")
    runs = [cli("reconstruct", ds, "--checkpoint", _empty(ws), "--out", ws / "r", prog="lapmodel"),
            cli("evaluate", "--checkpoint", _empty(ws), "--shards", ds, "--out", ws / "e", prog="lapmodel"),
            train(ws, ds, "i", "--init", str(_empty(ws))),
            train(ws, ds, "res", "--resume")]
    ok = all(r.one_line_error and "empty file" in r.err for r in runs)
    return f"rc {[r.rc for r in runs]}: {runs[-1].last_error()[:60]}", ok, 0


for _name, _make, _want in [
    ("train --out is a file", lambda ws: ["train", "--shards", dataset(ws), "--out", _afile(ws), *TINY], "not a folder"),
    ("reconstruct --out is a file", lambda ws: ["reconstruct", _src(ws), "--checkpoint", _ckpt(ws), "--out", _afile(ws)],
     "not a folder"),
    ("evaluate --shards on a non-tar file", lambda ws: ["evaluate", "--checkpoint", _ckpt(ws), "--shards",
                                                         _not_parquet(ws), "--out", ws / "e"], "damaged shard"),
    ("reconstruct --batch-size 0", lambda ws: ["reconstruct", _src(ws), "--checkpoint", _ckpt(ws), "--out", ws / "r",
                                               "--batch-size", "0"], "batch_size must be >= 1"),
    ("train --device cuda on a CPU build", lambda ws: ["train", "--shards", dataset(ws), "--out", ws / "o", *TINY,
                                                       "--device", "cuda"], "no usable CUDA"),
    ("train --set device=tpu", lambda ws: ["train", "--shards", dataset(ws), "--out", ws / "o", *BASE, "--steps", "1",
                                           "--set", "device=tpu"], "not a device"),
    ("train --set data.workers=-1", lambda ws: ["train", "--shards", dataset(ws), "--out", ws / "o", *TINY, "--set",
                                                "data.workers=-1"], "workers -1"),
    ("train --set ckpt_every=0", lambda ws: ["train", "--shards", dataset(ws), "--out", ws / "o", *TINY, "--set",
                                             "ckpt_every=0"], "ckpt_every 0"),
    ("train --set log_every=0", lambda ws: ["train", "--shards", dataset(ws), "--out", ws / "o", *TINY, "--set",
                                            "log_every=0"], "log_every 0"),
    ("train --set batch=-4", lambda ws: ["train", "--shards", dataset(ws), "--out", ws / "o", *BASE, "--steps", "1",
                                         "--set", "batch=-4"], "batch -4"),
    ("train --set optim.lr=.nan", lambda ws: ["train", "--shards", dataset(ws), "--out", ws / "o", *TINY, "--set",
                                              "optim.lr=.nan"], "lr nan"),
]:
    _one_line_case(f"9 {_name}", "exit 2 one line", _make, _want, prog="lapmodel")


@case("10 train --stage bogus with an Unsup3D config", "exit 2 (the choices are shown)")
def _(ws):
    r = train(ws, dataset(ws), "o", "--stage", "bogus")
    return f"rc {r.rc}", r.rc == 2 and "is not one of" in r.err and not r.traceback, 0


@case("10 train --stage aggregate with an Unsup3D config", "exit 2 one line")
def _(ws):
    r = train(ws, dataset(ws), "o", "--stage", "aggregate")
    return f"rc {r.rc}: {r.last_error()[:60]}", r.one_line_error and "has no stages" in r.err, 0


@case("8 last.pt byte-reproducible", "two runs of one config write the same bytes")
def _(ws):
    ds = dataset(ws)
    a = train(ws, ds, "run", "--steps", "2")
    first = (ws / "run" / "last.pt").read_bytes()
    (ws / "run").rename(ws / "first")
    b = train(ws, ds, "run", "--steps", "2")
    same = (ws / "run" / "last.pt").read_bytes() == first
    return f"rc {a.rc}/{b.rc}, identical: {same}", a.rc == b.rc == 0 and same, 0


@case("8 --resume with fewer samples than data streams", "2 identities, 4 loader workers: resume exit 0")
def _(ws):
    ds = dataset(ws, n_ids=2)
    a = train(ws, ds, "o", "--steps", "2", "--ckpt-every", "1", "--set", "data.workers=4", "--batch", "1")
    b = train(ws, ds, "o", "--steps", "4", "--set", "data.workers=4", "--batch", "1", "--resume")
    return f"rc {a.rc}/{b.rc}: {b.last_error()[:60]}", a.rc == b.rc == 0 and not b.traceback, 0


@case("2/7 training on a shard JPEG with flipped bytes", "exit 0, the sample skipped and counted in log.jsonl; "
      "all samples corrupt: exit 2 one line")
def _(ws):
    ds = dataset(ws, n_ids=8)
    flip_first_jpeg(sorted((ds / "shards").glob("train-*.tar"))[0])
    r = train(ws, ds, "o", "--steps", "4", "--log-every", "1")
    logs = [json.loads(x) for x in (ws / "o" / "log.jsonl").read_text().splitlines()] if r.rc == 0 else []
    n = max((x.get("skipped_samples", 0) for x in logs), default=0)
    one = ws / "one"  # one identity, in the train split (training never reads a dataset's val/test shards)
    assert ingest(folders(ws / "one-src", n_ids=1), one, "--fractions", "1,0,0").rc == 0
    flip_first_jpeg(sorted((one / "shards").glob("train-*.tar"))[0])
    bad = cli("train", "--config", "unsup3d", "--shards", one, "--out", ws / "o2", *TINY, prog="lapmodel", timeout=120)
    ok = r.rc == 0 and n >= 1 and bad.one_line_error and "without a readable sample" in bad.err
    return f"rc {r.rc}, skipped_samples {n}; all corrupt: rc {bad.rc}", ok, 0


@case("5 training on a shard with a 512 MiB member", "the member is not read: peak RSS < 1 GB, exit 0")
def _(ws):
    ds = dataset(ws)
    add_zero_member(sorted((ds / "shards").glob("train-*.tar"))[0], 512 * 2**20)
    cmd = ["train", "--config", "unsup3d", "--shards", ds, "--out", ws / "o", *TINY, "--steps", "2"]
    r = cli_rss(*cmd, prog="lapmodel", timeout=120)
    return f"rc {r.rc}, peak RSS {r.rss_mb:.0f} MB", r.rc == 0 and r.rss_mb < 1024 and not r.traceback, 0


# ------------------------------------------------------------------------------------------------ issue 21

sys.modules.setdefault("faults", sys.modules[__name__])  # faults_issue21 registers its cases into this CASES
sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults_issue21  # noqa: E402,F401


# ------------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="run the cases whose name contains this")
    ap.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temp folder)")
    a = ap.parse_args(argv)
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="lap-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results = []
    try:
        for k, (name, expected, fn) in enumerate(CASES):
            if a.only and a.only not in name:
                continue
            ws = root / f"case{k:02d}"
            ws.mkdir()
            try:
                observed, ok, lost = fn(ws)
            except Exception as e:  # noqa: BLE001 - a harness failure is a failed case, reported
                observed, ok, lost = f"harness: {type(e).__name__}: {str(e)[:80]}", False, 0
            results.append((name, expected, observed, ok, lost))
            print(f"{'PASS' if ok else 'FAIL'}  {name}: {observed}", file=sys.stderr, flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    w = [max(len(r[i]) for r in results + [("case", "expected", "observed")]) for i in range(3)]
    w = [min(x, 60) for x in w]
    print(f"{'case':<{w[0]}}  {'expected':<{w[1]}}  {'observed':<{w[2]}}  pass")
    for name, expected, observed, ok, _ in results:
        print(f"{name[:w[0]]:<{w[0]}}  {expected[:w[1]]:<{w[1]}}  {observed[:w[2]]:<{w[2]}}  {'yes' if ok else 'NO'}")
    n_ok = sum(r[3] for r in results)
    lost = sum(r[4] for r in results)
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    me = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime + me.ru_utime + me.ru_stime
    print(f"faults: {n_ok}/{len(results)} pass, {lost} records lost without a row "
          f"[{time.time() - t0:.0f} s wall, {cpu / 60:.1f} CPU-minutes]")
    return 0 if n_ok == len(results) and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
