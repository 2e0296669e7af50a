"""Start-up of an ``--in-memory`` run: decoding a dataset against reading its decoded copy from the cache.

    python bench/bench_decoded_cache.py --data ../shared/data/cifar10-jpeg.tar.gz --split train --img-size 32

Times :func:`ldae.data.resident.load_uint8` with ``cache=True`` twice on a fresh cache folder: the first
call decodes (the archive's extraction is done beforehand and not counted) and stores the arrays, the
second memory-maps them and reads every byte once, as the first epoch of a run does.
Writes ``bench/results/decoded_cache_cpu.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ldae.data.folders import build_dataset  # noqa: E402
from ldae.data.resident import load_uint8  # noqa: E402
from ldae.utils.amp import device_name  # noqa: E402
from ldae.utils.provenance import git_commit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default=None)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "decoded_cache_cpu.json"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["LDAE_CACHE"] = cache
        build_dataset(args.data, args.split)  # a .tar.gz is extracted here, outside the timings
        t0 = time.perf_counter()
        images, _ = load_uint8(args.data, args.split, img_size=args.img_size, cache=True)
        decode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again, _ = load_uint8(args.data, args.split, img_size=args.img_size, cache=True)
        resident = again.clone()  # read every byte once, as the first epoch does
        read_s = time.perf_counter() - t0
        assert torch.equal(resident, images)
    report = {
        "benchmark": "decoded_cache_cpu", "device": device_name(torch.device("cpu")), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "command": shlex.join(["python", "bench/bench_decoded_cache.py", *(argv if argv is not None else sys.argv[1:])]),
        "commit": git_commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "images": list(images.shape), "decode_s": round(decode_s, 2), "cached_read_s": round(read_s, 2),
        "decode_over_cached": round(decode_s / read_s, 1),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
