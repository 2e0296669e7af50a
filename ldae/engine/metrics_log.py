"""Training logs on rank 0: a JSON-lines metrics file, plus a progress bar or plain lines for people.

* ``log.jsonl``: one JSON object per logged step (step, epoch, loss, lr, img/s, MFU, memory, ...),
  appended across resumed runs, flushed line by line so a killed run keeps everything it logged.
* On a terminal: a tqdm bar with ETA whose postfix shows the latest metrics.
* Not on a terminal (cluster log files): one plain line per logged step, no bar escape codes.
* ``quiet=True`` (or ``LDAE_QUIET=1``) silences the console; the JSON-lines file is still written.
  Other ranks do nothing. The bar follows :mod:`ldae.utils.progress`'s policy.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from ldae.utils.progress import progress, progress_enabled

__all__ = ["MetricsLogger", "read_jsonl"]


def _jsonable(value: Any) -> Any:
    """Plain JSON values: tensors and numpy scalars become numbers; NaN/inf become strings (strict JSON)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # 'nan', 'inf', '-inf'
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return f"{key} -"
    if key == "mfu":
        return f"mfu {100 * value:.1f}%"
    if key == "lr":
        return f"lr {value:.3e}"
    if isinstance(value, float):
        return f"{key} {value:.4g}"
    return f"{key} {value}"


class MetricsLogger:
    """Rank-0 metrics sink.

    Args:
        path: the JSON-lines file (appended to); None writes no file.
        enabled: False on ranks other than 0: every method is then a no-op.
        total_steps, initial_step: progress-bar range (a resumed run starts at its step).
        quiet: no console output at all.
        console_keys: the metrics shown on the console (all are written to the file).
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        *,
        enabled: bool = True,
        total_steps: int | None = None,
        initial_step: int = 0,
        quiet: bool = False,
        console_keys: tuple[str, ...] = ("epoch", "loss", "lr", "img_per_s", "mfu", "mem_gb"),
        stream: IO[str] | None = None,
    ) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.console = enabled and not quiet and os.environ.get("LDAE_QUIET", "") in ("", "0")
        self.console_keys = console_keys
        self._file: IO[str] | None = None
        if enabled and path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")
        self._bar = None
        self.start(total_steps, initial_step)

    def start(self, total_steps: int | None, initial_step: int = 0) -> None:
        """(Re)start the progress display and the ETA clock at ``initial_step`` of ``total_steps``."""
        self.total_steps = total_steps
        self._t0, self._step0 = time.perf_counter(), initial_step
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.console and total_steps is not None and self.stream.isatty() and progress_enabled():
            self._bar = progress(total=total_steps, initial=initial_step, unit="step", leave=True, file=self.stream)

    def log(self, record: dict[str, Any]) -> None:
        """Write one record (must hold ``step``) to the file and show it on the console."""
        if not self.enabled:
            return
        record = {k: _jsonable(v) for k, v in record.items()}
        if self._file is not None:
            self._file.write(json.dumps({**record, "time": round(time.time(), 3)}, allow_nan=False) + "\n")
            self._file.flush()
        if not self.console:
            return
        shown = {k: record.get(k) for k in self.console_keys if k in record}
        if self._bar is not None:
            self._bar.set_postfix_str("  ".join(_fmt(k, v) for k, v in shown.items()), refresh=False)
        else:
            step = record.get("step")
            head = f"step {step}/{self.total_steps}" if self.total_steps else f"step {step}"
            eta = self._eta(step)
            print("  ".join([head, *(_fmt(k, v) for k, v in shown.items()), *([f"eta {eta}"] if eta else [])]),
                  file=self.stream, flush=True)

    def _eta(self, step: Any) -> str | None:
        if not isinstance(step, int) or not self.total_steps or step <= self._step0:
            return None
        rate = (step - self._step0) / (time.perf_counter() - self._t0)
        return str(datetime.timedelta(seconds=round((self.total_steps - step) / rate)))

    def advance(self, n: int = 1) -> None:
        """Move the progress bar by ``n`` steps."""
        if self._bar is not None:
            self._bar.update(n)

    def info(self, message: str) -> None:
        """A human-readable message on the console (not in the metrics file)."""
        if not self.console:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a JSON-lines metrics file (a torn last line of a killed run is skipped)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
