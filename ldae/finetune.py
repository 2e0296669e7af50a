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

import argparse
import sys
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

from .engine_finetune import (cosine_schedule, evaluate, load_train_state, resolve_lr, rng_state, save_train_state,
                              set_rng_state, train_one_epoch)

__all__ = ["default_layer_decay", "build_optimizer", "build_mixup", "build_criterion", "build_train_transform",
           "get_args_parser", "main"]

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


def build_mixup(args: argparse.Namespace, num_classes: int) -> Mixup | None:
    """timm ``Mixup`` (Mixup / CutMix switching per batch, label smoothing folded into the soft targets),
    or None when both alphas are 0."""
    if args.mixup <= 0 and args.cutmix <= 0 and args.cutmix_minmax is None:
        return None
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                 prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                 label_smoothing=args.smoothing, num_classes=num_classes)


def build_criterion(mixup: Mixup | None, smoothing: float) -> nn.Module:
    if mixup is not None:
        return SoftTargetCrossEntropy()  # targets are already mixed and smoothed
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()


def build_train_transform(cfg: dict[str, Any], args: argparse.Namespace) -> Callable:
    """MAE's fine-tuning augmentation through timm's ``create_transform``: RandomResizedCrop + flip,
    RandAugment (``--aa``), random erasing; no color jitter (RandAugment replaces it)."""
    tf = create_transform(cfg["input_size"], is_training=True, auto_augment=args.aa, interpolation="bicubic",
                          color_jitter=None, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount,
                          mean=cfg["mean"], std=cfg["std"])
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


def _build_model(args: argparse.Namespace, num_classes: int, state: dict[str, Any] | None) -> tuple[nn.Module, dict, dict]:
    """(model, data config, architecture record).

    A checkpoint rebuilds its own architecture (its weights are loaded afterwards: resuming needs no
    pretrained weights). Otherwise ``--model`` is built with a fresh ``num_classes`` head, or with its own
    classifier for ``--eval`` without a checkpoint.
    """
    from .features import create_backbone, rebuild_architecture, resolve_data_config

    if state is not None:
        model = rebuild_architecture(state["arch"])
        return model, resolve_data_config(model, _overrides(args)), state["arch"]
    if args.model is None:
        raise ValueError("--model is required (it may be omitted only with --resume CKPT)")
    if args.eval:
        backbone = create_backbone(args.model, pretrained=args.pretrained, t=args.t, use_ema=args.ema,
                                   num_classes=None, data_overrides=_overrides(args))
        own = getattr(backbone.model, "num_classes", 0)
        if own != num_classes:
            raise ValueError(f"--eval without --resume evaluates {args.model!r} with its own classifier of {own} classes, "
                             f"but the data has {num_classes} classes: pass --resume with a fine-tuned checkpoint")
        return backbone.model, backbone.data_config, backbone.arch
    backbone = create_backbone(args.model, pretrained=args.pretrained, t=args.t, use_ema=args.ema,
                               num_classes=num_classes, data_overrides=_overrides(args), drop_path_rate=args.drop_path)
    head = backbone.model.get_classifier()
    if isinstance(head, nn.Linear):  # MAE: a near-zero head, so the first updates do not wreck the backbone
        trunc_normal_(head.weight, std=2e-5)
        nn.init.zeros_(head.bias)
    return backbone.model, backbone.data_config, backbone.arch


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in {
        "input_size": (3, args.input_size, args.input_size) if args.input_size else None, "crop_pct": args.crop_pct,
        "interpolation": args.interpolation, "mean": tuple(args.mean) if args.mean else None,
        "std": tuple(args.std) if args.std else None}.items() if v is not None}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    from .features import add_backbone_args
    from .recipe import add_checkpoint_args, add_data_args, add_runtime_args

    parser = argparse.ArgumentParser(
        "ldae finetune", add_help=add_help, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune a backbone end to end (MAE's recipe, App. B settings): AdamW + layer-wise lr decay, "
                    "Mixup/CutMix, RandAugment, drop path, label smoothing, EMA. Defaults are the paper's.",
        epilog="examples:\n"
               "  torchrun --nproc-per-node 8 -m ldae.finetune --model ckpt/checkpoint-last.pth --data /data/imagenet\n"
               "  ldae finetune --model ldae_vit_small_patch4_32 --data ../shared/data/cifar10-jpeg.tar.gz \\\n"
               "      --batch-size 256 --epochs 100 --output-dir out/ft\n"
               "  ldae finetune --eval --resume out/ft/checkpoint-last.pth --data ../shared/data/cifar10-jpeg.tar.gz\n"
               "prints one line per epoch and 'finetune top-1 .. top-5 ..'; writes <output-dir>/finetune_results.json,\n"
               "log.txt (JSON lines) and checkpoint-last.pth",
    )
    add_backbone_args(parser, frozen=False)
    parser._option_string_actions["--model"].required = False  # --resume CKPT rebuilds its own model
    add_data_args(parser)
    g = parser.add_argument_group("optimisation (App. B defaults)")
    g.add_argument("--epochs", type=int, default=100)
    g.add_argument("--batch-size", type=int, default=1024, help="global batch (all processes) per update")
    g.add_argument("--accum-iter", type=int, default=1, help="gradient accumulation steps per update")
    g.add_argument("--blr", type=float, default=1e-3, help="base lr: lr = blr * batch-size / 256 (4e-3 at 1024, App. B)")
    g.add_argument("--lr", type=float, default=None, help="absolute lr, overrides --blr")
    g.add_argument("--min-lr", type=float, default=1e-6)
    g.add_argument("--warmup-epochs", type=float, default=5)
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--layer-decay", type=float, default=None, help="layer-wise lr decay (default: 0.85 up to 12 "
                   "blocks as ViT-B, 0.65 from 24 blocks as ViT-L; App. B)")
    g.add_argument("--drop-path", type=float, default=0.1)
    g.add_argument("--clip-grad", type=float, default=None, help="gradient norm clip (default: none, as MAE)")
    a = parser.add_argument_group("augmentation and regularisation")
    a.add_argument("--aa", default="rand-m9-mstd0.5-inc1", help="timm auto-augment policy (RandAugment 9, 0.5)")
    a.add_argument("--reprob", type=float, default=0.25, help="random erasing probability")
    a.add_argument("--remode", default="pixel")
    a.add_argument("--recount", type=int, default=1)
    a.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    a.add_argument("--mixup", type=float, default=0.8, help="Mixup alpha (0: off)")
    a.add_argument("--cutmix", type=float, default=1.0, help="CutMix alpha (0: off)")
    a.add_argument("--cutmix-minmax", type=float, nargs=2, default=None)
    a.add_argument("--mixup-prob", type=float, default=1.0)
    a.add_argument("--mixup-switch-prob", type=float, default=0.5)
    a.add_argument("--mixup-mode", default="batch", choices=("batch", "pair", "elem"))
    a.add_argument("--model-ema", action=argparse.BooleanOptionalAction, default=True, help="keep an EMA of the weights")
    a.add_argument("--model-ema-decay", type=float, default=0.9999)
    parser.add_argument("--eval", action="store_true",
                        help="evaluate only: the --resume checkpoint (model and EMA), or --model's own classifier")
    parser.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (0: at the end only)")
    add_checkpoint_args(parser)
    add_runtime_args(parser, default_output="output/finetune", feature_cache=False)
    return parser


def main(args: argparse.Namespace) -> int:
    from .recipe import Run

    start = time.time()
    run = Run("finetune", args)
    try:
        return _main(args, run, start)
    finally:
        run.close()


def _main(args: argparse.Namespace, run: Any, start: float) -> int:
    from .recipe import build_splits

    device, world, rank = run.device, run.world_size, run.rank
    ckpt_path = run.out / "checkpoint-last.pth"
    resume = args.resume or (str(ckpt_path) if args.auto_resume and not args.eval and ckpt_path.is_file() else None)
    state = load_train_state(resume, CKPT_FORMAT) if resume else None

    # Class folders first: the model's head is sized by them.
    train_ds, val_ds = build_splits(args)
    num_classes = len(train_ds.classes)
    if state is not None and state["num_classes"] != num_classes:
        raise ValueError(f"{resume} was fine-tuned for {state['num_classes']} classes; {args.data} has {num_classes}")
    model, cfg, arch = _build_model(args, num_classes, state)
    train_ds.transform = build_train_transform(cfg, args)
    val_ds.transform = create_transform(
        cfg["input_size"], is_training=False, interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"],
        crop_pct=cfg["crop_pct"], crop_mode=cfg.get("crop_mode", "center"))
    if state is not None:
        model.load_state_dict(state["model"])
    model = model.to(device)
    # The EMA starts from the (loaded) model; a checkpoint's own EMA replaces it.
    has_ema = state is not None and state.get("ema") is not None
    ema = ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema and (not args.eval or has_ema) else None
    if ema is not None and has_ema:
        ema.module.load_state_dict(state["ema"])

    if args.batch_size % (world * args.accum_iter):
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by {world} processes x --accum-iter {args.accum_iter}")
    micro = args.batch_size // (world * args.accum_iter)
    eval_bs = max(micro, 64)
    val_loader = DataLoader(Subset(val_ds, range(rank, len(val_ds), world)), batch_size=eval_bs,
                            num_workers=args.num_workers, pin_memory=device.type == "cuda")
    if args.eval:
        res = evaluate(model, val_loader, device=device, amp_dtype=run.amp_dtype, quiet=run.quiet)
        record = {"top1": res["top1"], "top5": res["top5"], "loss": res["loss"]}
        if ema is not None:
            e = evaluate(ema.module, val_loader, device=device, amp_dtype=run.amp_dtype, quiet=run.quiet)
            record.update(top1_ema=e["top1"], top5_ema=e["top5"])
        run.print(f"finetune eval top-1 {record['top1']:.2f}  top-5 {record['top5']:.2f}"
                  + (f"  (EMA top-1 {record['top1_ema']:.2f}  top-5 {record['top5_ema']:.2f})" if "top1_ema" in record else ""),
                  force=True)
        run.write_results({**record, "eval_only": True, "checkpoint": resume, "model": args.model or arch.get("name"),
                           **run.data_record(train_ds, val_ds), "seconds": time.time() - start})
        return 0

    mixup = build_mixup(args, num_classes)
    if mixup is not None and micro % 2:
        raise ValueError(f"Mixup/CutMix in batch mode needs an even per-process batch, got {micro}")
    if args.batch_size > len(train_ds):
        raise ValueError(f"--batch-size {args.batch_size} exceeds the {len(train_ds)} training images: pass a smaller batch")
    model_ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    loader = DataLoader(train_ds, batch_size=micro, sampler=sampler, num_workers=args.num_workers,
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=args.num_workers > 0)
    lr = resolve_lr(args.lr, args.blr, args.batch_size)
    layer_decay = args.layer_decay if args.layer_decay is not None else default_layer_decay(model)
    optimizer = build_optimizer(model, lr, args.weight_decay, layer_decay)
    steps_per_epoch = len(loader) // args.accum_iter
    lr_schedule = cosine_schedule(lr, args.epochs, args.warmup_epochs, steps_per_epoch, args.min_lr)
    criterion = build_criterion(mixup, args.smoothing)
    start_epoch, step, best = 0, 0, 0.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step, best = state["epoch"], state["step"], state.get("max_top1", 0.0)
        set_rng_state(state["rng"])
        run.print(f"resumed from {resume} at epoch {start_epoch}")
    n_params = sum(p.numel() for p in model.parameters())
    run.print(f"fine-tune {args.model or arch.get('name')}: {n_params / 1e6:.2f}M parameters, {len(train_ds)} train / "
              f"{len(val_ds)} val images, {num_classes} classes, batch {args.batch_size} ({world} x {args.accum_iter} x "
              f"{micro}), lr {lr:.4g}, layer decay {layer_decay}, {steps_per_epoch} updates/epoch")

    test: dict[str, Any] = {}
    test_ema: dict[str, Any] = {}
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        stats = train_one_epoch(model_ddp, criterion, loader, optimizer, device=device, epoch=epoch, step=step,
                                lr_schedule=lr_schedule, accum_iter=args.accum_iter, mixup_fn=mixup, ema=ema,
                                amp_dtype=run.amp_dtype, clip_grad=args.clip_grad, quiet=run.quiet, desc="finetune")
        step = int(stats["step"])
        record: dict[str, Any] = {"epoch": epoch, **{f"train_{k}": v for k, v in stats.items()}}
        if (args.eval_every and (epoch + 1) % args.eval_every == 0) or epoch == args.epochs - 1:
            test = evaluate(model, val_loader, device=device, amp_dtype=run.amp_dtype, quiet=run.quiet)
            best = max(best, test["top1"])
            record.update(test)
            if ema is not None:
                test_ema = evaluate(ema.module, val_loader, device=device, amp_dtype=run.amp_dtype, quiet=run.quiet)
                record.update({f"{k}_ema": v for k, v in test_ema.items()})
        run.log(record)
        run.print(_epoch_line(record, args.epochs))
        if run.is_main:
            save_train_state(ckpt_path, {
                "model": model.state_dict(), "ema": ema.module.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "step": step, "max_top1": best,
                "num_classes": num_classes, "classes": list(train_ds.classes), "arch": arch,
                "args": {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None), list))},
                "rng": rng_state()}, CKPT_FORMAT)
    if not test:
        test = evaluate(model, val_loader, device=device, amp_dtype=run.amp_dtype, quiet=run.quiet)
    record = {"top1": test["top1"], "top5": test["top5"], "max_top1": max(best, test["top1"])}
    if test_ema:
        record.update(top1_ema=test_ema["top1"], top5_ema=test_ema["top5"])
    run.print(f"finetune top-1 {record['top1']:.2f}  top-5 {record['top5']:.2f}  ({args.epochs} epoch{'' if args.epochs == 1 else 's'}, "
              f"{time.time() - start:.1f} s)", force=True)
    run.write_results({
        **record, "epochs": args.epochs, "batch_size": args.batch_size, "lr": lr, "layer_decay": layer_decay,
        "model": args.model, "t": args.t, **run.data_record(train_ds, val_ds), "checkpoint": str(ckpt_path),
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


if __name__ == "__main__":
    from ldae.cli import run  # the same checks and one-line user errors as `ldae finetune`

    sys.exit(run("finetune", sys.argv[1:]))
