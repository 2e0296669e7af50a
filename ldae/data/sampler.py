"""Reproducible pretraining order: which images form each step, and how each one is augmented.

Two rules make a run depend on the seed, the global batch and the per-GPU batch only -- not on the
number of processes, the accumulation steps, the DataLoader workers, or where it was resumed:

* :class:`GlobalBatchSampler` permutes the dataset once per epoch from ``(seed, epoch)`` and cuts it
  into global batches of ``G = batch * accum * world_size``. Within global step ``s``, micro-batch
  *slot* ``k = rank * accum + micro`` holds positions ``[s*G + k*batch, s*G + (k+1)*batch)``. So one
  process with ``accum=2`` and two processes with ``accum=1`` see the same slots, and the trainer
  seeds each slot's noise by ``(seed, step, k)``. Unlike ``DistributedSampler``'s interleaving, a
  slot's samples do not move when the world size changes.
* :class:`SeededSamples` seeds the random augmentation of sample ``i`` in epoch ``e`` from
  ``(seed, e, i)``, so the crops do not depend on which worker decoded the image or on a resume.
"""
from __future__ import annotations

import os
import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["GlobalBatchSampler", "SeededSamples", "mix_seed"]


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from several integers (no collisions between nearby tuples)."""
    state = np.random.SeedSequence([int(p) & (2**64 - 1) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batch sampler yielding this rank's micro-batches of one epoch as lists of ``(epoch, index)``.

    Args:
        num_samples: dataset length N.
        batch_size: per-process micro-batch B.
        accum: micro-batches per optimizer step on each process.
        rank, world_size: this process's place (every rank must pass the same other arguments).
        seed: base seed of the per-epoch permutation.

    ``steps_per_epoch = N // G`` (the last partial global batch of each epoch is dropped, as usual for
    pretraining). :meth:`set_epoch` selects the epoch and the step to start from, so a run resumed
    mid-epoch reads exactly the micro-batches an uninterrupted run would have read next.
    """

    def __init__(self, num_samples: int, batch_size: int, accum: int = 1, *, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        if batch_size < 1 or accum < 1:
            raise ValueError(f"batch_size and accum must be >= 1, got {batch_size} and {accum}")
        if not 0 <= rank < world_size:
            raise ValueError(f"expected 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.num_samples, self.batch_size, self.accum = int(num_samples), int(batch_size), int(accum)
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.global_batch = self.batch_size * self.accum * self.world_size
        if self.num_samples < self.global_batch:
            raise ValueError(
                f"the dataset has {self.num_samples} images, fewer than one global batch of {self.global_batch} "
                f"(= batch {self.batch_size} x accum {self.accum} x world size {self.world_size}); lower --batch-size"
            )
        self.epoch, self.start_step = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch and the first step (within it) that the next iteration yields."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step must be in [0, {self.steps_per_epoch}], got {start_step}")
        self.epoch, self.start_step = int(epoch), int(start_step)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's order of all N indices, (N,) int64, identical on every rank."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return torch.randperm(self.num_samples, generator=g)

    def slot_indices(self, perm: torch.Tensor, step: int, slot: int) -> torch.Tensor:
        """Dataset indices (B,) of micro-batch slot ``slot`` in step ``step`` of the epoch."""
        start = step * self.global_batch + slot * self.batch_size
        return perm[start : start + self.batch_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm = self.permutation(self.epoch)
        for step in range(self.start_step, self.steps_per_epoch):
            for micro in range(self.accum):
                idx = self.slot_indices(perm, step, self.rank * self.accum + micro)
                yield [(self.epoch, i) for i in idx.tolist()]

    def __len__(self) -> int:
        """Micro-batches left in the selected epoch on this rank."""
        return (self.steps_per_epoch - self.start_step) * self.accum


class SeededSamples(Dataset):
    """Wrap an ``(image, label)`` dataset so item ``(epoch, i)`` is augmented with RNG seed ``(seed, epoch, i)``.

    torch's and Python's global RNGs are seeded for the duration of the item only (and restored
    afterwards), so torchvision / timm transforms need no change. Plain integer keys read epoch 0.
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        s = mix_seed(self.seed, epoch, index)
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(s)  # CPU only: CUDA streams stay untouched
            random.seed(s)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)

    def __getattr__(self, name: str) -> Any:  # .classes, .targets, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def seed_int(*parts: int) -> int:
    """A 63-bit seed mixing several integers (no collisions between e.g. (seed, epoch) pairs)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def dist_info(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else the initialised process group, else torchrun's RANK/WORLD_SIZE."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            r, w = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"expected 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size
