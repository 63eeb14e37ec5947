"""A training run's set-up, everything before its first step, in the order `lapmodel.training.train` calls it:

`start_run` (the stage recorded in the config, the process group, device, precision, per-rank batch, shards and
number of steps) -> `build_training` (the seeded model, its optimizer and grad scaler, the same on every rank) ->
`restore` (``--resume`` from OUT/last.pt, or the weights of ``--init``) -> `wrap_model` (torch.compile, DDP).
"""

from __future__ import annotations

import json
import math
import os
import random
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lapdata.core.config import to_dict
from lapdata.core.device import resolve_device
from lapdata.core.errors import LapError

from lapmodel.config import OptimConfig, TrainConfig
from lapmodel.io.checkpoint import load_checkpoint, set_rng_state
from lapmodel.io.data import count_samples, expand_shards
from lapmodel.models.build import build_model
from lapmodel.models.model import Model


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world, device). Under torchrun (WORLD_SIZE > 1) joins the process group: nccl on GPU, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)  # a one-line LapError for a device this machine does not have
    if dev.type == "cuda" and dev.index is None and world > 1:
        dev = torch.device(f"cuda:{local}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def cpu_has_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic natively (AVX512-BF16 or AMX tiles), where bf16 autocast trains faster
    (BENCHMARKS.md, "Training step": 1.5x for the whole Unsup3D-re step on AVX512-BF16)."""
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(c()) for c in checks if c is not None)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None = fp32. auto: bf16 on CUDA when supported and on CPUs with native bf16 (``cpu_has_bf16``), else fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise LapError("precision fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None


@dataclass(frozen=True)
class Run:
    """Where and how this process trains (`start_run`)."""

    cfg: TrainConfig                 # the config, with a ``--stage`` recorded in it
    rank: int                        # this process's rank in the world (0: the one that writes)
    world: int                       # processes training together (torchrun)
    device: torch.device
    amp_dtype: torch.dtype | None    # autocast dtype (None: fp32)
    per_rank: int                    # identities per step on this rank
    urls: list[str]                  # the shards
    steps: int                       # the step the run stops at
    say: Callable[[str], None]       # the run's messages (silent on ranks other than 0)

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def last(self) -> Path:
        return self.out / "last.pt"

    def autocast(self) -> ContextManager:
        """The forward pass's autocast context (a no-op in fp32)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def start_run(cfg: TrainConfig, stage: str | None, log: Callable[[str], None]) -> Run:
    """The Run of ``cfg``: a stage given on the command line recorded in the config (so checkpoints rebuild that
    stage); process group, device, precision, the batch split over the ranks; the shards and the number of steps
    (``epochs`` counts the shards' identities); OUT made (rank 0)."""
    if stage is not None:
        cfg = replace(cfg, model=replace(cfg.model, lap=replace(cfg.model.lap, stage=stage)))
    rank, world, device = setup_distributed(cfg.device)
    say = log if rank == 0 else (lambda _m: None)
    amp_dtype = autocast_dtype(cfg.precision, device)
    if cfg.batch % world:
        raise LapError(f"batch {cfg.batch} is not divisible by the {world} ranks")
    if rank == 0:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
    urls = expand_shards(cfg.data.shards)
    steps = cfg.steps
    if cfg.epochs is not None:
        steps = math.ceil(cfg.epochs * count_samples(urls) / cfg.batch)
    return Run(cfg=cfg, rank=rank, world=world, device=device, amp_dtype=amp_dtype, per_rank=cfg.batch // world,
               urls=urls, steps=steps, say=say)


def build_training(run: Run) -> tuple[Model, torch.optim.Optimizer, torch.amp.GradScaler | None, list[nn.Parameter]]:
    """(model, optimizer, grad scaler (fp16 only), the parameters it updates), the same on every rank: Python's,
    NumPy's and torch's RNGs seeded with ``cfg.seed`` first (Python's state is in every checkpoint too, so last.pt
    is byte-reproducible)."""
    cfg = run.cfg
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    model = build_model(cfg).to(run.device)
    if model.perceptual is None and cfg.model.lam_perc > 0 and cfg.perceptual == "auto":
        run.say("note: the perceptual loss is off (no vgg_weights: give torchvision's vgg16-397923af.pth for the "
                "paper's VGG16; perceptual: mobilenet, the packaged MobileNetV2, measured worse: BENCHMARKS.md)")
    params = model.trainable_parameters()  # (a LAP model is built at cfg.model.lap.stage)
    adam = torch.optim.AdamW if cfg.optim.weight_decay_mode == "decoupled" else torch.optim.Adam
    opt = adam(param_groups(model, params, cfg.optim), lr=cfg.optim.lr, betas=cfg.optim.betas,
               weight_decay=cfg.optim.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if run.amp_dtype == torch.float16 else None
    return model, opt, scaler, params


def param_groups(model: Model, params: list[nn.Parameter], optim: OptimConfig) -> list[dict]:
    """The optimizer's parameter groups: ``params`` without the viewpoint network's, then those of
    ``model.view_network()`` (empty when it does not train); always two, so that a checkpoint's optimizer state fits
    whatever the schedule. Their learning rates are ``set_learning_rates``'."""
    view = {id(p) for p in model.view_network().parameters()}
    return [{"params": [p for p in params if id(p) not in view]},
            {"params": [p for p in params if id(p) in view], "lr": view_lr(optim, 0)}]


def view_lr(optim: OptimConfig, global_step: int) -> float:
    """The viewpoint network's learning rate at ``global_step``: lr x view_lr_scale for the first view_lr_steps
    steps, then lr."""
    return optim.lr * (optim.view_lr_scale if global_step < optim.view_lr_steps else 1.0)


def set_learning_rates(opt: torch.optim.Optimizer, optim: OptimConfig, global_step: int) -> None:
    """The learning rates of ``param_groups``' two groups at ``global_step`` (the step across phases and stages)."""
    opt.param_groups[0]["lr"] = optim.lr
    opt.param_groups[1]["lr"] = view_lr(optim, global_step)


def two_groups(state: dict, model: Model) -> dict:
    """An optimizer state saved with one parameter group (before the viewpoint network had its own) as
    ``param_groups``' two, moments kept (the loop sets their learning rates); a two-group state unchanged."""
    if len(state["param_groups"]) != 1:
        return state
    group = state["param_groups"][0]
    params = model.trainable_parameters()
    view = {id(p) for p in model.view_network().parameters()}
    order = [k for k, p in enumerate(params) if id(p) not in view] + [k for k, p in enumerate(params) if id(p) in view]
    new = {old: i for i, old in enumerate(order)}
    n_rest = sum(id(p) not in view for p in params)
    groups = [{**group, "params": list(range(n_rest))}, {**group, "params": list(range(n_rest, len(params)))}]
    return {"state": {new[int(k)]: v for k, v in state["state"].items()}, "param_groups": groups}


def restore(run: Run, model: Model, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
            resume: bool) -> tuple[int, int, float]:
    """(first step, step offset, CPU-seconds of the runs before). ``resume``: model, optimizer, scaler, RNG, step and
    the CPU time spent so far from OUT/last.pt (when it
    exists); else a folder that holds a run is refused. From step 0 the model takes the tensors of ``cfg.init`` that
    fit. The offset is the steps of the curriculum phases / stages before this run (its ``--init``), so that
    TensorBoard and log.jsonl's global_step continue across them."""
    cfg, last, say = run.cfg, run.last, run.say
    start, offset, cpu = 0, 0, 0.0
    if resume and last.exists():
        doc = load_checkpoint(last, map_location=run.device)
        if doc["config"].get("model") != to_dict(cfg.model):
            raise LapError(f"{last}: --resume with a different model config than the checkpoint's")
        model.load_state_dict(doc["model"])
        opt.load_state_dict(two_groups(doc["optimizer"], model))
        if scaler is not None and "scaler" in doc:
            scaler.load_state_dict(doc["scaler"])
        set_rng_state(doc["rng"])
        start = int(doc["step"])
        offset = int(doc.get("extra", {}).get("step_offset", 0))
        cpu = cpu_before(run.out, start=int(doc["step"]))
        pos = doc.get("data", {})
        if (pos.get("world"), pos.get("workers"), pos.get("batch_size")) != (run.world, cfg.data.workers, run.per_rank):
            say(f"note: resuming with a different world size / data workers / batch than {last}: "
                "the data order will differ from the uninterrupted run")
        say(f"resumed from {last} at step {start}")
    elif resume:
        say(f"--resume: {last} does not exist yet, starting from step 0")
    elif last.exists():
        raise LapError(f"{run.out}: already holds a run (last.pt); use --resume to continue it or another --out")
    if start == 0 and cfg.init:
        init = load_checkpoint(cfg.init, map_location=run.device)
        own = model.state_dict()
        fit = {k: v for k, v in init["model"].items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(fit, strict=False)
        offset = int(init.get("extra", {}).get("step_offset", 0)) + int(init.get("step", 0))
        say(f"initialised {len(fit)}/{len(own)} tensors from {cfg.init}")
    return start, offset, cpu


CPU_FILE = "cpu.json"  # {"step", "cpu_seconds"}: the run's CPU time up to last.pt's step, resumes included


def cpu_before(out: Path, start: int) -> float:
    """The CPU-seconds that made OUT/last.pt at step ``start`` (0 when OUT/cpu.json is absent or of another step)."""
    p = Path(out) / CPU_FILE
    doc = json.loads(p.read_text()) if p.is_file() else {}
    return float(doc.get("cpu_seconds", 0.0)) if doc.get("step") == start else 0.0


def wrap_model(run: Run, model: Model) -> nn.Module:
    """What the loop calls forward on, in train mode: the model with its networks compiled (``cfg.compile``), under
    DDP with several ranks (gradients averaged; buffers not synchronised). Checkpoints save ``model`` itself."""
    if run.cfg.compile:
        model.compile_networks()
    wrapped: nn.Module = model
    if run.world > 1:
        with warnings.catch_warnings():  # broadcast_buffers is deprecated in new torch, still the way to say "no sync"
            warnings.simplefilter("ignore", FutureWarning)
            wrapped = nn.parallel.DistributedDataParallel(
                model, device_ids=[run.device.index] if run.device.type == "cuda" else None, broadcast_buffers=False)
    return wrapped.train()
