"""WebDataset-style shards: ``<key>.<ext>`` members grouped by key in plain tar files; a reader and a writer."""
from __future__ import annotations

import io
import os
import posixpath
import random
import re
import sys
import tarfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ldae.data.folders import Transform, _LabeledImages
from ldae.data.image_decode import BAD_IMAGE_POLICIES, IMG_EXTENSIONS, SKIP_HINT, BadImageError, decode_rgb, record_skip
from ldae.data.sampler import dist_info, seed_int
from ldae.data.tar_check import check_complete_tar, members_end
from ldae.utils.io import atomic_path

__all__ = ["ShardDataset", "expand_urls", "write_shards"]

_BRACE = re.compile(r"\{([^{}]*)\}")


_PATTERN_ERR = "out_pattern needs one printf integer field like 'train-%06d.tar', got {!r}"


_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG", "png"), (b"BM", "bmp"))


def _expand_braces(s: str) -> list[str]:
    m = _BRACE.search(s)
    if m is None:
        return [s]
    body, head, tail = m.group(1), s[: m.start()], s[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.groups()
        if int(hi) < int(lo):
            raise ValueError(f"descending brace range {{{body}}} in {s!r}")
        width = len(lo) if lo.startswith("0") else 0  # '{000..009}' keeps its zero padding
        alts = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        alts = body.split(",")
    return [x for a in alts for x in _expand_braces(head + a + tail)]


def expand_urls(urls_or_pattern: str | Path | Sequence[str | Path]) -> list[str]:
    """Shard paths from a brace pattern (``'shards-{000000..000009}.tar'``, ``'{a,b}.tar'``), a list of
    patterns, or a folder (its ``*.tar`` files, sorted)."""
    items = [urls_or_pattern] if isinstance(urls_or_pattern, (str, Path)) else list(urls_or_pattern)
    out: list[str] = []
    for u in items:
        u = str(u)
        if os.path.isdir(u):
            out += sorted(str(p) for p in Path(u).iterdir() if p.name.endswith(".tar") and not p.name.startswith("."))
        else:
            out += _expand_braces(u)
    if not out:
        raise ValueError(f"no shards in {urls_or_pattern!r}: expected a pattern like 'shards-{{000000..000009}}.tar', "
                         f"a list of .tar paths, or a folder of .tar files")
    return out


def _iter_shard(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {extension: bytes})`` for consecutive members sharing a key (``<key>.<ext>``).

    A shard cut short is an error naming it (:mod:`ldae.data.tar_check`), never a shorter shard.
    """
    with open(path, "rb") as f:
        compressed = f.read(2) in (b"\x1f\x8b", b"BZ", b"\xfd7")  # gzip, bzip2, xz: their own end checks
        f.seek(0)
        try:
            with tarfile.open(fileobj=f, mode="r|*") as tf:
                key, parts, end = None, {}, 0
                for m in tf:
                    end = members_end(m)
                    if not m.isfile():
                        continue
                    d, base = posixpath.split(m.name)
                    stem, dot, ext = base.partition(".")  # WebDataset: the extension is everything after the first dot
                    if not dot or stem == "":
                        continue
                    k = posixpath.join(d, stem)
                    if k != key:
                        if parts:
                            yield key, parts  # type: ignore[misc]
                        key, parts = k, {}
                    src = tf.extractfile(m)
                    assert src is not None
                    parts[ext.lower()] = src.read()
        except (tarfile.ReadError, EOFError) as e:
            raise ValueError(f"{path}: truncated or corrupt shard ({e}); copy or write it again") from None
        if not compressed:
            check_complete_tar(path, end)
        if parts:
            yield key, parts  # type: ignore[misc]


def _buffer_shuffle(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Approximate shuffle with a fixed-size buffer (memory O(size), not O(dataset))."""
    buf: list[Any] = []
    for x in items:
        if len(buf) < size:
            buf.append(x)
            continue
        j = rng.randrange(size)
        buf[j], x = x, buf[j]
        yield x
    rng.shuffle(buf)
    yield from buf


class ShardDataset(IterableDataset):
    """Stream ``(image, label)`` from WebDataset-format tar shards, without the webdataset package.

    A shard holds members ``<key>.<jpg|jpeg|png|bmp|webp>`` and ``<key>.cls`` (the integer label as
    text); a sample without ``.cls`` gets label ``-1``. Shards are split first across DDP ranks, then
    across DataLoader workers (``shards[rank::world_size][worker::num_workers]``), so every shard is read
    by exactly one worker of one rank. Ranks may see different sample counts when shard sizes differ.

    ``shuffle_buffer > 0`` shuffles the shard order with ``(seed, epoch)`` (identical on all ranks) and
    the samples through a buffer of that many encoded samples; ``shuffle_buffer=0`` reads in order (eval).
    Call :meth:`set_epoch` before each epoch; with ``persistent_workers=True`` the workers keep the epoch
    they were started with, so use non-persistent workers or rebuild the DataLoader.

    Args:
        urls_or_pattern: brace pattern, list of paths, or folder of ``.tar`` shards (see :func:`expand_urls`).
        transform: applied to the RGB ``PIL.Image``.
        shuffle_buffer: samples held for shuffling; 0 disables all shuffling.
        seed: base seed for shard order and sample shuffling.
        rank, world_size: default to the process group, else ``RANK``/``WORLD_SIZE``, else 0/1.
        bad_images, skip_record: the policy for unreadable images (see :class:`_LabeledImages`); a
            skipped sample is left out of the stream.
    """

    def __init__(self, urls_or_pattern: str | Path | Sequence[str | Path], transform: Transform | None = None,
                 shuffle_buffer: int = 2000, seed: int = 0, *, rank: int | None = None,
                 world_size: int | None = None, bad_images: str = "error",
                 skip_record: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.urls = expand_urls(urls_or_pattern)
        missing = [u for u in self.urls if not os.path.isfile(u)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(self.urls)} shards do not exist, e.g. {missing[0]}")
        self.rank, self.world_size = dist_info(rank, world_size)
        if len(self.urls) < self.world_size:
            raise ValueError(f"{len(self.urls)} shards cannot be split over {self.world_size} ranks: "
                             f"expected at least one shard per rank; write smaller shards")
        self.transform, self.shuffle_buffer, self.seed, self.epoch = transform, int(shuffle_buffer), int(seed), 0
        if bad_images not in BAD_IMAGE_POLICIES:
            raise ValueError(f"bad_images must be one of {BAD_IMAGE_POLICIES}, got {bad_images!r}")
        self.bad_images, self.skip_record = bad_images, (str(skip_record) if skip_record is not None else None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def shards_for(self, worker_id: int = 0, num_workers: int = 1) -> list[str]:
        """The shards one worker of this rank reads in the current epoch, in reading order."""
        order = np.arange(len(self.urls))
        if self.shuffle_buffer > 0:
            order = np.random.default_rng(seed_int(self.seed, self.epoch)).permutation(len(self.urls))
        return [self.urls[i] for i in order[self.rank::self.world_size][worker_id::num_workers]]

    def _sample(self, shard: str, key: str, parts: dict[str, bytes]) -> tuple[Any, int]:
        ext = next((e for e in parts if "." + e in IMG_EXTENSIONS), None)
        if ext is None:
            raise ValueError(f"{shard}: sample {key!r} has no image member: expected one of "
                             f"{IMG_EXTENSIONS}, found extensions {sorted(parts)}")
        img = decode_rgb(parts[ext], f"{shard}:{key}.{ext}")
        label = int(parts["cls"].decode().strip()) if "cls" in parts else -1
        return (self.transform(img) if self.transform is not None else img), label

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        raw = ((s, k, p) for s in self.shards_for(wid, nw) for k, p in _iter_shard(s))
        if self.shuffle_buffer > 1:
            rng = random.Random(seed_int(self.seed, self.epoch, self.rank, wid))
            raw = _buffer_shuffle(raw, self.shuffle_buffer, rng)
        for shard, key, parts in raw:  # decode after shuffling: the buffer holds compact encoded bytes
            try:
                sample = self._sample(shard, key, parts)
            except BadImageError as e:
                if self.bad_images != "skip":
                    raise BadImageError(f"{e}; {SKIP_HINT}") from None
                record_skip(self.skip_record, f"{shard}:{key}", e)
                continue
            yield sample


def _encode(img: Any, fmt: str, quality: int) -> tuple[bytes, str]:
    """Encode a PIL image, uint8 tensor ``(C,H,W)``/``(H,W)``, uint8 array ``(H,W,C)``/``(H,W)`` or pass
    through already-encoded bytes; returns ``(bytes, extension)``."""
    if isinstance(img, (bytes, bytearray)):
        for magic, ext in _MAGIC:
            if img.startswith(magic):
                return bytes(img), ext
        if img[:4] == b"RIFF" and img[8:12] == b"WEBP":
            return bytes(img), "webp"
        raise ValueError("encoded image bytes of unknown type: expected jpg, png, bmp or webp")
    if isinstance(img, torch.Tensor):
        if img.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 image tensor, got {img.dtype}: scale and convert first")
        img = img.cpu().numpy()
        if img.ndim == 3:
            img = img.transpose(1, 2, 0)  # (C,H,W) -> (H,W,C)
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise TypeError(f"expected a uint8 image array, got {img.dtype}")
        img = Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[2] == 1 else img)
    if not isinstance(img, Image.Image):
        raise TypeError(f"expected a PIL image, uint8 tensor/array or encoded bytes, got {type(img).__name__}")
    buf = io.BytesIO()
    if fmt in ("jpg", "jpeg"):
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format={"png": "PNG", "webp": "WEBP", "bmp": "BMP"}[fmt],
                 **({"lossless": True} if fmt == "webp" else {}))
    return buf.getvalue(), fmt


def _add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0  # fixed metadata: identical inputs, identical shards
    tf.addfile(info, io.BytesIO(data))


def write_shards(dataset: Dataset, out_pattern: str, max_count: int = 1000, *, image_format: str = "png",
                 quality: int = 95, progress: bool | None = None) -> list[str]:
    """Write ``dataset`` as WebDataset-format shards readable by :class:`ShardDataset`.

    Args:
        dataset: yields ``(image, label)``; image a PIL image, uint8 tensor ``(C,H,W)``/``(H,W)``,
            uint8 array ``(H,W,C)``/``(H,W)``, or encoded bytes. A dataset from :func:`build_dataset`
            without a transform is copied byte for byte (no re-encoding).
        out_pattern: printf pattern with one integer field, e.g. ``'out/train-%06d.tar'``.
        max_count: samples per shard.
        image_format: ``'png'`` (lossless, default), ``'jpg'`` (``quality``), ``'webp'`` (lossless) or ``'bmp'``
            for images that must be encoded.
        progress: tqdm bar; default on when stderr is a terminal.

    Returns:
        The shard paths in order. Members are ``<index:09d>.<ext>`` and ``<index:09d>.cls``. Each shard is
        written to a hidden temporary file and renamed, so readers never see a partial shard.
    """
    from tqdm.auto import tqdm

    if max_count < 1:
        raise ValueError(f"max_count must be >= 1, got {max_count}")
    if image_format not in ("png", "jpg", "jpeg", "webp", "bmp"):
        raise ValueError(f"image_format must be png, jpg, webp or bmp, got {image_format!r}")
    try:
        names = (out_pattern % 0, out_pattern % 1)
    except TypeError as e:
        raise ValueError(_PATTERN_ERR.format(out_pattern)) from e
    if names[0] == names[1]:
        raise ValueError(_PATTERN_ERR.format(out_pattern))
    # Our own datasets without a transform hold the original files: copy them rather than re-encode.
    raw = isinstance(dataset, _LabeledImages) and dataset.transform is None
    n = len(dataset)  # type: ignore[arg-type]
    paths: list[str] = []
    bar = tqdm(total=n, unit="img", desc="write shards",
               disable=(not sys.stderr.isatty()) if progress is None else not progress)
    for s, start in enumerate(range(0, n, max_count)):
        final = Path(out_pattern % s)
        with atomic_path(final) as tmp, tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tf:
            for i in range(start, min(start + max_count, n)):
                if raw:
                    data, ext = dataset.read_bytes(i)
                    label = dataset.targets[i]
                else:
                    img, label = dataset[i]
                    data, ext = _encode(img, image_format, quality)
                _add_member(tf, f"{i:09d}.{ext}", data)
                _add_member(tf, f"{i:09d}.cls", str(int(label)).encode())
                bar.update(1)
        paths.append(str(final))
    bar.close()
    return paths
