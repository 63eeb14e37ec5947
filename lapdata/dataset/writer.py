"""The shard writer every lapdata step uses (img2dataset style: errors are data, shards are the unit of work).

Layout (see lapdata.dataset.schema)::

    DIR/shards/{split}-{index:06d}.tar      WebDataset shard (the members as webdataset.TarWriter writes them, mtime 0:
                                            reproducible; written here with tarfile, so no torch import)
    DIR/shards/{split}-{index:06d}.parquet  PHOTOS rows of every input photo of the shard's items (ok/skipped/error)
    DIR/shards/{split}-{index:06d}.json     shard stats; written last, its presence marks the shard finished
    DIR/unsharded.parquet                   PHOTOS rows that belong to no shard (e.g. identities dropped by
                                            min-images before planning: the ``extra_rows``)
    DIR/photos.parquet DIR/identities.parquet DIR/shards.parquet DIR/stats.json   dataset level, by finalize_dataset

How a run goes: ``plan_shards`` turns identity groups into deterministic ``ShardTask``s; ``write_dataset`` keeps the
tasks of its ``part``, skips those whose .json exists (resume), and runs ``process(task) -> ShardResult`` for the
rest in ``workers`` spawn processes. Each worker encodes and writes its own shard (tar, then parquet, then json,
each to ``name.tmp`` then ``os.replace``), and only the small shard stats travel back, so the parent's memory does
not grow with the number of photos. An exception inside ``process`` fails that shard only (counted in
stats.json ``failed_shards``; rerunning the same command retries it).

Shard size: by count (``samples_per_shard`` groups per shard) and by bytes (``max_shard_bytes`` with a
``size_of(payload)`` estimate, e.g. the sum of the source file sizes): the planner closes a shard when either
limit is reached. Bytes are estimated *before* encoding so that the plan (and the shard names) stays
deterministic and independent of the encoder; the real bytes are in shards.parquet.

Each written view's json metadata gets ``image_sha256`` (sha256 of the encoded view bytes as stored in the tar), so
``lapdata audit`` and every reader (``lapdata.dataset.sample.decode_sample``) can check every image against the manifest.
Checksums of the manifests: each shard json holds ``parquet_sha256`` (its .parquet file) and stats.json ``manifests``
{file: sha256} of photos/identities/shards/unsharded/duplicates parquet, so an edited manifest is an audit fault.
Names read back are checked: a shard json whose ``shard``/``path`` is not its own file name is a LapError
(``shard_stats``), so no manifest field can make a step write or read outside the dataset (``lapdata.core.paths``).

Worker processes die with the parent: each sets ``PR_SET_PDEATHSIG`` (Linux) and checks the parent's pid between
tasks (other systems), so a ``kill -9`` of the command leaves no process writing shards.

Reading shards back is ``lapdata.dataset.reader``; finalize and the manifest readers ``read_dataset`` / ``read_table`` /
``read_stats`` are ``lapdata.dataset.manifests``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from lapdata.core import storage
from lapdata.core.atomic import atomic_path
from lapdata.core.engine import (ENGINE_FIELDS, EngineConfig, exit_if_orphaned, fault_exit_once, map_unordered,
                     warn_if_multinode)
from lapdata.core.errors import LapError
from lapdata.dataset.manifests import _atomic_write_json, _atomic_write_table, finalize_dataset, read_shard_json, sha256_file
from lapdata.core.paths import check_shard_name
from lapdata.dataset.sample import JSON, KEY, IdentitySample, encode_sample, image_digest, image_member
from lapdata.dataset.schema import (NUM_IMAGES, NUM_ROWS, NUM_SAMPLES, PARQUET_SHA256, PHOTOS, REASON_COUNTS, SECONDS, SHARD,
                     SHARD_BYTES, SHARD_DIR, SHARD_PATH, SHARD_SHA256, SHARD_SPLIT, STATUS_COUNTS, table_from_rows)


@dataclass(frozen=True)
class ShardTask:
    """One shard to write; ``items`` are picklable work units (e.g. identity groups)."""

    name: str  # "train-000003"
    split: str
    items: tuple


@dataclass
class ShardResult:
    samples: list[IdentitySample] = field(default_factory=list)  # samples to write, in order
    rows: list[dict] = field(default_factory=list)  # PHOTOS rows of every input photo of the items


# ------------------------------------------------------------------------------------------------------ planning


def stable_hash(text: str) -> int:
    """64-bit stable hash of a string (sha1), independent of PYTHONHASHSEED."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


def plan_shards(
    groups: Sequence[tuple[str, str, Any]],
    samples_per_shard: int,
    *,
    max_shard_bytes: int | None = None,
    size_of: Callable[[Any], int] | None = None,
) -> list[ShardTask]:
    """Deterministic shard plan: groups (identity, split, payload) -> ShardTasks named ``{split}-{index:06d}``.

    Groups are ordered by split, then by a stable hash of the identity (so the plan does not depend on the input
    order, and shards mix identities); a shard holds at most ``samples_per_shard`` groups and, when
    ``max_shard_bytes`` and ``size_of`` are given, at most that many estimated bytes (a single larger group still
    gets its own shard). Each task's items are ``(identity, payload)`` tuples.
    """
    if samples_per_shard < 1:
        raise ValueError("samples_per_shard must be >= 1")
    by_split: dict[str, list[tuple[str, Any]]] = {}
    for identity, split, payload in groups:
        by_split.setdefault(split, []).append((identity, payload))
    tasks: list[ShardTask] = []
    for split in sorted(by_split):
        items = sorted(by_split[split], key=lambda ip: (stable_hash(ip[0]), ip[0]))
        index, cur, cur_bytes = 0, [], 0
        for ident, payload in items:
            b = size_of(payload) if (size_of is not None and max_shard_bytes) else 0
            if cur and (len(cur) >= samples_per_shard or (max_shard_bytes and cur_bytes + b > max_shard_bytes)):
                tasks.append(ShardTask(f"{split}-{index:06d}", split, tuple(cur)))
                index, cur, cur_bytes = index + 1, [], 0
            cur.append((ident, payload))
            cur_bytes += b
        if cur:
            tasks.append(ShardTask(f"{split}-{index:06d}", split, tuple(cur)))
    return tasks


def select_part(tasks: Sequence[ShardTask], part: tuple[int, int]) -> list[ShardTask]:
    """Tasks of part ``i`` of ``n``: every n-th task starting at i (disjoint; the union of all parts is the plan)."""
    i, n = part
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"bad part {i}/{n}: need 0 <= i < n")
    return [t for k, t in enumerate(tasks) if k % n == i]


def parse_part(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    try:
        a, b = text.split("/")
        i, n = int(a), int(b)
    except ValueError:
        raise ValueError(f"--part must look like I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--part {text}: need 0 <= I < N")
    return i, n


# ------------------------------------------------------------------------------------------------------ writing


def _finished(shard_dir: Path, name: str) -> bool:
    """A shard is finished when its json is there and reads as its own stats; an unreadable one (0 bytes, cut,
    tampered) is removed with a warning and the shard written again."""
    p = shard_dir / f"{name}.json"
    if not p.exists():
        return False
    try:
        read_shard_json(p)
        return True
    except LapError as e:
        from lapdata.core.logs import get_logger, warn_once

        warn_once(get_logger("lapdata.dataset.writer"), f"{e}: the shard is written again")
        p.unlink()
        return False


# the member headers webdataset.TarWriter writes (encoder=False, mtime=0.0): the same bytes, without importing
# webdataset (which imports torch) in every writer process
_TAR_USER, _TAR_MODE, _TAR_MTIME = "bigdata", 0o444, 0.0


def _tar_write_sample(tf: tarfile.TarFile, d: Mapping[str, Any]) -> None:
    key = d[KEY]
    for k in sorted(d):
        if k.startswith("_"):
            continue
        v = d[k]
        v = v.encode("utf-8") if isinstance(v, str) else bytes(v)
        ti = tarfile.TarInfo(f"{key}.{k}")
        ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(v), _TAR_MTIME, _TAR_MODE, _TAR_USER, _TAR_USER
        tf.addfile(ti, io.BytesIO(v))


def write_shard(
    out_dir: str | Path, task: ShardTask, result: ShardResult, *, image_ext: str = "jpg", quality: int = 95,
    seconds: float = 0.0,
) -> dict:
    """Write ``result`` as shard ``task.name`` (tar, parquet, then json; each via a .tmp + os.replace).

    Fills shard/key/view_index/split in the rows whose photo_id is a written view's meta["photo_id"]; returns the
    shard stats (the json's content).
    """
    check_shard_name(task.name, "shard task name")
    shard_dir = Path(out_dir) / SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    tar_path = shard_dir / f"{task.name}.tar"
    placed: dict[str, tuple[str, int, str]] = {}
    num_images = 0
    keys = set()
    with atomic_path(tar_path) as tmp, open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w|") as sink:
        for s in result.samples:
            if s.key in keys:
                raise ValueError(f"{task.name}: duplicate sample key {s.key}")
            keys.add(s.key)
            d = encode_sample(s, image_ext=image_ext, quality=quality)
            doc = json.loads(d[JSON])
            for i, vm in enumerate(doc["views"]):
                data = d[image_member(i, vm["image_ext"])]
                vm["image_sha256"] = image_digest(data)
                pid = vm.get("photo_id")
                if pid is not None:
                    placed[str(pid)] = (s.key, i, s.split)
            d[JSON] = json.dumps(doc, sort_keys=True).encode("utf-8")
            num_images += len(s.views)
            _tar_write_sample(sink, d)

    rows = []
    for r in result.rows:
        r = dict(r)
        pid = r.get("photo_id")
        if pid is not None and str(pid) in placed:
            key, vi, split = placed[str(pid)]
            r.update(shard=task.name, key=key, view_index=vi)
            if r.get("split") is None:
                r["split"] = split
        rows.append(r)
    _atomic_write_table(shard_dir / f"{task.name}.parquet", table_from_rows(rows, PHOTOS))
    parquet_sha = sha256_file(shard_dir / f"{task.name}.parquet")

    status = Counter(r.get("status") for r in rows)
    reason = Counter(r.get("reason") for r in rows if r.get("reason"))
    stats = {
        SHARD: task.name,
        SHARD_PATH: f"{SHARD_DIR}/{task.name}.tar",
        SHARD_SPLIT: task.split,
        NUM_SAMPLES: len(result.samples),
        NUM_IMAGES: num_images,
        NUM_ROWS: len(rows),
        SHARD_BYTES: tar_path.stat().st_size,
        SHARD_SHA256: sha256_file(tar_path),
        STATUS_COUNTS: dict(sorted(status.items())),
        REASON_COUNTS: dict(sorted(reason.items())),
        SECONDS: round(seconds, 4),
        PARQUET_SHA256: parquet_sha,
    }
    _atomic_write_json(shard_dir / f"{task.name}.json", stats)
    return stats


def _run_task(process: Callable[[ShardTask], ShardResult], job: tuple) -> dict:
    """One shard job, on either engine (top level: picklable; ``process`` is bound once per engine worker, so a Ray
    actor receives a backend's model once): process the task, write its shard, commit it (to the remote dataset,
    when ``remote``: tar, parquet, then json, the json last as on disk)."""
    task, out_dir, image_ext, quality, remote = job
    exit_if_orphaned()
    fault_exit_once(task.name)
    t0 = time.perf_counter()
    try:
        result = process(task)
        exit_if_orphaned()
        stats = write_shard(out_dir, task, result, image_ext=image_ext, quality=quality,
                            seconds=time.perf_counter() - t0)
        if remote:
            storage.push(out_dir, [f"{SHARD_DIR}/{task.name}{ext}" for ext in (".tar", ".parquet", ".json")],
                         url=remote)
        return {"ok": True, "stats": stats}
    except Exception as e:  # the shard fails, the run goes on; rerun retries it
        for suffix in (".tar.tmp", ".parquet.tmp", ".json.tmp"):
            p = Path(out_dir) / SHARD_DIR / f"{task.name}{suffix}"
            if p.exists():
                p.unlink()
        if remote:  # a local json without its remote commit would mark the shard finished here only
            (Path(out_dir) / SHARD_DIR / f"{task.name}.json").unlink(missing_ok=True)
        return {"ok": False, "shard": task.name, "error": f"{type(e).__name__}: {e}"}


def _job_lost(job: tuple, e: Exception) -> dict:
    """The result of a shard job the engine could not complete (e.g. its Ray worker died on every retry)."""
    msg = (str(e).strip().splitlines() or [""])[0][:300]
    return {"ok": False, "shard": job[0].name, "error": f"{type(e).__name__}: {msg}"}


# options that may change between the runs of one dataset (they do not change what is written)
RESUMABLE_OPTIONS = frozenset({"workers", "part", "progress", "out", "device", *ENGINE_FIELDS})
# options added after datasets were first written, with the value older runs used (lapdata.ingest.config;
# build-synthetic: det_model and framing, none for the 3D backends)
ADDED_OPTIONS = {"max_pixels": 64_000_000, "csv_root": None, "det_model": "", "framing": None}


def check_same_run(out: Path, config: Mapping | None) -> None:
    """A rerun into an existing dataset must be the same command (up to ``RESUMABLE_OPTIONS``): its finished shards
    are kept, so other options (a different source, split fractions, size, ...) would mix two datasets.
    LapError naming the first differing option."""
    if config is None or not (out / "stats.json").is_file():
        return
    try:
        old = json.loads((out / "stats.json").read_text()).get("config") or {}
    except (OSError, ValueError):
        return  # an unreadable stats.json is audit's finding; the shards decide what is finished
    new = json.loads(json.dumps(dict(config), default=str))
    for k in sorted(set(old) | set(new)):
        if k in RESUMABLE_OPTIONS or k == "parse_masks":
            continue
        if old.get(k, ADDED_OPTIONS.get(k)) != new.get(k):
            short = lambda v: (lambda t: t if len(t) <= 60 else t[:57] + "...")(repr(v))  # noqa: E731
            raise LapError(f"{out}: holds a dataset written with other options ({k}: {short(old.get(k))} there, "
                           f"{short(new.get(k))} now); rerun with the same options to resume, or use another --out")


def write_dataset(
    out_dir: str | Path,
    tasks: Sequence[ShardTask],
    process: Callable[[ShardTask], ShardResult],
    *,
    workers: int = 1,
    part: tuple[int, int] = (0, 1),
    config: Mapping | None = None,
    image_ext: str = "jpg",
    quality: int = 95,
    progress: bool = True,
    extra_rows: Sequence[dict] = (),
    engine: EngineConfig = EngineConfig(),
    warm: Callable[[], Any] | None = None,
    model: bool = False,
) -> dict:
    """Write the unfinished shards of ``part`` with ``process`` in ``workers`` processes, then finalize.

    ``process`` must be a picklable top-level function or functools.partial when workers > 1 (spawn start method).
    ``extra_rows`` (PHOTOS rows that belong to no shard) are kept by part 0 only, so merged parts count each once.
    ``engine``: where the jobs run (``lapdata.core.engine``; ``model``/``warm``: the jobs load a model, Ray runs them in
    an actor pool). When ``out_dir`` is a mounted staging folder (``lapdata.core.storage.mount``), each job commits its
    shard to the remote dataset and the remote's finished shards are what is skipped.
    Returns the stats dict written to DIR/stats.json (plus ``failed``: list of {shard, error} of this run).
    """
    out = Path(out_dir)
    check_same_run(out, config)
    shard_dir = out / SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    mine = select_part(tasks, part)
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError("shard task names are not unique")
    for p in shard_dir.glob("*.tmp"):  # leftovers of a killed run
        p.unlink()
    todo = [t for t in mine if not _finished(shard_dir, t.name)]
    skipped = len(mine) - len(todo)
    t0 = time.perf_counter()
    failed: list[dict] = []
    images = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(mine), initial=skipped, unit="shard", desc=f"writing {out.name}", dynamic_ncols=True,
                   disable=None)  # None: no bar when stderr is not a terminal (a log file)
    remote = storage.remote_of(out)
    jobs = [(t, str(out), image_ext, quality, remote) for t in todo]

    def consume(results: Iterable[dict]) -> None:
        nonlocal images
        for res in results:
            if res["ok"]:
                images += res["stats"][NUM_IMAGES]
            else:
                failed.append({"shard": res["shard"], "error": res["error"]})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(images=images, failed=len(failed))

    try:
        if engine.engine == "ray" and remote is None and todo:
            warn_if_multinode(str(out), engine.ray_address)
        consume(map_unordered(functools.partial(_run_task, process), jobs, engine=engine, workers=workers, warm=warm,
                              model=model, on_error=_job_lost))
    finally:
        if bar is not None:
            bar.close()
    if remote:  # the small files of the shards the workers committed (a cluster's workers wrote on their nodes)
        storage.sync_down(out)
    run = {
        "planned_shards": len(tasks),
        "part": list(part),
        "part_shards": len(mine),
        "skipped_finished": skipped,
        "written": len(todo) - len(failed),
        "failed_shards": failed,
        "images_written": images,
        "seconds": round(time.perf_counter() - t0, 3),
        "workers": workers,
        "engine": engine.engine,
    }
    stats = finalize_dataset(out, config=config, extra_rows=list(extra_rows) if part[0] == 0 else [], run=run)
    stats["failed"] = failed
    return stats
