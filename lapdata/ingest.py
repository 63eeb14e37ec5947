"""Ingest: photo collections -> identity-grouped WebDataset shards + Parquet manifests.

Steps (``run_ingest(IngestConfig)``):

1. read the source's records (lapdata.sources), group them by identity;
2. drop identities with fewer than ``min_images`` photos (their rows: status=skipped, reason=min_images) and split
   the rest by identity (lapdata.split: hash of (seed, identity), or a committed ``split_manifest``);
3. plan shards (lapdata.writer.plan_shards) and write them (lapdata.writer.write_dataset) with
   :func:`process_shard` in ``workers`` processes, per identity:

   * read each photo (unreadable / truncated / non-image files -> status=error with the message);
   * face: pre-aligned layouts (ArcFace 112, CelebA img_align, CelebA-HQ) are cropped with a fixed rule
     (lapdata.faces.crop_prealigned); other photos are detected and aligned (lapdata.faces: dlib by default,
     insightface SCRFD with ``det_model``), the largest face kept, the others' boxes in other_boxes; no face ->
     skipped/no_face. ``mode``: auto (pre-aligned layouts by source or image size, otherwise detect) / aligned / detect;
   * duplicates: exact (same file sha256) and near (perceptual hash within ``phash_distance`` bits) inside the
     identity -> skipped/duplicate with dup_of (the first photo kept);
   * optional identity-noise filter (``id_filter``): embed each face (dlib 128-D, or ArcFace ONNX ``id_model``), score
     its cosine to the identity's robust centre, drop those under the threshold -> skipped/id_outlier with id_score;
   * identities left with fewer than ``min_images`` good photos -> their photos skipped/min_images;
   * samples of at most ``max_per_sample`` photos (chunks 000, 001, ...), images JPEG-encoded in the worker.

4. after a whole (non-part) run: photos that duplicate a photo of *another* identity (exact or near) are listed in
   OUT/duplicates.parquet (:func:`cross_identity_duplicates`; shards are not changed; exact copies across splits
   are leakage that ``lapdata audit`` reports).

Everything a photo went through is in its manifest row; the run ends with a one-line summary (:func:`summary_line`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from .errors import LapError
from .sample import IdentitySample, View, encode_image, sample_key
from .schema import STATUS_ERROR, STATUS_OK, STATUS_SKIPPED
from .sources import PhotoRecord, SourceOptions, load_bytes, load_celebamask_seg, open_source
from .split import SplitConfig, load_split_manifest, split_of
from .writer import ShardResult, ShardTask, plan_shards, write_dataset

PREALIGNED_SIZES = {(112, 112): "arcface112", (218, 178): "celeba-align"}  # (h, w) -> crop rule


@dataclass(frozen=True)
class IngestConfig:
    kind: Literal["celeba", "casia", "folders", "csv", "celebamask-hq", "rec"]  # source layout
    src: str                            # source folder, CSV file or .rec file
    out: str                            # output dataset folder (rerun the same command to resume)
    size: int = 128                     # output face size in pixels
    min_images: int = 6                 # keep identities with at least this many (good) photos
    max_per_sample: int = 64            # photos per WebDataset sample; larger identities become several samples
    mode: Literal["auto", "aligned", "detect"] = "auto"  # auto: by source layout and image size; aligned; detect
    detector: Literal["dlib", "insightface"] = "dlib"  # face detector for unaligned photos
    det_model: str | None = None        # insightface SCRFD .onnx (with --detector insightface)
    id_filter: bool = False             # drop photos far from their identity's robust centre
    id_model: str | None = None         # ArcFace .onnx for --id-filter (default: dlib 128-D)
    id_threshold: float | None = None   # cosine-to-centre threshold (default: the embedder's)
    dedup: bool = True                  # skip exact and near duplicates inside an identity
    phash_distance: int = 4             # near-duplicate: perceptual hashes within this many bits
    seed: int = 0                       # split seed
    fractions: tuple[float, float, float] = (0.75, 0.125, 0.125)  # train,val,test fractions of the identities
    split_manifest: str | None = None   # identity -> split parquet, e.g. manifests/celeba_split.parquet
    samples_per_shard: int = 64         # identity samples per shard
    shard_bytes: int = 512 * 2**20      # estimated bytes per shard (estimated before encoding)
    workers: int = 1                    # worker processes
    part: tuple[int, int] = (0, 1)      # build part I/N (disjoint, deterministic); join the parts with lapdata merge
    quality: int = 95                   # JPEG quality of the stored faces
    identity_file: str | None = None    # identity_CelebA.txt (celeba, celebamask-hq)
    path_column: str = "file"           # csv: the column with the photo path
    identity_column: str = "identity"   # csv: the column with the identity
    progress: bool = True               # progress bar (only on a terminal)

    def __post_init__(self) -> None:
        i, n = self.part
        checks = [(self.size >= 16, f"--size {self.size}: must be >= 16 pixels"),
                  (self.min_images >= 1, f"--min-images {self.min_images}: must be >= 1"),
                  (self.max_per_sample >= 1, f"--max-per-sample {self.max_per_sample}: must be >= 1"),
                  (self.samples_per_shard >= 1, f"--samples-per-shard {self.samples_per_shard}: must be >= 1"),
                  (self.shard_bytes >= 1, f"--shard-bytes {self.shard_bytes}: must be >= 1"),
                  (self.workers >= 1, f"--workers {self.workers}: must be >= 1"),
                  (0 <= i < n, f"--part {i}/{n}: need 0 <= I < N"),
                  (1 <= self.quality <= 100, f"--quality {self.quality}: must be in 1..100"),
                  (self.phash_distance >= 0, f"--phash-distance {self.phash_distance}: must be >= 0"),
                  (self.id_threshold is None or -1.0 <= self.id_threshold <= 1.0,
                   f"--id-threshold {self.id_threshold}: a cosine, must be in [-1, 1]"),
                  (len(self.fractions) == 3 and all(f >= 0 for f in self.fractions) and sum(self.fractions) > 0,
                   f"--fractions {self.fractions}: three non-negative numbers, not all 0")]
        for ok, msg in checks:
            if not ok:
                raise LapError(msg)


# options that change the shards' content: a resumed run must use the same ones
CONTENT_KEYS = ("kind", "size", "min_images", "max_per_sample", "mode", "detector", "det_model", "id_filter",
                "id_model", "id_threshold", "dedup", "phash_distance", "seed", "fractions", "split_manifest",
                "samples_per_shard", "shard_bytes", "quality", "identity_file", "path_column", "identity_column")


# ------------------------------------------------------------------------------------------- seams to lapdata.faces
# lapdata.faces / lapdata.embed / lapdata.idfilter belong to the faces engineer; they are used through these
# functions (imported lazily: dlib/onnxruntime load only in the workers that need them).

_CACHE: dict[tuple, Any] = {}


def get_detector(kind: str, model: str | None):
    key = ("det", kind, model)
    if key not in _CACHE:
        from . import detectors

        if kind == "dlib":
            _CACHE[key] = detectors.DlibDetector()
        elif kind == "insightface":
            if not model:
                raise LapError("--detector insightface needs --det-model PATH (an insightface SCRFD .onnx file)")
            _CACHE[key] = detectors.InsightFaceDetector(model)
        else:
            raise LapError(f"unknown detector {kind!r} (dlib or insightface)")
    return _CACHE[key]


def get_embedder(model: str | None):
    key = ("emb", model)
    if key not in _CACHE:
        from . import embed

        _CACHE[key] = embed.ArcFaceEmbedder(model) if model else embed.DlibEmbedder()
    return _CACHE[key]


def embedder_name(model: str | None) -> str:
    return f"arcface:{Path(model).name}" if model else "dlib"


def default_threshold(model: str | None) -> float:
    """Cosine-to-centre threshold of the embedder (lapdata.embed ``centre_threshold``, calibrated by the faces
    engineer in docs/id-threshold.md)."""
    from . import embed

    cls = embed.ArcFaceEmbedder if model else embed.DlibEmbedder
    for name in ("centre_threshold", "default_threshold"):
        if hasattr(cls, name):
            return float(getattr(cls, name))
    return 0.6 if model else 0.92


def id_filter_scores(emb: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) unit embeddings of one identity -> keep (N,) bool, scores (N,) cosine to the robust centre
    (lapdata.idfilter.identity_filter: medoid start, closest-half refinement; small identities are not filtered)."""
    from .idfilter import identity_filter

    r = identity_filter(emb, threshold)
    return np.asarray(r.keep, bool), np.asarray(r.scores, np.float32)


def phash(image: np.ndarray) -> int:
    """64-bit DCT perceptual hash (lapdata.idfilter.phash)."""
    from .idfilter import phash as _phash

    return int(_phash(image))


def hamming(a: int, b: int) -> int:
    return bin(int(a) ^ int(b)).count("1")


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


def decode_photo(data: bytes) -> np.ndarray:
    """Encoded bytes -> (H, W, 3) uint8 RGB (EXIF orientation applied); raises on non-image/truncated data."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        im.load()  # truncated files fail here
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"))


def prepare_photo(rec: PhotoRecord, split: str, cfg: IngestConfig) -> Prepared:
    from . import faces

    row: dict[str, Any] = {"photo_id": rec.photo_id, "identity": rec.identity, "split": split, "source": rec.source,
                           "path": rec.path, "size": cfg.size}
    try:
        data = load_bytes(rec)
    except Exception as e:
        row.update(status=STATUS_ERROR, error=f"cannot read: {_msg(e)}")
        return Prepared(row)
    row["sha256"] = hashlib.sha256(data).hexdigest()
    try:
        img = decode_photo(data)
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
        use_rule = layout or PREALIGNED_SIZES.get((h, w))
    seg = None
    meta: dict[str, Any] = {"photo_id": rec.photo_id, "path": rec.path, "source": rec.source}
    try:
        if use_rule is not None:
            crop, rule = faces.crop_prealigned(img, cfg.size, use_rule)
            row.update(num_faces=1, crop_rule=rule)
            base = rule.split(";")[0].split(":")[-1]
            if base in ("arcface112", "celeba-align"):
                x0, y0, side = faces.prealigned_box(base, w, h)
                row["box"] = [x0, y0, x0 + side, y0 + side]
            else:
                s = min(h, w)
                row["box"] = [float((w - s) // 2), float((h - s) // 2), float((w - s) // 2 + s), float((h - s) // 2 + s)]
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
    from .idfilter import DuplicateIndex

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


def _config_doc(cfg: IngestConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["fractions"] = list(cfg.fractions)
    d["part"] = list(cfg.part)
    return d


def _check_resume(out: Path, cfg: IngestConfig) -> None:
    """A resumed run must use the options the finished shards were written with."""
    p = out / "ingest.json"
    doc = _config_doc(cfg)
    if p.exists():
        old = json.loads(p.read_text())
        diff = [k for k in CONTENT_KEYS if old.get(k) != doc.get(k)]
        if diff:
            raise LapError(f"{out} holds shards written with other options ({', '.join(f'{k}={old.get(k)!r}' for k in diff)});"
                           f" rerun with the same options or use a new --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def group_records(records, cfg: IngestConfig):
    """records -> (groups [(identity, split, records)], unsharded rows of identities under min_images, counts)."""
    by_id: dict[str, list[PhotoRecord]] = defaultdict(list)
    n = 0
    for r in records:
        by_id[r.identity].append(r)
        n += 1
    if n == 0:
        raise LapError(f"{cfg.src}: no photos found (empty source)")
    manifest = load_split_manifest(cfg.split_manifest) if cfg.split_manifest else {}
    scfg = SplitConfig(seed=cfg.seed, fractions=tuple(cfg.fractions), min_images=cfg.min_images)
    groups, extra = [], []
    for ident in sorted(by_id):
        recs = sorted(by_id[ident], key=lambda r: r.path)
        if len(recs) < cfg.min_images:
            extra.extend({"photo_id": r.photo_id, "identity": ident, "source": r.source, "path": r.path,
                          "status": STATUS_SKIPPED, "reason": "min_images", "size": cfg.size} for r in recs)
            continue
        split = manifest.get(ident) or split_of(ident, scfg.seed, scfg.fractions)
        groups.append((ident, split, tuple(recs)))
    if not groups:
        top = max(len(v) for v in by_id.values())
        raise LapError(f"{cfg.src}: no identity has at least {cfg.min_images} photos (the largest has {top});"
                       f" lower --min-images")
    return groups, extra, {"photos": n, "identities": len(by_id)}


def run_ingest(cfg: IngestConfig) -> dict:
    """Run the whole ingest (resumable); returns the stats written to OUT/stats.json."""
    t0 = time.perf_counter()
    out = Path(cfg.out)
    if cfg.detector == "insightface" and not cfg.det_model:
        raise LapError("--detector insightface needs --det-model PATH (an insightface SCRFD .onnx file)")
    for p, what in ((cfg.det_model, "detector model"), (cfg.id_model, "identity model"),
                    (cfg.split_manifest, "split manifest")):
        if p and not Path(p).is_file():
            raise LapError(f"{p}: {what} file does not exist")
    records = open_source(cfg.kind, cfg.src, SourceOptions(cfg.identity_file, cfg.path_column, cfg.identity_column))
    groups, extra, counts = group_records(records, cfg)
    # a bad model file is one clear line before any work (not one failure per shard)
    if cfg.detector == "insightface" and cfg.mode != "aligned":
        get_detector(cfg.detector, cfg.det_model)
    if cfg.id_filter and cfg.id_model:
        get_embedder(cfg.id_model)
    _check_resume(out, cfg)
    est = max(1, cfg.size * cfg.size * 3 // 8)  # rough JPEG q95 bytes per face crop
    tasks = plan_shards(groups, cfg.samples_per_shard, max_shard_bytes=cfg.shard_bytes,
                        size_of=lambda recs: est * len(recs))
    stats = write_dataset(out, tasks, functools.partial(process_shard, cfg=cfg), workers=cfg.workers,
                          part=tuple(cfg.part), config=_config_doc(cfg), quality=cfg.quality,
                          progress=cfg.progress, extra_rows=extra)
    stats["input"] = counts
    if tuple(cfg.part)[1] == 1:
        stats["cross_identity_duplicates"] = cross_identity_duplicates(out, cfg.phash_distance)
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    doc = {k: v for k, v in stats.items() if k != "failed"}
    from .writer import _atomic_write_json

    _atomic_write_json(out / "stats.json", doc)
    return stats


DUPLICATES_SCHEMA_COLUMNS = ("photo_id", "identity", "split", "dup_of", "dup_identity", "dup_split", "kind", "distance")


def cross_identity_duplicates(out: str | Path, max_distance: int = 4) -> dict:
    """Flag written photos that duplicate a photo of *another* identity (exact sha256 or near phash), dataset-wide.

    Workers only see one identity at a time, so this pass runs after the shards are written: it does not change the
    shards, it lists the pairs in OUT/duplicates.parquet (photo_id, identity, split, dup_of, dup_identity, dup_split,
    kind, distance) and returns counts (``pairs``, ``cross_split``: pairs whose identities are in different splits,
    the leakage lapdata audit reports for exact copies)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .idfilter import DuplicateIndex
    from .writer import read_dataset

    t = read_dataset(out, ["photo_id", "identity", "split", "path", "sha256", "phash", "status"]).to_pydict()
    order = sorted((i for i, st in enumerate(t["status"]) if st == STATUS_OK and t["phash"][i]),
                   key=lambda i: (t["identity"][i], t["path"][i] or "", t["photo_id"][i]))
    index = DuplicateIndex(max_distance)
    where = {}
    rows = []
    for i in order:
        pid = t["photo_id"][i]
        where[pid] = i
        m = index.add(pid, t["sha256"][i], int(t["phash"][i], 16), t["identity"][i])
        if m.dup_of is not None and not m.same_identity:
            j = where[m.dup_of]
            rows.append({"photo_id": pid, "identity": t["identity"][i], "split": t["split"][i], "dup_of": m.dup_of,
                         "dup_identity": t["identity"][j], "dup_split": t["split"][j],
                         "kind": "exact" if m.kind and "exact" in m.kind else "near", "distance": m.distance})
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("photo_id", pa.string()), ("identity", pa.string()), ("split", pa.string()), ("dup_of", pa.string()),
        ("dup_identity", pa.string()), ("dup_split", pa.string()), ("kind", pa.string()), ("distance", pa.int32())]))
    tmp = Path(out) / "duplicates.parquet.tmp"
    pq.write_table(table, tmp)
    import os

    os.replace(tmp, Path(out) / "duplicates.parquet")
    return {"pairs": len(rows), "exact": sum(r["kind"] == "exact" for r in rows),
            "cross_split": sum(r["split"] != r["dup_split"] for r in rows)}


def summary_line(stats: dict, out: str | Path) -> str:
    """One line: photos by status (skip reasons), identities by split, shards, time, failed shards."""
    sc, rc = stats.get("status_counts", {}), stats.get("reason_counts", {})
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(rc.items(), key=lambda kv: -kv[1]))
    parts = [f"{stats.get('photos', 0)} photos: {sc.get('ok', 0)} ok, {sc.get('skipped', 0)} skipped"
             + (f" ({reasons})" if reasons else "") + f", {sc.get('error', 0)} error"]
    bys = stats.get("identities_by_split", {})
    parts.append(f"{stats.get('identities_ok', 0)} identities ("
                 + ", ".join(f"{k} {v}" for k, v in bys.items()) + f") in {stats.get('shards', 0)} shards -> {out}")
    line = "; ".join(parts)
    cd = stats.get("cross_identity_duplicates") or {}
    if cd.get("pairs"):
        line += (f"; {cd['pairs']} photos duplicate another identity's ({cd.get('cross_split', 0)} across splits,"
                 f" see duplicates.parquet)")
    failed = stats.get("failed") or []
    if failed:
        line += f"; {len(failed)} shard(s) FAILED (first: {failed[0]['shard']}: {failed[0]['error']}) - rerun to retry"
    if "seconds" in stats:
        line += f" [{stats['seconds']:.1f} s]"
    return line
