"""The data contract's tables: pyarrow schemas of the Parquet manifests, defined once (documented in manifests/SCHEMA.md).

A dataset directory written by any lapdata step looks like::

    DIR/
      shards/{split}-{index:06d}.tar       WebDataset shard (one sample per identity chunk, see lapdata.dataset.sample)
      shards/{split}-{index:06d}.parquet   photo rows of that shard (PHOTOS schema), written after the tar
      shards/{split}-{index:06d}.json      that shard's stats; its presence marks the shard finished
      photos.parquet                       all photo rows (PHOTOS), including skipped/error rows
      identities.parquet                   one row per identity (IDENTITIES)
      shards.parquet                       one row per shard (SHARDS)
      stats.json                           counts by status and reason, timings, the command's config
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import pyarrow as pa

STATUS_OK = "ok"
STATUS_SKIPPED = "skipped"
STATUS_ERROR = "error"
STATUSES = (STATUS_OK, STATUS_SKIPPED, STATUS_ERROR)

SPLITS = ("train", "val", "test")

SHARD_DIR = "shards"  # DIR/shards/{split}-{index:06d}.{tar,parquet,json}

# The shard stats DIR/shards/NAME.json (written last by lapdata.dataset.writer.write_shard: its presence marks the shard
# finished) hold the shard's SHARDS row (these names are also its columns) and the run counters after it.
SHARD = "shard"  # e.g. train-000003
SHARD_PATH = "path"  # relative to DIR: shards/train-000003.tar
SHARD_SPLIT = "split"
NUM_SAMPLES = "num_samples"  # samples (identity chunks) in the tar
NUM_IMAGES = "num_images"  # views in the tar
SHARD_BYTES = "bytes"
SHARD_SHA256 = "sha256"
NUM_ROWS = "num_rows"  # PHOTOS rows of the shard
STATUS_COUNTS = "status_counts"
REASON_COUNTS = "reason_counts"
SECONDS = "seconds"
PARQUET_SHA256 = "parquet_sha256"  # sha256 of the shard's .parquet (audit checks it)

PHOTOS = pa.schema(
    [
        pa.field("photo_id", pa.string(), nullable=False),  # stable id: sha256("{source}:{path}")[:16], or the generator's view id
        pa.field("identity", pa.string(), nullable=False),
        pa.field("split", pa.string()),  # train/val/test (null when the identity was dropped before splitting)
        pa.field("source", pa.string()),  # dataset name, e.g. "celeba", "folders", "synthetic:procedural"
        pa.field("path", pa.string()),  # source path (relative to the source root) or generator spec
        pa.field("sha256", pa.string()),  # of the source file bytes (ingest) or of the encoded view (synthetic)
        pa.field("orig_width", pa.int32()),
        pa.field("orig_height", pa.int32()),
        pa.field("status", pa.string(), nullable=False),  # ok / skipped / error
        pa.field("reason", pa.string()),  # why skipped: no_face, id_outlier, duplicate, min_images, id_similarity, ...
        pa.field("error", pa.string()),  # error message for status=error
        pa.field("num_faces", pa.int32()),  # faces detected in the source photo (1 for pre-aligned)
        pa.field("box", pa.list_(pa.float32())),  # [x0, y0, x1, y1] of the kept face in the source photo
        pa.field("landmarks", pa.list_(pa.float32())),  # flattened (x, y) landmarks in the source photo
        pa.field("other_boxes", pa.list_(pa.float32())),  # flattened boxes of the other faces found
        pa.field("crop_rule", pa.string()),  # e.g. "aligned:center-crop=0.8,resize=128" or "dlib68:similarity5,scale=..."
        pa.field("size", pa.int32()),  # output image side in pixels
        pa.field("id_score", pa.float32()),  # cosine to the identity centre (ingest) / frontal view (synthetic)
        pa.field("id_model", pa.string()),  # dlib / arcface:<file>
        pa.field("phash", pa.string()),  # 64-bit perceptual hash, hex
        pa.field("dup_of", pa.string()),  # photo_id this one duplicates (exact or near)
        pa.field("shard", pa.string()),  # shard name, e.g. train-000003
        pa.field("key", pa.string()),  # WebDataset sample key (no dots)
        pa.field("view_index", pa.int32()),  # index of the view inside the sample ("{i:03d}.jpg")
        pa.field("yaw", pa.float32()),  # synthetic ground-truth pose, degrees
        pa.field("pitch", pa.float32()),
        pa.field("roll", pa.float32()),
        pa.field("parser", pa.string()),  # parse-masks: bisenet / landmarks / ground-truth
        pa.field("face_fraction", pa.float32()),  # parse-masks: face-region pixels / all pixels
        pa.field("class_counts", pa.list_(pa.int64())),  # parse-masks: 19 per-class pixel counts
        pa.field("hard", pa.bool_()),  # parse-masks: marked hard (training skips it); reason in hard_reason
        pa.field("hard_reason", pa.string()),
        pa.field("name_escaped", pa.bool_()),  # identity/path held non-UTF-8 bytes, written with backslash escapes
    ]
)
# columns added after datasets were first written: a manifest without them is not a fault (they read as null)
ADDED_COLUMNS = frozenset({"name_escaped"})

IDENTITIES = pa.schema(
    [
        pa.field("identity", pa.string(), nullable=False),
        pa.field("split", pa.string()),
        pa.field("num_photos", pa.int32()),  # input photos of this identity
        pa.field("num_ok", pa.int32()),  # photos written to shards
        pa.field(NUM_SAMPLES, pa.int32()),  # WebDataset samples (chunks of at most max_per_sample photos)
        pa.field("status", pa.string()),  # ok / skipped (e.g. under min_images after filtering)
        pa.field("reason", pa.string()),
        pa.field("shards", pa.list_(pa.string())),
    ]
)

SHARDS = pa.schema(
    [
        pa.field(SHARD, pa.string(), nullable=False),
        pa.field(SHARD_PATH, pa.string()),
        pa.field(SHARD_SPLIT, pa.string()),
        pa.field(NUM_SAMPLES, pa.int32()),
        pa.field(NUM_IMAGES, pa.int32()),
        pa.field(SHARD_BYTES, pa.int64()),
        pa.field(SHARD_SHA256, pa.string()),
    ]
)


def table_from_rows(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) -> table of ``schema``; missing columns become null, unknown keys raise KeyError."""
    rows = list(rows)
    names = set(schema.names)
    for r in rows:
        extra = set(r) - names
        if extra:
            raise KeyError(f"columns not in schema: {sorted(extra)}")
    cols = {name: [r.get(name) for r in rows] for name in schema.names}
    return pa.Table.from_pydict(cols, schema=schema)


def check_schema(table: pa.Table, schema: pa.Schema, where: str) -> list[str]:
    """Faults (strings) where ``table`` does not have ``schema``'s columns and types; [] when it matches."""
    faults = []
    for f in schema:
        if f.name not in table.schema.names:
            if f.name not in ADDED_COLUMNS:
                faults.append(f"{where}: missing column {f.name}")
        elif not table.schema.field(f.name).type.equals(f.type):
            faults.append(f"{where}: column {f.name} has type {table.schema.field(f.name).type}, expected {f.type}")
        elif not f.nullable and table.column(f.name).null_count:
            faults.append(f"{where}: column {f.name} has nulls")
    return faults
