"""`lapdata parse-masks DIR`: parse every view of a shard dataset and store its 19-class label map as ``seg``.

How a run goes:

1. The dataset's finished shards become one ``ShardTask`` each (same names and splits). ``lapdata.dataset.writer`` writes a
   new version of the dataset in the sibling folder ``DIR.parse-tmp/``: each shard is read, every view parsed,
   the sample re-written with its ``seg`` (lossless PNG; image bytes are kept as they were), its PHOTOS rows updated
   (parser, face_fraction, class_counts, hard, hard_reason); then the manifests are rebuilt (finalize). Other files
   of DIR (e.g. unsharded.parquet, pictures) are copied over first.
   Before any of it, the run takes the dataset's writer lock (``lapdata.core.locks``) and checks the faults no parse
   repairs (``lapdata.dataset.audit.run.carried_faults``: split leakage, min-images): a dataset whose final audit must fail is
   refused in one line, before a view is parsed.
2. The new version is audited (``lapdata.dataset.audit.run``); only when it is complete and clean is it swapped in:
   ``DIR -> DIR.parse-old``, ``DIR.parse-tmp -> DIR``, then ``DIR.parse-old`` is removed (kept as ``DIR.pre-parse-<time>`` with keep_old).
   A run killed at any point resumes with the same command: finished shards of DIR.parse-tmp are skipped, and an
   interrupted swap is completed. With other options than the interrupted run, DIR.parse-tmp is started over.

View metadata written per parsed view: ``parser``, ``seg_source`` ("annotation", "mask" or the model parser),
``face_fraction``, ``hard``, ``hard_reason`` (when hard), ``parse_error`` (when the parse failed and the view was kept).

Parsers per view (``parser``):

* ``ground-truth``: the view's stored ``seg`` when it did not come from a parse-masks model parser (CelebAMask-HQ
  annotations kept by ingest; a part label map stored by a synthetic backend), else the synthetic backends' exact
  face ``mask`` as a label map (face -> skin (1), the rest background (0)).
* ``bisenet``: BiSeNet with ``weights`` (face-parsing.PyTorch 79999_iter.pth or facexlib parsing_bisenet.pth); its
  class ids are mapped from ``label_order`` (the weights' order, "face-parsing" for both files) to the project's
  (``lapdata.parsing.labels``) before they are stored.
* ``landmarks``: the dlib 68-landmark polygons (offline default).
* ``auto``: ground truth where the view has it; the others with bisenet when ``weights`` is given, else landmarks.

Faults: a view the parser cannot parse (landmarks: no face) keeps its place with an empty label map (M = 0), is
marked hard (``hard_reason`` "parse_failed: ...") and its row's ``error`` column holds the message (counted in
``parse_errors``); with ``drop_failed`` it becomes an ``error`` row instead (status error, reason ``parse_failed``)
and is removed from its sample (note: that can put an identity under the ingest's min_images, which the audit then
reports and the swap waits for). A sample with no image bytes gives error rows (reason ``no_image``) for its views; a shard that
cannot be read fails alone (counted, the others go on) and the new version is then not swapped in (rerun retries).
One bad record is never a failed shard (``lapdata.parsing.shard``, one shard's work): a sample whose json is
unreadable or whose member is over the reader's size limit gives error rows (``bad_sample``) for its photo rows, a
view whose bytes do not match its ``image_sha256`` an error row (``corrupt_image``), never re-hashed into the new
version.

Hard samples: a view whose face fraction (pixels of the RCL face group / all pixels) is under ``min_face_fraction``
gets view meta ``hard: true`` and ``hard_reason`` (PHOTOS hard / hard_reason); it stays in the data, training skips
it. The default 0.25 is justified in docs/parse-masks.md. Views labelled from a synthetic backend's exact face
mask are never marked hard by face fraction: their masks are exact, a small face there is a pose (a profile), not
a quality problem, and multi-pose views are what LAP needs.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from lapdata.core import atomic, storage
from lapdata.core.device import resolve_device
from lapdata.core.engine import ENGINE_FIELDS, EngineConfig, engine_of
from lapdata.core.errors import LapError
from lapdata.core.locks import writer_lock
from lapdata.dataset.manifests import MANIFESTS, shard_stats
from lapdata.dataset.sample import KEY, decode_sample, sample_json
from lapdata.dataset.schema import SHARD, SHARD_DIR, SHARD_PATH, SHARD_SPLIT, STATUS_ERROR, STATUS_OK
from lapdata.dataset.reader import iter_tar_samples
from lapdata.dataset.writer import ShardTask, WriteConfig, write_dataset
from lapdata.parsing import commit
from lapdata.parsing.commit import COMPLETE_FILE, TMP_SUFFIX, drop_old, finish_swap, swap_paths
from lapdata.parsing.labels import colorize, read_label_order
from lapdata.parsing.landmarks import LandmarkParserConfig
from lapdata.parsing.masks import RCLMaskConfig, label_to_masks_np
from lapdata.parsing.shard import _one_line, process_shard

ParserName = Literal["auto", "bisenet", "landmarks", "ground-truth"]
CONFIG_FILE = "parse_config.json"
CONTACT_SHEET = "parse_contact_sheet.png"
HISTOGRAM = "parse_face_fraction.png"
DEFAULT_MIN_FACE_FRACTION = 0.25


@dataclass(frozen=True)
class ParseConfig(EngineConfig):
    """Options of parse-masks (CLI flags map one to one)."""

    parser: ParserName = "auto"         # auto: ground truth where present, else bisenet with --weights, else landmarks
    weights: str | None = None          # BiSeNet weights: 79999_iter.pth (face-parsing.PyTorch) or parsing_bisenet.pth
    label_order: str = "face-parsing"   # BiSeNet weights' class order: face-parsing, celebamask-hq or a 19-name file
    min_face_fraction: float = DEFAULT_MIN_FACE_FRACTION  # views with a smaller face fraction are marked hard
    batch_size: int = 8                 # images per BiSeNet forward pass
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    workers: int = 1                    # worker processes, one shard each (local engine; Ray: the cluster's CPUs)
    input_size: int = 512               # BiSeNet input side (512, as trained)
    drop_failed: bool = False           # unparseable views become error rows, out of the shards (else: kept, hard)
    keep_old: bool = False              # keep the previous version as DIR.pre-parse-<time>
    contact_sheet_views: int = 24       # views on the contact sheet
    masks: RCLMaskConfig = RCLMaskConfig()  # its face group defines the face fraction
    landmarks: LandmarkParserConfig = LandmarkParserConfig()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.parser not in ("auto", "bisenet", "landmarks", "ground-truth"):
            raise LapError(f"--parser {self.parser!r}: use auto, bisenet, landmarks or ground-truth")
        if self.parser == "bisenet" and not self.weights:
            raise LapError("--parser bisenet needs --weights (79999_iter.pth or parsing_bisenet.pth)")
        if not 0.0 <= self.min_face_fraction <= 1.0:
            raise LapError(f"--min-face-fraction {self.min_face_fraction} is not in [0, 1]")
        if self.batch_size < 1 or self.workers < 1:
            raise LapError("--batch-size and --workers must be >= 1")
        if not 32 <= self.input_size <= 4096:
            raise LapError(f"--input-size {self.input_size}: BiSeNet input side, must be in 32..4096 (512 as trained)")
        if self.contact_sheet_views < 0:
            raise LapError(f"--contact-sheet-views {self.contact_sheet_views}: must be >= 0")
        read_label_order(self.label_order)  # a bad name or file: one line before any work

    @property
    def model_parser(self) -> str | None:
        """The parser used for views without ground truth (None for --parser ground-truth)."""
        if self.parser == "ground-truth":
            return None
        if self.parser == "auto":
            return "bisenet" if self.weights else "landmarks"
        return self.parser

    def identity_doc(self) -> dict:
        """What decides the content of the new shards (a resumed run must match it)."""
        d = asdict(self)
        for k in ("batch_size", "device", "workers", "keep_old", "contact_sheet_views", *ENGINE_FIELDS):
            d.pop(k)
        d["label_order"] = list(read_label_order(self.label_order))  # the order itself, not where it was read
        if d["weights"]:
            p = Path(d["weights"]).expanduser()
            d["weights"] = str(p.resolve())
            d["weights_size"] = p.stat().st_size if p.exists() else None
        return d


# ------------------------------------------------------------------------------------------------ parser cache

_PARSERS: dict[tuple, Any] = {}


def warm_parser(cfg: ParseConfig) -> None:
    """Load the run's model parser once (an engine's actor calls it once)."""
    if cfg.model_parser is not None:
        get_parser(cfg.model_parser, cfg)


def get_parser(name: str, cfg: ParseConfig):
    """The model parser ``name`` for cfg, built once per process (BiSeNet weights / dlib models load once)."""
    key = (name, cfg.weights, cfg.label_order, cfg.device, cfg.batch_size, cfg.input_size, cfg.landmarks)
    p = _PARSERS.get(key)
    if p is None:
        if name == "bisenet":
            from lapdata.parsing.bisenet import BiSeNetParser

            p = BiSeNetParser(cfg.weights, device=resolve_device(cfg.device), batch_size=cfg.batch_size,
                              input_size=cfg.input_size, label_order=cfg.label_order)
        elif name == "landmarks":
            from lapdata.parsing.landmarks import LandmarkParser

            p = LandmarkParser(cfg.landmarks)
        else:
            raise ValueError(f"unknown parser {name!r}")
        _PARSERS.clear()
        _PARSERS[key] = p
    return p


# ------------------------------------------------------------------------------------------------ pictures


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


# ------------------------------------------------------------------------------------------------ the step


@dataclass
class ParseReport:
    dataset: str
    parser: str
    stats: dict = field(default_factory=dict)
    failed_shards: list = field(default_factory=list)
    audit_faults: list = field(default_factory=list)
    swapped: bool = False
    contact_sheet: str | None = None


def _copy_extras(root: Path, tmp: Path) -> None:
    """Copy DIR's files other than shards and manifests into the new version (once)."""
    skip = set(MANIFESTS) | {SHARD_DIR, CONFIG_FILE, COMPLETE_FILE, CONTACT_SHEET, HISTOGRAM}
    for p in root.iterdir():
        if p.name in skip or p.name.endswith(".tmp") or p.name.startswith("."):  # hidden: locks, sync state
            continue
        dst = tmp / p.name
        if dst.exists():
            continue
        if p.is_dir():
            shutil.copytree(p, dst)
        else:
            shutil.copy2(p, dst)


def _summary(table, cfg: ParseConfig) -> dict:
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


def parse_masks(root: str | Path, cfg: ParseConfig = ParseConfig(), progress: bool = True) -> ParseReport:
    """Parse every view of dataset ``root`` and swap in the new version with label maps (see module doc). The run
    holds the dataset's writer lock (``lapdata.core.locks``); a dataset whose audit must fail at the end (faults no parse
    repairs: ``lapdata.dataset.audit.run.carried_faults``) is refused before any view is parsed."""
    with writer_lock(root, "lapdata parse-masks"):
        return _parse_masks(root, cfg, progress)


def _refuse_carried(root: Path, where: str) -> None:
    """One line before the work when the final audit would fail on what the dataset already holds."""
    from lapdata.dataset.audit.run import carried_faults

    found = carried_faults(root)
    if found:
        raise LapError(f"{where}: its audit fails before parsing ({len(found)} fault(s) no parse repairs; first: "
                       f"{found[0]}); the parse would be discarded at its final audit: fix the dataset first (lapdata "
                       f"audit {where}; a dataset lapdata ingest wrote is repaired by rerunning that ingest)")


def _parse_masks(root: str | Path, cfg: ParseConfig, progress: bool) -> ParseReport:
    url = str(root).rstrip("/") if storage.is_url(root) else None
    if url:  # an object store: staging mounts of URL and URL.parse-tmp, committed by a journal (parsing.commit)
        commit.finish_commit(url)
        root, tmp, old = storage.mount(url), storage.mount(url + TMP_SUFFIX), None
    else:
        root = Path(root).expanduser().absolute()
        tmp, old = swap_paths(root)
        finish_swap(root, cfg.keep_old)
    if not root.is_dir():
        raise LapError(f"{root}: dataset folder does not exist")
    tasks = [ShardTask(st[SHARD], st[SHARD_SPLIT], ()) for st in shard_stats(root)]
    if not tasks:
        raise LapError(f"{root}: no finished shards (expected {SHARD_DIR}/*.tar with .json; run lapdata ingest first)")
    if old is not None and old.exists():
        raise LapError(f"{old}: left over from an earlier parse-masks run; remove it (or move it away) and rerun")
    _refuse_carried(root, url or str(root))
    if cfg.weights and cfg.model_parser == "bisenet":  # a wrong weight file is one clear line, before any work
        get_parser("bisenet", cfg)
    ident = cfg.identity_doc()
    if tmp.exists() and any(not p.name.startswith(".") for p in tmp.iterdir()):  # (a mount: its sync state)
        prev = None
        try:
            prev = json.loads((tmp / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            pass
        if prev != json.loads(json.dumps(ident)):
            print(f"note: {storage.remote_of(tmp) or tmp} holds a parse with other options; starting it over")
            shutil.rmtree(tmp)
            if url:
                storage.remove(url + TMP_SUFFIX, recursive=True)
    tmp.mkdir(parents=True, exist_ok=True)
    atomic.write_json(tmp / CONFIG_FILE, ident, indent=1, sort_keys=True)
    storage.push(tmp, [CONFIG_FILE])
    _copy_extras(root, tmp)

    prev_stats = {}
    if (root / "stats.json").exists():
        try:
            prev_stats = json.loads((root / "stats.json").read_text())
        except ValueError:
            prev_stats = {}
    config = dict(prev_stats.get("config") or {})
    config["parse_masks"] = ident
    process = functools.partial(process_shard, src_dir=url or str(root), cfg=cfg, parsers=get_parser)
    write = WriteConfig(workers=cfg.workers, config=config, image_ext="jpg", progress=progress, engine=engine_of(cfg),
                        model=cfg.model_parser is not None)
    stats = write_dataset(tmp, tasks, process, write, warm=functools.partial(warm_parser, cfg))
    report = ParseReport(url or str(root), cfg.parser, failed_shards=stats.get("failed", []))
    from lapdata.dataset.manifests import read_dataset

    table = read_dataset(tmp)
    summary = _summary(table, cfg)
    report.stats = {**summary, "photos": stats.get("photos"), "status_counts": stats.get("status_counts"),
                    "shards": stats.get("shards"), "images": stats.get("images")}
    if report.failed_shards:
        return report
    # pictures of the new version
    try:
        contact_sheet(_sheet_items(tmp, cfg.contact_sheet_views), tmp / CONTACT_SHEET, cfg.masks)
        report.contact_sheet = storage.join(url, CONTACT_SHEET) if url else str(root / CONTACT_SHEET)
        d = table.to_pydict()
        ff = [f for f, p, s in zip(d["face_fraction"], d["parser"], d["status"]) if p is not None and s == STATUS_OK]
        if ff:
            face_fraction_figure(ff, cfg.min_face_fraction, tmp / HISTOGRAM, f"{root.name}: {len(ff)} views, "
                                 f"{summary['hard']} under {cfg.min_face_fraction:g}")
    except Exception as e:  # pictures never fail the run
        print(f"warning: contact sheet not written ({_one_line(e)})")
    from lapdata.dataset.audit.run import audit_dataset

    rep = audit_dataset(tmp)
    report.audit_faults = list(rep.faults)
    if rep.faults:
        return report
    atomic.write_json(tmp / COMPLETE_FILE, {"stats": report.stats,
                                            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1)
    if url:
        storage.push_tree(tmp)
        commit.commit(url, url + TMP_SUFFIX, keep_old=cfg.keep_old)
        storage.unmount(tmp)
        shutil.rmtree(tmp)
        storage.mount(url)  # the staging mirror of the committed version
        report.swapped = True
        return report
    os.replace(root, old)
    os.replace(tmp, root)
    drop_old(root, cfg.keep_old)
    report.swapped = True
    return report
