"""What the evaluation recipes (probe, knn, finetune) share: flags, data splits, the run's bookkeeping.

:class:`Run` owns one run: the torchrun process group (or a single process), the device, seeding,
the output folder, printing on rank 0, the JSON-lines ``log.txt`` and the final ``<recipe>_results.json``
(with the command, the code's commit and the library versions, so a number can be traced back).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from .dist import barrier, destroy_distributed, init_distributed, seed_everything
from .image_decode import add_bad_images_arg
from .io import atomic_path

__all__ = ["Run", "add_data_args", "add_runtime_args", "add_checkpoint_args", "build_splits", "extract_split_features",
           "describe_backbone", "command_line", "git_commit"]


# ----------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------

def add_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("data")
    g.add_argument("--data", required=True,
                   help="ImageFolder folder, .tar or .tar.gz holding <split>/<class>/<image> (e.g. "
                        "../shared/data/cifar10-jpeg.tar.gz, /data/imagenet)")
    g.add_argument("--train-split", default="train", help="training split folder")
    g.add_argument("--val-split", default=None, help="evaluation split folder (default: 'val', else 'test')")
    g.add_argument("--num-classes", type=int, default=None,
                   help="expected number of classes (checked against the class folders; default: what they hold)")
    g.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1), help="data loading processes")
    add_bad_images_arg(g)
    return parser


def add_runtime_args(parser: argparse.ArgumentParser, default_output: str, feature_cache: bool = True) -> argparse.ArgumentParser:
    g = parser.add_argument_group("run")
    g.add_argument("--output-dir", default=default_output, help="where results, log.txt and checkpoints go")
    g.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="bfloat16 autocast on CUDA (ignored on CPU, which runs float32)")
    if feature_cache:
        g.add_argument("--cache-dir", default=None,
                       help="feature cache folder (default: $LDAE_CACHE/features or ~/.cache/ldae/features)")
        g.add_argument("--no-cache", action="store_true", help="neither read nor write cached features")
        g.add_argument("--recompute", action="store_true", help="recompute features and overwrite the cache")
    g.add_argument("--quiet", action="store_true", help="no progress bars and no per-epoch lines")
    return parser


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

def build_splits(
    args: argparse.Namespace,
    train_transform: Callable | None = None,
    val_transform: Callable | None = None,
) -> tuple[Dataset, Dataset]:
    """The training and evaluation datasets of ``--data``, with matching class folders.

    Raises ``ValueError`` when a split is empty, when the evaluation split has class folders the
    training split lacks (or the reverse: labels would not line up), or when ``--num-classes``
    disagrees with the class folders.
    """
    from .data import build_dataset

    policy = {"bad_images": getattr(args, "bad_images", "error")}
    train = build_dataset(args.data, args.train_split, train_transform, **policy)
    if args.val_split is not None:
        val = build_dataset(args.data, args.val_split, val_transform, **policy)
        val_split = args.val_split
    else:
        val, val_split, errors = None, None, []
        for name in ("val", "test"):
            try:
                val, val_split = build_dataset(args.data, name, val_transform, **policy), name
                break
            except ValueError as e:
                errors.append(str(e))
        if val is None:
            raise ValueError(f"no evaluation split in {args.data}: expected a 'val' or 'test' folder next to "
                             f"{args.train_split!r}, or pass --val-split ({errors[-1]})")
    args.val_split = val_split
    for name, ds in ((args.train_split, train), (val_split, val)):
        if len(ds) == 0:
            raise ValueError(f"split {name!r} of {args.data} holds no images")
    if list(val.classes) != list(train.classes):
        unknown = sorted(set(val.classes) - set(train.classes))
        missing = sorted(set(train.classes) - set(val.classes))
        raise ValueError(
            f"class folders of split {val_split!r} do not match split {args.train_split!r}: "
            f"unknown classes {unknown} (not in {args.train_split!r}), missing classes {missing}; "
            "both splits need the same class folders so that labels line up")
    if args.num_classes is not None and args.num_classes != len(train.classes):
        raise ValueError(f"--num-classes {args.num_classes} does not match the {len(train.classes)} class folders "
                         f"of {args.data} ({_preview(train.classes)})")
    return train, val


def _preview(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------

def command_line() -> str:
    """The command as typed: ``ldae probe ...`` or ``python -m ldae.probe ...`` (torchrun's own flags are not
    visible to the process)."""
    argv = list(sys.argv)
    head = Path(argv[0]) if argv else Path("")
    if head.name == "ldae" or (head.name == "cli.py" and head.parent.name == "ldae"):  # the console script
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


class Run:
    """Process group, device, seed, output folder, rank-0 printing, log and results of one recipe run."""

    def __init__(self, recipe: str, args: argparse.Namespace) -> None:
        self.recipe, self.args = recipe, args
        self.env = init_distributed(args.device)
        self.rank, self.world_size, self.device = self.env.rank, self.env.world_size, self.env.device
        self.is_main = self.env.is_main
        self.quiet = bool(args.quiet)
        seed_everything(args.seed, self.rank)
        self.amp_dtype = torch.bfloat16 if args.amp and self.device.type == "cuda" else None
        self.out = Path(args.output_dir)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)

    # -------------------------------------------------------------- output
    def print(self, msg: str, force: bool = False) -> None:
        """Print on rank 0 (unless ``--quiet``, or ``force``)."""
        if self.is_main and (force or not self.quiet):
            print(msg, flush=True)

    def log(self, stats: dict[str, Any]) -> None:
        """Append one JSON line to ``<output-dir>/log.txt`` (rank 0)."""
        if self.is_main:
            with open(self.out / "log.txt", "a") as f:
                f.write(json.dumps(stats) + "\n")

    def write_results(self, record: dict[str, Any]) -> Path:
        """Write ``<output-dir>/<recipe>_results.json`` atomically (rank 0) with the run's provenance."""
        import timm

        path = self.out / f"{self.recipe}_results.json"
        if not self.is_main:
            return path
        full = {
            "recipe": self.recipe, **record,
            "command": command_line(), "args": {k: v for k, v in vars(self.args).items() if _jsonable(v)},
            "commit": git_commit(), "torch": torch.__version__, "timm": timm.__version__,
            "device": _device_name(self.device), "world_size": self.world_size,
        }
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(full, indent=2) + "\n")
        self.print(f"results: {path}", force=True)
        return path

    # -------------------------------------------------------------- records
    @staticmethod
    def backbone_record(backbone: Any) -> dict[str, Any]:
        from .features import to_jsonable

        return {"model": backbone.spec, "model_source": backbone.source, "t": backbone.t,
                "data_config": to_jsonable(backbone.data_config)}

    def data_record(self, train: Dataset, val: Dataset) -> dict[str, Any]:
        return {"data": str(self.args.data), "train_split": self.args.train_split, "val_split": self.args.val_split,
                "num_train": len(train), "num_val": len(val), "num_classes": len(train.classes)}  # type: ignore[arg-type, attr-defined]

    # -------------------------------------------------------------- teardown
    def barrier(self) -> None:
        barrier()

    def close(self) -> None:
        destroy_distributed()


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


# ----------------------------------------------------------------------------------------------
# Cached features of both splits
# ----------------------------------------------------------------------------------------------

def describe_backbone(backbone: Any, view: str = "clean") -> str:
    """One line naming the backbone, its feature size, level t, input view and preprocessing."""
    from .features import to_jsonable

    t = "" if backbone.t is None else f", t={backbone.t}"
    return (f"backbone {backbone.spec} ({backbone.source}, {backbone.num_features}-d features{t}"
            f"{'' if view == 'clean' else f', {view} input'}); input {to_jsonable(backbone.data_config)}")


def extract_split_features(args: argparse.Namespace, run: Run, train: Dataset, val: Dataset, batch_size: int = 256):
    """Build the backbone of ``args``, then the (cached) clean-crop features of both splits.

    Both splits use the evaluation transform (resize + center crop from the model's data config):
    features are computed once, without augmentation. Returns ``(backbone, train_fs, val_fs)``.
    """
    from timm.data import create_transform

    from .data import default_cache_dir
    from .features import FeatureExtractor, backbone_from_args, cached_features, dataset_identity, to_jsonable

    backbone = backbone_from_args(args)
    cfg = backbone.data_config
    transform = create_transform(cfg["input_size"], is_training=False, interpolation=cfg["interpolation"],
                                 mean=cfg["mean"], std=cfg["std"], crop_pct=cfg["crop_pct"],
                                 crop_mode=cfg.get("crop_mode", "center"))
    extractor = FeatureExtractor.from_backbone(backbone, view=getattr(args, "input_view", "clean"))
    cache_dir = None if args.no_cache else Path(args.cache_dir) if args.cache_dir else default_cache_dir() / "features"
    run.print(describe_backbone(backbone, extractor.view))
    out = []
    for ds, split in ((train, args.train_split), (val, args.val_split)):
        ds.transform = transform  # type: ignore[attr-defined]
        identity = {"backbone": backbone.identity, "input_view": extractor.view,
                    "amp": str(run.amp_dtype), **dataset_identity(args.data, split)}
        if extractor.view == "noisy":  # the noise draw depends on the seed and the number of processes
            identity.update(seed=args.seed, world_size=run.world_size)
        fs, path = cached_features(
            extractor, ds, to_jsonable(identity), cache_dir, name=f"{Path(str(backbone.spec)).name}-{split}",
            recompute=args.recompute, batch_size=batch_size,
            num_workers=args.num_workers, device=run.device, amp_dtype=run.amp_dtype, seed=args.seed,
            quiet=run.quiet, desc=f"features {split}")
        run.print(f"{split}: {len(fs)} x {fs.features.shape[1]} features" + (f" ({path})" if path else ""))
        out.append(fs)
    return backbone, out[0], out[1]


def add_checkpoint_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("checkpoints")
    g.add_argument("--resume", default=None, help="continue from this checkpoint (default: <output-dir>/checkpoint-last.pth "
                   "when it exists, see --auto-resume)")
    g.add_argument("--auto-resume", action=argparse.BooleanOptionalAction, default=True,
                   help="resume from <output-dir>/checkpoint-last.pth when present")
    return parser
