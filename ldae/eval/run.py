"""What the evaluation recipes (probe, knn, finetune) share: data splits, cached features, the run's bookkeeping.

:class:`Run` owns one run: the torchrun process group (or a single process), the device, seeding,
the output folder, printing on rank 0, the JSON-lines ``log.txt`` and the final ``<recipe>_results.json``
(with the command, the code's commit and the library versions, so a number can be traced back).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from ldae.engine.dist import barrier, destroy_distributed, init_distributed, seed_everything
from ldae.eval.configs import EvalDataConfig, KnnConfig, ProbeConfig, RunConfig
from ldae.utils.config import to_jsonable
from ldae.utils.io import atomic_write_text
from ldae.utils.provenance import command_line, git_commit

__all__ = ["Run", "build_splits", "extract_split_features", "describe_backbone"]


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

def build_splits(
    cfg: EvalDataConfig,
    train_transform: Callable | None = None,
    val_transform: Callable | None = None,
) -> tuple[Dataset, Dataset]:
    """The training and evaluation datasets of ``--data``, with matching class folders.

    Raises ``ValueError`` when a split is empty, when the evaluation split has class folders the
    training split lacks (or the reverse: labels would not line up), or when ``--num-classes``
    disagrees with the class folders.
    """
    from ldae.data.folders import build_dataset

    policy = {"bad_images": cfg.bad_images}
    train = build_dataset(cfg.data, cfg.train_split, train_transform, **policy)
    if cfg.val_split is not None:
        val = build_dataset(cfg.data, cfg.val_split, val_transform, **policy)
        val_split = cfg.val_split
    else:
        val, val_split, errors = None, None, []
        for name in ("val", "test"):
            try:
                val, val_split = build_dataset(cfg.data, name, val_transform, **policy), name
                break
            except ValueError as e:
                errors.append(str(e))
        if val is None:
            raise ValueError(f"no evaluation split in {cfg.data}: expected a 'val' or 'test' folder next to "
                             f"{cfg.train_split!r}, or pass --val-split ({errors[-1]})")
    cfg.val_split = val_split
    for name, ds in ((cfg.train_split, train), (val_split, val)):
        if len(ds) == 0:
            raise ValueError(f"split {name!r} of {cfg.data} holds no images")
    if list(val.classes) != list(train.classes):
        unknown = sorted(set(val.classes) - set(train.classes))
        missing = sorted(set(train.classes) - set(val.classes))
        raise ValueError(
            f"class folders of split {val_split!r} do not match split {cfg.train_split!r}: "
            f"unknown classes {unknown} (not in {cfg.train_split!r}), missing classes {missing}; "
            "both splits need the same class folders so that labels line up")
    if cfg.num_classes is not None and cfg.num_classes != len(train.classes):
        raise ValueError(f"--num-classes {cfg.num_classes} does not match the {len(train.classes)} class folders "
                         f"of {cfg.data} ({_preview(train.classes)})")
    return train, val


def _preview(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------

class Run:
    """Process group, device, seed, output folder, rank-0 printing, log and results of one recipe run."""

    def __init__(self, recipe: str, cfg: RunConfig) -> None:
        self.recipe, self.cfg = recipe, cfg
        self.env = init_distributed(cfg.device)
        self.rank, self.world_size, self.device = self.env.rank, self.env.world_size, self.env.device
        self.is_main = self.env.is_main
        self.quiet = bool(cfg.quiet)
        seed_everything(cfg.seed, self.rank)
        self.amp_dtype = torch.bfloat16 if cfg.amp and self.device.type == "cuda" else None
        self.out = Path(cfg.output_dir)
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
            "command": command_line(), "args": {k: v for k, v in self.cfg.to_dict().items() if _jsonable(v)},
            "commit": git_commit(), "torch": torch.__version__, "timm": timm.__version__,
            "device": _device_name(self.device), "world_size": self.world_size,
        }
        atomic_write_text(path, json.dumps(full, indent=2) + "\n")
        self.print(f"results: {path}", force=True)
        return path

    # -------------------------------------------------------------- records
    @staticmethod
    def backbone_record(backbone: Any) -> dict[str, Any]:
        return {"model": backbone.spec, "model_source": backbone.source, "t": backbone.t,
                "data_config": to_jsonable(backbone.data_config)}

    def data_record(self, train: Dataset, val: Dataset) -> dict[str, Any]:
        return {"data": str(self.cfg.data), "train_split": self.cfg.train_split, "val_split": self.cfg.val_split,
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
    t = "" if backbone.t is None else f", t={backbone.t}"
    return (f"backbone {backbone.spec} ({backbone.source}, {backbone.num_features}-d features{t}"
            f"{'' if view == 'clean' else f', {view} input'}); input {to_jsonable(backbone.data_config)}")


def extract_split_features(cfg: ProbeConfig | KnnConfig, run: Run, train: Dataset, val: Dataset, batch_size: int = 256):
    """Build the backbone of ``cfg``, then the (cached) clean-crop features of both splits.

    Both splits use the evaluation transform (resize + center crop from the model's data config):
    features are computed once, without augmentation. Returns ``(backbone, train_fs, val_fs)``.
    """
    from timm.data import create_transform

    from ldae.data.archives import default_cache_dir
    from ldae.eval.features import FeatureExtractor
    from ldae.eval.backbones import backbone_from_config
    from ldae.eval.feature_cache import cached_features, dataset_identity

    backbone = backbone_from_config(cfg)
    data_cfg = backbone.data_config
    transform = create_transform(**data_cfg)  # timm's eval transform of the model's data config
    extractor = FeatureExtractor.from_backbone(backbone, view=cfg.input_view)
    cache_dir = None if cfg.no_cache else Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir() / "features"
    run.print(describe_backbone(backbone, extractor.view))
    out = []
    for ds, split in ((train, cfg.train_split), (val, cfg.val_split)):
        ds.transform = transform  # type: ignore[attr-defined]
        identity = {"backbone": backbone.identity, "input_view": extractor.view,
                    "amp": str(run.amp_dtype), **dataset_identity(cfg.data, split)}
        if extractor.view == "noisy":  # the noise draw depends on the seed and the number of processes
            identity.update(seed=cfg.seed, world_size=run.world_size)
        fs, path = cached_features(
            extractor, ds, to_jsonable(identity), cache_dir, name=f"{Path(str(backbone.spec)).name}-{split}",
            recompute=cfg.recompute, batch_size=batch_size,
            num_workers=cfg.num_workers, device=run.device, amp_dtype=run.amp_dtype, seed=cfg.seed,
            quiet=run.quiet, desc=f"features {split}")
        run.print(f"{split}: {len(fs)} x {fs.features.shape[1]} features" + (f" ({path})" if path else ""))
        out.append(fs)
    return backbone, out[0], out[1]
