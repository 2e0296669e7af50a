"""The learning-rate schedule of every recipe (pretraining, probe, fine-tuning): linear warmup, then a half-cycle cosine.

Stepped once per optimizer update (not per epoch), as in MAE: the rate is a pure function of the
global step, so a resumed run needs no scheduler state to continue on exactly the same curve.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch

__all__ = ["lr_at", "set_lr", "scaled_lr", "resolve_lr", "cosine_schedule"]


def scaled_lr(blr: float, global_batch: int) -> float:
    """The linear scaling rule (Goyal et al.; paper App. A): lr = blr * global_batch / 256."""
    return blr * global_batch / 256


def lr_at(step: int | float, *, base_lr: float, total_steps: int, warmup_steps: int, min_lr: float = 0.0) -> float:
    """Learning rate at optimizer step ``step`` (0-based; fractional steps are allowed).

    Rises linearly from 0 to ``base_lr`` over ``warmup_steps`` (the value at step s is
    ``base_lr * s / warmup_steps``, so step 0 trains at lr 0 exactly as MAE's schedule does),
    then follows half a cosine from ``base_lr`` down to ``min_lr`` at ``total_steps``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    if total_steps == warmup_steps:
        return base_lr
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's rate to ``lr`` times its ``lr_scale`` (timm's layer-decay groups carry one)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def resolve_lr(lr: float | None, blr: float, batch_size: int) -> float:
    """The absolute lr: ``lr`` if given, else MAE's linear scaling ``blr * batch_size / 256``."""
    if lr is not None:
        if lr <= 0:
            raise ValueError(f"--lr must be positive, got {lr}")
        return float(lr)
    if blr <= 0:
        raise ValueError(f"--blr must be positive, got {blr}")
    return scaled_lr(blr, batch_size)


def cosine_schedule(
    lr: float, epochs: int, warmup_epochs: float, steps_per_epoch: int, min_lr: float = 0.0
) -> Callable[[int], float]:
    """step -> lr: linear warmup 0 -> ``lr`` over ``warmup_epochs``, then a half-cycle cosine to ``min_lr``
    at the end of ``epochs`` (MAE's per-update schedule, :func:`lr_at`)."""
    if steps_per_epoch < 1:
        raise ValueError(f"an epoch must hold at least one update, got {steps_per_epoch}")
    if not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"--warmup-epochs {warmup_epochs} must be in [0, --epochs {epochs}]")
    return functools.partial(lr_at, base_lr=lr, total_steps=epochs * steps_per_epoch,
                             warmup_steps=int(round(warmup_epochs * steps_per_epoch)), min_lr=min_lr)
