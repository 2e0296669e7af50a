"""torchrun / DDP helpers: one code path from a single process to multi-node runs.

The same script runs under ``python`` and ``torchrun``: :func:`init_distributed` reads torchrun's
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and only then starts a process group (NCCL on GPUs, gloo
on CPUs). Without those variables every helper here degrades to its single-process meaning, so
recipes call them unconditionally.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "DistEnv", "init_distributed", "destroy_distributed", "is_distributed", "get_rank", "get_world_size",
    "is_main", "barrier", "all_reduce_mean", "all_reduce_max", "broadcast_object", "broadcast_tensors",
    "seed_everything",
]


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global rank, world size, rank on its node, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from e


def init_distributed(device: str | None = None, timeout_minutes: float = 30.0) -> DistEnv:
    """Start the process group when launched by torchrun, pick this process's device, return a :class:`DistEnv`.

    ``device``: ``'cuda'``, ``'cpu'`` or None (CUDA when available). Each process uses GPU ``LOCAL_RANK``.
    The backend is NCCL for CUDA and gloo for CPU. Calling it again returns the running group's env.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ValueError(f"expected 0 <= RANK < WORLD_SIZE, got RANK={rank}, WORLD_SIZE={world_size}")
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was requested but torch.cuda.is_available() is False")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible on this node "
                             "(--nproc_per_node must not exceed the GPUs per node)")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        kwargs: dict[str, Any] = dict(backend="nccl" if kind == "cuda" else "gloo", timeout=timedelta(minutes=timeout_minutes))
        if kind == "cuda":
            kwargs["device_id"] = dev  # binds NCCL to this GPU now, so barriers never guess the device
        dist.init_process_group(**kwargs)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def destroy_distributed() -> None:
    """Tear the process group down (no-op without one)."""
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on global rank 0: the one process that logs and writes checkpoints."""
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over all ranks (a new tensor; ``x`` is left unchanged)."""
    x = x.detach().clone()
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= dist.get_world_size()
    return x


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """Elementwise max of ``x`` over all ranks (a new tensor)."""
    x = x.detach().clone()
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled within the job's own process group)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_tensors(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values (same shapes and dtypes on all ranks)."""
    if is_distributed():
        for t in tensors:
            dist.broadcast(t, src=src)


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed torch (CPU and CUDA), ``random`` and numpy with ``seed + rank``; returns that seed.

    Different ranks get different streams (so nothing random is accidentally identical across GPUs);
    weights are initialised before DDP broadcasts rank 0's copy, so they agree regardless.
    """
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)  # also seeds every CUDA device
    return s
