"""Progress bars for long operations (fitting, feature extraction, training), one policy everywhere.

A bar is drawn only when someone can see it: stderr is a terminal, this is rank 0 of a torchrun job,
and neither ``quiet=True`` (the recipes' ``--quiet``) nor ``LDAE_QUIET=1`` asked for silence. Off a
terminal (a log file, a batch job) the same call prints one plain line per 10% instead
(``features: 30% (59/196 batch, 1m12s, eta 2m48s)``), so a long step is never silent and a log never
fills with carriage-return spam.

    for images, _ in progress(loader, desc="features", quiet=args.quiet):
        ...
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator, TypeVar

from tqdm import tqdm

__all__ = ["progress", "progress_enabled", "LineProgress"]

T = TypeVar("T")


def progress_enabled(quiet: bool = False) -> bool:
    """Whether a bar would be shown: not quiet, not ``LDAE_QUIET``, rank 0, and stderr is a TTY."""
    if quiet or os.environ.get("LDAE_QUIET", "") not in ("", "0"):
        return False
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: one bar per job, not one per process
        return False
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _lines_enabled(quiet: bool) -> bool:
    """Whether plain progress lines replace the bar: the bar's conditions, except that stderr is no terminal."""
    if quiet or os.environ.get("LDAE_QUIET", "") not in ("", "0") or int(os.environ.get("RANK", "0")) != 0:
        return False
    return not bool(getattr(sys.stderr, "isatty", lambda: False)())


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class LineProgress:
    """The plain-line stand-in for a bar: one line to stderr each time another ``step`` percent is done.

    Supports what callers use of a ``tqdm`` bar: iteration, ``update(n)``, ``set_postfix``, ``close``.
    """

    def __init__(self, iterable: Iterable[T] | None, desc: str | None, total: int | None, unit: str, step: int = 10) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.desc, self.total, self.unit, self.step = iterable, desc or "progress", total, unit, step
        self.n, self._next, self._t0 = 0, step, time.perf_counter()

    def __iter__(self) -> Iterator[T]:
        assert self.iterable is not None
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.total:
            return
        pct = 100 * self.n / self.total
        if pct + 1e-9 >= self._next:
            elapsed = time.perf_counter() - self._t0
            eta = elapsed * (self.total - self.n) / max(self.n, 1)
            print(f"{self.desc}: {int(pct)}% ({self.n}/{self.total} {self.unit}, {_fmt(elapsed)}, eta {_fmt(eta)})",
                  file=sys.stderr, flush=True)
            while self._next <= pct + 1e-9:
                self._next += self.step

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress(
    iterable: Iterable[T] | None = None,
    desc: str | None = None,
    total: int | None = None,
    quiet: bool = False,
    unit: str = "it",
    lines: bool = True,
    **kwargs,
) -> tqdm | LineProgress:
    """A ``tqdm`` bar over ``iterable`` (or a manual bar with ``total`` and ``.update(n)``).

    Off a terminal it is a :class:`LineProgress` (``lines=False``: silent there, for loops that log
    on their own). Disabled bars cost nothing and still support ``update``/``set_postfix``/``close``,
    so callers never branch on whether output is visible.
    """
    if lines and kwargs.get("file") is None and _lines_enabled(quiet):
        return LineProgress(iterable, desc, total, unit)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not progress_enabled(quiet), **kwargs)
