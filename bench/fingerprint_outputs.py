"""Fingerprints of what the recipes write, to show that a change of the code leaves outputs unchanged.

    python bench/fingerprint_outputs.py --data ../shared/data/cifar10-jpeg.tar.gz --work /tmp/fp --out fp.json

Builds a small ImageFolder (the first 16 images of each class of both splits), then runs, on the CPU
with one thread: ``ldae fit-pca``, ``ldae pretrain`` (a tiny custom size, 2 epochs, bf16),
``ldae export --denoiser``, ``ldae probe --mode cached``, ``ldae knn`` and one epoch of
``ldae finetune``. It writes the sha256 of every tensor those write (file metadata such as the commit
and paths is left out) and the reported accuracies. Run it before and after a change and compare the
two JSON files (with the same ``--work``: results record their paths): equal fingerprints mean
bit-identical outputs. ``--compare A B`` prints what differs between two fingerprint files.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import torch
from safetensors.torch import load_file

PER_CLASS = 16
MODEL = "custom:img=32,patch=4,dim=64,enc=2,dec=2,heads=2,d=8"


def small_folder(archive: str, root: Path) -> Path:
    """The first PER_CLASS images (by member order) of every class of every split of ``archive``."""
    if root.is_dir():
        return root
    tmp = root.with_name(root.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(archive) as tar:
        for m in tar:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) < 4:
                continue
            key = (parts[-3], parts[-2])
            if counts.get(key, 0) >= PER_CLASS:
                continue
            counts[key] = counts.get(key, 0) + 1
            dest = tmp / parts[-3] / parts[-2] / parts[-1]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(m).read())
    tmp.rename(root)
    return root


def tensor_digest(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    out = {}
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous().reshape(-1)
        out[k] = hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()[:16] + f":{t.dtype}"
    return out


def flatten(obj, prefix=""):
    """The tensors nested in a checkpoint dict, keyed by their path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}.{i}"))
    return out


def _without_file_hashes(obj):
    """A record without the sha256 of files: safetensors writes its metadata in an order that varies
    from run to run, so a file's bytes (not its tensors, fingerprinted separately) differ between runs."""
    if isinstance(obj, dict):
        return {k: _without_file_hashes(v) for k, v in obj.items() if k != "sha256"}
    return obj


def run(cmd: list[str], env: dict[str, str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


VARYING = ("commit", "seconds")  # what may differ between two runs of the same code


def differences(a, b, path: str = "") -> list[str]:
    """The paths where two fingerprints differ (keys in :data:`VARYING` left out)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k in VARYING:
                continue
            if k not in a or k not in b:
                out.append(f"{path}/{k} (one side only)")
            else:
                out += differences(a[k], b[k], f"{path}/{k}")
        return out
    return [] if a == b else [path]


def count_tensors(fp) -> int:
    if isinstance(fp, dict):
        return sum(count_tensors(v) for v in fp.values())
    return int(isinstance(fp, str) and ":torch." in fp)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data")
    p.add_argument("--work")
    p.add_argument("--out")
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two fingerprint files instead")
    a = p.parse_args()
    if a.compare:
        before, after = (json.loads(Path(f).read_text()) for f in a.compare)
        diff = differences(before, after)
        print(f"{count_tensors(after)} tensors and every recorded result compared: "
              + ("identical" if not diff else f"{len(diff)} differences: {diff}"))
        return int(bool(diff))
    if not (a.data and a.work and a.out):
        p.error("--data, --work and --out are required (or --compare BEFORE AFTER)")
    work = Path(a.work)
    data = small_folder(a.data, work / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    runs = work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    ldae = [sys.executable, "-m", "ldae.cli"]
    tok = runs / "pca.safetensors"
    run([*ldae, "fit-pca", str(data), "--split", "train", "--img-size", "32", "--patch-size", "4", "--out", str(tok),
         "--quiet", "--workers", "0"], env)
    pre = runs / "pretrain"
    run([*ldae, "pretrain", "--data", str(data), "--tokenizer", str(tok), "--model", MODEL, "--epochs", "2",
         "--warmup-epochs", "1", "--global-batch", "32", "--device", "cpu", "--precision", "bf16", "--threads", "1",
         "--num-workers", "0", "--ema-decay", "0.9", "--output-dir", str(pre), "--quiet", "--log-every", "2"], env)
    ckpt = pre / "checkpoint-0002.pth"
    exp = runs / "export"
    run([*ldae, "export", str(ckpt), "--out", str(exp), "--denoiser", "float32", "--tag", "fp"], env)
    common = ["--data", str(data), "--device", "cpu", "--num-workers", "0", "--seed", "0", "--quiet"]
    run([*ldae, "probe", "--mode", "cached", "--model", str(ckpt), "--epochs", "3", "--warmup-epochs", "1", "--batch-size", "64",
         "--output-dir", str(runs / "probe"), "--no-cache", *common], env)
    run([*ldae, "knn", "--model", str(ckpt), "--k", "5", "--output-dir", str(runs / "knn"), "--no-cache", *common], env)
    run([*ldae, "finetune", "--model", str(ckpt), "--epochs", "1", "--batch-size", "32", "--warmup-epochs", "0",
         "--output-dir", str(runs / "finetune"), *common], env)

    fp: dict = {"tokenizer": tensor_digest(load_file(tok))}
    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    fp["checkpoint"] = tensor_digest(flatten({k: ck[k] for k in ("model", "ema", "optimizer")}))
    fp["export"] = tensor_digest(load_file(exp / "model.safetensors"))
    fp["denoiser"] = tensor_digest(load_file(exp / "denoiser.safetensors"))
    fp["export_config"] = _without_file_hashes(json.loads((exp / "config.json").read_text()))
    for name in ("probe", "knn", "finetune"):
        d = runs / name
        fp[name] = {f.name: json.loads(f.read_text()) for f in sorted(d.glob("*.json")) if "results" in f.name}
        for f in sorted(d.glob("*.pth")):
            fp[name][f.name] = tensor_digest(flatten(torch.load(f, map_location="cpu", weights_only=True)))
        for f in sorted(d.glob("*.safetensors")):
            fp[name][f.name] = tensor_digest(load_file(f))
    Path(a.out).write_text(json.dumps(fp, indent=1, sort_keys=True, default=str) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
