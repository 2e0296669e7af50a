"""Progress bars for long operations (fitting, feature extraction, training), one policy everywhere.

A bar is drawn only when someone can see it: stderr is a terminal, this is rank 0 of a torchrun job,
and neither ``quiet=True`` (the recipes' ``--quiet``) nor ``LDAE_QUIET=1`` asked for silence. Logs
redirected to a file therefore never fill up with carriage-return spam.

    for images, _ in progress(loader, desc="features", quiet=args.quiet):
        ...
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm import tqdm

__all__ = ["progress", "progress_enabled"]

T = TypeVar("T")


def progress_enabled(quiet: bool = False) -> bool:
    """Whether a bar would be shown: not quiet, not ``LDAE_QUIET``, rank 0, and stderr is a TTY."""
    if quiet or os.environ.get("LDAE_QUIET", "") not in ("", "0"):
        return False
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: one bar per job, not one per process
        return False
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress(
    iterable: Iterable[T] | None = None,
    desc: str | None = None,
    total: int | None = None,
    quiet: bool = False,
    unit: str = "it",
    **kwargs,
) -> tqdm:
    """A ``tqdm`` bar over ``iterable`` (or a manual bar with ``total`` and ``.update(n)``).

    Disabled bars cost nothing and still support ``update``/``set_postfix``/``close``, so callers
    never branch on whether output is visible.
    """
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not progress_enabled(quiet), **kwargs)
