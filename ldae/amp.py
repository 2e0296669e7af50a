"""Mixed-precision helpers."""
from __future__ import annotations

import contextlib

import torch

__all__ = ["float32_region"]


def float32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that turns autocast off on ``device`` (for small numerically sensitive steps).

    Devices without autocast support (e.g. ``meta``, used for shape checks) get a no-op context.
    """
    if device.type in ("cuda", "cpu", "xpu", "mps", "hpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()
