"""Decoded datasets kept on disk: decode a folder or archive to uint8 once, memory-map it on every later run.

A CPU run that holds its images in memory (``ldae pretrain --in-memory``) decodes the whole dataset
before its first step: 50,000 CIFAR-10 JPEGs take minutes on two cores, and every resumed run paid it
again. :func:`cached_decode` stores the decoded ``(N, 3, S, S)`` uint8 array and its labels as ``.npy``
files under ``<cache>/decoded/`` and memory-maps them on the next call, so a resume starts at once.

An entry is keyed by the data's resolved path, the split, the image size and the subset drawn
(``max_images``, ``seed``), and records the data's identity: size and modification time of an archive,
or of every file of a folder. An entry whose identity, key or array shapes do not match is refused
and decoded again (and replaced); files are written to temporary names and renamed, the record last,
so an interrupted write is never read. Only the ``--bad-images error`` policy is cached: under
``skip`` the replaced images must be counted anew by every run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ldae.data.archives import default_cache_dir
from ldae.utils.io import atomic_path, atomic_write_text

__all__ = ["cached_decode", "data_identity", "FORMAT"]

_logger = logging.getLogger(__name__)

FORMAT = "ldae.decoded.v1"


def data_identity(path: str | Path) -> dict[str, Any]:
    """What tells a changed dataset from an unchanged one: (size, mtime) of a file, or a digest of the
    relative path, size and mtime of every file under a folder."""
    path = Path(path).resolve()
    if path.is_file():
        st = path.stat()
        return {"kind": "file", "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    h = hashlib.sha256()
    count = 0
    for root, dirs, files in os.walk(path, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except OSError:  # a dangling link: the decoder decides what it means
                continue
            h.update(f"{os.path.relpath(full, path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            count += 1
    return {"kind": "folder", "files": count, "digest": h.hexdigest()}


def cached_decode(
    path: str | Path,
    params: dict[str, Any],
    decode: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    cache_dir: str | Path | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``decode()``'s ``(images (N, C, H, W) uint8, labels (N,) int64)`` for the data at ``path``, from the cache
    when an entry for ``path`` and ``params`` (split, image size, subset: JSON values) is current, else
    decoded and stored. Cached images come back memory-mapped (copy-on-write: writable, the file unchanged).
    """
    path = Path(path).resolve()
    key = hashlib.sha256(json.dumps({"path": str(path), **params}, sort_keys=True).encode()).hexdigest()[:16]
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "decoded"
    stem = base / f"{path.name}-{key}"
    record_path, images_path, labels_path = (Path(f"{stem}{ext}") for ext in (".json", ".images.npy", ".labels.npy"))
    identity = data_identity(path)
    expected = {"format": FORMAT, "path": str(path), "params": params, "identity": identity}
    hit = _load(record_path, images_path, labels_path, expected)
    if hit is not None:
        _logger.info("decoded images of %s read from %s", path, images_path)
        return hit
    images, labels = decode()
    if images.dtype != torch.uint8 or images.ndim != 4 or labels.shape != (images.shape[0],):
        raise ValueError(f"cached_decode: expected uint8 images (N, C, H, W) and N labels, got {images.dtype} "
                         f"{tuple(images.shape)} and {tuple(labels.shape)}")
    try:
        record_path.unlink(missing_ok=True)  # the old record goes first: never a record beside new arrays
        for target, array in ((images_path, images.cpu().numpy()), (labels_path, labels.cpu().numpy().astype(np.int64))):
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, array, allow_pickle=False)
        record = {**expected, "images_shape": list(images.shape), "labels_shape": list(labels.shape)}
        atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
        _logger.info("decoded images of %s stored in %s", path, images_path)
    except OSError as e:  # a read-only or full cache folder costs the next run a decode, not this one
        _logger.warning("could not store decoded images in %s (%s); the next run decodes again", base, e)
    return images, labels


def _load(record_path: Path, images_path: Path, labels_path: Path, expected: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached arrays if the record matches ``expected`` and the arrays its shapes; None (and why, logged) otherwise."""
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
        if {k: record.get(k) for k in expected} != expected:
            _logger.info("decoded cache %s is stale (the data or the parameters changed): decoding again", record_path)
            return None
        images = np.load(images_path, mmap_mode="c", allow_pickle=False)
        labels = np.load(labels_path, mmap_mode="c", allow_pickle=False)
        if (list(images.shape) != record["images_shape"] or list(labels.shape) != record["labels_shape"]
                or images.dtype != np.uint8 or labels.dtype != np.int64):
            _logger.warning("decoded cache %s does not match its record: decoding again", images_path)
            return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        _logger.warning("decoded cache %s is unreadable (%s): decoding again", record_path, e)
        return None
    return torch.from_numpy(images), torch.from_numpy(labels)
