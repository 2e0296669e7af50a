"""GPU-resident small datasets: decode once to uint8, then crop, flip, normalize and batch on the device.

For datasets that fit in device memory (CIFAR-10: 50,000 x 3 x 32 x 32 uint8 = 150 MiB) this removes
the CPU data pipeline from the training loop entirely::

    images, labels = load_uint8("../shared/data/cifar10-jpeg.tar.gz", "train")  # (N,3,32,32) uint8, (N,)
    images, labels = images.cuda(), labels.cuda()
    aug = GPUAugment(32, mean, std, scale=(0.2, 1.0), hflip=True).cuda()
    loader = GPUBatchLoader(images, labels, batch_size=256, seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader:          # x: (B,3,32,32) uint8 on the device
            x = aug(x)               # (B,3,32,32) float32, normalized
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ldae.data.decoded_cache import cached_decode
from ldae.data.folders import build_dataset
from ldae.data.image_decode import ImagePolicy
from ldae.data.sampler import dist_info, seed_int

__all__ = ["GPUAugment", "GPUBatchLoader", "load_uint8"]


def _default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cpus)


class _ToUint8:
    """PIL image (or uint8 tensor) -> uint8 tensor ``(3, S, S)``: shorter side resized to ``S`` (bicubic,
    antialiased), then center-cropped. ``img_size=None`` keeps the native size."""

    def __init__(self, img_size: int | None) -> None:
        self.img_size = img_size

    def __call__(self, img: Any) -> Tensor:
        if isinstance(img, Tensor):
            if img.dtype != torch.uint8 or img.ndim != 3:
                raise TypeError(f"expected PIL images or uint8 (C,H,W) tensors, got {img.dtype} {tuple(img.shape)}")
        elif isinstance(img, Image.Image):
            img = TF.pil_to_tensor(img.convert("RGB"))  # (3,H,W) uint8
        else:
            raise TypeError(f"expected PIL images or uint8 (C,H,W) tensors, got {type(img).__name__}")
        s = self.img_size
        if s is not None and tuple(img.shape[-2:]) != (s, s):
            img = TF.resize(img, s, interpolation=InterpolationMode.BICUBIC, antialias=True)
            img = TF.center_crop(img, [s, s])
        return img


class _Mapped(Dataset):
    def __init__(self, dataset: Dataset, fn: _ToUint8) -> None:
        self.dataset, self.fn = dataset, fn

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img, label = self.dataset[i]
        return self.fn(img), int(label)


def _collate(batch: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    shapes = {tuple(x.shape) for x, _ in batch}
    if len(shapes) > 1:
        raise ValueError(f"images differ in size {sorted(shapes)[:4]}: pass img_size= to resize them to one size")
    return torch.stack([x for x, _ in batch]), torch.tensor([y for _, y in batch], dtype=torch.int64)


def load_uint8(dataset_or_path: Dataset | str | Path, split: str | None = None, img_size: int | None = None,
               max_images: int | None = None, num_workers: int | None = None, *, batch_size: int = 256,
               seed: int = 0, cache_dir: str | Path | None = None,
               device: torch.device | str | None = None, policy: ImagePolicy = ImagePolicy(),
               cache: bool = False) -> tuple[Tensor, Tensor]:
    """Decode a whole dataset once into memory.

    Args:
        dataset_or_path: a path for :func:`ldae.data.folders.build_dataset` (folder, .tar, .tar.gz), or a dataset
            yielding ``(PIL image or uint8 (C,H,W) tensor, label)``.
        split: split folder name when a path is given (``None``: the only one present).
        img_size: resize the shorter side to this and center-crop a square (bicubic, antialiased); ``None``
            keeps the native size, which must then be the same for every image.
        max_images: decode a random subset of this size (drawn with ``seed``, kept in dataset order);
            taking the first N would keep only the first classes of a class-sorted dataset.
        num_workers: DataLoader decode processes (default ``min(8, CPUs)``; 0 decodes in-process).
        device: move the result there (default: CPU).
        policy: what to do with unreadable images (:class:`ldae.data.image_decode.ImagePolicy`).
        cache: for a path under the ``'error'`` policy, keep the decoded arrays on disk and memory-map them
            on later calls (:mod:`ldae.data.decoded_cache`; refused and redone when the data changed).

    Returns:
        ``images`` uint8 ``(N, 3, H, W)`` and ``labels`` int64 ``(N,)``.
    """
    if cache and isinstance(dataset_or_path, (str, Path)) and policy.bad_images == "error":
        params = {"split": split, "img_size": img_size, "max_images": max_images,
                  "seed": seed if max_images is not None else None, "resize": "shorter-side bicubic antialias, center crop"}
        images, labels = cached_decode(dataset_or_path, params, lambda: load_uint8(
            dataset_or_path, split, img_size, max_images, num_workers, batch_size=batch_size, seed=seed,
            cache_dir=cache_dir, policy=policy))
        return (images.to(device), labels.to(device)) if device is not None else (images, labels)
    from tqdm.auto import tqdm

    conv = _ToUint8(img_size)
    if isinstance(dataset_or_path, (str, Path)):
        ds: Dataset = build_dataset(dataset_or_path, split, transform=conv, cache_dir=cache_dir, **policy.kwargs())
    else:
        ds = _Mapped(dataset_or_path, conv)
    n = len(ds)  # type: ignore[arg-type]
    if max_images is not None and max_images < n:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=max_images, replace=False))
        ds, n = Subset(ds, keep.tolist()), max_images
    if n == 0:
        raise ValueError(f"no images to load from {dataset_or_path!r}")
    workers = _default_workers() if num_workers is None else num_workers
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate)
    images: Tensor | None = None
    labels = torch.empty(n, dtype=torch.int64)
    i = 0
    with tqdm(total=n, unit="img", desc="decode", disable=not sys.stderr.isatty()) as bar:
        for x, y in loader:
            if images is None:  # filled in place: no second full-size copy from concatenation
                images = torch.empty((n, *x.shape[1:]), dtype=torch.uint8)
            elif x.shape[1:] != images.shape[1:]:
                raise ValueError(f"images differ in size {tuple(images.shape[1:])} vs {tuple(x.shape[1:])}: "
                                 f"pass img_size= to resize them to one size")
            images[i:i + len(x)], labels[i:i + len(x)] = x, y
            i += len(x)
            bar.update(len(x))
    assert images is not None and i == n
    if device is not None:
        images, labels = images.to(device), labels.to(device)
    return images, labels


class GPUAugment(nn.Module):
    """Batched random-resized-crop + horizontal flip + normalization of uint8 images on their device.

    ``train()`` mode: per sample, a crop box is drawn like ``torchvision.transforms.RandomResizedCrop``
    (area fraction in ``scale``, log-uniform aspect ratio in ``ratio``, 10 tries then the whole image
    clamped to ``ratio``; integer pixel boxes) and resampled to ``img_size`` with one ``grid_sample``
    call (border padding; no antialiasing, so prefer crops at least as large as the output, as on
    CIFAR); with ``hflip`` half of the samples are mirrored.

    ``eval()`` mode: no randomness; images already ``img_size`` square are only normalized, others are
    resized (shorter side, antialiased) and center-cropped first.

    Normalization is exactly ``(x.float() / 255 - mean) / std``. Input ``(B, C, H, W)`` uint8;
    output ``(B, C, img_size, img_size)`` float32.
    """

    def __init__(self, img_size: int, mean: Sequence[float], std: Sequence[float],
                 scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 hflip: bool = True, interpolation: str = "bilinear") -> None:
        super().__init__()
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {ratio}")
        if interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"interpolation must be bilinear, bicubic or nearest, got {interpolation!r}")
        self.img_size, self.scale, self.ratio = img_size, scale, ratio
        self.hflip, self.interpolation = hflip, interpolation
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return (f"img_size={self.img_size}, scale={self.scale}, ratio={self.ratio}, hflip={self.hflip}, "
                f"interpolation={self.interpolation!r}")

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 or [0, 255]-valued ``(B,C,H,W)`` -> float32 ``(x / 255 - mean) / std``."""
        return (x.float() / 255 - self.mean) / self.std

    def crop_boxes(self, b: int, h: int, w: int, device: torch.device,
                   generator: torch.Generator | None = None) -> Tensor:
        """Random crop boxes ``(b, 4)`` int64 as ``(x0, y0, width, height)`` in pixels."""
        tries = 10
        area = torch.empty(b, tries, device=device).uniform_(*self.scale, generator=generator) * (h * w)
        logr = torch.empty(b, tries, device=device).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]),
                                                            generator=generator)
        ar = torch.exp(logr)
        cw = torch.sqrt(area * ar).round().long()  # (b, tries)
        ch = torch.sqrt(area / ar).round().long()
        ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = ok.long().argmax(dim=1, keepdim=True)  # first valid try (0 when none, masked below)
        # Fallback when no try fits: the whole image, clamped to the ratio range (as torchvision).
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            fw, fh = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            fw, fh = int(round(h * self.ratio[1])), h
        else:
            fw, fh = w, h
        has = ok.any(dim=1)
        cw = torch.where(has, cw.gather(1, first).squeeze(1), fw)  # (b,)
        ch = torch.where(has, ch.gather(1, first).squeeze(1), fh)
        u = torch.rand(b, 2, device=device, generator=generator)
        x0 = (u[:, 0] * (w - cw + 1).float()).floor().long().clamp_max(w - cw)
        y0 = (u[:, 1] * (h - ch + 1).float()).floor().long().clamp_max(h - ch)
        return torch.stack([x0, y0, cw, ch], dim=1)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``x`` uint8 ``(B, C, H, W)`` -> float32 ``(B, C, S, S)``; ``generator`` must live on ``x.device``."""
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise TypeError(f"expected a uint8 (B,C,H,W) batch, got {x.dtype} {tuple(x.shape)}")
        b, c, h, w = x.shape
        s = self.img_size
        if not self.training:
            if (h, w) == (s, s):
                return self.normalize(x)
            return self.normalize(self._resize_center(x.float()))
        box = self.crop_boxes(b, h, w, x.device, generator).float()  # (B, 4)
        x0, y0, cw, ch = box.unbind(1)
        sx = cw / w  # affine_grid maps output [-1,1] onto the box edges (align_corners=False)
        if self.hflip:
            flip = torch.rand(b, device=x.device, generator=generator) < 0.5
            sx = torch.where(flip, -sx, sx)  # a negative x scale mirrors the crop
        theta = torch.zeros(b, 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 2] = sx, (2 * x0 + cw) / w - 1
        theta[:, 1, 1], theta[:, 1, 2] = ch / h, (2 * y0 + ch) / h - 1
        grid = F.affine_grid(theta, [b, c, s, s], align_corners=False)  # (B, S, S, 2)
        out = F.grid_sample(x.float(), grid, mode=self.interpolation, padding_mode="border",
                            align_corners=False)  # (B, C, S, S) in [0, 255]
        if self.interpolation == "bicubic":
            out = out.clamp(0, 255)  # bicubic overshoots; uint8 resizers clamp too
        return self.normalize(out)

    def _resize_center(self, x: Tensor) -> Tensor:
        """float ``(B,C,H,W)`` -> ``(B,C,S,S)``: shorter side to S (antialiased), center crop."""
        h, w = x.shape[-2:]
        s = self.img_size
        nh, nw = (s, max(s, round(w * s / h))) if h <= w else (max(s, round(h * s / w)), s)
        mode = "bilinear" if self.interpolation == "nearest" else self.interpolation
        x = F.interpolate(x, size=(nh, nw), mode=mode, antialias=True, align_corners=False).clamp(0, 255)
        top, left = (nh - s) // 2, (nw - s) // 2
        return x[..., top:top + s, left:left + s]


class GPUBatchLoader:
    """Shuffled batches of device-resident tensors, optionally sharded over DDP ranks.

    Each epoch draws one permutation from ``(seed, epoch)`` (identical on every rank); rank ``r`` takes
    the ``r``-th contiguous chunk of ``N // world_size`` indices, so ranks are disjoint and equally long
    (the remaining ``N % world_size`` samples of that permutation are skipped). ``drop_last`` drops a final
    partial batch. Batches are ``(images[idx], labels[idx])`` gathered on the tensors' device.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, *, shuffle: bool = True,
                 drop_last: bool = True, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None) -> None:
        if len(images) != len(labels):
            raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if labels.device != images.device:
            raise ValueError(f"images on {images.device} but labels on {labels.device}")
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.shuffle, self.drop_last, self.seed, self.epoch = shuffle, drop_last, seed, 0
        self.rank, self.world_size = dist_info(rank, world_size)
        self.per_rank = len(images) // self.world_size
        if len(self) == 0:
            raise ValueError(f"{len(images)} samples over {self.world_size} ranks give no full batch of "
                             f"{batch_size}: expected at least {batch_size * self.world_size} samples")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        full, rest = divmod(self.per_rank, self.batch_size)
        return full + int(rest > 0 and not self.drop_last)

    def indices(self) -> Tensor:
        """This rank's sample indices for the current epoch, int64 ``(N // world_size,)`` on the CPU."""
        n = len(self.images)
        if self.shuffle:
            g = torch.Generator().manual_seed(seed_int(self.seed, self.epoch))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        return order[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        idx = self.indices().to(self.images.device, non_blocking=True)  # one transfer per epoch
        for k in range(len(self)):
            i = idx[k * self.batch_size:(k + 1) * self.batch_size]
            yield self.images.index_select(0, i), self.labels.index_select(0, i)  # (B,C,H,W), (B,)
