"""The configuration of a pretraining run (``ldae pretrain``): model, data, tokenizer, optimisation, speed, run.

Defaults are the paper's (App. A): 256 px, global batch 2048, blr 1e-4 with lr = blr * batch / 256,
100 warmup epochs of 400 then a half-cycle cosine, AdamW without weight decay, center crop. Each
field is the ``ldae pretrain`` flag of the same name (``--global-batch`` is ``global_batch``); the
flags' help says what each one does. Checkpoints store this config as a dict under ``args``.
"""
from __future__ import annotations

import dataclasses
import os

from ldae.models.model_config import ModelConfig

__all__ = ["PretrainConfig"]


@dataclasses.dataclass
class PretrainConfig(ModelConfig):
    """Every choice of a pretraining run (the model fields come first, from :class:`ModelConfig`)."""

    # data: exactly one of `data` (folder, .tar, .tar.gz) and `data_shards`
    data: str | None = None
    data_shards: str | None = None
    epoch_samples: int | None = None
    split: str = "train"
    gpu_data: bool = False
    norm: str | None = None
    crop: str = "center"
    crop_scale: tuple[float, float] = (0.2, 1.0)
    hflip: bool = False
    num_workers: int = dataclasses.field(default_factory=lambda: min(10, os.cpu_count() or 1))
    shuffle_buffer: int = 5000
    bad_images: str = "error"
    # tokenizer: a file, or fitted at the start
    tokenizer: str | None = None
    fit_tokenizer: bool = False
    fit_images: int = 10000
    fit_patches_per_image: int | None = None
    # optimisation
    epochs: int = 400
    warmup_epochs: float = 100
    global_batch: int = 2048
    batch_size: int | None = None
    accum_iter: int | None = None
    blr: float = 1e-4
    lr: float | None = None
    min_lr: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = None
    ema_decay: float = 0.0
    # speed
    device: str | None = None
    precision: str = "auto"
    attention: str = "auto"
    threads: int | None = None
    compile: str = "auto"  # auto / on / blocks / off (ldae.engine.compile_policy)
    compile_mode: str | None = None
    grad_checkpointing: bool = False
    peak_tflops: float | None = None
    # run
    output_dir: str = "runs/pretrain"
    resume: str | None = None
    save_every_epochs: int = 50
    last_every_epochs: int = 1
    save_every_steps: int = 0
    stop_at_step: int | None = None
    log_every: int = 50
    seed: int = 0
    quiet: bool = False
