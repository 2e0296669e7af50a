"""``--compile auto``: compile the training step only where the compile time pays back within the run.

Measured on a 2-core CPU from a cold inductor cache (``compile`` in ``bench/results/pretrain_cpu.json``):

=================  ==============  =====================  ================  ===============
size               scope           first step (compile)   compiled / eager  pays back after
=================  ==============  =====================  ================  ===============
micro_patch4_32    whole model     69 s                   1.09x             14 min
micro_patch4_32    each block      14 s                   1.09x             2 min
128 px, patch 16   whole model     58 s                   1.28x             4 min
128 px, patch 16   each block      6 s                    1.14x             1 min
=================  ==============  =====================  ================  ===============

Compiling each block compiles one graph (the blocks share their code) in seconds and gains most of
what the whole model gains at patch 4; the whole model also fuses the noise and Eq. 4's per-patch
work, which is what pays at patch 16. So ``auto`` times one eager forward and backward pass (on a
random batch with a private generator: the run's weights, optimizer and RNG are untouched) and
compiles the whole model when the steps ahead would take at least :data:`AUTO_MODEL_MIN_S` eager,
each block from :data:`AUTO_BLOCKS_MIN_S` on, and nothing in shorter runs. On GPUs and in multi-process
runs ``auto`` stays off (GPU runs choose with ``--compile``; every rank must decide alike).
"""
from __future__ import annotations

import time
from typing import Callable

import torch

__all__ = ["COMPILE_CHOICES", "AUTO_MODEL_MIN_S", "AUTO_BLOCKS_MIN_S", "decide_compile", "time_eager_pass", "apply_compile"]

# 'on' = the whole model (a bare --compile), 'blocks' = each transformer block.
COMPILE_CHOICES = ("auto", "on", "blocks", "off")
AUTO_MODEL_MIN_S = 1800.0  # 30 min: about twice the slowest pay-back measured for the whole model
AUTO_BLOCKS_MIN_S = 300.0  # 5 min: about twice the slowest pay-back measured block by block


def decide_compile(
    requested: str | bool, device: torch.device, world_size: int, remaining_passes: int, time_pass: Callable[[], float]
) -> tuple[str, str]:
    """(``'on'``, ``'blocks'`` or ``'off'``, why) for ``--compile requested``; ``time_pass()`` gives the seconds
    of one eager forward + backward pass and is called only when ``auto`` needs it. A bool (configs from
    before ``auto``) means on / off."""
    if isinstance(requested, bool):
        requested = "on" if requested else "off"
    if requested not in COMPILE_CHOICES:
        raise ValueError(f"compile must be one of {COMPILE_CHOICES}, got {requested!r}")
    if requested != "auto":
        return requested, f"--compile {requested}"
    if device.type != "cpu" or world_size > 1:
        return "off", "auto: off on GPUs and in multi-process runs (pass --compile on)"
    if remaining_passes <= 0:
        return "off", "auto: no steps left"
    ahead = time_pass() * remaining_passes
    minutes = f"auto: about {ahead / 60:.0f} min of eager steps ahead"
    if ahead >= AUTO_MODEL_MIN_S:
        return "on", f"{minutes} (>= {AUTO_MODEL_MIN_S / 60:.0f}: the whole model)"
    if ahead >= AUTO_BLOCKS_MIN_S:
        return "blocks", f"{minutes} (>= {AUTO_BLOCKS_MIN_S / 60:.0f}: each block)"
    return "off", f"{minutes} (< {AUTO_BLOCKS_MIN_S / 60:.0f})"


def apply_compile(choice: str, net: torch.nn.Module, blocks: torch.nn.ModuleList, mode: str | None = None) -> torch.nn.Module:
    """The network to train under ``choice``: ``net`` compiled whole (``'on'``), with each of ``blocks``
    compiled in place (``'blocks'``; state-dict keys unchanged), or as it is (``'off'``)."""
    if choice == "on":
        return torch.compile(net, mode=mode)
    if choice == "blocks":
        for block in blocks:
            block.compile(mode=mode)
    return net


def time_eager_pass(model: torch.nn.Module, batch: int, autocast: torch.dtype | None, repeats: int = 2) -> float:
    """Seconds of one eager forward + backward of ``model`` (an :class:`ldae.models.ldae.LDAE`) on a random
    batch of ``batch`` images, the fastest of ``repeats`` (the first pays one-time kernel setup).
    Gradients are cleared afterwards; nothing else of the run changes."""
    size = model.size
    device = model.pos_embed.device
    gen = torch.Generator(device=device).manual_seed(0)
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
