"""The contact sheet of a synthetic dataset: ``DIR/contact_sheet.png``, a few identities across their poses (and
their depth maps for the 3D backends). Called by ``lapdata.synthetic.build``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from lapdata.dataset.reader import RawSample, iter_tar_samples
from lapdata.dataset.sample import decode_sample


def _read_samples(tar_path: Path, limit: int) -> list[RawSample]:
    """The first ``limit`` raw samples of a shard (``lapdata.dataset.reader.iter_tar_samples``)."""
    return list(itertools.islice(iter_tar_samples(tar_path), max(0, limit)))


def write_contact_sheet(out_dir: str | Path, identities: int = 6, poses: int = 15, thumb: int = 96) -> Path | None:
    """DIR/contact_sheet.png (`lapdata.core.pictures.image_grid`): up to ``identities`` identities (rows, named) x their
    kept views (columns, in yaw order, the yaw under each), each followed by a row of its depth maps
    (`lapdata.core.pictures.depth_colors`) when the shards have them (``poses`` is no longer needed: each row shows what
    it has). Returns the path (None: no shards)."""
    from lapdata.core.pictures import depth_colors, image_grid, save_png

    out = Path(out_dir)
    shards = sorted((p.with_suffix(".tar") for p in (out / "shards").glob("*.json")),
                    key=lambda p: (not p.name.startswith("train"), p.name))
    samples = []
    for s in shards:
        samples.extend(_read_samples(s, identities - len(samples)))
        if len(samples) >= identities:
            break
    if not samples:
        return None
    rows, labels, caps = [], [], []
    for d in samples:
        s = decode_sample(d, fields=("image", "depth"))
        order = sorted(range(len(s.views)), key=lambda i: s.views[i].meta.get("pose", [0])[0])
        rows.append([s.views[i].image for i in order])
        labels.append(s.identity)
        caps.append([f"yaw {s.views[i].meta.get('pose', [0])[0]:+.0f}" for i in order])
        if any(v.depth is not None for v in s.views):
            rows.append([None if s.views[i].depth is None else depth_colors(s.views[i].depth) for i in order])
            labels.append("depth")
            caps.append([])
    return save_png(out / "contact_sheet.png", image_grid(rows, row_labels=labels, captions=caps, cell=thumb))
