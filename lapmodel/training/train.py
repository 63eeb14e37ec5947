"""Training loop, top to bottom (nanoGPT style): `train(cfg)`, generic over the models. Its set-up (ranks, device,
precision, model, optimizer, resume / init, compile / DDP) is `lapmodel.training.setup`; what it reports while it runs
(log.jsonl, TensorBoard, progress bar, pictures) is `Monitor`.

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
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import yaml

from lapdata.core.atomic import write_json
from lapdata.core.config import to_dict
from lapdata.core.errors import LapError
from lapdata.core.locks import writer_lock
from lapdata.core.logs import get_logger, log_to_file, warn_once
from lapdata.core.pictures import save_png

from lapmodel.config import TrainConfig
from lapmodel.io.checkpoint import load_checkpoint, save_checkpoint
from lapmodel.io.data import Batch, data_position, make_loader
from lapmodel.models.model import Model
from lapmodel.training.setup import CPU_FILE, Run, build_training, restore, set_learning_rates, start_run, wrap_model
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
    cpu_seconds: float = 0.0  # rank 0's process CPU time of all the runs that made last.pt (resumes included)


# ------------------------------------------------------------------------------------------------ the loop


def train(cfg: TrainConfig, *, resume: bool = False, stage: str | None = None, progress: bool = True,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Train ``cfg`` into ``cfg.out``. ``resume``: continue from ``cfg.out/last.pt`` (exactly).

    ``log``: where the run's messages go (default: the ``lap.train`` logger, also written to ``OUT/train.log``)."""
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise LapError(f"{cfg.out}: --out is a file, not a folder")
    # one run per folder (lapdata.core.locks): a second `lapmodel train --out D` is refused;
    # under torchrun rank 0 holds it
    lock = writer_lock(cfg.out, "lapmodel train") if os.environ.get("RANK", "0") == "0" else nullcontext()
    with lock, log_to_file(Path(cfg.out) / "train.log"):
        return _train(cfg, resume=resume, stage=stage, progress=progress, log=log or LOG.info)


def _train(cfg: TrainConfig, *, resume: bool, stage: str | None, progress: bool,
           log: Callable[[str], None]) -> TrainResult:
    run = start_run(cfg, stage, log)  # the stage recorded in cfg; ranks, device, precision, shards, steps
    cfg, steps = run.cfg, run.steps
    model, opt, scaler, params = build_training(run)  # seeded: the same model on every rank
    start, offset, cpu_before = restore(run, model, opt, scaler, resume)  # --resume from last.pt, or --init's weights
    cpu0 = time.process_time()  # the run's CPU-seconds: cpu_before + this process's since here (resumes included)
    if run.master:
        (run.out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    ddp_model = wrap_model(run, model)  # compiled, DDP over the ranks
    loader = make_loader(run.urls, cfg.data, cfg.model.image_size, run.per_rank, rank=run.rank, world=run.world,
                         start_batch=start, pin_memory=run.device.type == "cuda")
    mon = Monitor(run, model, start, offset, progress)  # log.jsonl, TensorBoard, progress bar, pictures
    skipped: dict[int, int] = {}  # data stream -> unreadable samples it skipped so far
    for step in range(start, steps):
        # fetch a batch
        batch: Batch = next(loader).to(run.device, non_blocking=True)
        skipped[batch.stream] = batch.skipped
        model.step = step
        set_learning_rates(opt, cfg.optim, offset + step)  # the viewpoint network's own schedule

        # forward, loss, backward
        with run.autocast():
            output = ddp_model(batch)
            loss, logs = model.loss(output, batch)  # the model keeps its geometry and loss sums in fp32
        opt.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.unscale_(opt)
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip or float("inf"))

        # NaN/inf guard (agreed over ranks so that every rank stops together), then the update
        if not_finite(run, loss, gnorm, fp16=scaler is not None):
            mon.close_bar()
            raise diverged(run, step, loss, gnorm)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        done = step + 1
        mon.seen += batch.images.shape[0] * run.world

        # log, pictures, checkpoint
        if done % cfg.log_every == 0 or done == steps:
            mon.scalars(done, logs, gnorm, sum(skipped.values()))
        if done % cfg.picture_every == 0 or done == steps:
            mon.pictures(done, output)
        if done % cfg.ckpt_every == 0 or done == steps:
            save_checkpoints(run, model, opt, scaler, done, offset, cpu_before + time.process_time() - cpu0)
        mon.tick()

    mon.close()
    if run.world > 1:
        dist.barrier()
    run.say(f"done: {steps} steps, checkpoint {run.last}")
    return TrainResult(step=max(steps, start), out=run.out, checkpoint=run.last if run.last.exists() else None,
                       last_logs=mon.last_logs, cpu_seconds=round(cpu_before + time.process_time() - cpu0, 1))


def not_finite(run: Run, loss: torch.Tensor, gnorm: torch.Tensor, fp16: bool) -> bool:
    """Whether the loss (or, without fp16's grad scaler, which skips such steps itself, the gradient norm) is NaN /
    inf on any rank."""
    bad = (~torch.isfinite(loss.detach())).float()
    if not fp16:
        bad = bad + (~torch.isfinite(gnorm)).float()
    if run.world > 1:
        dist.all_reduce(bad)
    return bad.item() > 0


def diverged(run: Run, step: int, loss: torch.Tensor, gnorm: torch.Tensor) -> TrainingDiverged:
    """The error that stops a run whose step ``step`` (0-based) was not finite, naming the last good checkpoint."""
    last = run.last
    good = f"{last} (step {int(load_checkpoint(last)['step'])})" if last.exists() else "none written yet"
    return TrainingDiverged(f"step {step + 1}: loss {loss.item():.4g} / grad norm {gnorm.item():.4g} is not "
                            f"finite; stopped. Last good checkpoint: {good}. Try a lower optim.lr or precision fp32")


def save_checkpoints(run: Run, model: Model, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                     done: int, offset: int, cpu_seconds: float) -> None:
    """OUT/last.pt after ``done`` steps (rank 0), and OUT/checkpoints/step-XXXXXX.pt every ``keep_every`` steps;
    ``cpu_seconds``: the process CPU time of the run so far, resumes included (what recipes and cards report), goes
    to OUT/cpu.json beside last.pt, so that two runs of one config still write the same checkpoint bytes."""
    if not run.master:
        return
    cfg = run.cfg
    pos = data_position(done, cfg.data, run.world, run.per_rank)
    extra = {"step_offset": offset}
    save_checkpoint(run.last, model=model, config=cfg, step=done, optimizer=opt, scaler=scaler, data=pos,
                    extra=extra)
    write_json(run.out / CPU_FILE, {"step": done, "cpu_seconds": round(cpu_seconds, 1)})
    if cfg.keep_every and done % cfg.keep_every == 0:
        save_checkpoint(run.out / "checkpoints" / f"step-{done:06d}.pt", model=model, config=cfg, step=done,
                        optimizer=opt, scaler=scaler, data=pos, extra=extra)


# ------------------------------------------------------------------------------------------------ what a run reports


class Monitor:
    """What a run reports while it trains: scalars (averaged over the ranks) to log.jsonl, TensorBoard and the
    progress bar (or one plain line per log step without a terminal), picture grids and loss.png. Rank 0 writes;
    the other ranks only take part in the averaging.

    Opening it drops log.jsonl's records past the first step (they will be redone), opens TensorBoard (a note when
    it cannot), announces the run and starts the progress bar."""

    def __init__(self, run: Run, model: Model, start: int, offset: int, progress: bool):
        self.run, self.model, self.offset, self.progress = run, model, offset, progress
        out = run.out
        self.log_path = out / "log.jsonl"
        self.tb = None
        if run.master:
            if self.log_path.exists():  # drop records past the checkpoint (they will be redone)
                keep = [ln for ln in self.log_path.read_text().splitlines()
                        if ln.strip() and json.loads(ln)["step"] <= start]
                self.log_path.write_text("".join(k + "\n" for k in keep))
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"), purge_step=offset + start + 1)
            except Exception as e:  # noqa: BLE001
                run.say(f"note: TensorBoard disabled ({e})")
        run.say(f"training {type(model).__name__} on {run.device} ({run.world} rank(s), {run.per_rank} identities "
                f"per rank, precision {run.amp_dtype or torch.float32}), steps {start} -> {run.steps}, "
                f"{len(run.urls)} shard(s), out {out}")
        self.last_logs: dict[str, float] = {}
        self.pbar = None
        if run.master and progress:
            from tqdm import tqdm

            self.pbar = tqdm(total=run.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                             disable=None)
        self.t0, self.seen = time.time(), 0  # identities seen since the last log step

    def scalars(self, done: int, logs: dict[str, torch.Tensor], gnorm: torch.Tensor, skipped: int) -> None:
        """The step's loss terms and grad norm averaged over the ranks, identities per second, unreadable samples
        skipped (summed over the ranks) -> ``last_logs``, written by rank 0."""
        run = self.run
        vals = torch.stack([v.float() for v in logs.values()] + [gnorm.float()])
        if run.world > 1:
            dist.all_reduce(vals)
            vals /= run.world
        dt = time.time() - self.t0
        last = {k: float(v) for k, v in zip(list(logs) + ["grad_norm"], vals.tolist())}
        last["identities_per_s"] = self.seen / max(dt, 1e-9)
        n_skip = torch.tensor(float(skipped), device=run.device)
        if run.world > 1:
            dist.all_reduce(n_skip)
        last["skipped_samples"] = int(n_skip.item())
        if last["skipped_samples"]:
            warn_once(LOG, "unreadable samples are being skipped (their count: skipped_samples in log.jsonl)")
        self.last_logs = last
        self.t0, self.seen = time.time(), 0
        if run.master:
            self._write(done, last)

    def _write(self, done: int, last: dict[str, float]) -> None:
        with self.log_path.open("a") as f:
            f.write(json.dumps({"step": done, "global_step": self.offset + done, "time": round(time.time(), 2),
                                **last}) + "\n")
        if self.tb is not None:
            for k, v in last.items():
                self.tb.add_scalar(f"train/{k}", v, self.offset + done)
        if self.pbar is not None and not self.pbar.disable:
            self.pbar.set_postfix(loss=f"{last['loss']:.4f}")
        elif self.progress:  # no terminal (a log file): one plain line per log step instead of the bar
            self.run.say(f"step {done}/{self.run.steps} loss {last['loss']:.4f} "
                         f"{last['identities_per_s']:.1f} identities/s")

    def pictures(self, done: int, output: object) -> None:
        """The picture grid of this step's output (OUT/pictures/step-XXXXXX.png, TensorBoard) and loss.png."""
        if not self.run.master:
            return
        try:  # a picture must never stop training
            grid = training_picture(self.model, output)
            save_png(self.run.out / "pictures" / f"step-{done:06d}.png", grid)
            if self.tb is not None:
                self.tb.add_image("pictures", grid, self.offset + done, dataformats="HWC")
        except Exception as e:  # noqa: BLE001
            self.run.say(f"note: step {done}: picture grid failed ({type(e).__name__}: {e})")
        if self.log_path.exists():
            loss_curve_png(self.log_path, self.run.out / "loss.png")

    def tick(self) -> None:
        """One step done (the progress bar)."""
        if self.pbar is not None:
            self.pbar.update(1)

    def close_bar(self) -> None:
        if self.pbar is not None:
            self.pbar.close()

    def close(self) -> None:
        self.close_bar()
        if self.tb is not None:
            self.tb.close()
