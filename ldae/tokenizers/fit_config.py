"""The configurations of fitting a tokenizer: ``ldae fit-pca`` (the patch PCA) and ``ldae fit-tokenizer``
(linear patch AE / VAE, pixel). Each field is the flag of the same name; its help says what it does.
"""
from __future__ import annotations

import dataclasses
import os

from ldae.utils.config import Config

__all__ = ["FitPCAConfig", "FitTokenizerConfig"]


def _workers() -> int:
    return min(4, os.cpu_count() or 1)


@dataclasses.dataclass
class FitPCAConfig(Config):
    """The patch PCA of Sec. 4.2, fitted on resized, center-cropped, normalised images.

    ``data``, ``out``, ``img_size`` and ``patch_size`` are required (None is refused)."""

    REQUIRED = ("data", "out", "img_size", "patch_size")

    data: str | None = None
    out: str | None = None
    split: str | None = None
    img_size: int | None = None
    patch_size: int | None = None
    norm: str = "dit"
    interpolation: str = "bicubic"
    patches_per_image: int | None = None
    max_images: int | None = None
    seed: int = 0
    batch_size: int = 64
    workers: int = dataclasses.field(default_factory=_workers)
    bad_images: str = "error"
    device: str = "cpu"
    quiet: bool = False


@dataclasses.dataclass
class FitTokenizerConfig(Config):
    """A linear patch AE / VAE trained by Adam on a bank of patches, or the pixel tokenizer (no data).

    ``kind``, ``out`` and ``patch_size`` are required; ``d``, ``data`` and ``img_size`` for ae / vae."""

    REQUIRED = ("kind", "out", "patch_size")

    data: str | None = None
    kind: str | None = None
    out: str | None = None
    patch_size: int | None = None
    d: int | None = None
    token_patch: int | None = None
    norm: str = "dit"
    split: str | None = None
    img_size: int | None = None
    interpolation: str = "bicubic"
    patches_per_image: int | None = None
    max_images: int | None = None
    max_patches: int = 1 << 17
    batch_size: int = 64
    workers: int = dataclasses.field(default_factory=_workers)
    bad_images: str = "error"
    steps: int = 3000
    patch_batch: int = 1024
    lr: float | None = None
    kl_weight: float = 1.0
    seed: int = 0
    device: str = "cpu"
    log_every: int = 500
    quiet: bool = False
