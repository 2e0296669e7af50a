"""End-to-end fine-tuning (``ldae finetune``): MAE's recipe on timm parts, with App. B's settings.

AdamW (lr 4e-3 at batch 1024, weight decay 0.05) with layer-wise lr decay through timm's
``create_optimizer_v2(..., layer_decay=...)`` (0.85 for ViT-B, 0.65 for ViT-L), per-update warmup +
cosine schedule, drop path 0.1, RandAugment (9, 0.5) and random erasing via ``create_transform``,
Mixup 0.8 / CutMix 1.0 with label smoothing 0.1 via ``timm.data.Mixup``, an EMA of the weights
(``ModelEmaV3``, 0.9999), 100 epochs; global average pooling as in the l-DAE export.

Checkpoints (``<output-dir>/checkpoint-last.pth``) are written atomically every epoch and hold what a
resume needs (model, EMA, optimizer, epoch, step, RNG) and the architecture record, so
``--eval --resume CKPT`` rebuilds and evaluates the model without its original pretrained weights.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.nn as nn
from PIL import Image, ImageOps
from timm.data import Mixup, create_transform
from timm.layers import trunc_normal_
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, DistributedSampler, Subset

from ldae.engine.checkpoint import load_state, rng_state, save_state, set_rng_state
from ldae.engine.finetune_loop import evaluate, train_one_epoch
from ldae.engine.lr_schedule import cosine_schedule, resolve_lr
from ldae.eval.configs import FinetuneConfig

__all__ = ["default_layer_decay", "build_optimizer", "build_mixup", "build_criterion", "build_train_transform", "run_finetune"]

CKPT_FORMAT = "ldae.finetune.v1"


def default_layer_decay(model: nn.Module) -> float:
    """App. B: 0.85 for ViT-B (12 blocks), 0.65 for ViT-L (24 blocks); by depth for other models."""
    depth = len(getattr(model, "blocks", ())) or 12
    return 0.65 if depth >= 24 else 0.85


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.05, layer_decay: float | None = None) -> torch.optim.Optimizer:
    """AdamW with timm's parameter groups: no weight decay on biases, norms and position embeddings, and
    per-layer ``lr_scale = layer_decay ** (num_layers - 1 - layer_id)`` (the head 1, the patch embedding
    the smallest), which the lr schedule multiplies into each group's lr."""
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise ValueError(f"--layer-decay must be in (0, 1], got {layer_decay}")
    return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=weight_decay, layer_decay=layer_decay,
                               betas=(0.9, 0.999))


def build_mixup(cfg: FinetuneConfig, num_classes: int) -> Mixup | None:
    """timm ``Mixup`` (Mixup / CutMix switching per batch, label smoothing folded into the soft targets),
    or None when both alphas are 0."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0 and cfg.cutmix_minmax is None:
        return None
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, cutmix_minmax=cfg.cutmix_minmax,
                 prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode,
                 label_smoothing=cfg.smoothing, num_classes=num_classes)


def build_criterion(mixup: Mixup | None, smoothing: float) -> nn.Module:
    if mixup is not None:
        return SoftTargetCrossEntropy()  # targets are already mixed and smoothed
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()


def build_train_transform(data_cfg: dict[str, Any], cfg: FinetuneConfig) -> Callable:
    """MAE's fine-tuning augmentation through timm's ``create_transform``: RandomResizedCrop + flip,
    RandAugment (``--aa``), random erasing; no color jitter (RandAugment replaces it)."""
    tf = create_transform(data_cfg["input_size"], is_training=True, auto_augment=cfg.aa, interpolation="bicubic",
                          color_jitter=None, re_prob=cfg.reprob, re_mode=cfg.remode, re_count=cfg.recount,
                          mean=data_cfg["mean"], std=data_cfg["std"])
    for t in getattr(tf, "transforms", []):
        for op in getattr(t, "ops", []):  # RandAugment's AugmentOps
            if op.name == "PosterizeIncreasing":
                op.aug_fn = _posterize
    return tf


def _posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    # RandAugment's 'inc1' posterize keeps 4 - int(4 * m / 10) bits, i.e. 0 bits when the mstd noise
    # pushes m to its bound 10 (2% of draws at m9-mstd0.5). Older Pillow returned a black image for
    # 0 bits, recent Pillow raises ValueError and would stop the run; keep the old behaviour.
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _build_model(cfg: FinetuneConfig, num_classes: int, state: dict[str, Any] | None) -> tuple[nn.Module, dict, dict]:
    """(model, data config, architecture record).

    A checkpoint rebuilds its own architecture (its weights are loaded afterwards: resuming needs no
    pretrained weights). Otherwise ``--model`` is built with a fresh ``num_classes`` head, or with its own
    classifier for ``--eval`` without a checkpoint.
    """
    from ldae.eval.backbones import backbone_from_config, data_overrides, rebuild_architecture, resolve_data_config

    if state is not None:
        model = rebuild_architecture(state["arch"])
        return model, resolve_data_config(model, data_overrides(cfg)), state["arch"]
    if cfg.model is None:
        raise ValueError("--model is required (it may be omitted only with --resume CKPT)")
    if cfg.eval:
        backbone = backbone_from_config(cfg, num_classes=None)
        own = getattr(backbone.model, "num_classes", 0)
        if own != num_classes:
            raise ValueError(f"--eval without --resume evaluates {cfg.model!r} with its own classifier of {own} classes, "
                             f"but the data has {num_classes} classes: pass --resume with a fine-tuned checkpoint")
        return backbone.model, backbone.data_config, backbone.arch
    backbone = backbone_from_config(cfg, num_classes=num_classes, drop_path_rate=cfg.drop_path)
    head = backbone.model.get_classifier()
    if isinstance(head, nn.Linear):  # MAE: a near-zero head, so the first updates do not wreck the backbone
        trunc_normal_(head.weight, std=2e-5)
        nn.init.zeros_(head.bias)
    return backbone.model, backbone.data_config, backbone.arch


def run_finetune(cfg: FinetuneConfig) -> int:
    from ldae.eval.run import Run

    start = time.time()
    run = Run("finetune", cfg)
    try:
        return _main(cfg, run, start)
    finally:
        run.close()


def _main(cfg: FinetuneConfig, run: Any, start: float) -> int:
    from ldae.eval.run import build_splits

    device, world, rank = run.device, run.world_size, run.rank
    ckpt_path = run.out / "checkpoint-last.pth"
    resume = cfg.resume or (str(ckpt_path) if cfg.auto_resume and not cfg.eval and ckpt_path.is_file() else None)
    state = load_state(resume, CKPT_FORMAT, what="fine-tuning checkpoint") if resume else None

    # Class folders first: the model's head is sized by them.
    train_ds, val_ds = build_splits(cfg)
    num_classes = len(train_ds.classes)
    if state is not None and state["num_classes"] != num_classes:
        raise ValueError(f"{resume} was fine-tuned for {state['num_classes']} classes; {cfg.data} has {num_classes}")
    model, data_cfg, arch = _build_model(cfg, num_classes, state)
    train_ds.transform = build_train_transform(data_cfg, cfg)
    val_ds.transform = create_transform(**data_cfg)  # timm's eval transform of the model's data config
    if state is not None:
        model.load_state_dict(state["model"])
    model = model.to(device)
    # The EMA starts from the (loaded) model; a checkpoint's own EMA replaces it.
    has_ema = state is not None and state.get("ema") is not None
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema and (not cfg.eval or has_ema) else None
    if ema is not None and has_ema:
        ema.module.load_state_dict(state["ema"])

    if cfg.batch_size % (world * cfg.accum_iter):
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by {world} processes x --accum-iter {cfg.accum_iter}")
    micro = cfg.batch_size // (world * cfg.accum_iter)
    eval_bs = max(micro, 64)
    val_loader = DataLoader(Subset(val_ds, range(rank, len(val_ds), world)), batch_size=eval_bs,
                            num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    if cfg.eval:
        res = evaluate(model, val_loader, device=device, amp_dtype=run.amp_dtype, quiet=run.quiet)
        record = {"top1": res["top1"], "top5": res["top5"], "loss": res["loss"]}
        if ema is not None:
            e = evaluate(ema.module, val_loader, device=device, amp_dtype=run.amp_dtype, quiet=run.quiet)
            record.update(top1_ema=e["top1"], top5_ema=e["top5"])
        run.print(f"finetune eval top-1 {record['top1']:.2f}  top-5 {record['top5']:.2f}"
                  + (f"  (EMA top-1 {record['top1_ema']:.2f}  top-5 {record['top5_ema']:.2f})" if "top1_ema" in record else ""),
                  force=True)
        run.write_results({**record, "eval_only": True, "checkpoint": resume, "model": cfg.model or arch.get("name"),
                           **run.data_record(train_ds, val_ds), "seconds": time.time() - start})
        return 0

    mixup = build_mixup(cfg, num_classes)
    if mixup is not None and micro % 2:
        raise ValueError(f"Mixup/CutMix in batch mode needs an even per-process batch, got {micro}")
    if cfg.batch_size > len(train_ds):
        raise ValueError(f"--batch-size {cfg.batch_size} exceeds the {len(train_ds)} training images: pass a smaller batch")
    model_ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    loader = DataLoader(train_ds, batch_size=micro, sampler=sampler, num_workers=cfg.num_workers,
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=cfg.num_workers > 0)
    lr = resolve_lr(cfg.lr, cfg.blr, cfg.batch_size)
    layer_decay = cfg.layer_decay if cfg.layer_decay is not None else default_layer_decay(model)
    optimizer = build_optimizer(model, lr, cfg.weight_decay, layer_decay)
    steps_per_epoch = len(loader) // cfg.accum_iter
    lr_schedule = cosine_schedule(lr, cfg.epochs, cfg.warmup_epochs, steps_per_epoch, cfg.min_lr)
    criterion = build_criterion(mixup, cfg.smoothing)
    start_epoch, step, best = 0, 0, 0.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step, best = state["epoch"], state["step"], state.get("max_top1", 0.0)
        set_rng_state(state["rng"])
        run.print(f"resumed from {resume} at epoch {start_epoch}")
    n_params = sum(p.numel() for p in model.parameters())
    run.print(f"fine-tune {cfg.model or arch.get('name')}: {n_params / 1e6:.2f}M parameters, {len(train_ds)} train / "
              f"{len(val_ds)} val images, {num_classes} classes, batch {cfg.batch_size} ({world} x {cfg.accum_iter} x "
              f"{micro}), lr {lr:.4g}, layer decay {layer_decay}, {steps_per_epoch} updates/epoch")

    test: dict[str, Any] = {}
    test_ema: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        stats = train_one_epoch(model_ddp, criterion, loader, optimizer, device=device, epoch=epoch, step=step,
                                lr_schedule=lr_schedule, accum_iter=cfg.accum_iter, mixup_fn=mixup, ema=ema,
                                amp_dtype=run.amp_dtype, clip_grad=cfg.clip_grad, quiet=run.quiet, desc="finetune")
        step = int(stats["step"])
        record: dict[str, Any] = {"epoch": epoch, **{f"train_{k}": v for k, v in stats.items()}}
        if (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0) or epoch == cfg.epochs - 1:
            test = evaluate(model, val_loader, device=device, amp_dtype=run.amp_dtype, quiet=run.quiet)
            best = max(best, test["top1"])
            record.update(test)
            if ema is not None:
                test_ema = evaluate(ema.module, val_loader, device=device, amp_dtype=run.amp_dtype, quiet=run.quiet)
                record.update({f"{k}_ema": v for k, v in test_ema.items()})
        run.log(record)
        run.print(_epoch_line(record, cfg.epochs))
        if run.is_main:
            save_state({
                "model": model.state_dict(), "ema": ema.module.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "step": step, "max_top1": best,
                "num_classes": num_classes, "classes": list(train_ds.classes), "arch": arch,
                "args": cfg.to_dict(),
                "rng": rng_state()}, ckpt_path, CKPT_FORMAT)
    if not test:
        test = evaluate(model, val_loader, device=device, amp_dtype=run.amp_dtype, quiet=run.quiet)
    record = {"top1": test["top1"], "top5": test["top5"], "max_top1": max(best, test["top1"])}
    if test_ema:
        record.update(top1_ema=test_ema["top1"], top5_ema=test_ema["top5"])
    run.print(f"finetune top-1 {record['top1']:.2f}  top-5 {record['top5']:.2f}  ({cfg.epochs} epoch{'' if cfg.epochs == 1 else 's'}, "
              f"{time.time() - start:.1f} s)", force=True)
    run.write_results({
        **record, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": lr, "layer_decay": layer_decay,
        "model": cfg.model, "t": cfg.t, **run.data_record(train_ds, val_ds), "checkpoint": str(ckpt_path),
        "seconds": time.time() - start,
    })
    run.barrier()
    return 0


def _epoch_line(r: dict[str, Any], epochs: int) -> str:
    line = f"epoch {r['epoch'] + 1:3d}/{epochs}  loss {r['train_loss']:.4f}  lr {r['train_lr']:.4g}"
    if "top1" in r:
        line += f"  top-1 {r['top1']:6.2f}  top-5 {r['top5']:6.2f}"
    if "top1_ema" in r:
        line += f"  EMA top-1 {r['top1_ema']:6.2f}"
    return line + f"  ({r['train_seconds']:.1f} s)"
