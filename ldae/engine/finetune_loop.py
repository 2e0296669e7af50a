"""The epoch loops shared by fine-tuning and the linear probe.

As in MAE's ``engine_finetune``: the recipes build a model, a loss and batches; these loops only step
them. The learning rate follows MAE's per-update schedule (linear warmup from 0, then a half-cycle
cosine to ``min_lr``; :mod:`ldae.engine.lr_schedule`, shared with pretraining), and every param group gets it
times its ``lr_scale`` (timm's layer-wise decay groups).
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn as nn

from ldae.engine.dist import get_world_size
from ldae.engine.lr_schedule import set_lr
from ldae.utils.progress import progress

__all__ = ["train_one_epoch", "evaluate"]


def _all_reduce_sum(values: list[float], device: torch.device, sync: bool) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if sync and get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def train_one_epoch(
    model: nn.Module,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    epoch: int,
    step: int,
    lr_schedule: Callable[[int], float] | None = None,
    accum_iter: int = 1,
    mixup_fn: Callable | None = None,
    ema: Any = None,
    amp_dtype: torch.dtype | None = None,
    clip_grad: float | None = None,
    quiet: bool = False,
    desc: str = "train",
    sync: bool = True,
) -> dict[str, float]:
    """One pass over ``batches``; returns {'loss' (mean over all ranks), 'lr' (largest group lr), 'step',
    'seconds', 'samples_per_s'}.

    ``step`` counts optimizer updates (the clock of ``lr_schedule``, a function step -> lr applied to every
    param group times its ``lr_scale``); each update averages ``accum_iter``
    consecutive batches (DDP gradients are synchronised on the last one only). ``ema`` (timm
    ``ModelEmaV3``) follows the unwrapped model after every update. A non-finite loss stops the run.
    ``sync=False`` keeps the statistics local (a loop that runs on one rank only).
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    loss_sum, count, seen, lr = 0.0, 0, 0, 0.0
    start = time.time()
    bar = progress(batches, desc=f"{desc} {epoch}", total=total, quiet=quiet, unit="batch")
    for i, (x, y) in enumerate(bar):
        last_micro = (i + 1) % accum_iter == 0
        if i % accum_iter == 0 and lr_schedule is not None:
            set_lr(optimizer, lr_schedule(step))  # times each group's lr_scale (layer decay)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if mixup_fn is not None:
            x, y = mixup_fn(x, y)
        # DDP all-reduces gradients on the last micro-batch of an update only.
        ctx = model.no_sync() if not last_micro and hasattr(model, "no_sync") else contextlib.nullcontext()
        with ctx:
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = model(x)
                loss = criterion(out.float(), y)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value} at epoch {epoch}, update {step}: stopping")
            (loss / accum_iter).backward()
        if last_micro:
            if clip_grad is not None:
                nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if ema is not None:
                ema.update(getattr(model, "module", model), step=step)
        lr = max(g["lr"] for g in optimizer.param_groups)
        loss_sum, count, seen = loss_sum + loss_value * len(x), count + len(x), seen + len(x)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.3g}")
    bar.close()
    loss_sum, count = _all_reduce_sum([loss_sum, float(count)], device, sync)
    seconds = time.time() - start
    return {"loss": loss_sum / max(count, 1), "lr": lr, "step": step, "seconds": seconds,
            "samples_per_s": count / max(seconds, 1e-9)}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    quiet: bool = False,
    desc: str = "eval",
    sync: bool = True,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and cross-entropy of ``model`` over ``batches``.

    Under torchrun each rank passes its own disjoint share of the evaluation set; the sums are reduced
    over ranks, so the result is exactly the accuracy on the whole set (no padded duplicates).
    ``sync=False`` evaluates this rank's batches alone.
    """
    model.eval()
    correct1 = correct5 = loss_sum = 0.0
    n = 0
    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    for x, y in progress(batches, desc=desc, total=total, quiet=quiet, unit="batch"):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(x)
        out = out.float()  # (B, C)
        loss_sum += nn.functional.cross_entropy(out, y, reduction="sum").item()
        top = out.topk(min(5, out.shape[1]), dim=1).indices  # (B, 5)
        hit = top == y[:, None]
        correct1 += (out.argmax(1) == y).sum().item()
        correct5 += (hit.any(1) | (out.argmax(1) == y)).sum().item()
        n += len(y)
    correct1, correct5, loss_sum, n = _all_reduce_sum([correct1, correct5, loss_sum, float(n)], device, sync)
    if n == 0:
        raise ValueError("evaluation set is empty")
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n, "n": int(n)}


