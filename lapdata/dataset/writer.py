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
each written atomically by ``lapdata.core.atomic``), and only the small shard stats travel back, so the parent's memory does
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

from lapdata.core import staging
from lapdata.core.atomic import atomic_path
from lapdata.core.engine import (EngineConfig, exit_if_orphaned, fault_exit_once, map_unordered,
                                 warn_if_multinode)
from lapdata.core.errors import LapError
from lapdata.core import atomic
from lapdata.dataset.manifests import finalize_dataset, read_shard_json, sha256_file, write_json
from lapdata.dataset.resume import check_same_run
from lapdata.dataset.reader import finished_shards
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
    """Write ``result`` as shard ``task.name`` (tar, parquet, then json; each atomically: ``lapdata.core.atomic``).

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
    atomic.write_table(shard_dir / f"{task.name}.parquet", table_from_rows(rows, PHOTOS))
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
    write_json(shard_dir / f"{task.name}.json", stats)
    return stats


@dataclass(frozen=True)
class WriteConfig:
    """How ``write_dataset`` runs (the producer's own options decide what the shards hold)."""
    workers: int = 1                    # worker processes (local engine)
    part: tuple[int, int] = (0, 1)      # write part I/N of the shard plan (``select_part``)
    config: Mapping | None = None       # the run's options, recorded in stats.json (the resume rule compares them)
    image_ext: str = "jpg"              # how views are encoded
    quality: int = 95                   # JPEG quality
    progress: bool = True               # progress bar (only on a terminal)
    engine: EngineConfig = EngineConfig()  # where the jobs run (lapdata.core.engine)
    model: bool = False                 # the jobs load a model: Ray runs them in an actor pool


@dataclass(frozen=True)
class ShardJob:
    """One shard job for the engine: the task, where its shard goes (the dataset folder; ``remote``: the dataset
    URL a mounted folder commits to) and how views are encoded."""
    task: ShardTask
    out_dir: str
    image_ext: str
    quality: int
    remote: str | None


def _run_task(process: Callable[[ShardTask], ShardResult], job: ShardJob) -> dict:
    """One shard job, on either engine (top level: picklable; ``process`` is bound once per engine worker, so a Ray
    actor receives a backend's model once): process the task, write its shard, commit it (to the remote dataset,
    when ``remote``: tar, parquet, then json, the json last as on disk)."""
    task = job.task
    exit_if_orphaned()
    fault_exit_once(task.name)
    t0 = time.perf_counter()
    try:
        result = process(task)
        exit_if_orphaned()
        stats = write_shard(job.out_dir, task, result, image_ext=job.image_ext, quality=job.quality,
                            seconds=time.perf_counter() - t0)
        if job.remote:
            staging.push(job.out_dir, [f"{SHARD_DIR}/{task.name}{ext}" for ext in (".tar", ".parquet", ".json")],
                         url=job.remote)
        return {"ok": True, "stats": stats}
    except Exception as e:  # the shard fails, the run goes on; rerun retries it
        if job.remote:  # a local json without its remote commit would mark the shard finished here only
            (Path(job.out_dir) / SHARD_DIR / f"{task.name}.json").unlink(missing_ok=True)
        return {"ok": False, "shard": task.name, "error": f"{type(e).__name__}: {e}"}


def _job_lost(job: ShardJob, e: Exception) -> dict:
    """The result of a shard job the engine could not complete (e.g. its Ray worker died on every retry). A job whose
    shard was finished (``finished_shards``) before its result got lost -- a local pool breaks for every job in
    flight when one worker dies -- is reported as written, with the counts of its committed .json."""
    shards = Path(job.out_dir) / SHARD_DIR
    if job.remote is None and str(shards / f"{job.task.name}.tar") in finished_shards(shards):
        stats = read_shard_json(shards / f"{job.task.name}.json")
        return {"ok": True, "shard": job.task.name, "stats": stats}
    msg = (str(e).strip().splitlines() or [""])[0][:300]
    return {"ok": False, "shard": job.task.name, "error": f"{type(e).__name__}: {msg}"}


def _plan_todo(out: Path, tasks: Sequence[ShardTask], part: tuple[int, int]) -> tuple[list[ShardTask], int]:
    """The unfinished tasks of ``part`` (leftover temporary files of a killed run removed) and how many of the
    part's tasks are finished already."""
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError("shard task names are not unique")
    shard_dir = out / SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    for p in shard_dir.glob("*.tmp"):  # leftovers of a killed run
        p.unlink()
    mine = select_part(tasks, part)
    todo = [t for t in mine if not _finished(shard_dir, t.name)]
    return todo, len(mine) - len(todo)


class _Progress:
    """Counts the jobs' results (images written, failed shards) and shows them on a bar when asked."""

    def __init__(self, out: Path, total: int, skipped: int, show: bool) -> None:
        self.images, self.failed, self.bar = 0, [], None
        if show:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=skipped, unit="shard", desc=f"writing {out.name}",
                            dynamic_ncols=True, disable=None)  # None: no bar when stderr is not a terminal (a log)

    def consume(self, results: Iterable[dict]) -> None:
        for res in results:
            if res["ok"]:
                self.images += res["stats"][NUM_IMAGES]
            else:
                self.failed.append({"shard": res["shard"], "error": res["error"]})
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(images=self.images, failed=len(self.failed))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_dataset(
    out_dir: str | Path,
    tasks: Sequence[ShardTask],
    process: Callable[[ShardTask], ShardResult],
    cfg: WriteConfig = WriteConfig(),
    *,
    extra_rows: Sequence[dict] = (),
    warm: Callable[[], Any] | None = None,
) -> dict:
    """Write the unfinished shards of ``cfg.part`` with ``process`` on ``cfg.engine``, then finalize.

    ``process`` must be a picklable top-level function or functools.partial when workers > 1 (spawn start method).
    ``extra_rows`` (PHOTOS rows that belong to no shard) are kept by part 0 only, so merged parts count each once.
    ``warm``: loads the jobs' model once per engine worker (with ``cfg.model``: Ray runs the jobs in an actor pool).
    When ``out_dir`` is a mounted staging folder (``lapdata.core.staging.mount``), each job commits its shard to the
    remote dataset and the remote's finished shards are what is skipped.
    Returns the stats dict written to DIR/stats.json (plus ``failed``: list of {shard, error} of this run).
    """
    out = Path(out_dir)
    check_same_run(out, cfg.config)
    todo, skipped = _plan_todo(out, tasks, cfg.part)
    t0 = time.perf_counter()
    remote = storage.remote_of(out)
    jobs = [ShardJob(t, str(out), cfg.image_ext, cfg.quality, remote) for t in todo]
    progress = _Progress(out, len(todo) + skipped, skipped, cfg.progress)
    try:
        if cfg.engine.engine == "ray" and remote is None and todo:
            warn_if_multinode(str(out), cfg.engine.ray_address)
        progress.consume(map_unordered(functools.partial(_run_task, process), jobs, engine=cfg.engine,
                                       workers=cfg.workers, warm=warm, model=cfg.model, on_error=_job_lost))
    finally:
        progress.close()
    if remote:  # the small files of the shards the workers committed (a cluster's workers wrote on their nodes)
        staging.sync_down(out)
    run = {
        "planned_shards": len(tasks),
        "part": list(cfg.part),
        "part_shards": len(todo) + skipped,
        "skipped_finished": skipped,
        "written": len(todo) - len(progress.failed),
        "failed_shards": progress.failed,
        "images_written": progress.images,
        "seconds": round(time.perf_counter() - t0, 3),
        "workers": cfg.workers,
        "engine": cfg.engine.engine,
    }
    stats = finalize_dataset(out, config=cfg.config, extra_rows=list(extra_rows) if cfg.part[0] == 0 else [], run=run)
    stats["failed"] = progress.failed
    return stats
