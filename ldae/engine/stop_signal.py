"""SIGTERM / SIGINT during training: finish the step, save, exit, instead of dying mid-epoch.

Schedulers (SLURM, Kubernetes, torchrun on shutdown) send SIGTERM some seconds before SIGKILL, and a
user presses Ctrl-C. :class:`StopSignal` turns the first of either into a request the training loop
reads after each step: it writes ``checkpoint-last.pth`` (atomically, like every checkpoint) and
exits with 128 + the signal number, so ``--resume auto`` continues exactly. A second signal acts as
usual (Ctrl-C twice interrupts at once).
"""
from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import torch

__all__ = ["StopSignal"]


class StopSignal:
    """Context manager installing the handlers (main thread only; elsewhere it is inert).

    ``requested()`` is True once a signal arrived; under DDP every rank reads the maximum over all
    ranks, so all of them stop after the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, world_size: int = 1, device: torch.device | None = None) -> None:
        self.signum: int | None = None
        self.world_size, self.device = world_size, device
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second signal: the usual behaviour, now
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def requested(self) -> bool:
        local = self.signum is not None
        if self.world_size <= 1:
            return local
        import torch.distributed as dist

        flag = torch.tensor([float(self.signum or 0)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if self.signum is None and flag.item() > 0:
            self.signum = int(flag.item())
        return self.signum is not None
