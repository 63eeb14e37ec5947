"""parse-masks, one shard: read it, parse every view, return the samples with their label maps and the updated rows.

``process_shard(task, src_dir, cfg, parsers)`` is the writer's process function of ``lapdata.parsing.parse``
(``parsers(name, cfg)`` gives the model parser, ``parse.get_parser``). One bad record is one error row, never a
failed shard: a sample whose json is unreadable or whose member is over the reader's size limit gives error rows
(reason ``bad_sample``) for the photo rows of its key; a view whose image bytes do not match its ``image_sha256``
is an error row (reason ``corrupt_image``) and leaves the shard (its bytes are never re-hashed into the new
version); a view without image bytes likewise (``no_image``). Parser failures follow ``cfg.drop_failed``
(module doc of ``lapdata.parsing.parse``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lapdata.core import storage
from lapdata.dataset.sample import (KEY, IdentitySample, View, decode_image, decode_sample, image_fault, image_member,
                                    sample_json)
from lapdata.dataset.schema import PHOTOS, STATUS_ERROR
from lapdata.dataset.schema import SHARD_DIR
from lapdata.dataset.reader import iter_tar_samples
from lapdata.dataset.writer import ShardResult, ShardTask
from lapdata.parsing.base import ParseResult
from lapdata.parsing.labels import CLASS_ID, class_counts
from lapdata.parsing.masks import face_fraction

MODEL_PARSERS = ("bisenet", "landmarks")
GROUND_TRUTH = "ground-truth"
DROPPED = ("no_image", "corrupt_image")  # error prefixes whose views always leave the shard (error rows)


# ------------------------------------------------------------------------------------------------ ground truth


def ground_truth(view: View) -> tuple[np.ndarray | None, str | None]:
    """The view's ground-truth label map (H, W) uint8 and its source ("mask" or "annotation"), or (None, None).

    A synthetic face ``mask`` gives face -> skin (1), rest background (0) (also when an earlier parse-masks run
    stored that as seg: ``seg_source`` "mask"); a stored seg that no parse-masks model parser made is an annotation
    (CelebAMask-HQ via ingest, or a backend's part labels).
    """
    from_mask = view.meta.get("seg_source") == "mask"
    if view.seg is not None and not from_mask and view.meta.get("parser") not in MODEL_PARSERS:
        return np.asarray(view.seg, dtype=np.uint8), "annotation"
    if view.mask is not None:
        return np.where(np.asarray(view.mask, dtype=bool), CLASS_ID["skin"], 0).astype(np.uint8), "mask"
    return None, None


def has_ground_truth(view: View) -> bool:
    return ground_truth(view)[0] is not None


# ------------------------------------------------------------------------------------------------ one shard


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0][:200]}" if s else type(e).__name__


def parse_views(images: Sequence[np.ndarray], parser, batch_size: int) -> list[ParseResult]:
    """Run ``parser`` over images in chunks of ``batch_size``; a chunk that raises gives error results."""
    out: list[ParseResult] = []
    for i in range(0, len(images), batch_size):
        chunk = list(images[i : i + batch_size])
        try:
            res = parser(chunk)
        except Exception as e:  # a parser fault fails these views, not the run
            res = [ParseResult(None, error=f"parser_error: {_one_line(e)}") for _ in chunk]
        out.extend(res)
    return out


@dataclass
class _ShardParse:
    """One shard's parse in progress: its photo rows (updated in place), samples, the views waiting for the model
    parser, each view's result and the rows that become error rows."""
    rows: list[dict]
    by_pid: dict[str, dict] = field(default_factory=dict)
    by_key: dict[str, list[str]] = field(default_factory=dict)
    samples: list[IdentitySample] = field(default_factory=list)
    todo: list[tuple[int, int, bytes]] = field(default_factory=list)  # (sample, view, image bytes): model parser
    results: dict[tuple[int, int], tuple[ParseResult, str]] = field(default_factory=dict)
    failed_rows: dict[str, tuple[str, str]] = field(default_factory=dict)  # photo_id -> (reason, error)

    def bad_sample(self, key: str, why: str) -> None:
        """Every photo row of sample ``key`` becomes an error row (its json may be what is broken)."""
        for pid in self.by_key.get(key, []):
            self.failed_rows[pid] = ("bad_sample", f"{key}: {why}")


def _read_rows(src: str, name: str) -> _ShardParse:
    """The shard's photo rows (its parquet; none when it is missing), by photo_id and by sample key."""
    pq_path = storage.join(src, f"{name}.parquet")
    rows_tab = (pq.read_table(pa.BufferReader(storage.read_bytes(pq_path)), schema=PHOTOS)
                if storage.exists(pq_path) else None)
    st = _ShardParse(rows_tab.to_pylist() if rows_tab is not None else [])
    st.by_pid = {str(r["photo_id"]): r for r in st.rows}
    for r in st.rows:
        if r.get("key") is not None:
            st.by_key.setdefault(str(r["key"]), []).append(str(r["photo_id"]))
    return st


def _read_samples(st: _ShardParse, tar: str, cfg: Any) -> None:
    """Decode the tar's samples; each view gets its ground truth, an error, or a place in the model's queue."""
    def skipped(e: Exception) -> bool:  # lapdata.dataset.reader: a member over the size limit (not read)
        st.bad_sample(str(getattr(e, "key", "")), _one_line(e))
        return True

    for d in iter_tar_samples(tar, handler=skipped):
        try:
            doc = sample_json(d)
            # every extra field is decoded (it is re-encoded by the writer); image bytes are kept as they are
            s = decode_sample(d, fields=("depth", "cdepth", "normal", "mask", "seg"))
        except Exception as e:  # noqa: BLE001 - one bad sample: its rows, not the shard
            st.bad_sample(str(d.get(KEY)), _one_line(e))
            continue
        st.samples.append(s)
        for vi, v in enumerate(s.views):
            _route_view(st, len(st.samples) - 1, vi, v, d, doc["views"][vi], cfg)


def _route_view(st: _ShardParse, si: int, vi: int, v: View, d: dict, vm: dict, cfg: Any) -> None:
    """View ``vi`` of sample ``si``: no image or corrupt (``image_fault``), its ground truth, no ground truth
    without a model parser, or queued for the model parser."""
    ext = vm.get("image_ext", "jpg")
    data = d.get(image_member(vi, ext))
    bad = image_fault(d, vi, vm)
    if bad is not None:
        reason = "no_image" if data is None else "corrupt_image"
        st.results[(si, vi)] = (ParseResult(None, error=f"{reason}: {st.samples[si].key} {bad}"), "none")
        return
    v.encoded = (ext, data)
    v.meta.pop("image_sha256", None)
    gt, gt_source = ground_truth(v) if cfg.parser in ("auto", "ground-truth") else (None, None)
    if gt is not None:
        st.results[(si, vi)] = (ParseResult(gt, info={"seg_source": gt_source}), GROUND_TRUTH)
    elif cfg.model_parser is None:
        st.results[(si, vi)] = (ParseResult(None, error="no_ground_truth: the view has no seg or mask"), GROUND_TRUTH)
    else:
        st.todo.append((si, vi, data))


def _run_model(st: _ShardParse, cfg: Any, parsers: Callable[[str, Any], Any]) -> None:
    """The queued views through the model parser, decoded one batch at a time."""
    name = cfg.model_parser
    for i in range(0, len(st.todo), cfg.batch_size):
        chunk = []
        for si, vi, data in st.todo[i : i + cfg.batch_size]:
            try:
                chunk.append((si, vi, decode_image(data, "RGB")))
            except Exception as e:
                st.results[(si, vi)] = (ParseResult(None, error=f"bad_image: {_one_line(e)}"), name)
        parsed = parse_views([c[2] for c in chunk], parsers(name, cfg), cfg.batch_size) if chunk else []
        for (si, vi, img), r in zip(chunk, parsed):
            if r.ok and r.seg.shape != img.shape[:2]:
                r = ParseResult(None, error=f"parser_error: label map {r.seg.shape} for image {img.shape[:2]}")
            st.results[(si, vi)] = (r, name)


def _label_view(st: _ShardParse, si: int, vi: int, v: View, cfg: Any) -> bool:
    """Give view ``vi`` of sample ``si`` its label map, meta and row (hard when its face fraction is small or its
    parse failed and failures are kept); False when the view leaves the shard (its row an error row)."""
    r, pname = st.results[(si, vi)]
    pid = v.meta.get("photo_id")
    row = st.by_pid.get(str(pid)) if pid is not None else None
    error = hard_reason = None
    if not r.ok:
        reason = r.error.split(":")[0] if r.error.split(":")[0] in DROPPED else "parse_failed"
        if cfg.drop_failed or v.encoded is None:
            if pid is not None:
                st.failed_rows[str(pid)] = (reason, r.error)
            return False
        h, w = decode_image(v.encoded[1], "RGB").shape[:2]
        error = r.error
        r = ParseResult(np.zeros((h, w), np.uint8))  # empty label map: M = 0, and the view is hard
        hard_reason = f"parse_failed: {error}"
    ff = face_fraction(r.seg, cfg.masks)
    seg_source = (r.info or {}).get("seg_source", pname)
    if hard_reason is None and ff < cfg.min_face_fraction and seg_source != "mask":  # a mask is exact
        hard_reason = f"face_fraction {ff:.3f} < {cfg.min_face_fraction:g}"
    v.seg = r.seg
    v.meta.update(parser=pname, seg_source=seg_source, face_fraction=round(ff, 5), hard=hard_reason is not None)
    v.meta.pop("hard_reason", None)
    prev_error = v.meta.pop("parse_error", None)
    if hard_reason is not None:
        v.meta["hard_reason"] = hard_reason
    if error is not None:
        v.meta["parse_error"] = error
    if row is not None:
        row.update(parser=pname, face_fraction=float(ff), class_counts=class_counts(r.seg),
                   hard=hard_reason is not None, hard_reason=hard_reason)
        if error is not None:
            row["error"] = error
        elif prev_error is not None and row.get("error") == prev_error:
            row["error"] = None  # an earlier run's parse failure, parsed now
    return True


def process_shard(task: ShardTask, src_dir: str, cfg: Any, parsers: Callable[[str, Any], Any]) -> ShardResult:
    """Read shard ``task.name`` of ``src_dir``, parse its views, return the samples (with seg) and updated rows.

    cfg: the ``ParseConfig``; parsers: ``(name, cfg) -> parser`` (``lapdata.parsing.parse.get_parser``)."""
    src = storage.join(str(src_dir), SHARD_DIR)  # a folder or a dataset URL (a Ray worker reads it from any node)
    st = _read_rows(src, task.name)
    _read_samples(st, storage.join(src, f"{task.name}.tar"), cfg)
    _run_model(st, cfg, parsers)
    out_samples: list[IdentitySample] = []
    for si, s in enumerate(st.samples):
        kept = [v for vi, v in enumerate(s.views) if _label_view(st, si, vi, v, cfg)]
        if kept:
            s.views = kept
            out_samples.append(s)
    for pid, (reason, err) in st.failed_rows.items():
        row = st.by_pid.get(pid)
        if row is not None:
            row.update(status=STATUS_ERROR, reason=reason, error=err, shard=None, key=None, view_index=None,
                       parser=None, face_fraction=None, class_counts=None, hard=None, hard_reason=None)
    return ShardResult(samples=out_samples, rows=st.rows)
