"""Ingest: photo collections -> identity-grouped WebDataset shards + Parquet manifests.

Steps (``run_ingest(IngestConfig)``):

1. read the source's records (lapdata.sources.records), group them by identity;
2. drop identities with fewer than ``min_images`` photos (their rows: status=skipped, reason=min_images) and split
   the rest by identity (lapdata.dataset.split: hash of (seed, identity), or a committed ``split_manifest``);
3. plan shards (lapdata.dataset.writer.plan_shards) and write them (lapdata.dataset.writer.write_dataset) with
   :func:`process_shard` in ``workers`` processes, per identity:

   * read each photo (unreadable / truncated / non-image files -> status=error with the message; every PIL mode is
     decoded to RGB or refused by name, lapdata.sources.photos; over ``max_pixels`` -> skipped/too_large, nothing decoded);
   * face: pre-aligned layouts (ArcFace 112, CelebA img_align, CelebA-HQ) are cropped with a fixed rule
     (lapdata.faces.align.crop_prealigned); other photos are detected and aligned (lapdata.faces.align: dlib by default,
     insightface SCRFD with ``det_model``), the largest face kept, the others' boxes in other_boxes; no face ->
     skipped/no_face. ``mode``: auto (pre-aligned layouts by source or image size, otherwise detect) / aligned / detect;
   * duplicates: exact (same file sha256) and near (perceptual hash within ``phash_distance`` bits) inside the
     identity -> skipped/duplicate with dup_of (the first photo kept);
   * optional identity-noise filter (``id_filter``): embed each face (dlib 128-D, or ArcFace ONNX ``id_model``), score
     its cosine to the identity's robust centre, drop those under the threshold -> skipped/id_outlier with id_score;
   * identities left with fewer than ``min_images`` good photos -> their photos skipped/min_images;
   * samples of at most ``max_per_sample`` photos (chunks 000, 001, ...), images JPEG-encoded in the worker.

4. after a whole (non-part) run: photos that duplicate a photo of *another* identity (exact or near) are listed in
   OUT/duplicates.parquet, and a held-out photo (val/test) that duplicates another split's is removed from its
   shard (skipped, reason duplicate_other_split, dup_of the kept photo; lapdata.dataset.duplicates holds the rule that
   ``lapdata audit`` checks), so what ingest writes passes the audit.

Every input record gets exactly one row: records the source decided on (a refused symlink, an empty folder, a CSV
path leaving its folder: ``PhotoRecord.note``) and later records with an already-seen photo_id (a CSV path listed
twice: status error, their own photo_id ``sha256("{source}:{path}#{n}")[:16]``) go to unsharded.parquet.
A rerun into an existing OUT must be the same command on the same source (ingest.json holds the source's resolved
path and a fingerprint of its records); anything else is one LapError naming both sources.

Everything a photo went through is in its manifest row; the run ends with a one-line summary (:func:`summary_line`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lapdata.core import staging, storage
from lapdata.dataset.duplicates import record_duplicates
from lapdata.core.engine import engine_of
from lapdata.core.errors import LapError
from lapdata.ingest.config import CONTENT_KEYS, IngestConfig, check_out, config_doc, source_doc
from lapdata.ingest.models import default_threshold, embedder_name, get_detector, get_embedder, id_filter_scores
from lapdata.core.locks import writer_lock
from lapdata.sources.photos import PhotoRejected, PhotoTooLarge, decode_photo, max_file_bytes
from lapdata.dataset.sample import IdentitySample, View, encode_image, sample_key
from lapdata.dataset.schema import STATUS_ERROR, STATUS_OK, STATUS_SKIPPED
from lapdata.sources.records import PhotoRecord, SourceOptions, load_bytes, load_celebamask_seg, open_source
from lapdata.dataset.split import SplitConfig, load_split_manifest, split_of
from lapdata.dataset.writer import ShardResult, ShardTask, WriteConfig, plan_shards, write_dataset
from lapdata.dataset.resume import check_same_source



# ------------------------------------------------------------------------------------------------ per photo


@dataclass
class Prepared:
    row: dict
    crop: np.ndarray | None = None
    seg: np.ndarray | None = None
    meta: dict | None = None


def _flat(a) -> list[float]:
    return [float(v) for v in np.asarray(a, np.float64).ravel()]


def _msg(e: Exception) -> str:
    """Exception -> deterministic one-line message (no object addresses, so reruns give identical manifests)."""
    text = re.sub(r"<[^<>]* object at 0x[0-9a-fA-F]+>", "data", str(e))
    return f"{type(e).__name__}: {text}".splitlines()[0]


def prepare_photo(rec: PhotoRecord, split: str, cfg: IngestConfig) -> Prepared:
    from lapdata.faces import align as faces

    row = base_row(rec, split, cfg)
    try:
        cap = max_file_bytes(cfg.max_pixels)
        # a local file is measured before reading; an object is read first (a HEAD per photo would double the
        # requests), then measured
        remote = rec.file is not None and storage.is_url(rec.file)
        data = load_bytes(rec) if remote else None
        nbytes = len(data) if data is not None else (os.stat(rec.file).st_size if rec.file is not None else 0)
        if nbytes > cap:
            row.update(status=STATUS_SKIPPED, reason="too_large",
                       error=f"{nbytes} bytes, over the {cap >> 20} MiB file cap of --max-pixels")
            return Prepared(row)
        if data is None:
            data = load_bytes(rec)
    except Exception as e:
        row.update(status=STATUS_ERROR, error=f"cannot read: {_msg(e)}")
        return Prepared(row)
    row["sha256"] = hashlib.sha256(data).hexdigest()
    try:
        img = decode_photo(data, cfg.max_pixels)
    except PhotoTooLarge as e:
        row.update(status=STATUS_SKIPPED, reason="too_large", error=str(e), orig_width=e.width, orig_height=e.height)
        return Prepared(row)
    except PhotoRejected as e:
        row.update(status=STATUS_ERROR, error=f"not decoded: {e}")
        return Prepared(row)
    except Exception as e:
        row.update(status=STATUS_ERROR, error=f"not a readable image ({len(data)} bytes): {_msg(e)}")
        return Prepared(row)
    h, w = img.shape[:2]
    row.update(orig_width=w, orig_height=h)
    layout = rec.layout
    if cfg.mode == "aligned":
        use_rule = layout or "auto"
    elif cfg.mode == "detect":
        use_rule = None
    else:
        use_rule = layout or faces.prealigned_layout(w, h)
    seg = None
    meta: dict[str, Any] = {"photo_id": rec.photo_id, "path": rec.path, "source": rec.source}
    try:
        if use_rule is not None:
            use_rule = faces.resolve_prealigned_rule(use_rule, w, h)
            crop, rule = faces.crop_prealigned(img, cfg.size, use_rule)
            x0, y0, side = faces.prealigned_box(use_rule, w, h)
            row.update(num_faces=1, crop_rule=rule, box=[x0, y0, x0 + side, y0 + side])
            if rec.mask is not None:
                seg = _seg_for_resize(load_celebamask_seg(*rec.mask), cfg.size)
        else:
            det = get_detector(cfg.detector, cfg.det_model)
            found = det(img)
            row["num_faces"] = len(found)
            face = faces.largest_face(found)
            if face is None:
                row.update(status=STATUS_SKIPPED, reason="no_face")
                return Prepared(row)
            crop, info = faces.align_face(img, face, cfg.size)
            others = [f for f in found if f is not face]
            row.update(box=_flat(face.box), landmarks=_flat(face.landmarks), crop_rule=info["rule"],
                       other_boxes=_flat([f.box for f in others]) if others else None)
            meta["det_score"] = float(face.score)
    except LapError:
        raise
    except Exception as e:
        row.update(status=STATUS_ERROR, error=f"face crop failed: {_msg(e)}")
        return Prepared(row)
    row["status"] = STATUS_OK
    meta.update(box=row.get("box"), crop_rule=row.get("crop_rule"), num_faces=row.get("num_faces"))
    if row.get("landmarks") is not None:
        meta["landmarks"] = row["landmarks"]
    return Prepared(row, np.ascontiguousarray(crop), seg, meta)


def base_row(rec: PhotoRecord, split: str | None, cfg: IngestConfig) -> dict[str, Any]:
    """The PHOTOS columns every row of ``rec`` has (id, identity, split, source, path, size, name_escaped)."""
    row: dict[str, Any] = {"photo_id": rec.photo_id, "identity": rec.identity, "split": split, "source": rec.source,
                           "path": rec.path, "size": cfg.size}
    if rec.escaped:
        row["name_escaped"] = True
    return row


def _seg_for_resize(seg: np.ndarray | None, size: int) -> np.ndarray | None:
    """Label map of a square pre-aligned image -> the ``resize`` rule's crop (centre square, nearest resize)."""
    if seg is None:
        return None
    from PIL import Image

    h, w = seg.shape
    s = min(h, w)
    sq = seg[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return np.asarray(Image.fromarray(sq).resize((size, size), Image.NEAREST))


# ------------------------------------------------------------------------------------------------ per identity


def process_identity(identity: str, split: str, records: Sequence[PhotoRecord], cfg: IngestConfig
                     ) -> tuple[list[IdentitySample], list[dict]]:
    preps = [prepare_photo(r, split, cfg) for r in records]
    ok = [p for p in preps if p.row["status"] == STATUS_OK]
    # duplicates: exact (sha256) then near (phash) inside the identity; the first photo (input order) is kept
    from lapdata.faces.idfilter import DuplicateIndex, phash

    index = DuplicateIndex(cfg.phash_distance)
    kept: list[Prepared] = []
    for p in ok:
        h = phash(p.crop)
        p.row["phash"] = f"{h:016x}"
        m = index.add(p.row["photo_id"], p.row["sha256"], h, identity)
        if cfg.dedup and m.dup_of is not None:
            p.row.update(status=STATUS_SKIPPED, reason="duplicate", dup_of=m.dup_of)
            continue
        kept.append(p)
    if cfg.id_filter and kept:
        emb = get_embedder(cfg.id_model)([p.crop for p in kept])
        thr = cfg.id_threshold if cfg.id_threshold is not None else default_threshold(cfg.id_model)
        keep, scores = id_filter_scores(emb, thr)
        name = embedder_name(cfg.id_model)
        survivors = []
        for p, k, s in zip(kept, keep, scores):
            p.row.update(id_score=float(s), id_model=name)
            p.meta["id_score"] = float(s)
            if not k:
                p.row.update(status=STATUS_SKIPPED, reason="id_outlier")
            else:
                survivors.append(p)
        kept = survivors
    if len(kept) < cfg.min_images:
        for p in kept:
            p.row.update(status=STATUS_SKIPPED, reason="min_images")
        kept = []
    samples = []
    step = max(1, cfg.max_per_sample)
    for c, start in enumerate(range(0, len(kept), step)):
        views = []
        for p in kept[start : start + step]:
            views.append(View(image=None, meta=p.meta, seg=p.seg,
                              encoded=("jpg", encode_image(p.crop, "jpg", cfg.quality))))
            p.crop = None  # keep only the encoded bytes
        samples.append(IdentitySample(key=sample_key(identity, c), identity=identity, split=split, views=views,
                                      meta={"chunk": c, "source": cfg.kind}))
    return samples, [p.row for p in preps]


def process_shard(task: ShardTask, cfg: IngestConfig) -> ShardResult:
    """Writer process function: every identity of the task -> samples + photo rows."""
    res = ShardResult()
    for identity, records in task.items:
        samples, rows = process_identity(identity, task.split, records, cfg)
        res.samples.extend(samples)
        res.rows.extend(rows)
    return res


# ------------------------------------------------------------------------------------------------ the run


def group_records(records, cfg: IngestConfig):
    """records -> (groups [(identity, split, records)], unsharded rows, counts). Unsharded: identities under
    min_images, records the source decided on (``note``) and repeated photo_ids (error rows)."""
    by_id: dict[str, list[PhotoRecord]] = defaultdict(list)
    n = 0
    extra: list[dict] = []
    seen: dict[str, int] = {}
    for r in records:
        n += 1
        k = seen.get(r.photo_id, 0)
        seen[r.photo_id] = k + 1
        if r.note is None and not k:
            by_id[r.identity].append(r)
            continue
        row = base_row(r, None, cfg)
        if r.note is not None:
            row.update(status=r.note[0], reason=r.note[1], error=r.note[2])
        else:  # the same source path again (a CSV that lists it twice): read once
            row.update(status=STATUS_ERROR, error=f"path listed again (occurrence {k + 1}): read once, as photo "
                                                 f"{r.photo_id}")
        if k:  # an id of its own
            row["photo_id"] = hashlib.sha256(f"{r.source}:{r.path}#{k}".encode("utf-8")).hexdigest()[:16]
        extra.append(row)
    if n == 0:
        raise LapError(f"{cfg.src}: no photos found (empty source)")
    if not by_id:
        raise LapError(f"{cfg.src}: no readable photo records ({n} records, all refused: e.g. "
                       f"{extra[0]['path']}: {extra[0].get('error') or extra[0].get('reason')})")
    manifest = load_split_manifest(cfg.split_manifest) if cfg.split_manifest else {}
    scfg = SplitConfig(seed=cfg.seed, fractions=tuple(cfg.fractions), min_images=cfg.min_images)
    groups = []
    for ident in sorted(by_id):
        recs = sorted(by_id[ident], key=lambda r: r.path)
        if len(recs) < cfg.min_images:
            extra.extend({**base_row(r, None, cfg), "status": STATUS_SKIPPED, "reason": "min_images"} for r in recs)
            continue
        split = manifest.get(ident) or split_of(ident, scfg.seed, scfg.fractions)
        groups.append((ident, split, tuple(recs)))
    if not groups:
        top = max(len(v) for v in by_id.values())
        raise LapError(f"{cfg.src}: no identity has at least {cfg.min_images} photos (the largest has {top});"
                       f" lower --min-images")
    return groups, extra, {"photos": n, "identities": len(by_id)}


def uses_models(cfg: IngestConfig) -> bool:
    """Whether the shard jobs load a model (face detector, identity embedder): Ray runs them in an actor pool."""
    return cfg.mode != "aligned" or cfg.id_filter


def warm_models(cfg: IngestConfig) -> None:
    """Load the run's models once (an engine's actor calls it once; the loaders cache per process)."""
    if cfg.mode != "aligned":
        get_detector(cfg.detector, cfg.det_model)
    if cfg.id_filter:
        get_embedder(cfg.id_model)


def run_ingest(cfg: IngestConfig) -> dict:
    """Run the whole ingest (resumable); returns the stats written to OUT/stats.json. ``cfg.src`` and ``cfg.out``
    may be object-store URLs (``lapdata.core.storage``). The run holds OUT's writer lock (``lapdata.core.locks``)."""
    check_out(cfg)
    with writer_lock(cfg.out, "lapdata ingest"):
        return _run_ingest(cfg)


def _run_ingest(cfg: IngestConfig) -> dict:
    t0 = time.perf_counter()
    out = staging.mount(cfg.out) if storage.is_url(cfg.out) else Path(cfg.out)
    if cfg.detector == "insightface" and not cfg.det_model:
        raise LapError("--detector insightface needs --det-model PATH (an insightface SCRFD .onnx file)")
    for p, what in ((cfg.det_model, "detector model"), (cfg.id_model, "identity model"),
                    (cfg.split_manifest, "split manifest")):
        if p and not Path(p).is_file():
            raise LapError(f"{p}: {what} file does not exist")
    records = open_source(cfg.kind, cfg.src, SourceOptions(cfg.identity_file, cfg.path_column, cfg.identity_column,
                                                           cfg.csv_root))
    groups, extra, counts = group_records(records, cfg)
    # a bad model file is one clear line before any work (not one failure per shard)
    if cfg.detector == "insightface" and cfg.mode != "aligned":
        get_detector(cfg.detector, cfg.det_model)
    if cfg.id_filter and cfg.id_model:
        get_embedder(cfg.id_model)
    check_same_source(out, {**config_doc(cfg), "source": source_doc(cfg, groups, extra, counts)}, CONTENT_KEYS)
    staging.push(out, ["ingest.json"])  # a dataset URL: the run's identity is there before any shard
    est = max(1, cfg.size * cfg.size * 3 // 8)  # rough JPEG q95 bytes per face crop
    tasks = plan_shards(groups, cfg.samples_per_shard, max_shard_bytes=cfg.shard_bytes,
                        size_of=lambda recs: est * len(recs))
    write = WriteConfig(workers=cfg.workers, part=tuple(cfg.part), config=config_doc(cfg), quality=cfg.quality,
                        progress=cfg.progress, engine=engine_of(cfg), model=uses_models(cfg))
    stats = write_dataset(out, tasks, functools.partial(process_shard, cfg=cfg), write, extra_rows=extra,
                          warm=functools.partial(warm_models, cfg))
    stats["input"] = counts
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    if tuple(cfg.part)[1] == 1:  # cross-split duplicates resolved, pairs recorded; writes stats.json
        stats = record_duplicates(out, stats, cfg.phash_distance, cfg.min_images, quality=cfg.quality)
    else:
        from lapdata.dataset.manifests import write_json

        write_json(out / "stats.json", {k: v for k, v in stats.items() if k != "failed"})
    staging.push_tree(out)  # a dataset URL: the manifests, stats.json last (the shards are there already)
    return stats
