"""Where shard jobs run: ``local`` (this machine's spawn process pool, the default) or ``ray`` (a Ray cluster).

The engine only *runs* shard jobs. The shard plan, the skip-finished resume, the error rows, the shard commit and the
manifests are ``lapdata.dataset.writer``'s, the same code for both engines: each job is ``writer._run_task`` (process one
shard, write it, commit it), so the Ray engine writes the same bytes as the local one.

Why Ray tasks/actors and not Ray Data: a shard is our unit of work and of commit (tar, parquet, json; the json
marks it finished), and the plan is deterministic; Ray Data would re-partition rows into blocks of its own, and
writing our shards from its blocks would be a second writer with its own ordering. With one job per shard, Ray
gives us scheduling, retries on worker death (``max_retries`` / ``max_task_retries``) and placement, and nothing
about the output depends on which node ran a shard.

* Jobs with no model (pre-aligned ingest, the merge copies) are Ray **tasks** (``num_cpus=1``, retried when a
  worker dies), at most two per cluster CPU in flight so the driver's memory stays flat.
* Jobs with a model (face detection, identity embedding, BiSeNet, the synthetic generators) run in an **actor
  pool**: each actor receives the shard function once, calls ``warm()`` once (loads the model; the process-level
  caches keep it), then takes shards. Actors take ``num_gpus`` (a share of the cluster's GPUs, at most 1) when
  the cluster has GPUs, else one CPU. Decoding and alignment of a shard run inside the same job, on that actor's
  CPU: a finer split (decode tasks -> detector actor -> align tasks) would move every decoded photo through the
  object store to save little, since our detectors (dlib HOG, SCRFD on onnxruntime) run on the CPU by default.

Environment: variables named ``LAPDATA_*`` and ``FSSPEC_*`` (staging, object-store endpoints) travel to the Ray
workers; credentials come from each node's own environment.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

from lapdata.core.errors import LapError

EngineName = Literal["local", "ray"]


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """The engine options, declared once: every shard command's config inherits them (keyword-only fields, so
    they follow the command's own), and ``lapdata.core.cliconfig`` derives ``--engine``/``--ray-address``/
    ``--ray-actors`` from them."""

    engine: EngineName = "local"        # where shard jobs run: local (this machine's process pool) or ray
    ray_address: str | None = None      # Ray cluster: auto (running) or ray://host:port; unset: $RAY_ADDRESS or a new one here
    ray_actors: int = 0                 # Ray actors for model steps (0: one per cluster GPU, else one per CPU)

    def __post_init__(self) -> None:
        if self.ray_actors < 0:
            raise LapError(f"--ray-actors {self.ray_actors}: must be >= 0")


ENGINE_FIELDS = ("engine", "ray_address", "ray_actors")  # they do not change what is written (resume may change them)


def engine_of(cfg: Any) -> EngineConfig:
    """The EngineConfig part of a command config."""
    return EngineConfig(**{k: getattr(cfg, k) for k in ENGINE_FIELDS})


# ------------------------------------------------------------------------------------------------------ local


_PARENT_PID: int | None = None  # set in worker processes: the pid of the command that started them


def _worker_init(parent: int) -> None:
    """Pool initializer: die with the parent (Linux: the kernel sends SIGKILL when it exits, even by kill -9)."""
    global _PARENT_PID
    _PARENT_PID = parent
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # no libc prctl: the pid check below still applies
            pass
    exit_if_orphaned()


def exit_if_orphaned() -> None:
    """In a local worker whose parent is gone: exit at once (nothing more is written)."""
    if _PARENT_PID is not None and os.getppid() != _PARENT_PID:
        os._exit(1)


def _local(run: Callable, items: Sequence, workers: int, on_error: Callable | None) -> Iterator[Any]:
    """This machine: in this process (one worker), else a spawn process pool whose workers die with the parent. A
    worker killed by the system (e.g. out of memory) breaks the pool: its job and those not done yet are reported
    through ``on_error`` (a rerun retries them), never a hang."""
    if workers <= 1 or len(items) <= 1:
        yield from (run(i) for i in items)
        return
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    n = min(workers, len(items))
    kw: dict[str, Any] = {"max_tasks_per_child": 64} if sys.version_info >= (3, 11) else {}
    with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(os.getpid(),), **kw) as ex:
        pending: dict = {}
        todo = list(items)[::-1]
        broken: Exception | None = None
        while todo or pending:
            while todo and len(pending) < 2 * n and broken is None:
                item = todo.pop()
                try:
                    pending[ex.submit(run, item)] = item
                except BrokenProcessPool as e:
                    broken = e
                    todo.append(item)
            if broken is not None and not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                item = pending.pop(f)
                try:
                    yield f.result()
                except BrokenProcessPool as e:
                    broken = e
                    if on_error is None:
                        raise
                    yield on_error(item, RuntimeError("a worker process died (killed by the system?); rerun the "
                                                      "command to retry"))
        for item in todo[::-1]:  # never started: the pool is broken
            if on_error is None:
                raise RuntimeError("a worker process died (killed by the system?)") from broken
            yield on_error(item, RuntimeError("not run: a worker process died; rerun the command to retry"))


# ------------------------------------------------------------------------------------------------------ ray


def _env_vars() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(("LAPDATA_", "FSSPEC_"))}


def connect_seconds() -> float:
    """How long a Ray cluster has to answer (``LAPDATA_RAY_CONNECT_SECONDS``, default 60)."""
    return float(os.environ.get("LAPDATA_RAY_CONNECT_SECONDS") or 60)


def _probe(address: str) -> None:
    """A ``host:port`` (or ``ray://host:port``) that refuses a TCP connection, or answers but not as a gRPC server
    (a Ray head's GCS and the Ray Client server both speak gRPC: HTTP/2 with a SETTINGS frame first): one LapError
    now, not Ray's endless retries."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    wait = min(10.0, connect_seconds())
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=wait) as sock:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
            head = b""
            while len(head) < 9:
                got = sock.recv(9 - len(head))
                if not got:
                    break
                head += got
    except socket.timeout:
        head = b""
    except OSError as e:
        raise LapError(f"--ray-address {address}: cannot connect to {host}:{port} ({e.strerror or type(e).__name__});"
                       f" is the cluster up (ray start --head) and the address right?") from None
    if len(head) < 9 or head[3] != 4:
        raise LapError(f"--ray-address {address}: {host}:{port} answers, but not as a Ray cluster (no gRPC reply); "
                       f"give the head's GCS address (ray start --head prints it, port 6379 by default)")


def _connect(ray, address: str, kw: dict) -> None:
    """``ray.init(address)`` bounded by ``connect_seconds()``: Ray retries an address that answers but is no Ray
    cluster forever. Run in a helper thread (Ray then leaves SIGTERM to the default handler: the cluster is not
    ours to stop)."""
    import logging
    import threading

    done, failed = threading.Event(), []

    def go() -> None:
        quiet = logging.getLogger("ray._private.worker")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # "SIGTERM handler is not set ... not the main thread": expected here
        try:
            ray.init(address=address, **kw)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            failed.append(e)
        finally:
            quiet.setLevel(level)
            done.set()

    threading.Thread(target=go, name="lapdata-ray-connect", daemon=True).start()
    if not done.wait(connect_seconds()):
        raise LapError(f"--ray-address {address}: no Ray cluster answered within {connect_seconds():.0f} s "
                       f"(LAPDATA_RAY_CONNECT_SECONDS); is it a Ray head (ray start --head) and the port right?")
    if failed:
        raise failed[0]


def init_ray(address: str | None = None):
    """Connect to the cluster at ``address`` (``auto``, ``host:port``, ``ray://host:port``; unset: ``$RAY_ADDRESS``,
    else start a one-machine cluster here) once per process, in bounded time; returns the ray module. One-line
    errors naming the address."""
    try:
        import ray
    except ImportError:
        raise LapError("--engine ray needs Ray: pip install 'lap-toolkit[cluster]' (or pip install 'ray>=2.9')"
                       ) from None
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    import logging

    kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                              logging_level=logging.WARNING,
                              runtime_env={"env_vars": _env_vars()} if _env_vars() else None)
    try:
        if address:
            _probe(address)
            _connect(ray, address, kw)
        else:  # a one-machine cluster of this machine's CPUs (stops when the command exits)
            ray.init(num_cpus=os.cpu_count() or 1, object_store_memory=256 << 20, **kw)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        raise LapError(f"--ray-address {address or '(local)'}: cannot connect to Ray ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return ray


class ShardActor:
    """A Ray actor of the model pool: the shard function arrives once, ``warm`` loads its model once."""

    def __init__(self, run: Callable, warm: Callable[[], Any] | None) -> None:
        self.run = run
        if warm is not None:
            warm()

    def shard(self, item: Any) -> Any:
        return self.run(item)


def _ray(run: Callable, items: Sequence, cfg: EngineConfig, warm: Callable | None, model: bool,
         on_error: Callable[[Any, Exception], Any] | None) -> Iterator[Any]:
    ray = init_ray(cfg.ray_address)
    res = ray.cluster_resources()
    cpus, gpus = max(1, int(res.get("CPU", 1))), float(res.get("GPU", 0))
    idle: list = []
    if model:  # an actor pool: the shard function and its model, once per actor
        n = max(1, min(cfg.ray_actors or (int(gpus) if gpus >= 1 else cpus), len(items)))
        opts: dict[str, Any] = dict(max_restarts=3, max_task_retries=3, num_cpus=1)
        if gpus > 0:
            opts["num_gpus"] = min(1.0, gpus / n)
        actor = ray.remote(**opts)(ShardActor)
        idle = [actor.remote(run, warm) for _ in range(n)]
        slots = n
    else:  # tasks, at most two per cluster CPU in flight (the driver's memory stays flat)
        task = ray.remote(num_cpus=1, max_retries=3)(_call)
        ref = ray.put(run)
        slots = 2 * cpus
    pending: dict = {}  # object ref -> (item, actor or None)

    def submit(item: Any) -> None:
        if model:
            a = idle.pop()
            pending[a.shard.remote(item)] = (item, a)
        else:
            pending[task.remote(ref, item)] = (item, None)

    def collect() -> Any:
        done, _ = ray.wait(list(pending), num_returns=1)
        item, a = pending.pop(done[0])
        if a is not None:
            idle.append(a)
        try:
            return ray.get(done[0])
        except ray.exceptions.RayError as e:  # retries exhausted (a worker died again and again): this job fails
            if on_error is None:
                raise
            return on_error(item, e)

    for item in items:
        while len(pending) >= slots:
            yield collect()
        submit(item)
    while pending:
        yield collect()


def warn_if_multinode(out: str, address: str | None) -> None:
    """A local --out on a Ray cluster of several nodes: each job writes where it runs (one warning). Connects to
    the configured cluster (``address``), never a private one in its place."""
    ray = init_ray(address)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1:
        from lapdata.core.logs import get_logger, warn_once

        warn_once(get_logger("lapdata.core.engine"),
                  f"{out}: a local path, and the Ray cluster has {len(nodes)} nodes: every node must mount it at this "
                  f"path (a shared filesystem), else give an object-store URL (s3://...)")


def _call(run: Callable, item: Any) -> Any:
    return run(item)


def map_unordered(run: Callable[[Any], Any], items: Iterable, *, engine: EngineConfig = EngineConfig(),
                  workers: int = 1, warm: Callable[[], Any] | None = None, model: bool = False,
                  on_error: Callable[[Any, Exception], Any] | None = None) -> Iterator[Any]:
    """``run(item)`` for every item, results in completion order, on the configured engine.

    ``run`` must be picklable (a top-level function or functools.partial of one). ``model``: the jobs load a model
    (Ray: an actor pool, ``warm`` called once per actor; local: ``workers`` processes, the model cached per
    process). ``on_error(item, exc)``: the result of a job Ray could not complete after its retries (else the
    error is raised). With Ray, ``workers`` is not used: the cluster's CPUs (tasks) or ``ray_actors`` decide."""
    items = list(items)
    if not items:
        return iter(())
    if engine.engine == "local":
        return _local(run, items, workers, on_error)
    if engine.engine == "ray":
        return _ray(run, items, engine, warm, model, on_error)
    raise LapError(f"--engine {engine.engine!r}: unknown engine (known: local, ray)")


def fault_exit_once(name: str) -> None:
    """Fault injection for tests: with ``LAPDATA_FAULT_EXIT=NAME:MARKER``, armed while MARKER's folder exists, the
    first job of shard NAME (MARKER not there yet) creates MARKER and kills its own process, as an out-of-memory
    kill would; the retry or the rerun then finds MARKER and goes on."""
    spec = os.environ.get("LAPDATA_FAULT_EXIT")
    if not spec or ":" not in spec:
        return
    target, marker = spec.split(":", 1)
    if target == name and os.path.isdir(os.path.dirname(marker)) and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(f"{os.getpid()}\n")
        os._exit(17)


__all__ = ["EngineConfig", "ENGINE_FIELDS", "engine_of", "map_unordered", "init_ray", "exit_if_orphaned",
           "fault_exit_once"]
