"""Is a tar whole? A tar cut short (an interrupted download or copy) reads as a smaller archive.

Python's ``tarfile`` stops quietly at a header that is missing, so a plain ``.tar`` cut at 60% would
give 60% of its images and no error. Every tar writer ends the archive with two zero blocks of 512
bytes after the last member's data (POSIX): a whole archive has them, a truncated one does not.
"""
from __future__ import annotations

import os
import tarfile

__all__ = ["members_end", "check_complete_tar"]

BLOCK = 512


def members_end(member: tarfile.TarInfo) -> int:
    """The byte offset just after ``member``'s data, padded to whole blocks."""
    return member.offset_data + -(-member.size // BLOCK) * BLOCK


def check_complete_tar(path: str | os.PathLike, end: int) -> None:
    """``ValueError`` naming ``path`` unless the end-of-archive marker (two zero blocks) follows ``end``,
    the end of the last member's data (:func:`members_end`)."""
    size = os.path.getsize(path)
    marker = b""
    if size >= end + 2 * BLOCK:
        with open(path, "rb") as f:
            f.seek(end)
            marker = f.read(2 * BLOCK)
    if marker.count(0) != 2 * BLOCK:
        raise ValueError(f"{path}: truncated tar archive ({size:,} bytes; its last member ends at byte {end:,} without "
                         f"the end-of-archive marker), so it would give only part of its images; copy or download it again")
