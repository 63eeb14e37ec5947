"""parse-masks' pictures and figures of a new dataset version: the contact sheet (photo | labels on photo | labels |
M_re), the face-fraction histogram with the hard-sample threshold, and the summary figures of its report. Pictures
never fail a run. Called by ``lapdata.parsing.parse``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from lapdata.dataset.manifests import shard_stats
from lapdata.dataset.reader import iter_tar_samples
from lapdata.dataset.sample import KEY, decode_sample, sample_json
from lapdata.dataset.schema import SHARD_PATH, STATUS_ERROR, STATUS_OK
from lapdata.parsing.labels import colorize
from lapdata.parsing.masks import RCLMaskConfig, label_to_masks_np
from lapdata.parsing.shard import _one_line

CONTACT_SHEET = "parse_contact_sheet.png"
HISTOGRAM = "parse_face_fraction.png"


def contact_sheet(items: Sequence[tuple[np.ndarray, np.ndarray, str]], path: str | Path,
                  masks: RCLMaskConfig = RCLMaskConfig(), tile: int = 128, groups_per_row: int = 3) -> None:
    """PNG grid (`lapdata.core.pictures.image_grid`): for each (image, seg, caption): photo (caption under it) | label
    map over the photo | label map | M_re (grey), ``groups_per_row`` views a row."""
    from PIL import Image

    from lapdata.core.pictures import image_grid, save_png

    if not items:
        return
    rows: list[list[np.ndarray]] = []
    caps: list[list[str | None]] = []
    for k, (img, seg, cap) in enumerate(items):
        if k % groups_per_row == 0:
            rows.append([])
            caps.append([])
        im = np.array(Image.fromarray(img).resize((tile, tile), Image.BILINEAR))
        sg = np.array(Image.fromarray(seg).resize((tile, tile), Image.NEAREST))
        col = colorize(sg)
        _, m_re = label_to_masks_np(sg, masks)
        rows[-1] += [im, (0.55 * im + 0.45 * col).astype(np.uint8), col, (m_re * 255).astype(np.uint8)]
        caps[-1] += [cap, None, None, None]
    heads = ["photo", "labels on photo", "labels", "M_re"] * min(len(items), groups_per_row)
    save_png(path, image_grid(rows, col_labels=heads, captions=caps))


def face_fraction_figure(fractions: Sequence[float], threshold: float, path: str | Path, title: str = "") -> None:
    """Histogram PNG of face fractions with the hard-sample threshold."""
    from lapdata.core.pictures import new_figure, save_figure

    f = np.asarray(fractions, dtype=float)
    fig, (ax,) = new_figure(1, 6, 3.2)
    ax.hist(f, bins=np.linspace(0, 1, 51), color="#4477aa")
    ax.axvline(threshold, color="#cc3311", ls="--", label=f"min_face_fraction {threshold:g}")
    ax.set_xlabel("face fraction (RCL face-group pixels / all pixels)")
    ax.set_ylabel("views")
    ax.set_title(title or f"{len(f)} views, {int((f < threshold).sum())} hard", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _sheet_items(dataset: Path, n: int, max_shards: int = 4) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Up to n views for the contact sheet from the first ``max_shards`` shards: identities taken in turn (one view
    each per round, spread over their views), about a quarter of the slots for hard views when there are any."""
    if n <= 0:
        return []
    shards = shard_stats(dataset)[:max_shards]
    cands: dict[str, list[tuple[str, str, int, bool]]] = {}  # identity -> (tar, key, view, hard)
    for st in shards:
        for d in iter_tar_samples(dataset / st[SHARD_PATH]):
            doc = sample_json(d)
            for i, m in enumerate(doc["views"]):
                if "seg" in m.get("fields", []):
                    cands.setdefault(doc["identity"], []).append((st[SHARD_PATH], d[KEY], i, bool(m.get("hard"))))
    hard = [c for cs in cands.values() for c in cs if c[3]]
    hard = hard[:: max(1, len(hard) // max(1, n // 4))][: n // 4]
    easy_by_id = {k: [c for c in cs if not c[3]] for k, cs in cands.items()}
    easy: list = []
    rnd = 0
    while len(easy) < n - len(hard) and any(len(v) > rnd for v in easy_by_id.values()):
        for k in sorted(easy_by_id):
            v = easy_by_id[k]
            if len(v) > rnd:
                step = max(1, len(v) // 8)
                easy.append(v[(rnd * step) % len(v)])
        rnd += 1
    chosen = hard + easy[: n - len(hard)]
    want: dict[tuple[str, str], list[int]] = {}
    for path, key, i, _ in chosen:
        want.setdefault((path, key), []).append(i)
    got: dict[tuple[str, str, int], tuple] = {}
    for path in sorted({c[0] for c in chosen}):
        for d in iter_tar_samples(dataset / path):
            idx = want.get((path, d[KEY]))
            if not idx:
                continue
            for i, v in zip(idx, decode_sample(d, views=idx, fields=("image", "seg")).views):
                m = v.meta
                cap = f"{m.get('parser', '?')} f={m.get('face_fraction', 0):.2f}" + (" HARD" if m.get("hard") else "")
                got[(path, d[KEY], i)] = (v.image, v.seg, cap)
    return [got[(p, k, i)] for p, k, i, _ in chosen if (p, k, i) in got]


def summary(table, cfg) -> dict:
    """The new version's parse figures: views parsed by parser, hard views, errors by reason, face fractions."""
    d = table.to_pydict()
    parsed = [i for i, p in enumerate(d["parser"]) if p is not None and d["status"][i] == STATUS_OK]
    ff = np.array([d["face_fraction"][i] for i in parsed], dtype=float)
    errors = Counter(d["reason"][i] for i in range(len(d["status"])) if d["status"][i] == STATUS_ERROR and
                     d["reason"][i] in ("parse_failed", "no_image", "bad_sample", "corrupt_image"))
    kept_failed = sum(1 for i in parsed if (d["hard_reason"][i] or "").startswith("parse_failed"))
    if kept_failed:
        errors["parse_failed_kept_hard"] = kept_failed
    pct = {f"p{q}": round(float(np.percentile(ff, q)), 4) for q in (1, 5, 25, 50, 75, 95, 99)} if len(ff) else {}
    return {
        "views_parsed": len(parsed),
        "by_parser": dict(Counter(d["parser"][i] for i in parsed)),
        "hard": int(sum(bool(d["hard"][i]) for i in parsed)),
        "parse_errors": dict(errors),
        "face_fraction": {"mean": round(float(ff.mean()), 4) if len(ff) else None, **pct},
        "min_face_fraction": cfg.min_face_fraction,
    }


def pictures(version: Path, table, cfg, title: str, hard: int) -> bool:
    """The new version's contact sheet and face-fraction histogram (``title`` heads the histogram); False (and a
    warning) when they could not be drawn."""
    try:
        contact_sheet(_sheet_items(version, cfg.contact_sheet_views), version / CONTACT_SHEET, cfg.masks)
        d = table.to_pydict()
        ff = [f for f, p, s in zip(d["face_fraction"], d["parser"], d["status"]) if p is not None and s == STATUS_OK]
        if ff:
            face_fraction_figure(ff, cfg.min_face_fraction, version / HISTOGRAM,
                                 f"{title}{len(ff)} views, {hard} under {cfg.min_face_fraction:g}")
        return True
    except Exception as e:  # pictures never fail the run
        print(f"warning: contact sheet not written ({_one_line(e)})")
        return False
