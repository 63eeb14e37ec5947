"""Training loop, top to bottom (nanoGPT style): one function, `train(cfg)`, generic over the models.

A model is a ``lapmodel.models.model.Model``: ``forward(batch: Batch) -> output``, ``loss(output, batch) -> (loss,
logs)``, ``trainable_parameters()``, ``compile_networks()``, ``perceptual`` and a ``step`` attribute (the loop sets
it); `lapmodel.viz.pictures` draws the picture grids of its output. ``build_model(cfg)`` is the one place that maps
``cfg.model.kind`` to a class.

Runs on CPU, one GPU, or many under torchrun (DDP: gloo on CPU, nccl on GPU; the batch is split over ranks).
Everything a run writes is under ``cfg.out``::

    config.yaml           the resolved config
    last.pt               latest checkpoint (model, optimizer, config, step, RNG, data position)
    checkpoints/step-XXXXXX.pt   kept every ``keep_every`` steps
    log.jsonl             one line of scalars per ``log_every`` steps
    loss.png              the loss curve
    pictures/step-XXXXXX.png     input, reconstructions, canonical albedo/depth/normals/shading, turntable
    tb/                   TensorBoard scalars and images

``--resume`` continues from last.pt and reproduces the uninterrupted run (same world size and data workers).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn

from lapdata.core.config import to_dict
from lapdata.core.device import resolve_device
from lapdata.core.errors import LapError
from lapdata.core.locks import writer_lock
from lapdata.core.pictures import save_png
from lapdata.core.logs import get_logger, log_to_file, warn_once

from lapmodel.io.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from lapmodel.config import TrainConfig
from lapmodel.io.data import Batch, count_samples, data_position, expand_shards, make_loader
from lapmodel.models.build import build_model
from lapmodel.viz.curves import loss_curve_png
from lapmodel.viz.pictures import training_picture


LOG = get_logger("train")


class TrainingDiverged(LapError):
    """The loss or the gradients became NaN/inf: the run stopped, last.pt is the last good state."""


@dataclass
class TrainResult:
    step: int                 # steps done
    out: Path                 # output folder
    checkpoint: Path | None   # last.pt
    last_logs: dict[str, float]


# ------------------------------------------------------------------------------------------------ model & setup


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


# ------------------------------------------------------------------------------------------------ the loop


def train(cfg: TrainConfig, *, resume: bool = False, stage: str | None = None, progress: bool = True,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Train ``cfg`` into ``cfg.out``. ``resume``: continue from ``cfg.out/last.pt`` (exactly).

    ``log``: where the run's messages go (default: the ``lap.train`` logger, also written to ``OUT/train.log``)."""
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise LapError(f"{cfg.out}: --out is a file, not a folder")
    # one run per folder (lapdata.core.locks): a second `lapmodel train --out D` is refused; under torchrun rank 0 holds it
    lock = writer_lock(cfg.out, "lapmodel train") if os.environ.get("RANK", "0") == "0" else nullcontext()
    with lock, log_to_file(Path(cfg.out) / "train.log"):
        return _train(cfg, resume=resume, stage=stage, progress=progress, log=log or LOG.info)


def _train(cfg: TrainConfig, *, resume: bool, stage: str | None, progress: bool,
           log: Callable[[str], None]) -> TrainResult:
    # -- a stage given on the command line is recorded in the config (so checkpoints rebuild that stage)
    if stage is not None:
        cfg = replace(cfg, model=replace(cfg.model, lap=replace(cfg.model.lap, stage=stage)))

    # -- distributed, device, precision
    rank, world, device = setup_distributed(cfg.device)
    master = rank == 0
    say = log if master else (lambda _m: None)
    amp_dtype = autocast_dtype(cfg.precision, device)
    if cfg.batch % world:
        raise LapError(f"batch {cfg.batch} is not divisible by the {world} ranks")
    per_rank = cfg.batch // world
    out = Path(cfg.out)
    last = out / "last.pt"
    if master:
        out.mkdir(parents=True, exist_ok=True)

    # -- data
    urls = expand_shards(cfg.data.shards)
    steps = cfg.steps
    if cfg.epochs is not None:
        steps = math.ceil(cfg.epochs * count_samples(urls) / cfg.batch)

    # -- model and optimizer (same init on every rank)
    random.seed(cfg.seed)  # Python's RNG too: its state is in every checkpoint (byte-reproducible last.pt)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    model = build_model(cfg).to(device)
    if model.perceptual is None and cfg.model.lam_perc > 0 and cfg.perceptual == "auto":
        say("note: the perceptual loss is off (no vgg_weights: give torchvision's vgg16-397923af.pth for the paper's "
            "VGG16; perceptual: mobilenet, the packaged MobileNetV2, measured worse: BENCHMARKS.md)")
    params = model.trainable_parameters()  # (a LAP model is built at cfg.model.lap.stage)
    adam = torch.optim.AdamW if cfg.optim.weight_decay_mode == "decoupled" else torch.optim.Adam
    opt = adam(params, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    # -- resume or init; ``offset``: steps of the curriculum phases / stages before this run (its ``--init``), so
    # TensorBoard and log.jsonl's global_step continue across them
    start, offset = 0, 0
    if resume and last.exists():
        doc = load_checkpoint(last, map_location=device)
        if doc["config"].get("model") != to_dict(cfg.model):
            raise LapError(f"{last}: --resume with a different model config than the checkpoint's")
        model.load_state_dict(doc["model"])
        opt.load_state_dict(doc["optimizer"])
        if scaler is not None and "scaler" in doc:
            scaler.load_state_dict(doc["scaler"])
        set_rng_state(doc["rng"])
        start = int(doc["step"])
        offset = int(doc.get("extra", {}).get("step_offset", 0))
        pos = doc.get("data", {})
        if (pos.get("world"), pos.get("workers"), pos.get("batch_size")) != (world, cfg.data.workers, per_rank):
            say(f"note: resuming with a different world size / data workers / batch than {last}: "
                "the data order will differ from the uninterrupted run")
        say(f"resumed from {last} at step {start}")
    elif resume:
        say(f"--resume: {last} does not exist yet, starting from step 0")
    elif last.exists():
        raise LapError(f"{out}: already holds a run (last.pt); use --resume to continue it or another --out")
    if start == 0 and cfg.init:
        init = load_checkpoint(cfg.init, map_location=device)
        own = model.state_dict()
        fit = {k: v for k, v in init["model"].items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(fit, strict=False)
        offset = int(init.get("extra", {}).get("step_offset", 0)) + int(init.get("step", 0))
        say(f"initialised {len(fit)}/{len(own)} tensors from {cfg.init}")
    if master:
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    raw_model = model
    if cfg.compile:
        model.compile_networks()
    if world > 1:
        with warnings.catch_warnings():  # broadcast_buffers is deprecated in new torch, still the way to say "no sync"
            warnings.simplefilter("ignore", FutureWarning)
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    model.train()

    loader = make_loader(urls, cfg.data, cfg.model.image_size, per_rank, rank=rank, world=world, start_batch=start,
                         pin_memory=device.type == "cuda")

    # -- logging
    tb = None
    log_path = out / "log.jsonl"
    if master:
        if log_path.exists():  # drop records past the checkpoint (they will be redone)
            keep = [ln for ln in log_path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= start]
            log_path.write_text("".join(k + "\n" for k in keep))
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(out / "tb"), purge_step=offset + start + 1)
        except Exception as e:  # noqa: BLE001
            say(f"note: TensorBoard disabled ({e})")
    say(f"training {type(raw_model).__name__} on {device} ({world} rank(s), {per_rank} identities per rank, "
        f"precision {amp_dtype or torch.float32}), steps {start} -> {steps}, {len(urls)} shard(s), out {out}")

    def checkpoint(done: int) -> None:
        if master:
            pos = data_position(done, cfg.data, world, per_rank)
            extra = {"step_offset": offset}
            save_checkpoint(last, model=raw_model, config=cfg, step=done, optimizer=opt, scaler=scaler, data=pos,
                            extra=extra)
            if cfg.keep_every and done % cfg.keep_every == 0:
                save_checkpoint(out / "checkpoints" / f"step-{done:06d}.pt", model=raw_model, config=cfg, step=done,
                                optimizer=opt, scaler=scaler, data=pos, extra=extra)

    last_logs: dict[str, float] = {}
    pbar = None
    if master and progress:
        from tqdm import tqdm

        pbar = tqdm(total=steps, initial=start, desc="train", unit="step", dynamic_ncols=True, disable=None)
    t0, seen = time.time(), 0
    skipped: dict[int, int] = {}  # data stream -> unreadable samples it skipped so far
    step = start
    for step in range(start, steps):
        # fetch a batch
        batch: Batch = next(loader).to(device, non_blocking=True)
        skipped[batch.stream] = batch.skipped
        raw_model.step = step

        # forward, loss, backward
        ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        with ctx:
            output = model(batch)
            loss, logs = raw_model.loss(output, batch)  # the model keeps its geometry and loss sums in fp32
        opt.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.unscale_(opt)
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip or float("inf"))

        # NaN/inf guard (agreed over ranks so that every rank stops together)
        bad = (~torch.isfinite(loss.detach())).float()
        if scaler is None:
            bad = bad + (~torch.isfinite(gnorm)).float()
        if world > 1:
            dist.all_reduce(bad)
        if bad.item() > 0:
            if pbar is not None:
                pbar.close()
            good = f"{last} (step {int(load_checkpoint(last)['step'])})" if last.exists() else "none written yet"
            raise TrainingDiverged(f"step {step + 1}: loss {loss.item():.4g} / grad norm {gnorm.item():.4g} is not "
                                   f"finite; stopped. Last good checkpoint: {good}. Try a lower optim.lr or "
                                   f"precision fp32")
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        done = step + 1
        seen += batch.images.shape[0] * world

        # log
        if done % cfg.log_every == 0 or done == steps:
            vals = torch.stack([v.float() for v in logs.values()] + [gnorm.float()])
            if world > 1:
                dist.all_reduce(vals)
                vals /= world
            dt = time.time() - t0
            last_logs = {k: float(v) for k, v in zip(list(logs) + ["grad_norm"], vals.tolist())}
            last_logs["identities_per_s"] = seen / max(dt, 1e-9)
            n_skip = torch.tensor(float(sum(skipped.values())), device=device)
            if world > 1:
                dist.all_reduce(n_skip)
            last_logs["skipped_samples"] = int(n_skip.item())
            if last_logs["skipped_samples"]:
                warn_once(LOG, "unreadable samples are being skipped (their count: skipped_samples in log.jsonl)")
            t0, seen = time.time(), 0
            if master:
                with log_path.open("a") as f:
                    f.write(json.dumps({"step": done, "global_step": offset + done, "time": round(time.time(), 2),
                                        **last_logs}) + "\n")
                if tb is not None:
                    for k, v in last_logs.items():
                        tb.add_scalar(f"train/{k}", v, offset + done)
                if pbar is not None and not pbar.disable:
                    pbar.set_postfix(loss=f"{last_logs['loss']:.4f}")
                elif progress:  # no terminal (a log file): one plain line per log step instead of the bar
                    say(f"step {done}/{steps} loss {last_logs['loss']:.4f} "
                        f"{last_logs['identities_per_s']:.1f} identities/s")

        # pictures
        if master and (done % cfg.picture_every == 0 or done == steps):
            try:  # a picture must never stop training
                grid = training_picture(raw_model, output)
                save_png(out / "pictures" / f"step-{done:06d}.png", grid)
                if tb is not None:
                    tb.add_image("pictures", grid, offset + done, dataformats="HWC")
            except Exception as e:  # noqa: BLE001
                say(f"note: step {done}: picture grid failed ({type(e).__name__}: {e})")
            if log_path.exists():
                loss_curve_png(log_path, out / "loss.png")

        # checkpoint
        if done % cfg.ckpt_every == 0 or done == steps:
            checkpoint(done)
        if pbar is not None:
            pbar.update(1)

    if pbar is not None:
        pbar.close()
    if tb is not None:
        tb.close()
    if world > 1:
        dist.barrier()
    say(f"done: {steps} steps, checkpoint {last}")
    return TrainResult(step=max(steps, start), out=out, checkpoint=last if last.exists() else None,
                       last_logs=last_logs)

