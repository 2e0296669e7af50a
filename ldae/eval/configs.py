"""The configurations of the evaluation recipes: linear probe, k-NN and fine-tuning.

Each is built from shared parts (the backbone, the data splits, the run) plus the recipe's own
fields. Every field is the flag of the same name of ``ldae probe`` / ``ldae knn`` / ``ldae finetune``
(``--micro-batch-size`` is ``micro_batch_size``), whose help says what it does; defaults are the
paper's (App. A for the probe, App. B / MAE for fine-tuning).
"""
from __future__ import annotations

import dataclasses
import os

from ldae.utils.config import Config

__all__ = ["BackboneConfig", "FrozenBackboneConfig", "EvalDataConfig", "RunConfig", "FeatureCacheConfig",
           "ResumeConfig", "ProbeConfig", "KnnConfig", "FinetuneConfig"]


@dataclasses.dataclass
class BackboneConfig(Config):
    """The evaluated backbone: a timm name, an export folder or an l-DAE checkpoint (``model``), and
    its preprocessing overrides (None: the model's ``pretrained_cfg``)."""

    model: str | None = None
    pretrained: bool = True
    t: int | None = None
    ema: bool = True
    input_size: int | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


@dataclasses.dataclass
class FrozenBackboneConfig(BackboneConfig):
    """A frozen backbone, and what its encoder is shown (:data:`ldae.eval.features.INPUT_VIEWS`)."""

    input_view: str = "clean"


@dataclasses.dataclass
class EvalDataConfig(Config):
    """The labeled data: an ImageFolder tree or archive with a training and an evaluation split."""

    REQUIRED = ("data",)

    data: str | None = None
    train_split: str = "train"
    val_split: str | None = None  # None: 'val', else 'test' (the run records the one it found)
    num_classes: int | None = None
    num_workers: int = dataclasses.field(default_factory=lambda: min(8, os.cpu_count() or 1))
    bad_images: str = "error"


@dataclasses.dataclass
class RunConfig(Config):
    """Where results go, the device, the seed and the console."""

    output_dir: str = "output"
    device: str | None = None
    seed: int = 0
    amp: bool = True
    quiet: bool = False


@dataclasses.dataclass
class FeatureCacheConfig(Config):
    """The cache of frozen features (default folder: ``$LDAE_CACHE/features`` or ``~/.cache/ldae/features``)."""

    cache_dir: str | None = None
    no_cache: bool = False
    recompute: bool = False


@dataclasses.dataclass
class ResumeConfig(Config):
    """Continuing a run: an explicit checkpoint, or ``<output_dir>/checkpoint-last.pth`` when present."""

    resume: str | None = None
    auto_resume: bool = True


@dataclasses.dataclass
class ProbeConfig(FrozenBackboneConfig, EvalDataConfig, RunConfig, FeatureCacheConfig, ResumeConfig):
    """``ldae probe``: BatchNorm + linear head on frozen pooled features, LARS, cosine (App. A)."""

    REQUIRED = ("model", "data")

    mode: str = "paper"  # 'paper': augmented crops every epoch; 'cached': center-crop features once
    epochs: int = 90
    batch_size: int = 16384
    micro_batch_size: int = 256
    blr: float = 0.1
    lr: float | None = None
    warmup_epochs: float = 10
    min_lr: float = 0.0
    weight_decay: float = 0.0
    momentum: float = 0.9
    trust_coeff: float = 1e-3
    eval_every: int = 1
    output_dir: str = "output/probe"


@dataclasses.dataclass
class KnnConfig(FrozenBackboneConfig, EvalDataConfig, RunConfig, FeatureCacheConfig):
    """``ldae knn``: weighted k-NN votes on cached frozen features (DINO's protocol)."""

    REQUIRED = ("model", "data")

    k: tuple[int, ...] = (20, 200)
    temperature: float = 0.07
    batch_size: int = 256
    output_dir: str = "output/knn"


@dataclasses.dataclass
class FinetuneConfig(BackboneConfig, EvalDataConfig, RunConfig, ResumeConfig):
    """``ldae finetune``: end-to-end fine-tuning with MAE's recipe on timm parts (App. B).

    ``model`` may be None only to evaluate or resume a fine-tuning checkpoint, which rebuilds its own."""

    REQUIRED = ("data",)

    epochs: int = 100
    batch_size: int = 1024
    accum_iter: int = 1
    blr: float = 1e-3
    lr: float | None = None
    min_lr: float = 1e-6
    warmup_epochs: float = 5
    weight_decay: float = 0.05
    layer_decay: float | None = None
    drop_path: float = 0.1
    clip_grad: float | None = None
    aa: str = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25
    remode: str = "pixel"
    recount: int = 1
    smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    cutmix_minmax: tuple[float, float] | None = None
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    model_ema: bool = True
    model_ema_decay: float = 0.9999
    eval: bool = False
    eval_every: int = 1
    output_dir: str = "output/finetune"
