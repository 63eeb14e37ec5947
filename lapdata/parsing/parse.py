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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from lapdata.core import atomic, staging, storage
from lapdata.core.device import resolve_device
from lapdata.core.engine import ENGINE_FIELDS, EngineConfig, engine_of
from lapdata.core.errors import LapError
from lapdata.core.locks import writer_lock
from lapdata.dataset.manifests import MANIFESTS, previous_stats, shard_stats
from lapdata.dataset.schema import SHARD, SHARD_DIR, SHARD_SPLIT
from lapdata.dataset.writer import ShardTask, WriteConfig, write_dataset
from lapdata.parsing import commit
from lapdata.parsing import report as report_mod
from lapdata.parsing.report import CONTACT_SHEET, HISTOGRAM
from lapdata.parsing.commit import COMPLETE_FILE, TMP_SUFFIX, drop_old, finish_swap, swap_paths
from lapdata.parsing.labels import read_label_order
from lapdata.parsing.landmarks import LandmarkParserConfig
from lapdata.parsing.masks import RCLMaskConfig
from lapdata.parsing.shard import process_shard

ParserName = Literal["auto", "bisenet", "landmarks", "ground-truth"]
CONFIG_FILE = "parse_config.json"
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


def _prepare(root: str | Path, url: str | None, cfg: ParseConfig) -> tuple[Path, Path, Path | None, list[ShardTask]]:
    """The dataset (a URL: its staging mounts, an interrupted commit finished first; a folder: an interrupted swap
    finished first), its new version's folder and the old version's name, its shards; refused here, before any
    work, when it cannot be parsed."""
    if url:  # an object store: staging mounts of URL and URL.parse-tmp, committed by a journal (parsing.commit)
        commit.finish_commit(url)
        root, tmp, old = staging.mount(url), staging.mount(url + TMP_SUFFIX), None
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
    return root, tmp, old, tasks


def _start_version(root: Path, tmp: Path, url: str | None, ident: dict) -> None:
    """The new version's folder: resumed when it holds a parse with the same options, else started over; its
    parse_config.json and the dataset's other files."""
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
    staging.push(tmp, [CONFIG_FILE])
    _copy_extras(root, tmp)


def _write_version(root: Path, tmp: Path, url: str | None, tasks: list[ShardTask], cfg: ParseConfig,
                   progress: bool) -> dict:
    """Every shard parsed into the new version (the writer resumes finished ones); its stats.json config is the
    dataset's with the parse options added."""
    prev_stats = previous_stats(root)
    config = dict(prev_stats.get("config") or {})
    config["parse_masks"] = cfg.identity_doc()
    process = functools.partial(process_shard, src_dir=url or str(root), cfg=cfg, parsers=get_parser)
    write = WriteConfig(workers=cfg.workers, config=config, image_ext="jpg", progress=progress, engine=engine_of(cfg),
                        model=cfg.model_parser is not None)
    return write_dataset(tmp, tasks, process, write, warm=functools.partial(warm_parser, cfg))


def _commit(root: Path, tmp: Path, old: Path | None, url: str | None, report: ParseReport, cfg: ParseConfig) -> None:
    """The audited new version in place of the old: on an object store through the journal (``parsing.commit``),
    on disk the two-rename swap."""
    atomic.write_json(tmp / COMPLETE_FILE, {"stats": report.stats,
                                            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1)
    if url:
        staging.push_tree(tmp)
        commit.commit(url, url + TMP_SUFFIX, keep_old=cfg.keep_old)
        staging.unmount(tmp)
        shutil.rmtree(tmp)
        staging.mount(url)  # the staging mirror of the committed version
    else:
        os.replace(root, old)
        os.replace(tmp, root)
        drop_old(root, cfg.keep_old)
    report.swapped = True


def _parse_masks(root: str | Path, cfg: ParseConfig, progress: bool) -> ParseReport:
    from lapdata.dataset.audit.run import audit_dataset
    from lapdata.dataset.manifests import read_dataset

    url = str(root).rstrip("/") if storage.is_url(root) else None
    root, tmp, old, tasks = _prepare(root, url, cfg)
    _start_version(root, tmp, url, cfg.identity_doc())
    stats = _write_version(root, tmp, url, tasks, cfg, progress)
    report = ParseReport(url or str(root), cfg.parser, failed_shards=stats.get("failed", []))
    table = read_dataset(tmp)
    figures = report_mod.summary(table, cfg)
    report.stats = {**figures, "photos": stats.get("photos"), "status_counts": stats.get("status_counts"),
                    "shards": stats.get("shards"), "images": stats.get("images")}
    if report.failed_shards:
        return report
    if report_mod.pictures(tmp, table, cfg, f"{root.name}: ", figures["hard"]):
        report.contact_sheet = storage.join(url, CONTACT_SHEET) if url else str(root / CONTACT_SHEET)
    report.audit_faults = list(audit_dataset(tmp).faults)
    if not report.audit_faults:
        _commit(root, tmp, old, url, report, cfg)
    return report
