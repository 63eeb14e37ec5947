"""The resume rule, once: a rerun into an existing dataset must be the same run.

A producer (ingest, build-synthetic, parse-masks, merge) keeps the finished shards of an earlier run into the same
OUT, so a rerun with other options or another source would mix two datasets. Two records are checked with one
comparison (``changed_options``): the ``config`` in ``stats.json`` (``check_same_run``, every producer, through
``lapdata.dataset.writer.write_dataset``) and ingest's ``ingest.json``, written before the first shard, which also
holds the source's resolved path and record fingerprint (``check_same_source``). Options that do not change what is
written (``RESUMABLE_OPTIONS``) may differ; an option added after datasets were first written compares with the
value the older runs used (``ADDED_OPTIONS``). Used by ``lapdata.dataset.writer`` and ``lapdata.ingest.run``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

from lapdata.core import atomic
from lapdata.core.engine import ENGINE_FIELDS
from lapdata.core.errors import LapError

# options that may change between the runs of one dataset (they do not change what is written); parse_masks: the
# options a parsed version's config records (parse-masks checks its own, lapdata.parsing.parse's parse_config.json)
RESUMABLE_OPTIONS = frozenset({"workers", "part", "progress", "out", "device", "parse_masks", *ENGINE_FIELDS})
# options added after datasets were first written, with the value every older run used: ingest's max_pixels (the
# 64 MP budget runs had before the option; today's default is lapdata.sources.photos.DEFAULT_MAX_PIXELS) and
# csv_root; build-synthetic's det_model and framing (none for the 3D backends)
ADDED_OPTIONS = {"max_pixels": 64_000_000, "csv_root": None, "det_model": "", "framing": None}


def _plain(doc: Mapping) -> dict:
    """``doc`` as it reads back from JSON (tuples as lists, other values as their text)."""
    return json.loads(json.dumps(dict(doc), default=str))


def changed_options(old: Mapping, new: Mapping, keys: Iterable[str] | None = None) -> list[str]:
    """The options (of ``keys``; default: every option of either run, less ``RESUMABLE_OPTIONS``) whose value in the
    earlier run ``old`` differs from the new run's, sorted; an option the earlier run did not record reads as its
    ``ADDED_OPTIONS`` value."""
    new = _plain(new)
    keys = sorted(set(old) | set(new)) if keys is None else list(keys)
    return [k for k in keys if k not in RESUMABLE_OPTIONS and old.get(k, ADDED_OPTIONS.get(k)) != new.get(k)]


def _short(v) -> str:
    t = repr(v)
    return t if len(t) <= 60 else t[:57] + "..."


def check_same_run(out: Path, config: Mapping | None) -> None:
    """A rerun into dataset OUT (its ``stats.json`` records the run's ``config``) must be the same command up to
    ``RESUMABLE_OPTIONS``. LapError naming the first differing option."""
    if config is None or not (out / "stats.json").is_file():
        return
    try:
        old = json.loads((out / "stats.json").read_text()).get("config") or {}
    except (OSError, ValueError):
        return  # an unreadable stats.json is audit's finding; the shards decide what is finished
    diff = changed_options(old, config)
    if diff:
        k, new = diff[0], _plain(config)
        raise LapError(f"{out}: holds a dataset written with other options ({k}: {_short(old.get(k))} there, "
                       f"{_short(new.get(k))} now); rerun with the same options to resume, or use another --out")


def check_same_source(out: Path, doc: Mapping, keys: Iterable[str]) -> None:
    """Ingest's resume rule: ``OUT/ingest.json`` (written here on the first run, before any shard) must hold the
    same ``keys`` options as ``doc`` and the same source (``doc["source"]``: resolved path and record fingerprint,
    ``lapdata.ingest.config.source_doc``). LapError naming the differing options or both sources."""
    p = out / "ingest.json"
    if not p.exists():
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(p, json.dumps(_plain(doc), indent=1, sort_keys=True) + "\n")
        return
    try:
        old = json.loads(p.read_text(encoding="utf-8"))
        assert isinstance(old, dict)
    except (OSError, ValueError, AssertionError):
        raise LapError(f"{p}: unreadable (not the JSON lapdata ingest writes); use a new --out") from None
    diff = changed_options(old, doc, keys)
    if diff:
        raise LapError(f"{out} holds shards written with other options ({', '.join(f'{k}={old.get(k)!r}' for k in diff)});"
                       f" rerun with the same options or use a new --out")
    was, now = old.get("source"), doc["source"]
    if isinstance(was, dict) and was.get("fingerprint") != now["fingerprint"]:
        raise LapError(f"{out} holds shards of another source ({was.get('src')}: {was.get('photos')} photos of "
                       f"{was.get('identities')} identities; now {now['src']}: {now['photos']} photos of "
                       f"{now['identities']}); rerun with the same source to resume, or use a new --out")
