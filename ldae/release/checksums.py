"""The checksum list of an ``ldae export`` folder: ``SHA256SUMS``, in the format ``sha256sum -c`` reads.

Every file of the folder is listed (``config.json`` included, so the list sits beside it rather than
in it). Loading an export through ``local-dir:`` checks every listed file, and through ``hf-hub:``
the files timm reads (``config.json``, ``model.safetensors``), before any weight is read: a flipped
bit, a truncated download or a replaced file is refused with the file's name, instead of loading
into NaN features.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

from ldae.utils.io import atomic_write_text, sha256_file

__all__ = ["CHECKSUM_FILE", "write_checksums", "read_checksums", "verify_export"]

CHECKSUM_FILE = "SHA256SUMS"


def write_checksums(folder: str | os.PathLike) -> Path:
    """List the sha256 of every file under ``folder`` (sorted, relative paths) in ``folder/SHA256SUMS``."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUM_FILE)
    lines = [f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}" for p in files]
    out = folder / CHECKSUM_FILE
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out


def read_checksums(path: str | os.PathLike) -> dict[str, str]:
    """``{relative file: sha256}`` of a checksum list; a malformed line is an error naming the file."""
    sums: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not name:
            raise ValueError(f"{path}:{n}: expected '<sha256>  <file>', got {line[:80]!r}")
        sums[name] = digest
    return sums


def verify_export(where: str, fetch: Callable[[str], Path], only: tuple[str, ...] | None = None) -> bool:
    """Check the files of an export against its ``SHA256SUMS`` (``fetch(name)`` gives a local path).

    ``only`` limits the check to those names (what a remote load reads). Returns False for exports
    written before checksums existed (with a warning); raises ``WeightsIntegrityError`` naming the file
    on any mismatch, and ``FileNotFoundError`` for a listed file that is gone.
    """
    from ldae.release.manifest import WeightsIntegrityError

    try:
        sums_path = fetch(CHECKSUM_FILE)
    except (FileNotFoundError, OSError):
        sums_path = None
    if sums_path is None or not Path(sums_path).is_file():
        warnings.warn(f"{where}: no {CHECKSUM_FILE} (an export from before checksums); its files are not verified", stacklevel=3)
        return False
    sums = read_checksums(sums_path)
    for name in only or ():
        if name not in sums:
            raise WeightsIntegrityError(f"{where}: {CHECKSUM_FILE} does not list {name}; the folder was altered")
    for name, digest in sums.items():
        if only is not None and name not in only:
            continue
        path = Path(fetch(name))
        if not path.is_file():
            raise FileNotFoundError(f"{where}: {name} is listed in {CHECKSUM_FILE} but missing")
        got = sha256_file(path)
        if got != digest:
            raise WeightsIntegrityError(
                f"{where}: {name} does not match its sha256 in {CHECKSUM_FILE} (expected {digest[:16]}..., got {got[:16]}...): "
                "the file is corrupted or was replaced; export or download it again")
    return True
