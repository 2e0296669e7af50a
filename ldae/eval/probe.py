"""Linear probe of a frozen backbone (``ldae probe``): the paper's protocol and a cached fast mode.

The protocol (App. A, after MAE): the encoder at a fixed level t (clean input by default) is frozen
and stays in eval mode; its globally average-pooled output goes through a parameter-free BatchNorm
and a linear layer, trained with LARS (batch 16384, cosine schedule, no weight decay, 90 epochs) on
RandomResizedCrop + flip, and evaluated on a single center crop.

``--mode paper`` (default) runs exactly that: every epoch sees new crops through the backbone.
``--mode cached`` computes the features of the center crops once, caches them (safetensors), and
trains the same head with the same optimizer on them: minutes instead of hours, for sweeps.

Learning rate: two conventions, 1000x apart, both exposed. MAE's code sets LARS' lr = blr * batch / 256
with blr = 0.1, i.e. 6.4 at batch 16384, and timm's / MAE's LARS scales each weight update by
trust_coeff * ||w|| / ||g|| with trust_coeff = 1e-3. The paper's App. A quotes "lr 6.4e-3" at the same
batch, which is MAE's 6.4 times that trust coefficient: the relative step size per update. ``--blr 0.1``
(default) is MAE's setting; ``--lr 6.4e-3`` hands the paper's number to LARS literally (then weights
move 1000x slower than in MAE, and the head barely leaves its initialisation in 90 epochs).

Because LARS moves a weight matrix by about lr * trust_coeff of its norm per update, the total
training a probe gets is proportional to blr * images * epochs / 256: a 50k-image dataset gets 25x
less than ImageNet at the same blr. For CIFAR-scale sweeps raise ``--blr`` (``--batch-size 1024
--blr 10`` reached the full-batch logistic-regression optimum on 50k CIFAR-10 features).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.optim import Lars
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ldae.engine.checkpoint import load_state, rng_state, save_state, set_rng_state
from ldae.engine.finetune_loop import evaluate, train_one_epoch
from ldae.engine.lr_schedule import cosine_schedule, resolve_lr
from ldae.eval.configs import ProbeConfig
from ldae.eval.features import FeatureExtractor

__all__ = ["LinearHead", "ProbeModel", "ProbeResult", "build_lars", "train_probe_on_features", "run_probe"]

CKPT_FORMAT = "ldae.probe.v1"


# ----------------------------------------------------------------------------------------------
# Head, model, optimizer
# ----------------------------------------------------------------------------------------------

class LinearHead(nn.Module):
    """MAE's linear-probe head: BatchNorm without affine parameters, then a linear layer. (B, D) -> (B, C).

    The BatchNorm only standardises the features (its running statistics serve evaluation), so the
    lr does not depend on the backbone's feature scale; it adds no trainable parameter.
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        if dim < 1 or num_classes < 2:
            raise ValueError(f"expected a feature dimension >= 1 and >= 2 classes, got {dim} and {num_classes}")
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)
        trunc_normal_(self.fc.weight, std=0.01)  # as MAE's main_linprobe
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(x))  # (B, C)


class ProbeModel(nn.Module):
    """A frozen :class:`FeatureExtractor` followed by a :class:`LinearHead`: images (B, C, H, W) -> logits.

    ``train()`` trains the head only; the backbone stays in eval mode and receives no gradient.
    """

    def __init__(self, extractor: FeatureExtractor, head: nn.Module) -> None:
        super().__init__()
        self.extractor, self.head = extractor, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.extractor(x))  # (B, num_classes)


def build_lars(head: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
               trust_coeff: float = 1e-3) -> Lars:
    """timm's LARS as MAE's probe uses it: the trust ratio on weight matrices, plain momentum SGD on
    biases (1-D parameters get neither the trust ratio nor weight decay)."""
    weights = [p for p in head.parameters() if p.requires_grad and p.ndim > 1]
    others = [p for p in head.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": weights, "always_adapt": True}]
    if others:
        groups.append({"params": others, "always_adapt": False, "weight_decay": 0.0})
    return Lars(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coeff=trust_coeff)


# ----------------------------------------------------------------------------------------------
# Cached mode: the head on precomputed features
# ----------------------------------------------------------------------------------------------

@dataclass
class ProbeResult:
    """Final top-1 / top-5 (percent), the best top-1 of any evaluated epoch, the trained head, the absolute
    lr used and the per-epoch stats."""

    top1: float
    top5: float
    max_top1: float
    head: LinearHead
    lr: float
    history: list[dict[str, Any]] = field(default_factory=list)


def train_probe_on_features(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    val_feats: torch.Tensor,
    val_labels: torch.Tensor,
    *,
    num_classes: int | None = None,
    epochs: int = 90,
    batch_size: int = 16384,
    lr: float | None = None,
    blr: float = 0.1,
    warmup_epochs: float = 10,
    min_lr: float = 0.0,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    trust_coeff: float = 1e-3,
    eval_every: int = 1,
    device: torch.device | str = "cpu",
    seed: int = 0,
    quiet: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> ProbeResult:
    """Train the probe head with LARS on features (N, D) / labels (N,), evaluate on (M, D) / (M,).

    Features move to ``device`` once; each epoch is a seeded permutation in batches of ``batch_size``
    (the last partial batch dropped, as MAE's loader). ``on_epoch`` receives each epoch's stats.
    """
    from ldae.data.resident import GPUBatchLoader

    device = torch.device(device)
    n, dim = train_feats.shape
    if n != len(train_labels) or len(val_feats) != len(val_labels) or val_feats.shape[1:] != (dim,):
        raise ValueError(f"expected train features (N, D) with N labels and val features (M, D) with M labels, got "
                         f"{tuple(train_feats.shape)}, {tuple(train_labels.shape)}, {tuple(val_feats.shape)}, "
                         f"{tuple(val_labels.shape)}")
    if batch_size > n:
        raise ValueError(f"--batch-size {batch_size} exceeds the {n} training samples: pass a smaller batch "
                         "(the paper's 16384 is for ImageNet's 1.28M images)")
    c = int(num_classes if num_classes is not None else int(max(train_labels.max(), val_labels.max())) + 1)
    torch.manual_seed(seed)
    head = LinearHead(dim, c).to(device)
    lr = resolve_lr(lr, blr, batch_size)
    optimizer = build_lars(head, lr, momentum, weight_decay, trust_coeff)
    train = GPUBatchLoader(train_feats.float().to(device), train_labels.long().to(device), batch_size,
                           shuffle=True, drop_last=True, seed=seed, rank=0, world_size=1)
    val = GPUBatchLoader(val_feats.float().to(device), val_labels.long().to(device), min(len(val_feats), 65536),
                         shuffle=False, drop_last=False, rank=0, world_size=1)
    lr_schedule = cosine_schedule(lr, epochs, warmup_epochs, len(train), min_lr)
    criterion = nn.CrossEntropyLoss()
    history: list[dict[str, Any]] = []
    step, test = 0, {}
    for epoch in range(epochs):
        train.set_epoch(epoch)
        stats = train_one_epoch(head, criterion, train, optimizer, device=device, epoch=epoch, step=step,
                                lr_schedule=lr_schedule, quiet=True, sync=False)
        step = int(stats["step"])
        record = {"epoch": epoch, **{f"train_{k}": v for k, v in stats.items()}}
        if (eval_every and (epoch + 1) % eval_every == 0) or epoch == epochs - 1:
            test = evaluate(head, val, device=device, quiet=True, sync=False)
            record.update(test)
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    best = max(h["top1"] for h in history if "top1" in h)
    return ProbeResult(top1=test["top1"], top5=test["top5"], max_top1=best, head=head.cpu(), lr=lr, history=history)


# ----------------------------------------------------------------------------------------------
# Paper mode: augmented images through the frozen backbone every epoch
# ----------------------------------------------------------------------------------------------

class FeatureBatches:
    """Batches of features from a loader of image micro-batches: ``accum`` micro-batches go through the
    frozen extractor (no autograd) and are concatenated into one head batch (B, D). The backbone is
    frozen, so this equals one forward pass of the whole batch, BatchNorm statistics included."""

    def __init__(self, loader: DataLoader, extractor: FeatureExtractor, accum: int, device: torch.device,
                 amp_dtype: torch.dtype | None) -> None:
        self.loader, self.extractor, self.accum, self.device, self.amp_dtype = loader, extractor, accum, device, amp_dtype

    def __len__(self) -> int:
        return len(self.loader) // self.accum

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        feats, labels = [], []
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
                feats.append(self.extractor(x))  # (micro, D) float32
            labels.append(y)
            if len(feats) == self.accum:
                yield torch.cat(feats), torch.cat(labels)  # (B, D), (B,)
                feats, labels = [], []


def _run_paper(cfg: ProbeConfig, run: Any) -> tuple[Any, Dataset, Dataset, ProbeResult]:
    """The App. A protocol; returns (backbone, train set, val set, result)."""
    from timm.data import create_transform

    from ldae.eval.backbones import backbone_from_config
    from ldae.eval.run import build_splits, describe_backbone

    backbone = backbone_from_config(cfg)
    data_cfg = backbone.data_config
    # MAE's probe augmentation: RandomResizedCrop (scale 0.08-1) + flip, nothing else (no color jitter).
    train_tf = create_transform(data_cfg["input_size"], is_training=True, scale=(0.08, 1.0), hflip=0.5, color_jitter=None,
                                interpolation=data_cfg["interpolation"], mean=data_cfg["mean"], std=data_cfg["std"])
    val_tf = create_transform(**data_cfg)  # timm's eval transform of the model's data config
    train_ds, val_ds = build_splits(cfg, train_tf, val_tf)
    num_classes = len(train_ds.classes)
    device, world, rank = run.device, run.world_size, run.rank
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {world} processes")
    per_rank = cfg.batch_size // world
    micro = min(cfg.micro_batch_size, per_rank)
    if per_rank % micro:
        raise ValueError(f"the per-process batch {per_rank} is not a multiple of --micro-batch-size {micro}")
    if cfg.batch_size > len(train_ds):
        raise ValueError(f"--batch-size {cfg.batch_size} exceeds the {len(train_ds)} training images: pass a smaller batch")

    extractor = FeatureExtractor.from_backbone(backbone, view=cfg.input_view).to(device)
    head: nn.Module = LinearHead(backbone.num_features, num_classes)
    if world > 1 and device.type == "cuda":  # statistics over the global batch, independent of the GPU count
        head = nn.SyncBatchNorm.convert_sync_batchnorm(head)
    head = head.to(device)
    head_ddp = nn.parallel.DistributedDataParallel(head, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else head
    # The sampler shuffles with (seed, epoch) even in one process: a resumed run sees the same order.
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    loader = DataLoader(train_ds, batch_size=micro, sampler=sampler, num_workers=cfg.num_workers,
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=cfg.num_workers > 0)
    batches = FeatureBatches(loader, extractor, per_rank // micro, device, run.amp_dtype)
    val_loader = DataLoader(Subset(val_ds, range(rank, len(val_ds), world)), batch_size=micro,
                            num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    lr = resolve_lr(cfg.lr, cfg.blr, cfg.batch_size)
    optimizer = build_lars(head, lr, cfg.momentum, cfg.weight_decay, cfg.trust_coeff)
    lr_schedule = cosine_schedule(lr, cfg.epochs, cfg.warmup_epochs, len(batches), cfg.min_lr)
    probe = ProbeModel(extractor, head)
    run.print(describe_backbone(backbone, cfg.input_view))
    run.print(f"paper-mode probe: {len(train_ds)} train / {len(val_ds)} val images, {num_classes} classes, "
              f"batch {cfg.batch_size} ({world} x {per_rank // micro} x {micro}), lr {lr:.4g}, "
              f"{len(batches)} updates/epoch")

    ckpt_path = run.out / "checkpoint-last.pth"
    start_epoch, step, best = 0, 0, 0.0
    resume = cfg.resume or (str(ckpt_path) if cfg.auto_resume and ckpt_path.is_file() else None)
    if resume:
        state = load_state(resume, CKPT_FORMAT, what="probe checkpoint")
        if state["num_classes"] != num_classes:
            raise ValueError(f"{resume} holds a head for {state['num_classes']} classes; the data has {num_classes}")
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step, best = state["epoch"], state["step"], state.get("max_top1", 0.0)
        set_rng_state(state["rng"])
        run.print(f"resumed from {resume} at epoch {start_epoch}")
    test: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    criterion = nn.CrossEntropyLoss()
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        stats = train_one_epoch(head_ddp, criterion, batches, optimizer, device=device, epoch=epoch, step=step,
                                lr_schedule=lr_schedule, quiet=run.quiet, desc="probe")
        step = int(stats["step"])
        record = {"epoch": epoch, **{f"train_{k}": v for k, v in stats.items()}}
        if (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0) or epoch == cfg.epochs - 1:
            test = evaluate(probe, val_loader, device=device, amp_dtype=run.amp_dtype, quiet=run.quiet)
            best = max(best, test["top1"])
            record.update(test)
        history.append(record)
        run.log(record)
        run.print(_epoch_line(record, cfg.epochs))
        if run.is_main:
            save_state({
                "head": head.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "step": step,
                "max_top1": best, "num_classes": num_classes, "classes": list(train_ds.classes),
                "args": cfg.to_dict(),
                "rng": rng_state()}, ckpt_path, CKPT_FORMAT)
    if not test:  # resumed after the last epoch: evaluate what the checkpoint holds
        test = evaluate(probe, val_loader, device=device, amp_dtype=run.amp_dtype, quiet=run.quiet)
    return backbone, train_ds, val_ds, ProbeResult(test["top1"], test["top5"], max(best, test["top1"]), _plain_head(head),
                                                   lr, history)


def _plain_head(head: nn.Module) -> LinearHead:
    """The head as a plain :class:`LinearHead` on the CPU (SyncBatchNorm converted back)."""
    fc = head.fc
    plain = LinearHead(fc.in_features, fc.out_features)
    plain.load_state_dict({k: v.detach().cpu() for k, v in head.state_dict().items()})
    return plain


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _epoch_line(r: dict[str, Any], epochs: int) -> str:
    line = f"epoch {r['epoch'] + 1:3d}/{epochs}  loss {r['train_loss']:.4f}  lr {r['train_lr']:.4g}"
    if "top1" in r:
        line += f"  top-1 {r['top1']:6.2f}  top-5 {r['top5']:6.2f}"
    return line + f"  ({r['train_seconds']:.2f} s)"


def run_probe(cfg: ProbeConfig) -> int:
    from ldae.utils.io import save_safetensors
    from ldae.eval.run import Run, build_splits, extract_split_features

    start = time.time()
    run = Run("probe", cfg)
    try:
        res: ProbeResult | None = None
        if cfg.mode == "paper":
            backbone, train_ds, val_ds, res = _run_paper(cfg, run)
        else:
            train_ds, val_ds = build_splits(cfg)
            backbone, train_fs, val_fs = extract_split_features(cfg, run, train_ds, val_ds, cfg.micro_batch_size)
            if run.is_main:  # a few seconds of work on one process; the others wait at the barrier
                res = train_probe_on_features(
                    train_fs.features, train_fs.labels, val_fs.features, val_fs.labels, num_classes=len(train_ds.classes),
                    epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, blr=cfg.blr,
                    warmup_epochs=cfg.warmup_epochs, min_lr=cfg.min_lr, momentum=cfg.momentum,
                    weight_decay=cfg.weight_decay, trust_coeff=cfg.trust_coeff, eval_every=cfg.eval_every,
                    device=run.device, seed=cfg.seed,
                    on_epoch=lambda r: (run.log(r), run.print(_epoch_line(r, cfg.epochs))))
        if run.is_main and res is not None:
            save_safetensors(res.head.state_dict(), run.out / "head.safetensors",
                             {"classes": json.dumps(list(train_ds.classes)), "model": str(cfg.model)})
            run.print(f"probe top-1 {res.top1:.2f}  top-5 {res.top5:.2f}  ({cfg.mode} mode, {_plural(cfg.epochs, 'epoch')}, "
                      f"{time.time() - start:.1f} s)", force=True)
            run.write_results({
                "top1": res.top1, "top5": res.top5, "max_top1": res.max_top1, "mode": cfg.mode,
                "input_view": cfg.input_view, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": res.lr,
                "blr": None if cfg.lr is not None else cfg.blr, "feature_dim": backbone.num_features,
                **run.backbone_record(backbone), **run.data_record(train_ds, val_ds), "seconds": time.time() - start,
            })
        run.barrier()
    finally:
        run.close()
    return 0
