"""The pretraining input pipeline: per step, ``accum`` normalised micro-batches on the device.

Three sources share one interface (:class:`PretrainData`):

* :class:`LoaderData` -- an image folder, ``.tar`` or ``.tar.gz`` (:func:`ldae.data.folders.build_dataset`)
  decoded and augmented by DataLoader workers, batched by :class:`ldae.data.sampler.GlobalBatchSampler`.
* :class:`GPUResidentData` -- the same datasets decoded once into uint8 on the GPU
  (:func:`ldae.data.resident.load_uint8`) and cropped / flipped / normalised there
  (:class:`ldae.data.resident.GPUAugment`): small datasets such as CIFAR-10 are never input-bound.
  Batches come from the same sampler, so a step holds the same images as with :class:`LoaderData`.
* :class:`ShardData` -- WebDataset-style tar shards streamed by :class:`ldae.data.shards.ShardDataset`,
  for data beyond one node's disk. An epoch is ``--epoch-samples`` images; a resumed epoch reads
  a fresh shuffle of the stream rather than replaying it (streams cannot seek).
"""
from __future__ import annotations

import itertools
import os
from typing import Iterable, Iterator, Protocol, Sequence

import torch
from torch.utils.data import DataLoader, Subset

from ldae.data.folders import build_dataset
from ldae.data.image_decode import ImagePolicy
from ldae.data.resident import GPUAugment, load_uint8
from ldae.data.sampler import GlobalBatchSampler, SeededSamples, mix_seed
from ldae.data.shards import ShardDataset
from ldae.data.transforms import build_transform

__all__ = ["PretrainData", "LoaderData", "GPUResidentData", "ShardData", "check_min_image_size", "leave_stop_signals_to_the_main_process"]

_AUG_TAG = 0x415547  # GPU augmentation seeds, apart from the noise seeds


def leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """Move a DataLoader worker into a process group of its own.

    A stop sent to the run's process group (``kill -- -PGID``, a terminal's Ctrl-C) then reaches only
    the main process, which finishes its step, saves and shuts its workers down. Otherwise the workers
    die of the same SIGTERM first (PyTorch's workers exit on any SIGTERM that is not their parent's)
    and the run crashes unsaved. The workers still exit when the main process ends or dies
    (PyTorch's watchdog), and the main process can still terminate them.
    """
    os.setpgid(0, 0)


class PretrainData(Protocol):
    steps_per_epoch: int

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[list[torch.Tensor]]:
        """One list of ``accum`` float (B, C, H, W) normalised device tensors per step, from ``start_step``
        (within the epoch) to the epoch's end."""
        ...

    def fit_batches(self, max_images: int, seed: int = 0, batch_size: int = 128) -> Iterable[torch.Tensor]:
        """Normalised center-crop images (no augmentation) to fit the patch PCA on."""
        ...


def check_min_image_size(path: str, split: str | None, patch_size: int) -> None:
    """Raise ``ValueError`` if the first image of the dataset is smaller than one patch."""
    ds = build_dataset(path, split)
    img, _ = ds[0]
    w, h = img.size
    if min(w, h) < patch_size:
        raise ValueError(f"{path}: images are {w}x{h}, smaller than the model's {patch_size}x{patch_size} patch; "
                         f"use a model with a smaller patch (e.g. --model tiny_patch4_32 for 32 px images)")


def _group(it: Iterable[torch.Tensor], accum: int, steps: int) -> Iterator[list[torch.Tensor]]:
    it = iter(it)
    for _ in range(steps):
        micro = list(itertools.islice(it, accum))
        if len(micro) < accum:
            return
        yield micro


class LoaderData:
    """Folder / tar / tar.gz images through DataLoader workers (see module docstring)."""

    def __init__(
        self, path: str, split: str | None, img_size: int, mean: Sequence[float], std: Sequence[float], *,
        batch_size: int, accum: int, rank: int, world_size: int, seed: int, device: torch.device,
        crop: str = "center", hflip: bool = False, scale: tuple[float, float] = (0.2, 1.0), num_workers: int = 8,
        policy: ImagePolicy = ImagePolicy(),
    ) -> None:
        self.path, self.split, self.img_size, self.mean, self.std = path, split, img_size, tuple(mean), tuple(std)
        self.accum, self.device, self.num_workers, self.policy = accum, device, num_workers, policy
        transform = build_transform(img_size, True, mean, std, crop=crop, hflip=hflip, scale=scale)
        self.dataset = SeededSamples(build_dataset(path, split, transform, **policy.kwargs()), seed)
        self.sampler = GlobalBatchSampler(len(self.dataset), batch_size, accum, rank=rank, world_size=world_size, seed=seed)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.loader = DataLoader(
            self.dataset, batch_sampler=self.sampler, num_workers=num_workers, pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None,
            worker_init_fn=leave_stop_signals_to_the_main_process,
        )

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[list[torch.Tensor]]:
        self.sampler.set_epoch(epoch, start_step)  # read by the loader's iterator in this process
        images = (x.to(self.device, non_blocking=True) for x, _ in self.loader)
        return _group(images, self.accum, self.steps_per_epoch - start_step)

    def fit_batches(self, max_images: int, seed: int = 0, batch_size: int = 128) -> Iterable[torch.Tensor]:
        ds = build_dataset(self.path, self.split, build_transform(self.img_size, False, self.mean, self.std), **self.policy.kwargs())
        if max_images < len(ds):
            keep = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:max_images]
            ds = Subset(ds, sorted(keep.tolist()))
        loader = DataLoader(ds, batch_size=batch_size, num_workers=self.num_workers,
                            worker_init_fn=leave_stop_signals_to_the_main_process)
        return (x for x, _ in loader)


class GPUResidentData:
    """The whole dataset as uint8 on the device; crop, flip and normalisation on the device.

    ``images`` is (N, C, S, S) uint8 at the model's size (:meth:`from_path` decodes a dataset once).
    """

    def __init__(
        self, images: torch.Tensor, img_size: int, mean: Sequence[float], std: Sequence[float], *,
        batch_size: int, accum: int, rank: int, world_size: int, seed: int, device: torch.device,
        crop: str = "center", hflip: bool = False, scale: tuple[float, float] = (0.2, 1.0),
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[-2:]) != (img_size, img_size):
            raise ValueError(f"expected uint8 images (N, C, {img_size}, {img_size}), got {images.dtype} {tuple(images.shape)}")
        self.accum, self.rank, self.seed, self.device = accum, rank, seed, device
        self.images = images.to(device)  # every rank holds all images: any index may land on it
        if crop == "random_resized":
            self.augment = GPUAugment(img_size, mean, std, scale=scale, hflip=hflip).train()
        elif hflip:  # center crop of an already-square image + flip: a full-image "crop" that only flips
            self.augment = GPUAugment(img_size, mean, std, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=True).train()
        else:
            self.augment = GPUAugment(img_size, mean, std).eval()  # exactly (x / 255 - mean) / std
        self.augment.to(device)
        self.sampler = GlobalBatchSampler(len(self.images), batch_size, accum, rank=rank, world_size=world_size, seed=seed)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self._gen = torch.Generator(device=device)

    @classmethod
    def from_path(cls, path: str, split: str | None, img_size: int, mean: Sequence[float], std: Sequence[float], *,
                  num_workers: int = 8, policy: ImagePolicy = ImagePolicy(), **kwargs) -> "GPUResidentData":
        """Decode a folder / tar / tar.gz once (shorter side resized, center-cropped to ``img_size``); later runs
        and resumes memory-map the decoded copy (:mod:`ldae.data.decoded_cache`)."""
        images, _ = load_uint8(path, split, img_size=img_size, num_workers=num_workers, policy=policy, cache=True)
        return cls(images, img_size, mean, std, **kwargs)

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[list[torch.Tensor]]:
        perm = self.sampler.permutation(epoch).to(self.device)  # one transfer per epoch
        for step in range(start_step, self.steps_per_epoch):
            micro = []
            for m in range(self.accum):
                slot = self.rank * self.accum + m
                x = self.images.index_select(0, self.sampler.slot_indices(perm, step, slot))  # (B, C, S, S) uint8
                self._gen.manual_seed(mix_seed(self.seed, _AUG_TAG, epoch, step, slot))
                micro.append(self.augment(x, generator=self._gen))  # (B, C, S, S) float32
            yield micro

    def fit_batches(self, max_images: int, seed: int = 0, batch_size: int = 1024) -> Iterable[torch.Tensor]:
        n = len(self.images)
        keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(max_images, n)].sort().values
        for i in range(0, len(keep), batch_size):
            yield self.augment.normalize(self.images[keep[i : i + batch_size].to(self.device)])


class ShardData:
    """WebDataset-style shards streamed by DataLoader workers; an epoch is ``epoch_samples`` images."""

    def __init__(
        self, urls: str, img_size: int, mean: Sequence[float], std: Sequence[float], *, epoch_samples: int,
        batch_size: int, accum: int, world_size: int, seed: int, device: torch.device, crop: str = "center",
        hflip: bool = False, scale: tuple[float, float] = (0.2, 1.0), num_workers: int = 8, shuffle_buffer: int = 5000,
        policy: ImagePolicy = ImagePolicy(),
    ) -> None:
        self.urls, self.img_size, self.mean, self.std = urls, img_size, tuple(mean), tuple(std)
        self.batch_size, self.accum, self.device, self.num_workers, self.policy = batch_size, accum, device, num_workers, policy
        transform = build_transform(img_size, True, mean, std, crop=crop, hflip=hflip, scale=scale)
        self.dataset = ShardDataset(urls, transform, shuffle_buffer=shuffle_buffer, seed=seed, **policy.kwargs())
        global_batch = batch_size * accum * world_size
        if epoch_samples < global_batch:
            raise ValueError(f"--epoch-samples {epoch_samples} is smaller than one global batch of {global_batch}")
        self.steps_per_epoch = epoch_samples // global_batch

    def _stream(self, epoch: int, start_step: int) -> Iterator[torch.Tensor]:
        for rnd in itertools.count():  # endless: a rank whose shards run out starts another shuffled pass
            self.dataset.set_epoch(mix_seed(epoch, start_step, rnd) % 2**31)
            loader = DataLoader(self.dataset, batch_size=self.batch_size, num_workers=self.num_workers, drop_last=True,
                                pin_memory=self.device.type == "cuda", worker_init_fn=leave_stop_signals_to_the_main_process)
            for x, _ in loader:
                yield x.to(self.device, non_blocking=True)

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[list[torch.Tensor]]:
        return _group(self._stream(epoch, start_step), self.accum, self.steps_per_epoch - start_step)

    def fit_batches(self, max_images: int, seed: int = 0, batch_size: int = 128) -> Iterable[torch.Tensor]:
        ds = ShardDataset(self.urls, build_transform(self.img_size, False, self.mean, self.std), shuffle_buffer=0, rank=0,
                          world_size=1, **self.policy.kwargs())
        loader = DataLoader(ds, batch_size=batch_size, num_workers=self.num_workers)
        seen = 0
        for x, _ in loader:
            if seen >= max_images:
                break
            x = x[: max_images - seen]
            seen += len(x)
            yield x
