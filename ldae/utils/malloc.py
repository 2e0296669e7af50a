"""Keep freed memory in the process on CPU training runs (glibc's ``mallopt``).

Why: glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap``
and returns it to the system on free. A CPU training step allocates and frees activations of that
size dozens of times (a (256, 64, 768) float32 tensor is 48 MiB), so each one is paged in again,
page by page, on first touch: a 48 MiB elementwise op then costs about 3x its arithmetic. With mmap
off and a high trim threshold, freed blocks stay on the heap and the next step reuses them.
Measured on the l-DAE step: +20-25% img/s at ``micro_patch4_32`` and at the 128 px / patch-16 size,
about +1% for a timm ViT of the same shape (``bench/bench_cpu.py``, ``cpu_allocator`` in its JSON).

The price is that the process keeps its peak heap until it exits, which is what a training process
does anyway. DataLoader workers forked afterwards inherit the setting. Non-glibc systems (macOS,
musl) are left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory", "restore_default_malloc"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP_BYTES = 2**31 - 1  # the trim threshold: give the heap's free top back only beyond 2 GiB
_DEFAULT_MMAP_MAX = 65536  # glibc's default M_MMAP_MAX
_DEFAULT_TRIM = 128 * 1024  # glibc's default M_TRIM_THRESHOLD


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Serve large allocations from the heap and keep freed blocks for reuse; True where applied (glibc)."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))


def restore_default_malloc() -> bool:
    """Undo :func:`keep_freed_memory` (glibc's defaults) and return free heap memory to the system."""
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM))
    libc.malloc_trim(0)
    return ok
