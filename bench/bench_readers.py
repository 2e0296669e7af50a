"""Our image readers against timm's (``timm.data.ImageDataset``): decode speed and what each finds.

    python bench/bench_readers.py --out bench/results/readers_cpu.json

On the same files, in one process (no loader workers), each reader decodes every image to RGB: the
Imagenette tar (2,500 JPEGs, 224 px; ours: ``TarImageDataset``, timm: ``ReaderImageInTar``) and the
CIFAR-10 test split extracted to a folder (10,000 JPEGs, 32 px; ours: ``ImageFolderDataset``, timm:
``ReaderImageFolder``). Each reader is timed ``--repeats`` times in alternation and the best time is
kept. The record also says whether both readers found the same classes, labels and file order, and
what each does with the layouts and failures the recipes meet.

With ``webdataset`` installed (it is not a dependency of ldae), the CIFAR-10 test split is also written
as 10 shards by ``ldae.data.shards.write_shards`` (the JPEG bytes unchanged) and read back, in shard
order without shuffling, by ``ShardDataset`` and by ``webdataset.WebDataset(...).decode("pil")``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ldae.data.folders import ImageFolderDataset, TarImageDataset  # noqa: E402
from ldae.utils.provenance import git_commit  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _time_all(ds, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        img, _ = ds[i]
        img.load() if hasattr(img, "load") else None
    return time.perf_counter() - t0


def _timm(root: str):
    from timm.data import ImageDataset

    return ImageDataset(root)


def _names_ours(ds) -> list[str]:
    return [Path(ds.where(i)).name if ":" not in ds.where(i) else ds.where(i).rsplit("/", 1)[-1] for i in range(len(ds))]


def _names_timm(ds) -> list[str]:
    return [Path(str(ds.reader._filename(i, basename=True))).name for i in range(len(ds))]


def compare(name: str, ours, theirs, repeats: int) -> dict:
    n = len(ours)
    times = {"ours": [], "timm": []}
    for _ in range(repeats):
        times["ours"].append(_time_all(ours, n))
        times["timm"].append(_time_all(theirs, len(theirs)))
    ours_labels = list(ours.targets)
    reader = theirs.reader
    if hasattr(reader, "targets"):  # ReaderImageInTar
        timm_labels, to_idx = [int(t) for t in reader.targets], reader.class_name_to_idx
    else:  # ReaderImageFolder
        timm_labels, to_idx = [int(t) for _, t in reader.samples], reader.class_to_idx
    timm_classes = sorted(to_idx, key=to_idx.get)
    best = {k: min(v) for k, v in times.items()}
    return {
        "data": name, "images": n, "timm_images": len(theirs),
        "seconds_best": best, "images_per_second": {k: n / v for k, v in best.items()},
        "timm_over_ours_time": best["timm"] / best["ours"], "seconds_all": times,
        "same_classes": list(ours.classes) == timm_classes,
        "same_labels_in_order": ours_labels == timm_labels,
        "same_file_order": _names_ours(ours) == _names_timm(theirs),
    }


def compare_shards(root: Path, tmp: Path, repeats: int) -> dict | None:
    try:
        import webdataset as wds
    except ImportError:
        return None
    from ldae.data.shards import ShardDataset, write_shards

    urls = write_shards(ImageFolderDataset(root), str(tmp / "shard-%02d.tar"), max_count=1000, image_format="jpg",
                        progress=False)

    def ours():
        return sum(1 for img, _ in ShardDataset(urls, shuffle_buffer=0, rank=0, world_size=1) if img.load() or True)

    def theirs():
        ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil").to_tuple("jpg", "cls")
        return sum(1 for img, _ in ds if img.load() or True)

    times: dict[str, list[float]] = {"ours": [], "webdataset": []}
    counts = {}
    for _ in range(repeats):
        for name, fn in (("ours", ours), ("webdataset", theirs)):
            t0 = time.perf_counter()
            counts[name] = fn()
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    return {"data": f"cifar10-jpeg test split as {len(urls)} shards", "images": counts,
            "seconds_best": best, "images_per_second": {k: counts[k] / v for k, v in best.items()},
            "webdataset_over_ours_time": best["webdataset"] / best["ours"], "seconds_all": times,
            "webdataset_version": wds.__version__}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(SHARED))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    data = Path(a.data_dir)
    rows = []
    tar = data / "imagenette-224-train2500.tar"
    rows.append(compare("imagenette-224-train2500.tar (uncompressed tar)", TarImageDataset(str(tar), "train"),
                        _timm(str(tar)), a.repeats))
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(data / "cifar10-jpeg.tar.gz") as tf:
            members = [m for m in tf if m.isfile() and "/test/" in m.name]
            tf.extractall(tmp, members=members, filter="data")
        root = Path(tmp) / "cifar10-jpeg" / "test"
        rows.append(compare("cifar10-jpeg test split (folder)", ImageFolderDataset(root), _timm(str(root)), a.repeats))
        shards = compare_shards(root, Path(tmp), a.repeats)
    record = {
        "benchmark": "image readers, ours vs timm.data.ImageDataset (decode every image to RGB, one process)",
        "command": "python bench/bench_readers.py" + (f" --out {a.out}" if a.out else ""),
        "device": f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores), 1 thread",
        "commit": git_commit(), "torch": torch.__version__, "timm": __import__("timm").__version__,
        "rows": rows, "shards": shards,
        "what_timm_lacks": [
            "a .tar.gz archive (ReaderImageInTar reads uncompressed tars only)",
            "class folders under a wrapper or split folder (<archive>/<name>/<split>/<class>): timm takes the class from "
            "the parent folder name, so a tar holding several splits mixes them",
            "the bad-image policy: an unreadable file stops timm's loader (or, with its own error-skipping, changes the "
            "batch), while ours names archive:member or uses the next readable image deterministically, so resume stays exact",
        ],
    }
    text = json.dumps(record, indent=2) + "\n"
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
