"""Collect one pretraining run and the evaluations of its checkpoints into a results JSON.

    python bench/collect_pretrain_results.py runs/micro_cifar10 \\
        --eval init=evals/init --eval 1=evals/ep1 --eval 10=evals/ep10 \\
        --reference bench/results/probe_lr_conventions_cpu.json --out bench/results/cifar10_micro_cpu.json

``RUN`` is an ``ldae pretrain`` output folder (``run.json``, ``log.jsonl``). Each ``--eval E=DIR`` names
the folder holding ``probe/probe_results.json`` and ``knn/knn_results.json`` of the checkpoint after
epoch ``E`` (``init``: the same architecture at random initialisation). Nothing is computed here that
the runs did not record: minutes come from the log's wall-clock stamps, accuracies from the result files.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ldae.engine.metrics_log import read_jsonl  # noqa: E402
from ldae.utils.provenance import git_commit  # noqa: E402


def _result(folder: Path, recipe: str) -> dict[str, Any]:
    path = folder / recipe / f"{recipe}_results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (expected the {recipe} result of that checkpoint)")
    return json.loads(path.read_text())


def _as_typed(command: str) -> str:
    """``python -m ldae.pretrain ...`` for a command recorded as the module's file path (``-m`` runs)."""
    import shlex

    argv = shlex.split(command)
    if argv and argv[0].endswith("ldae/pretrain.py"):
        argv = ["python", "-m", "ldae.pretrain", *argv[1:]]
    return shlex.join(argv)


def collect(run: Path, evals: dict[str, Path], reference: Path | None) -> dict[str, Any]:
    info = json.loads((run / "run.json").read_text())
    steps = [r for r in read_jsonl(run / "log.jsonl") if isinstance(r.get("step"), int) and "time" in r]
    if not steps:
        raise ValueError(f"{run / 'log.jsonl'} holds no logged steps")
    start = os.stat(run / "run.json").st_mtime  # written when training starts (after data and tokenizer)
    spe, batch = info["steps_per_epoch"], info["global_batch"]

    def minutes_at(step: int) -> float | None:
        rec = next((r for r in steps if r["step"] >= step), None)
        return round((rec["time"] - start) / 60, 1) if rec is not None else None

    curve = []
    for label, folder in evals.items():
        probe, knn = _result(folder, "probe"), _result(folder, "knn")
        epoch = 0 if label == "init" else int(label)
        curve.append({
            "epoch": epoch, "label": "random init (same architecture)" if label == "init" else f"epoch {epoch}",
            "images_seen": epoch * spe * batch, "minutes": 0.0 if label == "init" else minutes_at(epoch * spe),
            "probe_top1": probe["top1"], "knn_top1": knn["top1"], "knn_per_k": knn["per_k"],
            "probe_command": probe["command"], "knn_command": knn["command"], "model": probe["model"],
        })
    curve.sort(key=lambda r: r["epoch"])
    record: dict[str, Any] = {
        "what": "l-DAE pretraining on CIFAR-10 (JPEG copy) on a CPU, and the cached linear probe (batch 1024, blr 10, "
                "90 epochs) and k-NN (k = 20, 200) of its checkpoints on the test split",
        "pretrain_command": _as_typed(info["command"]), "pretrain_commit": info["commit"], "device": info["device"],
        "threads": info.get("threads"), "precision": info.get("precision"), "attention": info.get("attention"),
        "params": info["params"], "steps": steps[-1]["step"], "global_batch": batch,
        "images_seen": steps[-1]["step"] * batch, "minutes": round((steps[-1]["time"] - start) / 60, 1),
        "final_loss": steps[-1]["loss"], "curve": curve, "commit": git_commit(),
        "img_per_s_logged": [r["img_per_s"] for r in steps],  # per log window (other jobs on the cores show here)
    }
    if reference is not None:
        ref = json.loads(reference.read_text())
        row = next(r for r in ref["rows"] if r.get("run") == "probe_b1024_blr10")
        record["reference"] = {"what": f"{row['model']} at random init, same cached probe", "probe_top1": row["top1"],
                               "file": str(reference.relative_to(ROOT)) if reference.is_relative_to(ROOT) else str(reference)}
    return record


def readme_table(record: dict[str, Any]) -> str:
    """The README's table of a run's checkpoints (a test keeps the README equal to the committed JSON)."""
    lines = ["| checkpoint | images seen | minutes | cached probe top-1 | k-NN top-1 (k = 20) |", "|---|---|---|---|---|"]
    for r in record["curve"]:
        minutes = "-" if r["epoch"] == 0 else f"{r['minutes']:.0f}"
        lines.append(f"| {r['label']} | {r['images_seen']:,} | {minutes} | {r['probe_top1']:.1f}% | "
                     f"{r['knn_per_k']['20']['top1']:.1f}% |")
    if "reference" in record:
        lines.append(f"| {record['reference']['what'].replace(', same cached probe', '')} | 0 | - | "
                     f"{record['reference']['probe_top1']:.1f}% | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="ldae pretrain --output-dir")
    p.add_argument("--eval", action="append", default=[], metavar="EPOCH=DIR", help="evaluations of one checkpoint (repeatable)")
    p.add_argument("--reference", type=Path, default=None, help="results JSON with a random-init reference probe row")
    p.add_argument("--wall-seconds", type=float, default=None, help="wall-clock seconds of the whole command as the user "
                   "waits for it (start-up, data decoding and training), measured outside the process")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    evals: dict[str, Path] = {}
    for item in args.eval:
        label, sep, folder = item.partition("=")
        if not sep or not (label == "init" or label.isdigit()):
            p.error(f"--eval expects EPOCH=DIR or init=DIR, got {item!r}")
        evals[label] = Path(folder)
    record = collect(args.run, evals, args.reference)
    if args.wall_seconds is not None:
        record["wall_minutes_whole_command"] = round(args.wall_seconds / 60, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(readme_table(record))
    for r in record["curve"]:
        print(f"{r['label']:34s} {r['images_seen']:>8d} images  {r['minutes'] or 0:6.1f} min  probe {r['probe_top1']:.2f}  "
              f"knn {r['knn_top1']:.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
