"""The fault catalogue's cases of issue 21 (hardening the new surfaces), registered into benchmarks/faults.py's CASES.

Run them through the catalogue (``python benchmarks/faults.py --only 21.``). As there, each case builds its input in
its own temp folder and runs ``lapdata`` / ``lapmodel`` as subprocesses. Bucket cases run on a local S3 server the
harness starts once (moto's server mode on 127.0.0.1, dummy credentials and ``FSSPEC_S3_ENDPOINT_URL`` in the
children's environment, as the tests' cluster fixture does, tests/lapdata/core/conftest.py); wrong credentials on a second server that checks them; Ray
cases against a local Ray cluster the harness starts (``ray.init`` on this machine's CPUs) or addresses with no Ray.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from faults import (BASE, REPO, TINY, _ckpt, _one_line_case, audit, audit_faults, case, cli, cli_rss, dataset,
                    folders, ingest, rows)
from tests.builders import auth_s3_server, jpeg_bytes, pattern  # faults put the repository on sys.path

SPLITS = ("train", "val", "test")
_S3: dict[str, str] = {}


def s3() -> dict[str, str]:
    """The children's environment for the local S3 server (started on first use, bucket ``faults``)."""
    if not _S3:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        staging = tempfile.mkdtemp(prefix="lap-faults-staging-")  # not the user's ~/.cache/lapdata/staging
        atexit.register(shutil.rmtree, staging, True)
        _S3.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                   FSSPEC_S3_ENDPOINT_URL=f"http://{host}:{port}", LAPDATA_STAGING=staging)
        os.environ.update(_S3)
        import fsspec.config

        fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = _S3["FSSPEC_S3_ENDPOINT_URL"]
        fsspec.filesystem("s3").mkdir("faults")
    return dict(_S3)


def one_line(r, want: str) -> bool:
    """The run ended with one ``error:`` line (faults.Run.one_line_error) that holds ``want``."""
    return r.one_line_error and want in [ln for ln in r.err.splitlines() if ln.strip()][-1]


def leaky(root: Path) -> tuple[Path, str]:
    """Two identities in different splits, the later one holding a re-encoded copy of the other's photo 0;
    returns (source, the identity of the later split)."""
    from lapdata.dataset.split import split_of

    names = [f"person{i}" for i in range(40)]
    b = next(n for n in names if split_of(n, 0, (0.75, 0.125, 0.125)) != split_of(names[0], 0, (0.75, 0.125, 0.125)))
    for k, name in enumerate((names[0], b, "person90", "person91")):
        (root / name).mkdir(parents=True)
        for j in range(3):
            (root / name / f"{j}.jpg").write_bytes(jpeg_bytes(pattern(100 * k + j)))
    (root / b / "copy.jpg").write_bytes(jpeg_bytes(pattern(0), quality=70))
    return root, max((names[0], b), key=lambda n: SPLITS.index(split_of(n, 0, (0.75, 0.125, 0.125))))


# ------------------------------------------------------------------------------------------------ 0: ingest vs audit


@case("21.0 cross-split near duplicate: ingest, audit, parse-masks", "held-out copy removed; audit exit 0; "
      "parse-masks exit 0")
def _(ws):
    src, later = leaky(ws / "src")
    out = ws / "out"
    r = ingest(src, out)
    a = audit(out)
    p = cli("parse-masks", out, "--parser", "ground-truth", "--min-face-fraction", "0", "--no-progress")
    gone = [x for x in rows(out) if x["reason"] == "duplicate_other_split"]
    ok = r.rc == 0 and a.rc == 0 and p.rc == 0 and len(gone) == 1 and gone[0]["identity"] == later
    return f"ingest rc {r.rc}, {len(gone)} removed ({later}); audit rc {a.rc}; parse-masks rc {p.rc}", ok, 0


_SETS = REPO.parent / "shared" / "data" / "faces" / "celebrity-sets"
if _SETS.is_dir():
    @case("21.0 README ingest of celebrity-sets, then audit", "ingest exit 0, audit exit 0 (was: split leakage)")
    def _(ws):
        r = cli("ingest", "folders", _SETS, "--out", ws / "DS", "--no-progress")
        a = audit(ws / "DS")
        return f"ingest rc {r.rc}: {r.out.strip()[-70:]}; audit rc {a.rc}", r.rc == 0 and a.rc == 0, 0


@case("21.0 parse-masks on a dataset its final audit must reject", "exit 2 one line before parsing (< 30 s)")
def _(ws):
    from lapdata.dataset import duplicates
    from lapdata.ingest.config import IngestConfig
    from lapdata.ingest.run import run_ingest

    src, _ = leaky(ws / "src")
    out = ws / "out"
    real = duplicates.cross_split_removals
    duplicates.cross_split_removals = lambda *a, **k: {}  # as an ingest before issue 21 wrote it
    try:
        run_ingest(IngestConfig(kind="folders", src=str(src), out=str(out), size=32, min_images=1, progress=False))
    finally:
        duplicates.cross_split_removals = real
    t0 = time.time()
    r = cli("parse-masks", out, "--parser", "landmarks", "--no-progress")
    took = time.time() - t0
    ok = one_line(r, "its audit fails before parsing") and took < 30 and not (ws / "out.parse-tmp").exists()
    return f"rc {r.rc} in {took:.0f} s: {r.last_error()[7:70]}", ok, 0


@case("21.0 merge of parts with a cross-split duplicate", "held-out copy removed across parts, audit exit 0")
def _(ws):
    src, later = leaky(ws / "src")
    parts = [ingest(src, ws / f"p{i}", "--part", f"{i}/2") for i in range(2)]
    m = cli("merge", ws / "p0", ws / "p1", "--out", ws / "m")
    a = audit(ws / "m")
    gone = [x for x in rows(ws / "m") if x["reason"] == "duplicate_other_split"]
    ok = all(p.rc == 0 for p in parts) and m.rc == 0 and a.rc == 0 and [x["identity"] for x in gone] == [later]
    return f"merge rc {m.rc}, {len(gone)} removed; audit rc {a.rc}", ok, 0


# ------------------------------------------------------------------------------------------------ 1: hostile keys


@case("21.1 hostile bucket keys x/../../tmp/P.json, ds//tmp/P.json", "audit exit 1 naming them; audit, merge, "
      "parse-masks write nothing outside")
def _(ws):
    env = s3()
    url = f"s3://faults/{ws.name}/ds1"
    r = ingest(folders(ws / "src"), url, env=env)
    from lapdata.core import storage

    fs, _ = storage.filesystem(url)
    victims = [ws / "PWNED.json", ws / "PWNED2.json"]
    fs.pipe_file(f"faults/{ws.name}/ds1/x/{'../' * 12}{str(victims[0]).lstrip('/')}", b"{}")
    fs.pipe_file(f"faults/{ws.name}/ds1/{victims[1]}", b"{}")
    a = cli("audit", url, "--json", env=env)
    m = cli("merge", url, "--out", f"s3://faults/{ws.name}/merged", env=env)
    p = cli("parse-masks", url, "--parser", "ground-truth", "--no-progress", env=env)
    named = sum("object key refused" in f for f in audit_faults(a))
    outside = [v for v in victims if v.exists()]
    ok = r.rc == 0 and a.rc == 1 and named == 2 and m.rc == 0 and p.rc == 0 and not outside
    return f"audit rc {a.rc} ({named} keys named); merge rc {m.rc}, parse rc {p.rc}; {len(outside)} outside", ok, 0


# ------------------------------------------------------------------------------------------------ 2: Ray address


def _ray_ingest(ws: Path, address: str, **env) -> tuple:
    t0 = time.time()
    r = cli("ingest", "folders", folders(ws / "src"), "--out", ws / "o", "--no-progress", "--size", "32",
            "--min-images", "1", "--engine", "ray", "--ray-address", address, env=env, timeout=600)
    return r, time.time() - t0


@case("21.2 --ray-address 127.0.0.1:1 with a local --out", "exit 2 one line naming it in < 30 s")
def _(ws):
    r, took = _ray_ingest(ws, "127.0.0.1:1")
    return f"rc {r.rc} in {took:.0f} s: {r.last_error()[7:60]}", one_line(r, "127.0.0.1:1") and took < 30, 0


@case("21.2 --ray-address auto with no cluster, local --out", "exit 2 one line (was: exit 0 on a private Ray)")
def _(ws):
    r, took = _ray_ingest(ws, "auto")
    return f"rc {r.rc} in {took:.0f} s: {r.last_error()[7:60]}", one_line(r, "--ray-address auto") and \
        not (ws / "o" / "stats.json").exists(), 0


@case("21.2 --ray-address of a port that is no Ray", "exit 2 one line in bounded time (was: hangs past 5 min)")
def _(ws):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        r, took = _ray_ingest(ws, f"127.0.0.1:{silent.getsockname()[1]}", LAPDATA_RAY_CONNECT_SECONDS="5")
    return f"rc {r.rc} in {took:.0f} s: {r.last_error()[7:60]}", one_line(r, "not as a Ray cluster") and took < 60, 0


@case("21.2 --ray-address of a running cluster, local --out", "exit 0, the jobs ran on that cluster")
def _(ws):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 << 20)
    try:
        address = ray.get_runtime_context().gcs_address
        before = len(ray._private.state.jobs())
        auth = {k: v for k, v in os.environ.items() if k.startswith("RAY_AUTH")}  # as a cluster's user exports them
        r, took = _ray_ingest(ws, address, **auth)
        jobs = len(ray._private.state.jobs()) - before
    finally:
        ray.shutdown()
    st = json.loads((ws / "o" / "stats.json").read_text()) if r.rc == 0 else {}
    ok = r.rc == 0 and st.get("run", {}).get("engine") == "ray" and jobs == 1
    return f"rc {r.rc} in {took:.0f} s, {jobs} job(s) on the cluster", ok, 0


# ------------------------------------------------------------------------------------------------ 3: writers


def _race(ws: Path, out: str, env: dict | None = None) -> tuple:
    """Two ingests of different sources into ``out`` at once -> (runs, audit, the winner's source)."""
    srcs = [folders(ws / f"src{k}", n_ids=4, seed=1000 * k) for k in range(2)]
    procs = [cli("ingest", "folders", s, "--out", out, "--no-progress", "--size", "32", "--samples-per-shard", "1",
                 "--min-images", "1", wait=False, env=env) for s in srcs]
    runs = []
    for p in procs:
        o, e = p.communicate(timeout=300)
        runs.append((p.returncode, e))
    a = cli("audit", out, "--json", env=env)
    return runs, a, srcs


def _race_ok(runs, a, srcs, out_rows) -> tuple[str, bool]:
    """One exit 0, the other exit 2 in one line; the dataset audits clean and holds exactly the winner's photos."""
    import hashlib

    codes = [rc for rc, _ in runs]
    loser = next((e.strip().splitlines()[-1] for rc, e in runs if rc == 2 and e.strip()), "")
    winner = srcs[codes.index(0)] if 0 in codes else None
    want = {hashlib.sha256(p.read_bytes()).hexdigest() for p in winner.rglob("*.jpg")} if winner else set()
    ok = (sorted(codes) == [0, 2] and loser.startswith("error: ") and not any("Traceback" in e for _, e in runs)
          and a.rc == 0 and {r["sha256"] for r in out_rows} == want and len(out_rows) == len(want))
    return f"exit codes {sorted(codes)}; loser: {loser[7:55] or '-'}; audit rc {a.rc}", ok


@case("21.3 two ingests of different sources into one folder at once", "one exit 0, one exit 2 one line; audit 0")
def _(ws):
    runs, a, srcs = _race(ws, str(ws / "out"))
    return (*_race_ok(runs, a, srcs, rows(ws / "out")), 0)


@case("21.3 the same into one bucket URL", "one exit 0, one exit 2 one line (lease); audit 0")
def _(ws):
    env = s3()
    url = f"s3://faults/{ws.name}/out"
    runs, a, srcs = _race(ws, url, env)
    import pyarrow.parquet as pq

    from lapdata.core import storage

    out_rows = pq.read_table(storage.open_read(storage.join(url, "photos.parquet"))).to_pylist() \
        if storage.exists(storage.join(url, "photos.parquet")) else []
    return (*_race_ok(runs, a, srcs, out_rows), 0)


@case("21.3 audits of a bucket while it is being ingested", "ingest exit 0, no shard failed; audit exit 0 after")
def _(ws):
    env = s3()
    url = f"s3://faults/{ws.name}/ds"
    p = cli("ingest", "folders", folders(ws / "src", n_ids=12), "--out", url, "--no-progress", "--size", "32",
            "--samples-per-shard", "1", "--min-images", "1", wait=False, env=env)
    audits = 0
    while p.poll() is None:
        cli("audit", url, "--no-contents", env=env, timeout=120)
        audits += 1
    o, e = p.communicate()
    a = cli("audit", url, env=env)
    return f"ingest rc {p.returncode} ({audits} audits meanwhile); audit rc {a.rc}", p.returncode == 0 and a.rc == 0 \
        and "FAILED" not in o, 0


@case("21.3 two lapmodel train --out D at once", "one exit 0, one exit 2 one line; one run's log")
def _(ws):
    ds = dataset(ws)
    cmd = ["train", "--config", "unsup3d", "--shards", ds, "--out", ws / "D", *TINY, "--steps", "3"]
    procs = [cli(*cmd, prog="lapmodel", wait=False) for _ in range(2)]
    res = [(p.returncode, e) for p in procs for _, e in [p.communicate(timeout=300)]]
    codes = sorted(rc for rc, _ in res)
    loser = next((e.strip().splitlines()[-1] for rc, e in res if rc == 2), "")
    steps = [json.loads(x)["step"] for x in (ws / "D" / "log.jsonl").read_text().splitlines()] \
        if (ws / "D" / "log.jsonl").exists() else []
    ok = codes == [0, 2] and loser.startswith("error: ") and steps == sorted(set(steps))
    return f"exit codes {codes}; loser: {loser[7:60]}; log steps {steps}", ok, 0


# ------------------------------------------------------------------------------------------------ 4: names


@case("21.4 reconstruct '...jpg', x.png, x.jpg, x_1.jpg", "exit 0, 4 distinct outputs, nothing outside --out")
def _(ws):
    src = ws / "photos"
    src.mkdir()
    for k, name in enumerate(("...jpg", "x.png", "x.jpg", "x_1.jpg")):
        Image.fromarray(pattern(k, 64)).save(src / name, format="PNG" if name.endswith("png") else "JPEG")
    (ws / "deep").mkdir()
    r = cli("reconstruct", src, "--checkpoint", _ckpt(ws), "--out", ws / "deep" / "out", "--turntable-frames", "0",
            "--no-mesh", "--device", "cpu", prog="lapmodel")
    doc = json.loads((ws / "deep" / "out" / "reconstruct.json").read_text()) if r.rc == 0 else {}
    beside = sorted(p.name for p in (ws / "deep").iterdir())
    ok = r.rc == 0 and len(doc.get("outputs", {})) == 4 and beside == ["out"]
    return f"rc {r.rc}, {len(doc.get('outputs', {}))} outputs, beside --out: {beside}", ok, 0


@case("21.4 recipe step named ../../x", "exit 2 one line")
def _(ws):
    (ws / "r.yaml").write_text(f"out: {ws / 'o'}\nsteps:\n  - {{name: ../../x, kind: report}}\n")
    r = cli("run", ws / "r.yaml", prog="lapmodel")
    return f"rc {r.rc}: {r.last_error()[7:70]}", one_line(r, "is not a plain name") and not (ws / "x").exists(), 0


# ------------------------------------------------------------------------------------------------ 5: store failures


@case("21.5 wrong credentials: audit, ingest, train on s3://", "exit 2 one line each, naming the URL")
def _(ws):
    env = s3()
    server, endpoint = auth_s3_server()
    url = "s3://faults/any/ds"
    env["FSSPEC_S3_ENDPOINT_URL"] = endpoint
    try:
        runs = [cli("audit", url, env=env), ingest(folders(ws / "src"), url, env=env),
                cli("train", "--shards", url, "--out", ws / "t", *TINY, prog="lapmodel", env=env)]
    finally:
        server.kill()
        server.wait()
    ok = all(one_line(r, "access denied by the object store") and url in r.err for r in runs)
    return f"rc {[r.rc for r in runs]}: {runs[0].last_error()[7:60]}", ok, 0


@case("21.5 ingest into a missing bucket", "exit 2 one line naming it")
def _(ws):
    r = ingest(folders(ws / "src"), "s3://no-such-bucket/ds", env=s3())
    return f"rc {r.rc}: {r.last_error()[7:70]}", one_line(r, "the bucket does not exist"), 0


@case("21.5 audit with an unreachable endpoint", "exit 2 one line naming the URL")
def _(ws):
    env = {**s3(), "FSSPEC_S3_ENDPOINT_URL": "http://127.0.0.1:1"}
    r = cli("audit", "s3://faults/x/ds", env=env)
    return f"rc {r.rc} in {r.seconds:.0f} s: {r.last_error()[7:60]}", one_line(r, "object store not reachable"), 0


# ------------------------------------------------------------------------------------------------ 6, 7: arguments


@case("21.6 --out '', ingest folders '', evaluate --shards ''", "exit 2 one line each; the cwd untouched")
def _(ws):
    src = folders(ws / "src", n_ids=2)
    cwd = folders(ws / "cwd", n_ids=2)
    before = sorted(p.relative_to(cwd) for p in cwd.rglob("*"))
    runs = [cli("ingest", "folders", src, "--out", "", cwd=cwd), cli("ingest", "folders", "", "--out", ws / "o",
                                                                     cwd=cwd),
            cli("evaluate", "--checkpoint", _ckpt(ws), "--shards", "", "--out", ws / "e", prog="lapmodel", cwd=cwd)]
    same = sorted(p.relative_to(cwd) for p in cwd.rglob("*")) == before
    ok = all(one_line(r, "'': empty") for r in runs) and same and not (ws / "o").exists()
    return f"rc {[r.rc for r in runs]}; cwd untouched: {same}", ok, 0


for _name, _make, _want, _prog in [
    ("ingest --phash-distance 99", lambda ws: ["ingest", "folders", folders(ws / "s"), "--out", ws / "o",
                                               "--phash-distance", "99"], "--phash-distance 99", "lapdata"),
    ("ingest --size 100000", lambda ws: ["ingest", "folders", folders(ws / "s"), "--out", ws / "o", "--size",
                                         "100000"], "--size 100000", "lapdata"),
    ("reconstruct --size 100000", lambda ws: ["reconstruct", folders(ws / "s"), "--checkpoint", _ckpt(ws), "--out",
                                              ws / "o", "--size", "100000"], "size in 8..4096", "lapmodel"),
    ("train --set model.nf=0", lambda ws: ["train", "--shards", dataset(ws), "--out", ws / "o", *TINY, "--set",
                                           "model.nf=0"], "nf 0 must be >= 1", "lapmodel"),
    ("train --set model.min_depth=1.2 (> max_depth)", lambda ws: ["train", "--shards", dataset(ws), "--out", ws / "o",
                                                                  *TINY, "--set", "model.min_depth=1.2"],
     "min_depth 1.2 must be < max_depth", "lapmodel"),
    ("train --set 'data.fields=[bogus]'", lambda ws: ["train", "--shards", dataset(ws), "--out", ws / "o", *TINY,
                                                      "--set", "data.fields=[bogus]"], "fields ['bogus']", "lapmodel"),
    ("train --set steps=abc beside --steps 1", lambda ws: ["train", "--shards", dataset(ws), "--out", ws / "o", *BASE,
                                                           "--steps", "1", "--set", "steps=abc"], "give it once",
     "lapmodel"),
]:
    _one_line_case(f"21.7 {_name}", "exit 2 one line", _make, _want, prog=_prog)


# ------------------------------------------------------------------------------------------------ 8: smaller ones


@case("21.8 a 0-byte shard json, then the same command", "audit names it; the rerun writes it again, exit 0")
def _(ws):
    ds = dataset(ws)
    js = sorted((ds / "shards").glob("*.json"))[0]
    js.write_bytes(b"")
    a = audit(ds)
    r = ingest(ws / "ds-src", ds)
    b = audit(ds)
    return f"audit rc {a.rc}; rerun rc {r.rc}; audit rc {b.rc}", a.rc == 1 and r.rc == 0 and b.rc == 0, 0


_one_line_case("21.8 ingest --out inside the source", "exit 2 one line",
               lambda ws: ["ingest", "folders", folders(ws / "s"), "--out", ws / "s" / "lap"], "inside the source")


@case("21.8 training on an unfinished ingest and an all-zero tar", "exit 0 with one warning each")
def _(ws):
    ds = dataset(ws, n_ids=8)
    (ds / "stats.json").unlink()  # as while its ingest is still running
    tar = sorted((ds / "shards").glob("train-*.tar"))[0]
    tar.write_bytes(bytes(tar.stat().st_size))
    r = cli("train", "--config", "unsup3d", "--shards", ds, "--out", ws / "o", *TINY, "--steps", "4",
            prog="lapmodel", timeout=300)
    warned = ["not finished" in r.err, "holds none" in r.err]
    return f"rc {r.rc}, warnings {warned}", r.rc == 0 and all(warned), 0


@case("21.8 audit of a 200,000-row manifest", "exit 0, peak RSS < 450 MB (was ~1 GB: a Python object per row)")
def _(ws):
    import audit_memory

    audit_memory.build(ws / "ds", 200_000, 10)
    r = cli_rss("audit", ws / "ds", "--no-contents", "--json", timeout=600)
    return f"rc {r.rc}, peak RSS {r.rss_mb:.0f} MB", r.rc == 0 and r.rss_mb < 450, 0

