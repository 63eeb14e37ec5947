"""Join part outputs (``lapdata ingest --part I/N`` run on N machines) into one dataset.

Every finished shard (tar, parquet, json) of every part is copied (or hard-linked) into OUT/shards; a shard name
present in two parts must be byte-identical (same sha256), else it is a LapError (the parts come from different
plans). The unsharded rows (identities dropped before planning; kept by part 0) are joined, de-duplicated by
photo_id. Then the dataset manifests are rebuilt by lapdata.dataset.writer.finalize_dataset, and the cross-identity
duplicates are found over the whole dataset and a held-out photo duplicating another split's is removed from its
shard (``lapdata.dataset.duplicates``: duplicates.parquet and stats.json ``cross_identity_duplicates``, as a whole ingest
run does: no part can see the other parts' photos). Each part's shard jsons are checked
(``lapdata.dataset.manifests.read_shard_json``) before anything is copied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from lapdata.core import storage

from lapdata.core import staging
from lapdata.dataset.duplicates import record_duplicates
from lapdata.core.engine import EngineConfig, map_unordered
from lapdata.core.errors import LapError
from lapdata.core.locks import writer_lock
from lapdata.dataset.schema import PHOTOS, SHARD_DIR, SHARD_SHA256
from lapdata.dataset.manifests import UNSHARDED, finalize_dataset, read_shard_json


@dataclass(frozen=True)
class CopyJob:
    """One merge job: shard ``name`` from part dataset ``src_dir`` to ``dst_dir`` (folders or URLs); ``link``:
    hard-link the tar and parquet between local paths."""
    src_dir: str
    dst_dir: str
    name: str
    link: bool


def _copy_shard(job: CopyJob) -> dict:
    """One merge job (either engine): tar, parquet, then the json marker, from the part to the merged dataset."""
    for ext in (".tar", ".parquet", ".json"):
        storage.transfer(storage.join(job.src_dir, SHARD_DIR, job.name + ext),
                         storage.join(job.dst_dir, SHARD_DIR, job.name + ext), job.link and ext != ".json")
    return {"shard": job.name}


def merge_datasets(dirs: Sequence[str | Path], out: str | Path, link: bool = False,
                   engine: EngineConfig = EngineConfig(), workers: int = 1) -> dict:
    """Join the part datasets ``dirs`` into ``out`` (folders or object-store URLs; see the module doc); the shard
    copies run on ``engine``. The run holds OUT's writer lock (``lapdata.core.locks``)."""
    if not storage.is_url(out) and Path(out).exists() and not Path(out).is_dir():
        raise LapError(f"{out}: --out exists and is not a folder")
    with writer_lock(out, "lapdata merge"):
        return _merge(dirs, out, link, engine, workers)


def _merge(dirs: Sequence[str | Path], out: str | Path, link: bool, engine: EngineConfig, workers: int) -> dict:
    out_url = str(out).rstrip("/") if storage.is_url(out) else None
    out = staging.mount(out_url) if out_url else Path(out)
    urls = [str(d).rstrip("/") if storage.is_url(d) else None for d in dirs]
    srcs = [staging.mount(u, reader=True) if u else Path(d) for u, d in zip(urls, dirs)]
    for d, u in zip(srcs, urls):
        if not (d / SHARD_DIR).is_dir():
            raise LapError(f"{u or d}: not a lapdata dataset (no {SHARD_DIR}/ folder)")
        if (u or d.resolve()) == (out_url or out.resolve()):
            raise LapError(f"{u or d}: --out must differ from the inputs")
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    configs, unsharded = [], []
    planned: set = set()
    seen: dict[str, str] = {}
    jobs = []
    for d, u in zip(srcs, urls):
        for js in sorted((d / SHARD_DIR).glob("*.json")):
            st = read_shard_json(js)
            name = js.stem
            if name in seen:
                if seen[name] != st.get(SHARD_SHA256):
                    raise LapError(f"{js}: shard {name} differs from the one in another part (different plans?)")
                continue
            seen[name] = st.get(SHARD_SHA256)
            for ext in (".tar", ".parquet"):
                p = js.with_suffix(ext)
                if not storage.exists(p):
                    raise LapError(f"{storage.remote_of(p) or p}: missing (the part's shard {name} is incomplete)")
            dst_json = out / SHARD_DIR / js.name
            if dst_json.exists() and read_shard_json(dst_json).get(SHARD_SHA256) == st.get(SHARD_SHA256):
                continue  # already merged (rerun)
            jobs.append(CopyJob(u or str(d), out_url or str(out), name, link))
        if (d / UNSHARDED).exists():
            unsharded.append(pq.read_table(d / UNSHARDED, schema=PHOTOS))
        try:
            planned.add(json.loads((d / "stats.json").read_text())["run"]["planned_shards"])
        except (OSError, ValueError, KeyError, TypeError):
            planned.add(None)
        for name in ("ingest.json", "stats.json"):
            if (d / name).exists():
                try:
                    doc = json.loads((d / name).read_text())
                except ValueError:
                    continue
                configs.append(doc if name == "ingest.json" else doc.get("config"))
                break
    for _ in map_unordered(_copy_shard, jobs, engine=engine, workers=workers):
        pass
    if out_url:
        staging.sync_down(out)  # the small files the jobs copied
    extra: list[dict] = []
    if unsharded:
        t = pa.concat_tables(unsharded)
        ids = set()
        for r in t.to_pylist():
            if r["photo_id"] not in ids:
                ids.add(r["photo_id"])
                extra.append({k: v for k, v in r.items() if v is not None})
    config = next((c for c in configs if c), None)
    if config is not None:
        config = dict(config)
        config.pop("part", None)
        config["merged_from"] = [u or str(d) for d, u in zip(srcs, urls)]
    # complete when every part comes from the same plan and all its shards are here
    plan = planned.pop() if len(planned) == 1 else -1
    stats = finalize_dataset(out, config=config, extra_rows=extra,
                             run={"merged": len(srcs), "part": [0, 1], "failed_shards": [], "planned_shards": plan})
    distance, least = ((config or {}).get(k) for k in ("phash_distance", "min_images"))
    stats = record_duplicates(out, stats, distance if isinstance(distance, int) else 4,
                              least if isinstance(least, int) else 1, quality=(config or {}).get("quality") or 95)
    staging.push_tree(out)  # a dataset URL: the manifests, stats.json last
    return stats
