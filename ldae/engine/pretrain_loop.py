"""The pretraining step and epoch loop (the run itself is assembled in :mod:`ldae.engine.pretrain`).

One optimizer step = ``accum`` micro-batches on each of ``world_size`` processes. The noise of
micro-batch slot ``k = rank * accum + micro`` in step ``s`` is drawn from a generator seeded by
``(seed, s, k)``; together with :class:`ldae.data.sampler.GlobalBatchSampler` (which puts the same images
in slot ``k`` whatever the world size) this makes the result independent of how the global batch is
split over GPUs and accumulation steps, and makes a resumed run continue exactly where it stopped.

The hot loop never synchronises with the host: the loss and a non-finite flag accumulate on the
device and are read (and all-reduced) only every ``log_every`` steps and before any checkpoint.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn

from ldae.data.sampler import mix_seed
from ldae.engine import dist
from ldae.engine.checkpoint import rng_state, set_rng_state
from ldae.engine.lr_schedule import lr_at, set_lr
from ldae.engine.metrics_log import MetricsLogger
from ldae.models.flops import mfu

__all__ = ["StepConfig", "TrainState", "EpochContext", "NonFiniteLossError", "train_step", "train_one_epoch", "check_finite", "noise_seed"]

_NOISE_TAG = 0x4E4F495345  # keeps noise seeds apart from augmentation seeds built from the same numbers


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf; nothing was saved after the last finite check."""


def noise_seed(seed: int, step: int, slot: int) -> int:
    """Seed of the noise (levels t and Gaussian draws) of micro-batch ``slot`` in optimizer step ``step``."""
    return mix_seed(seed, _NOISE_TAG, step, slot)


@dataclass
class StepConfig:
    """Everything a training step needs besides the model, the optimizer and the data."""

    accum: int = 1
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    base_lr: float = 1e-4
    min_lr: float = 0.0
    total_steps: int = 1
    warmup_steps: int = 0
    amp_dtype: torch.dtype | None = None  # bfloat16 / float16 autocast, None = float32
    clip_grad: float | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def lr(self, step: int) -> float:
        return lr_at(step, base_lr=self.base_lr, total_steps=self.total_steps, warmup_steps=self.warmup_steps, min_lr=self.min_lr)


@dataclass
class TrainState:
    """What a checkpoint restores: the model, its optimizer, grad scaler and EMA, and the next step to run.

    ``model`` is the bare :class:`ldae.models.ldae.LDAE` (never the DDP or compiled wrapper, so state-dict keys
    carry no ``module.`` / ``_orig_mod.`` prefix).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None = None
    ema: nn.Module | None = None  # timm.utils.ModelEmaV3
    step: int = 0

    def state_dict(self) -> dict[str, Any]:
        """The training part of a checkpoint (model, ema, optimizer, scaler, rng, step)."""
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
            "step": self.step,
        }

    def load_state_dict(self, ckpt: dict[str, Any], restore_rng: bool = True) -> None:
        """Restore from a checkpoint dict (see :mod:`ldae.engine.checkpoint`); tensors are moved to the model's device."""
        self.model.load_state_dict(ckpt["model"], strict=True)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.ema is not None:
            if ckpt.get("ema") is None:
                raise ValueError("--ema-decay is set but the checkpoint holds no EMA weights; resume without --ema-decay "
                                 "or start a new run")
            self.ema.module.load_state_dict(ckpt["ema"], strict=True)
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        rng = ckpt.get("rng") or {}
        if restore_rng and "torch" in rng:
            set_rng_state(rng)


def _autocast(cfg: StepConfig) -> contextlib.AbstractContextManager:
    if cfg.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=cfg.device.type, dtype=cfg.amp_dtype)


def train_step(
    state: TrainState,
    net: Callable[..., torch.Tensor],
    micro_batches: list[torch.Tensor],
    cfg: StepConfig,
    generator: torch.Generator,
    ddp: nn.Module | None = None,
) -> torch.Tensor:
    """One optimizer step on ``accum`` micro-batches (each (B, C, H, W), normalised, on the device).

    ``net`` computes the loss (the model, its DDP wrapper or a compiled version of either); ``ddp`` is
    the DDP wrapper, if any, so gradients are all-reduced once, after the last micro-batch.
    ``generator`` (on the device) is re-seeded for every micro-batch. Returns the mean loss over the
    micro-batches of this process, as a device tensor (no host sync).
    """
    if len(micro_batches) != cfg.accum:
        raise ValueError(f"expected {cfg.accum} micro-batches per step, got {len(micro_batches)}")
    step = state.step
    set_lr(state.optimizer, cfg.lr(step))
    total = torch.zeros((), device=cfg.device)
    for micro, images in enumerate(micro_batches):
        generator.manual_seed(noise_seed(cfg.seed, step, cfg.rank * cfg.accum + micro))
        last = micro == cfg.accum - 1
        # Skip DDP's gradient all-reduce on all but the last micro-batch (the backward must run inside).
        sync = ddp.no_sync() if (ddp is not None and not last) else contextlib.nullcontext()
        with sync:
            with _autocast(cfg):
                loss = net(images, generator=generator)
            scaled = loss / cfg.accum
            (state.scaler.scale(scaled) if state.scaler is not None else scaled).backward()
        total += loss.detach()
    if state.scaler is not None:
        state.scaler.unscale_(state.optimizer)
    if cfg.clip_grad:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.clip_grad)
    if state.scaler is not None:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step = step + 1
    if state.ema is not None:
        state.ema.update(state.model, step=state.step)
    return total / cfg.accum


@dataclass
class EpochContext:
    """Bookkeeping the epoch loop needs from the run: logging, throughput and MFU, checkpoint hooks."""

    logger: MetricsLogger
    steps_per_epoch: int
    global_batch: int
    log_every: int = 50
    train_flops_per_image: float | None = None
    peak_flops: float | None = None  # per process
    stop_at_step: int | None = None
    save_every_steps: int = 0  # 0: no checkpoints inside an epoch
    save: Callable[[int], None] | None = None  # called on every rank with the next step; losses checked first
    last_good_checkpoint: str | None = None
    validate: Callable[[torch.Tensor], None] | None = None  # checks the first micro-batches once (then cleared)
    stop_requested: Callable[[], bool] | None = None  # e.g. a SIGTERM arrived (:class:`ldae.engine.stop_signal.StopSignal`)


class _Meter:
    """Device-side loss sum and non-finite flag, read only at log points."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.bad = torch.zeros((), device=device, dtype=torch.float32)
        self.count = 0

    def add(self, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss)
        self.bad = torch.maximum(self.bad, (~finite).float())
        self.loss_sum += torch.where(finite, loss, 0.0).double()
        self.count += 1

    def reduce(self) -> tuple[float, bool]:
        """(mean loss over steps and ranks, any non-finite loss on any rank); one all-reduce, one host sync."""
        packed = dist.all_reduce_mean(torch.stack([self.loss_sum / max(self.count, 1), self.bad.double()])).tolist()
        return packed[0], packed[1] > 0


def check_finite(meter: _Meter, step: int, ctx: EpochContext) -> float:
    """All-reduce the pending losses; raise :class:`NonFiniteLossError` if any was NaN/inf. Returns the mean loss."""
    loss, bad = meter.reduce()
    if bad or not math.isfinite(loss):
        where = ctx.last_good_checkpoint or "none was saved yet"
        raise NonFiniteLossError(
            f"the training loss became NaN or inf at or before step {step}; stopping without saving. "
            f"The last good checkpoint is kept ({where}). Lower --blr, set --clip-grad, or check the data."
        )
    return loss


def train_one_epoch(
    state: TrainState,
    net: Callable[..., torch.Tensor],
    batches: Iterable[list[torch.Tensor]],
    cfg: StepConfig,
    ctx: EpochContext,
    epoch: int,
    generator: torch.Generator,
    ddp: nn.Module | None = None,
) -> bool:
    """Run the steps of ``epoch`` from ``state.step`` on; ``batches`` yields one list of micro-batches per step.

    Returns True when the run must stop (``stop_at_step`` reached, or a stop requested), False when the epoch finished.
    Raises :class:`NonFiniteLossError` (on every rank) as soon as a logged or checkpointed step sees a
    non-finite loss.
    """
    state.model.train()
    meter = _Meter(cfg.device)
    cuda = cfg.device.type == "cuda"
    t_last, step_last, data_wait = time.perf_counter(), state.step, 0.0
    it: Iterator[list[torch.Tensor]] = iter(batches)
    end_of_epoch = (epoch + 1) * ctx.steps_per_epoch
    while state.step < end_of_epoch:
        t_data = time.perf_counter()
        micro_batches = next(it, None)
        data_wait += time.perf_counter() - t_data
        if micro_batches is None:
            raise RuntimeError(f"the data ran out at step {state.step} of epoch {epoch} (expected {ctx.steps_per_epoch} steps per epoch)")
        if ctx.validate is not None:  # once per run: the hot loop itself never checks (no host syncs)
            for x in micro_batches:
                ctx.validate(x)
            ctx.validate = None
        loss = train_step(state, net, micro_batches, cfg, generator, ddp)
        meter.add(loss)
        ctx.logger.advance()
        step = state.step
        stop = (ctx.stop_at_step is not None and step >= ctx.stop_at_step) or bool(ctx.stop_requested and ctx.stop_requested())
        if step % ctx.log_every == 0 or step == end_of_epoch or stop:
            if cuda:
                torch.cuda.synchronize(cfg.device)
            mean_loss = check_finite(meter, step, ctx)
            now = time.perf_counter()
            img_s = (step - step_last) * ctx.global_batch / (now - t_last)
            per_rank = img_s / cfg.world_size
            record: dict[str, Any] = {
                "step": step, "epoch": round(step / ctx.steps_per_epoch, 4), "loss": mean_loss,
                "lr": cfg.lr(step - 1), "img_per_s": round(img_s, 2),
                "mfu": mfu(ctx.train_flops_per_image, per_rank, ctx.peak_flops) if ctx.train_flops_per_image else None,
                "data_wait": round(data_wait / (now - t_last), 4),
            }
            if cuda:
                record["mem_gb"] = round(torch.cuda.max_memory_allocated(cfg.device) / 2**30, 2)
                torch.cuda.reset_peak_memory_stats(cfg.device)
            ctx.logger.log(record)
            meter = _Meter(cfg.device)
            t_last, step_last, data_wait = time.perf_counter(), step, 0.0
        if ctx.save is not None and ctx.save_every_steps and step % ctx.save_every_steps == 0 and step < end_of_epoch:
            t_save = time.perf_counter()
            check_finite(meter, step, ctx)  # never write a checkpoint after a non-finite loss
            ctx.save(step)
            t_last += time.perf_counter() - t_save  # img/s measures training, not checkpoint writes
        if stop:
            return True
    return False
