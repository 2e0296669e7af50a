"""``--compile auto``: compile the training step only where its compile time pays back within the run.

Measured on 2-core CPUs (``bench/results/pretrain_cpu.json``, ``compile`` block): ``torch.compile`` of
the whole l-DAE model takes 40-50 s on a cold cache and then runs the bf16 step about 1.15x eager, so
it breaks even after about 6 minutes of training. ``auto`` therefore times one eager forward and
backward pass (on a random batch, a private generator: the run's weights, optimizer and RNG are
untouched) and compiles when the steps still ahead would take at least :data:`AUTO_MIN_EAGER_S` eager,
2.5x the break-even point, a margin for slower compiles. On GPUs and multi-process runs ``auto``
stays off (GPU runs choose with ``--compile``; every rank of a distributed run must decide alike).
"""
from __future__ import annotations

import time
from typing import Callable

import torch

__all__ = ["COMPILE_CHOICES", "AUTO_MIN_EAGER_S", "decide_compile", "time_eager_pass"]

COMPILE_CHOICES = ("auto", "on", "off")
AUTO_MIN_EAGER_S = 900.0


def decide_compile(
    requested: str | bool, device: torch.device, world_size: int, remaining_passes: int, time_pass: Callable[[], float]
) -> tuple[bool, str]:
    """(compile?, why) for ``--compile requested``; ``time_pass()`` gives the seconds of one eager
    forward + backward pass and is called only when ``auto`` needs it. A bool (configs from before
    ``auto``) means on / off."""
    if isinstance(requested, bool):
        requested = "on" if requested else "off"
    if requested not in COMPILE_CHOICES:
        raise ValueError(f"compile must be one of {COMPILE_CHOICES}, got {requested!r}")
    if requested != "auto":
        return requested == "on", f"--compile {requested}"
    if device.type != "cpu" or world_size > 1:
        return False, "auto: off on GPUs and in multi-process runs (pass --compile on)"
    if remaining_passes <= 0:
        return False, "auto: no steps left"
    ahead = time_pass() * remaining_passes
    verdict = ">=" if ahead >= AUTO_MIN_EAGER_S else "<"
    return ahead >= AUTO_MIN_EAGER_S, f"auto: about {ahead / 60:.0f} min of eager steps ahead ({verdict} {AUTO_MIN_EAGER_S / 60:.0f})"


def time_eager_pass(model: torch.nn.Module, batch: int, autocast: torch.dtype | None, repeats: int = 2) -> float:
    """Seconds of one eager forward + backward of ``model`` (an :class:`ldae.models.ldae.LDAE`) on a random
    batch of ``batch`` images, the fastest of ``repeats`` (the first pays one-time kernel setup).
    Gradients are cleared afterwards; nothing else of the run changes."""
    size = model.size
    gen = torch.Generator(device=model.pos_embed.device).manual_seed(0)
    device = model.pos_embed.device
    x = torch.rand(batch, size.in_chans, size.img_size, size.img_size, generator=gen, device=device) * 2 - 1
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            loss = model(x, generator=gen)
        loss.backward()
        best = min(best, time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return best
