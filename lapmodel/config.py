"""Training configuration: a tree of small frozen dataclasses loaded from `pipelines/*.yaml`.

Defaults are defined once, here. Load with::

    from lapdata.core.config import load_config
    cfg = load_config(TrainConfig, "pipelines/unsup3d.yaml", overrides={"optim.lr": 2e-4})

Sections: ``model`` (ModelConfig: network sizes, camera, depth/view/light ranges, loss weights), ``data``
(DataConfig: shards and the streaming loader), ``optim`` (OptimConfig: Adam), and the top-level run settings
(TrainConfig: steps, batch, precision, intervals, output folder). The LAP model's own fields are ``model.lap``
(LAPConfig, used with ``model.kind: lap``) and ``stages`` (its curriculum per stage, ``LAP_STAGES``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from lapdata.core.errors import LapError
from lapdata.core.paths import plain_name  # a phase's name is its folder
from lapdata.parsing.masks import RCLMaskConfig  # LAP: RCL mask groups (model.lap.rcl_masks)
from lapdata.dataset.sample import EXTRA_FIELDS  # the fields a shard view may hold (data.fields)

def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _check(section: str, checks: list[tuple[bool, str]]) -> None:
    """The first failed check as a one-line LapError (``section: message``)."""
    for ok, msg in checks:
        if not ok:
            raise LapError(f"{section}: {msg}")


MODEL_KINDS = ("unsup3d", "lap")  # "lap": lapmodel/models/lap.py
IMAGE_SIZES = (64, 128, 256)


# ------------------------------------------------------------------------------------- LAP

LAPStage = Literal["aggregate", "personalize", "finetune"]  # the LAP training stages, in order (lapmodel/models/lap.py)
LAP_STAGES: tuple[str, ...] = get_args(LAPStage)


@dataclass(frozen=True)
class LAPConfig:
    """The LAP model's own fields (``model.lap``; used when ``model.kind: lap``)."""

    stage: LAPStage = "aggregate"        # set by `lapmodel train --stage`
    adaptive: bool = True                # adaptive (softmax) aggregation; false = plain mean (ablation)
    rcl: bool = True                     # Relaxed Consistency Loss with M_re masks; false = plain Eq. 3 (ablation)
    rcl_masks: RCLMaskConfig = field(default_factory=RCLMaskConfig)  # M / M_re class groups (lapdata.parsing)
    refiner: bool = True                 # build the attribute-refining network
    refine_size: int = 128               # refiner output side: 64, 128 or 256 (one network per size)
    refine_nf: int = 32                  # refiner base width
    target_size: int = 64                # side the target photo is resized to for the refiner's target encoder
    filtered_connection: Literal["filtered", "plain", "none"] = "filtered"  # ablation: "none" (or "plain")
    injection: Literal["multi", "vector"] = "multi"  # attribute injection at 8x8, 4x4, 1x1; "vector" = 1x1 only
    encoder: Literal["multiscale", "deep"] = "multiscale"  # per-photo code: every scale pooled, or the 1x1 bottleneck only
    arch: Literal["lapmodel", "official"] = "lapmodel"  # official: the LAP demo's networks (its weights load; 128 px)

    def __post_init__(self) -> None:
        _check("model.lap", [(self.refine_size >= 8, f"refine_size {self.refine_size} must be >= 8"),
                             (self.refine_nf >= 1, f"refine_nf {self.refine_nf} must be >= 1"),
                             (self.target_size >= 8, f"target_size {self.target_size} must be >= 8")])


@dataclass(frozen=True)
class PhaseConfig:
    """One curriculum phase of a stage: its data and its length."""

    name: str = "main"
    shards: tuple[str, ...] = ()         # shard patterns of this phase (empty = data.shards / --shards)
    epochs: float | None = None          # length in epochs of these shards (identities / batch per epoch) ...
    steps: int | None = None             # ... or in steps (steps wins when both are set)
    batch: int | None = None             # identities per step in this phase (None = the stage's, then top-level)
    max_set: int | None = None           # largest set in this phase (1: single photos; None = the stage's / data's)

    def __post_init__(self) -> None:  # the name is the phase's folder: never a path
        _check("phase", [(plain_name(self.name) == self.name, f"name {self.name!r} is not a plain name (letters, "
                                                               f"digits, '_', '.', '-'): it names the phase's folder"),
                         (self.epochs is None or (_finite(self.epochs) and self.epochs > 0),
                          f"{self.name}: epochs {self.epochs} must be > 0 or null"),
                         (self.steps is None or self.steps >= 1, f"{self.name}: steps {self.steps} must be >= 1"),
                         (self.batch is None or self.batch >= 1, f"{self.name}: batch {self.batch} must be >= 1"),
                         (self.max_set is None or self.max_set >= 1,
                          f"{self.name}: max_set {self.max_set} must be >= 1")])


@dataclass(frozen=True)
class StageConfig:
    """One LAP training stage: its curriculum phases and what differs from the top-level settings."""

    phases: tuple[PhaseConfig, ...] = (PhaseConfig(),)
    batch: int | None = None             # identities per step (None = top-level batch)
    lr: float | None = None              # None = optim.lr
    max_set: int | None = None           # None = data.max_set

    def __post_init__(self) -> None:
        _check("stage", [(self.batch is None or self.batch >= 1, f"batch {self.batch} must be >= 1 or null"),
                         (self.lr is None or (_finite(self.lr) and self.lr >= 0), f"lr {self.lr} must be >= 0 or null"),
                         (self.max_set is None or self.max_set >= 1, f"max_set {self.max_set} must be >= 1 or null")])


@dataclass(frozen=True)
class StagesConfig:
    """One StageConfig per LAP stage (the fields are ``LAP_STAGES``, in order)."""

    aggregate: StageConfig = field(default_factory=StageConfig)
    personalize: StageConfig = field(default_factory=StageConfig)
    finetune: StageConfig = field(default_factory=StageConfig)


@dataclass(frozen=True)
class ModelConfig:
    """The photo-geometric autoencoder (Unsup3D defaults, CelebA setting)."""

    kind: str = "unsup3d"                # one of MODEL_KINDS
    image_size: int = 64                 # input/output side S: 64, 128 or 256
    fov_deg: float = 10.0                # perspective camera field of view
    min_depth: float = 0.9               # canonical depth range (tanh output rescaled into it)
    max_depth: float = 1.1
    border_depth: float | None = None    # depth of the fixed image border; None = 0.7*max + 0.3*min (Unsup3D)
    border_columns: int | None = None    # columns pinned at border_depth on each side; None = S // 32 (official: 2)
    border_corner: tuple[int, int] = (0, 0)  # rows, columns at the bottom-left also pinned (LAP demo: 20, 15)
    xyz_rotation_range: float = 60.0     # max |rotation| about x, y, z in degrees (tanh output scaled)
    xy_translation_range: float = 0.1    # max |translation| in x, y
    z_translation_range: float = 0.0     # max |translation| in z
    min_amb_light: float = 0.0           # ambient light range
    max_amb_light: float = 1.0
    min_diff_light: float = 0.0          # diffuse light range
    max_diff_light: float = 1.0
    nf: int = 64                         # base width of the depth/albedo/confidence encoder-decoders
    nf_encoder: int = 32                 # base width of the light/view encoders
    zdim: int = 256                      # depth/albedo bottleneck channels
    zdim_conf: int = 128                 # confidence-net bottleneck channels
    use_conf: bool = True                # predict confidence maps (else sigma = 1, plain L1 / L2)
    lam_perc: float = 1.0                # weight of the perceptual (VGG relu3_3) loss
    lam_flip: float = 0.5                # weight of the flipped-reconstruction losses
    lam_flip_start_step: int = 0         # before this step the flip weight is 1 (Unsup3D's lam_flip_start_epoch)
    # deviations from the official code that make depth learnable at CPU budgets (lapmodel/models/photogeo.py; 0 / default
    # = the official behaviour); measured on the quality ladder (benchmarks/quality.py, BENCHMARKS.md)
    depth_prior: float = 1.0             # ellipsoid cap added to the raw depth before the tanh (0 = none)
    depth_prior_axes: tuple[float, float] = (0.75, 0.9)  # its semi-axes x, y as fractions of the half side
    depth_init: Literal["flat", "default"] = "flat"  # flat: the depth decoder's last conv starts at zero
    lam_depth_sm: float = 2.0            # depth smoothness (Unsup3D's lam_depth_sm, 0 there for faces)
    uncovered: Literal["grey", "ignore"] = "grey"  # photometric loss at pixels the re-render misses (ignore: Unsup3D)
    lap: LAPConfig = field(default_factory=LAPConfig)  # LAP fields (model.kind: lap)

    def __post_init__(self) -> None:
        widths = {"nf": self.nf, "nf_encoder": self.nf_encoder, "zdim": self.zdim, "zdim_conf": self.zdim_conf}
        ranges = [("depth", self.min_depth, self.max_depth), ("amb_light", self.min_amb_light, self.max_amb_light),
                  ("diff_light", self.min_diff_light, self.max_diff_light)]
        nonneg = {"xyz_rotation_range": self.xyz_rotation_range, "xy_translation_range": self.xy_translation_range,
                  "z_translation_range": self.z_translation_range, "lam_perc": self.lam_perc,
                  "lam_flip": self.lam_flip, "depth_prior": self.depth_prior, "lam_depth_sm": self.lam_depth_sm}
        _check("model", [
            *[(v >= 1, f"{k} {v} must be >= 1") for k, v in widths.items()],
            (_finite(self.fov_deg) and 0 < self.fov_deg < 180, f"fov_deg {self.fov_deg} must be in (0, 180)"),
            (_finite(self.min_depth) and self.min_depth > 0, f"min_depth {self.min_depth} must be > 0"),
            *[(_finite(lo) and _finite(hi) and lo < hi, f"min_{k} {lo} must be < max_{k} {hi}") for k, lo, hi in ranges],
            *[(_finite(v) and v >= 0, f"{k} {v} must be a finite number >= 0") for k, v in nonneg.items()],
            (self.border_depth is None or (_finite(self.border_depth) and self.border_depth > 0),
             f"border_depth {self.border_depth} must be > 0 or null"),
            (self.border_columns is None or 0 <= self.border_columns < self.image_size // 2,
             f"border_columns {self.border_columns} must be in 0..{self.image_size // 2 - 1} or null"),
            (all(0 <= c < self.image_size for c in self.border_corner),
             f"border_corner {self.border_corner} must be in 0..{self.image_size - 1}"),
            (self.lam_flip_start_step >= 0, f"lam_flip_start_step {self.lam_flip_start_step} must be >= 0"),
            (all(_finite(a) and a > 0 for a in self.depth_prior_axes),
             f"depth_prior_axes {self.depth_prior_axes} must be > 0")])


@dataclass(frozen=True)
class DataConfig:
    """Streaming of lapdata shards (lapmodel/io/data.py)."""

    shards: tuple[str, ...] = ()         # shard paths / brace patterns ("d/train-{000000..000099}.tar"); --shards
    min_set: int = 1                     # views picked per identity: uniform in min_set..max_set (Unsup3D-re: 1)
    max_set: int = 1
    shuffle_buffer: int = 1000           # sample shuffle buffer (per worker)
    shuffle_initial: int = 100           # samples buffered before the first is yielded
    workers: int = 2                     # DataLoader worker processes per rank (0 = in the main process)
    seed: int = 0                        # the stream is a function of (seed, rank, worker, sample index)
    fields: tuple[str, ...] = ("image", "seg", "mask", "depth", "cdepth")  # decoded when the shard has them
    prefetch: int = 4                    # batches prefetched per worker

    def __post_init__(self) -> None:
        known = ("image", *EXTRA_FIELDS)
        _check("data", [(self.workers >= 0, f"workers {self.workers} must be >= 0"),
                        (all(f in known for f in self.fields) and "image" in self.fields,
                         f"fields {list(self.fields)}: each one of {list(known)}, with image"),
                        (1 <= self.min_set <= self.max_set, f"need 1 <= min_set <= max_set, got "
                                                            f"{self.min_set}..{self.max_set}"),
                        (self.shuffle_buffer >= 0 and self.shuffle_initial >= 0, "shuffle sizes must be >= 0"),
                        (self.prefetch >= 1, f"prefetch {self.prefetch} must be >= 1")])


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-4
    # decoupled (AdamW): the decay shrinks the weights by lr * weight_decay per step, apart from the gradient.
    # l2: Adam's L2 term added to the gradient, as the official Unsup3D code; Adam then normalises it, so every
    # weight whose loss gradient is small shrinks by ~lr per step: it killed LAP's depth aggregator (its 1x1 code
    # dead, one depth map for every person; BENCHMARKS.md "Real photos")
    weight_decay_mode: Literal["decoupled", "l2"] = "decoupled"
    # the viewpoint network's (``Model.view_network``) learning rate is lr x view_lr_scale for the first
    # view_lr_steps steps of training (curriculum phases and LAP stages count on), then lr; 1 = the official code.
    # For a run whose views stay frontal (the log's yaw_std_deg near 0 on posed photos): the pose has to be found
    # before the albedo network learns to copy each posed photo into the canonical frame, after which the view gets
    # no gradient. 10 rescued such a run and broke one that worked at 1, and 5 drove every view of the photos recipe
    # to the +60 degree limit (the log's yaw_at_limit -> 1; BENCHMARKS.md "The library defaults on small
    # overfits"), so 1 stays the default: a research lever, not a fix
    view_lr_scale: float = 1.0
    view_lr_steps: int = 150
    grad_clip: float | None = None       # clip the global grad norm (None = off)

    def __post_init__(self) -> None:
        _check("optim", [(_finite(self.lr) and self.lr >= 0, f"lr {self.lr} must be a finite number >= 0"),
                         (all(_finite(b) and 0 <= b < 1 for b in self.betas), f"betas {self.betas} must be in [0, 1)"),
                         (_finite(self.weight_decay) and self.weight_decay >= 0,
                          f"weight_decay {self.weight_decay} must be >= 0"),
                         (_finite(self.view_lr_scale) and self.view_lr_scale > 0,
                          f"view_lr_scale {self.view_lr_scale} must be a finite number > 0"),
                         (self.view_lr_steps >= 0, f"view_lr_steps {self.view_lr_steps} must be >= 0"),
                         (self.grad_clip is None or (_finite(self.grad_clip) and self.grad_clip > 0),
                          f"grad_clip {self.grad_clip} must be > 0 or null")])


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 1000                    # optimizer steps (the data stream is resampled, never runs dry)
    epochs: float | None = None          # if set, steps = ceil(epochs * identities / batch) (counts the shards)
    batch: int = 64                      # identities per step, over all ranks (each rank takes batch / world)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 autocast on CUDA and on CPUs with native bf16
    compile: bool = False                # torch.compile the networks
    device: str = "auto"                 # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    seed: int = 0                        # model initialisation
    log_every: int = 20                  # scalars to TensorBoard + log.jsonl
    picture_every: int = 500             # picture grids (TensorBoard + OUT/pictures/step-XXXXXX.png)
    ckpt_every: int = 500                # OUT/last.pt
    keep_every: int | None = None        # also keep OUT/checkpoints/step-XXXXXX.pt every this many steps
    perceptual: Literal["auto", "vgg", "mobilenet", "none"] = "auto"  # auto: vgg with vgg_weights, else none
    vgg_weights: str | None = None       # local torchvision vgg16-397923af.pth (the paper's perceptual network)
    mobilenet_weights: str | None = None  # torchvision mobilenet_v2-b0353104.pth; None: the packaged file
    init: str | None = None              # checkpoint whose model weights initialise this run (--init)
    out: str = "runs/unsup3d"            # output folder (--out)
    stages: StagesConfig = field(default_factory=StagesConfig)  # LAP: curriculum phases per stage (lapmodel/models/lap.py)

    def __post_init__(self) -> None:
        every = {"log_every": self.log_every, "picture_every": self.picture_every, "ckpt_every": self.ckpt_every}
        _check("train", [(self.steps >= 1, f"steps {self.steps} must be >= 1"),
                         (self.epochs is None or (_finite(self.epochs) and self.epochs > 0),
                          f"epochs {self.epochs} must be > 0 or null"),
                         (self.batch >= 1, f"batch {self.batch} must be >= 1"),
                         *[(v >= 1, f"{k} {v} must be >= 1") for k, v in every.items()],
                         (self.keep_every is None or self.keep_every >= 1, f"keep_every {self.keep_every} must be >= 1"),
                         (bool(str(self.out).strip()), "out must be a folder")])
