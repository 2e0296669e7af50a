"""Wall-clock time of the test suite as the README runs it, recorded as a results JSON.

    python bench/bench_tests.py            # runs `python -m pytest -q`, writes bench/results/tests_cpu.json

Run it on an otherwise idle machine: the suite's time is what the README quotes for its second command.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ldae.utils.amp import device_name  # noqa: E402
from ldae.utils.provenance import git_commit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "tests_cpu.json"))
    args = p.parse_args(argv)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - t0
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", tail)}
    record = {
        "benchmark": "test_suite", "command": "python -m pytest", "seconds": round(seconds, 1),
        "minutes": round(seconds / 60, 1), "summary": tail, "counts": counts, "returncode": proc.returncode,
        "device": device_name(torch.device("cpu")), "cpus": os.cpu_count(), "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"{tail}  ({seconds:.0f} s); wrote {args.out}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
