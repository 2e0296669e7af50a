"""Decoding one image file to RGB, with errors that name the file and a policy for unreadable ones.

Every reader of :mod:`ldae.data.folders` and :mod:`ldae.data.shards` (folder, tar, tar.gz, shards) and the in-memory decode go through
:func:`decode_rgb`, so a corrupt JPEG, a zero-byte file or a text file named ``.png`` fails with the
path (or the archive and member) rather than ``cannot identify image file <_io.BytesIO ...>``.

Modes are converted by value, not by Pillow's clipping ``convert('RGB')``: 16-bit and 32-bit
integer greyscale (``I;16``, ``I``: 16-bit PNGs) are scaled from 0-65535 to 0-255, float images
(``F``) are taken as 0-1 when they fit there and 0-255 otherwise; palette, alpha and CMYK images
convert as Pillow does. Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) is kept,
and exceeding it names the file and the limit.

With the ``'skip'`` policy (:data:`BAD_IMAGE_POLICIES`) a dataset replaces an unreadable image by the
next readable one in its own order (so the replacement depends only on the data: a resumed run
draws the same batches), and appends the file's name to a record file when one is given, one line
per file, so every process (DataLoader workers, ranks) adds to one count.
"""
from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["BadImageError", "BAD_IMAGE_POLICIES", "IMG_EXTENSIONS", "ImagePolicy", "decode_rgb", "is_image_name", "record_skip", "read_skipped", "SKIP_HINT"]

_logger = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("error", "skip")
# The files every reader takes as images (by extension, case-insensitive).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SKIP_HINT = "remove or replace the file, or pass --bad-images skip to use the next readable image in its place"


class BadImageError(ValueError):
    """An image file that cannot be decoded; the message names the file."""


@dataclass(frozen=True)
class ImagePolicy:
    """What a dataset does with an unreadable image: ``'error'`` or ``'skip'`` (recorded in ``skip_record``)."""

    bad_images: str = "error"
    skip_record: str | None = None

    def __post_init__(self) -> None:
        if self.bad_images not in BAD_IMAGE_POLICIES:
            raise ValueError(f"bad_images must be one of {BAD_IMAGE_POLICIES}, got {self.bad_images!r}")

    def kwargs(self) -> dict[str, Any]:
        """The keywords of :func:`ldae.data.folders.build_dataset` and :class:`ldae.data.shards.ShardDataset`."""
        return {"bad_images": self.bad_images, "skip_record": self.skip_record}


def decode_rgb(data: bytes, where: str) -> Image.Image:
    """Encoded image bytes -> an RGB ``PIL.Image``; ``where`` names the file in errors (path or archive:member)."""
    if not data:
        raise BadImageError(f"{where}: empty file (0 bytes), not an image")
    try:
        with warnings.catch_warnings():
            # Between the limit and twice the limit Pillow only warns: refuse there too, by name.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                # As a person sees it: phones store portrait photos sideways with an EXIF Orientation tag.
                return _to_rgb(ImageOps.exif_transpose(img), where)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(
            f"{where}: larger than Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} pixels ({e}); "
            "if the file is trusted, raise PIL.Image.MAX_IMAGE_PIXELS") from None
    except UnidentifiedImageError:
        raise BadImageError(f"{where}: not a readable image (unknown format, {len(data):,} bytes)") from None
    except BadImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated or corrupt data
        raise BadImageError(f"{where}: corrupt image ({type(e).__name__}: {e})") from None


def _to_rgb(img: Image.Image, where: str) -> Image.Image:
    """RGB by the pixel values' range: 16-bit greys (and 32-bit integer ones within 0-65535) / 257, wider
    32-bit integers scaled from 0..2^31-1, floats as 0-1 (x 255) or 0-255; non-finite floats refused."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        top = float(a.max()) if a.size else 0.0
        return _grey_to_rgb(a / 257.0 if top <= 65535 else a * (255.0 / (2**31 - 1)))
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if a.size and not np.isfinite(a).all():
            raise BadImageError(f"{where}: float image with NaN or infinite pixels")
        top = float(a.max()) if a.size else 0.0
        if top > 255.0:
            raise BadImageError(f"{where}: float image with values up to {top:g}; expected 0-1 or 0-255")
        return _grey_to_rgb(a * 255.0 if top <= 1.0 else a)
    return img.convert("RGB")


def _grey_to_rgb(a: np.ndarray) -> Image.Image:
    u8 = np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(u8[:, :, None], 3, axis=2), mode="RGB")


def is_image_name(name: str) -> bool:
    """Whether a file name is an image the readers take (hidden files are not: macOS archives carry
    '._x.jpg' metadata files that are not images)."""
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def record_skip(record: str | os.PathLike | None, where: str, err: BadImageError) -> None:
    """Log a skipped image and append ``where`` to the ``record`` file (one short ``O_APPEND`` write: atomic)."""
    _logger.warning("skipping an unreadable image: %s", err)
    if record is None:
        return
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (where.replace("\n", " ") + "\n").encode())
    finally:
        os.close(fd)


def read_skipped(record: str | os.PathLike) -> list[str]:
    """The distinct files a ``record`` lists, sorted (each is recorded once per read, by any process)."""
    path = Path(record)
    if not path.is_file():
        return []
    return sorted({line for line in path.read_text().splitlines() if line})
