"""Mixed-precision and CPU-speed helpers: which autocast dtype a device runs fastest, which attention kernel.

On CPUs, bf16 autocast is only a win where the cores compute bf16 natively (AMX tiles or AVX512-BF16;
oneDNN runs bf16 matmuls there several times faster than fp32). Elsewhere bf16 is emulated and slower
than fp32, so ``auto`` keeps fp32 there.
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.nn as nn

__all__ = ["float32_region", "PRECISIONS", "cpu_has_native_bf16", "resolve_precision", "resolve_attention",
           "set_fused_attention", "cpu_flags", "device_name"]

PRECISIONS: dict[str, torch.dtype | None] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def float32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that turns autocast off on ``device`` (for small numerically sensitive steps).

    Devices without autocast support (e.g. ``meta``, used for shape checks) get a no-op context.
    """
    if device.type in ("cuda", "cpu", "xpu", "mps", "hpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def cpu_flags() -> list[str]:
    """The bf16-relevant instruction sets this CPU has, as torch sees them (e.g. ``['amx_tile', 'avx512_bf16']``)."""
    checks = {"amx_tile": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported", "avx512": "_is_avx512_supported"}
    return [name for name, fn in checks.items() if getattr(torch.cpu, fn, lambda: False)()]


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AMX tiles or AVX512-BF16)."""
    flags = cpu_flags()
    return "amx_tile" in flags or "avx512_bf16" in flags


def resolve_precision(requested: str, device: torch.device) -> str:
    """``'auto'`` -> ``'bf16'`` on GPUs and on CPUs with native bf16, else ``'fp32'``; other names pass through."""
    if requested not in ("auto", *PRECISIONS):
        raise ValueError(f"precision must be one of auto, {', '.join(PRECISIONS)}; got {requested!r}")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def resolve_attention(requested: str, device: torch.device) -> str:
    """``'auto'`` -> ``'sdpa'`` on GPUs, ``'math'`` on CPUs.

    Why: on CPUs, ``F.scaled_dot_product_attention`` runs a flash kernel whose bf16 backward is about 4x
    slower than three plain batched matmuls and a softmax at CIFAR-scale token counts (64 tokens, head
    dim 64: 140 vs 36 ms for fwd + bwd of batch 256 x 3 heads); in fp32 the two are on par.
    """
    if requested not in ("auto", "sdpa", "math"):
        raise ValueError(f"attention must be one of auto, sdpa, math; got {requested!r}")
    if requested != "auto":
        return requested
    return "sdpa" if device.type == "cuda" else "math"


def set_fused_attention(modules: Iterable[nn.Module], kind: str) -> int:
    """Switch every timm ``Attention`` among ``modules`` to SDPA (``'sdpa'``) or the explicit math path.

    The two compute the same function (timm keeps both); only speed differs. Returns how many were set.
    """
    from timm.models.vision_transformer import Attention

    n = 0
    for root in modules:
        for m in root.modules():
            if isinstance(m, Attention):
                m.fused_attn = kind == "sdpa"
                n += 1
    return n


def device_name(device: torch.device) -> str:
    """The GPU's name, or for CPUs the model name with its bf16 flags (e.g. ``'Intel(R) Xeon(R) ... [amx_tile, avx512_bf16]'``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    flags = cpu_flags()
    return f"{model} [{', '.join(flags)}]" if flags else model
