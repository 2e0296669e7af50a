"""Benchmark of the cached linear probe: 90 epochs of the probe head on 50k CIFAR-10-sized features.

    python bench/bench_probe.py                          # writes bench/results/probe_<device>.json
    python bench/bench_probe.py --device cpu             # the CPU figure
    python bench/bench_probe.py --features train.safetensors --val-features test.safetensors   # real cached features

What is timed is exactly ``ldae probe --mode cached`` after its features are cached:
:func:`ldae.eval.probe.train_probe_on_features` (features moved to the device once, the BatchNorm + linear
head, timm's LARS, the per-update warmup + cosine schedule, an evaluation every epoch). By default the
features are synthetic, 50,000 x 384 training and 10,000 x 384 evaluation features of 10 planted
classes (the timing does not depend on their values); ``--features`` takes files that ``ldae probe``
cached. Targets of the project: <= 60 s on an H200, <= 300 s on a 2-core CPU, at the paper's batch
16384 and at batch 1024.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import timm  # noqa: E402

from ldae.eval.feature_cache import load_features  # noqa: E402
from ldae.eval.probe import train_probe_on_features  # noqa: E402
from ldae.utils.io import atomic_path  # noqa: E402
from ldae.utils.provenance import git_commit  # noqa: E402

TARGET_S = {"cuda": 60.0, "cpu": 300.0}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16384, 1024])
    p.add_argument("--epochs", type=int, default=90)
    p.add_argument("--blr", type=float, default=0.1)
    p.add_argument("--num-train", type=int, default=50000)
    p.add_argument("--num-val", type=int, default=10000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--features", default=None, help="cached training features (safetensors from ldae probe)")
    p.add_argument("--val-features", default=None, help="cached evaluation features")
    p.add_argument("--out", default=None, help="JSON path (default: bench/results/probe_<device>.json)")
    return p


def synthetic(n: int, m: int, dim: int, c: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Planted classes: Gaussian clusters around random means (train (n, dim), val (m, dim), labels)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(c, dim, generator=g)
    y = torch.randint(0, c, (n + m,), generator=g)
    x = means[y] + 2.0 * torch.randn(n + m, dim, generator=g)
    return x[:n], y[:n], x[n:], y[n:]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.features:
        if not args.val_features:
            raise ValueError("--features needs --val-features")
        tr, _ = load_features(args.features)
        va, _ = load_features(args.val_features)
        data = (tr.features, tr.labels, va.features, va.labels)
        source = {"features": args.features, "val_features": args.val_features}
    else:
        data = synthetic(args.num_train, args.num_val, args.dim, args.num_classes)
        source = {"features": "synthetic planted classes"}
    n, dim = data[0].shape
    load = os.getloadavg() if hasattr(os, "getloadavg") else None  # other processes skew CPU timings: record it
    results: list[dict[str, Any]] = []
    for bs in args.batch_sizes:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        res = train_probe_on_features(*data, num_classes=int(data[1].max()) + 1, epochs=args.epochs, batch_size=bs,
                                      blr=args.blr, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        steps = int(res.history[-1]["train_step"])
        results.append({"batch_size": bs, "epochs": args.epochs, "updates": steps, "lr": res.lr, "seconds": seconds,
                        "ms_per_update": 1000 * seconds / steps, "top1": res.top1, "top5": res.top5,
                        "within_target": seconds <= TARGET_S[device.type]})
        print(f"batch {bs:6d}: {args.epochs} epochs, {steps} updates, {seconds:7.2f} s "
              f"({1000 * seconds / steps:.2f} ms/update), top-1 {res.top1:.2f}  "
              f"[target <= {TARGET_S[device.type]:.0f} s]", flush=True)
    record = {
        "benchmark": "cached linear probe (train_probe_on_features)", "device": device_name(device),
        "device_type": device.type, "num_train": n, "num_val": len(data[2]), "dim": dim, **source,
        "target_seconds": TARGET_S[device.type], "results": results, "load_average_at_start": load,
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["bench/bench_probe.py", *argv]),
        "commit": git_commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    slug = re.sub(r"[^a-z0-9]+", "_", (torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu").lower()).strip("_")
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"probe_{slug}.json"
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
