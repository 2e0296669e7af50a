"""Safe file I/O: atomic writes and checksums.

Nothing a user saved may be left half-written: every writer goes to a temporary file in the same
folder, fsyncs it, then renames it over the target (atomic on POSIX).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import save_file

__all__ = ["atomic_path", "atomic_write_text", "save_safetensors", "sha256_file", "DiskFullError"]


class DiskFullError(OSError):
    """A write failed for lack of space; the file it would have replaced is untouched."""


def _write_failed_for_space(e: BaseException) -> bool:
    text = str(e)
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return True
    # torch.save reports a failed write as "[enforce fail at inline_container.cc:...] ... file write failed"
    return "No space left" in text or ("inline_container" in text and "write failed" in text)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except (OSError, RuntimeError) as e:
            if not _write_failed_for_space(e):
                raise
            tmp_path.unlink(missing_ok=True)  # free what the partial write took before measuring
            free = shutil.disk_usage(path.parent).free
            kept = "the previous file is kept" if path.exists() else "nothing was written"
            full = DiskFullError(f"{path}: the write failed, the device is full ({free:,} bytes free in {path.parent}); {kept}")
            full.errno = errno.ENOSPC
            raise full from None
        # mkstemp (and writers that replace the file) leave 0600; use what open() would (0666 - umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        # The rename itself is durable only once the directory entry is flushed.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` as a safetensors file atomically (contiguous CPU copies)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
