"""Where a result came from: the command as typed and the commit of the code that ran it."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

__all__ = ["command_line", "git_commit"]


def command_line() -> str:
    """The command as typed: ``ldae probe ...`` or ``python -m ldae.probe ...`` (torchrun's own flags are not
    visible to the process)."""
    argv = list(sys.argv)
    head = Path(argv[0]) if argv else Path("")
    if head.name == "ldae" or (head.name == "__main__.py" and head.parent.name == "cli"):  # the console script
        argv = ["ldae"] + argv[1:]
    elif head.suffix == ".py" and head.parent.name == "ldae":
        argv = ["python", "-m", f"ldae.{head.stem}"] + argv[1:]
    return shlex.join(argv)


def git_commit() -> str | None:
    """The commit of the source tree this package runs from, ``+dirty`` when tracked files differ
    from it (None outside a git checkout)."""
    root = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0 or not head.stdout.strip():
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
