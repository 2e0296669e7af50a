"""k-nearest-neighbour classification of frozen features (``ldae knn``), also a pretraining monitor.

The classifier of InstDisc / DINO: features are L2-normalised, a test sample's k most cosine-similar
training samples vote for their labels with weight exp(s / T), and the class with the largest total
wins. Nothing is trained, so it is a cheap, hyper-parameter-light read-out of a representation:

    from ldae.eval.knn import knn_evaluate
    acc = knn_evaluate(train_f, train_y, test_f, test_y, ks=(20, 200))   # {20: {'top1':..,'top5':..}, ...}

    ldae knn --model ldae_vit_base --data /data/imagenet
"""
from __future__ import annotations

import time
from typing import Sequence

import torch
import torch.nn.functional as F

from ldae.eval.configs import KnnConfig

__all__ = ["knn_scores", "knn_classify", "knn_evaluate", "run_knn"]


def _check(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, k: int) -> None:
    if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"expected train features (N, D) and test features (M, D), got {tuple(train_feats.shape)} "
                         f"and {tuple(test_feats.shape)}")
    if train_labels.shape != (train_feats.shape[0],):
        raise ValueError(f"expected train labels ({train_feats.shape[0]},), got {tuple(train_labels.shape)}")
    if not 1 <= k <= train_feats.shape[0]:
        raise ValueError(f"k must be in [1, {train_feats.shape[0]}] (the number of training features), got {k}")


@torch.no_grad()
def knn_scores(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    k: int = 20,
    T: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Temperature-weighted votes (M, C): scores[j, c] = sum over the k nearest training samples i of
    test j with label c of exp(cos(test_j, train_i) / T).

    Args:
        train_feats: (N, D); train_labels: (N,) int; test_feats: (M, D). Any device; computed in float32
            on ``test_feats``' device, ``chunk_size`` test rows at a time ((chunk, N) similarities in memory).
        k: neighbours; T: temperature (0.07 as DINO); num_classes: C (default: max label + 1).
    """
    _check(train_feats, train_labels, test_feats, k)
    device = test_feats.device
    train = F.normalize(train_feats.to(device, torch.float32), dim=1)  # (N, D)
    labels = train_labels.to(device).long()
    c = int(num_classes if num_classes is not None else labels.max().item() + 1)
    out = torch.empty(test_feats.shape[0], c, device=device)
    for s in range(0, test_feats.shape[0], chunk_size):
        q = F.normalize(test_feats[s:s + chunk_size].float(), dim=1)  # (b, D)
        sim, idx = (q @ train.T).topk(k, dim=1)  # (b, k) cosine similarities of the k nearest
        votes = torch.zeros(q.shape[0], c, device=device)
        votes.scatter_add_(1, labels[idx], (sim / T).exp())  # (b, C)
        out[s:s + chunk_size] = votes
    return out


def knn_classify(
    train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, k: int = 20, T: float = 0.07,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Predicted labels (M,) of the weighted k-NN vote (ties go to the lower class index)."""
    return knn_scores(train_feats, train_labels, test_feats, k, T, num_classes).argmax(1)


@torch.no_grad()
def knn_evaluate(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    ks: Sequence[int] = (20, 200),
    T: float = 0.07,
    num_classes: int | None = None,
) -> dict[int, dict[str, float]]:
    """Top-1 / top-5 accuracy (percent) of the k-NN classifier for each k: ``{k: {'top1', 'top5'}}``."""
    if test_labels.shape != (test_feats.shape[0],):
        raise ValueError(f"expected test labels ({test_feats.shape[0]},), got {tuple(test_labels.shape)}")
    c = int(num_classes if num_classes is not None else max(train_labels.max().item(), test_labels.max().item()) + 1)
    y = test_labels.to(test_feats.device).long()
    result = {}
    for k in ks:
        scores = knn_scores(train_feats, train_labels, test_feats, k, T, c)  # (M, C)
        hit1 = scores.argmax(1) == y  # (M,), the prediction of knn_classify
        hit5 = (scores.topk(min(5, c), dim=1).indices == y[:, None]).any(1) | hit1  # (M,)
        n = len(y)
        result[int(k)] = {"top1": 100.0 * hit1.sum().item() / n, "top5": 100.0 * hit5.sum().item() / n}
    return result


def run_knn(cfg: KnnConfig) -> int:
    from ldae.eval.run import Run, build_splits, extract_split_features

    start = time.time()
    run = Run("knn", cfg)
    try:
        train_ds, val_ds = build_splits(cfg)
        backbone, train_fs, val_fs = extract_split_features(cfg, run, train_ds, val_ds, cfg.batch_size)
        if run.is_main:
            acc = knn_evaluate(train_fs.features.to(run.device), train_fs.labels, val_fs.features.to(run.device),
                               val_fs.labels, ks=cfg.k, T=cfg.temperature, num_classes=len(train_ds.classes))
            for k, a in acc.items():
                run.print(f"k-NN k={k:<4d} top-1 {a['top1']:6.2f}  top-5 {a['top5']:6.2f}", force=True)
            best = max(acc.values(), key=lambda a: a["top1"])
            run.write_results({
                **best, "per_k": {str(k): v for k, v in acc.items()}, "temperature": cfg.temperature,
                "feature_dim": int(train_fs.features.shape[1]), **run.backbone_record(backbone),
                **run.data_record(train_ds, val_ds), "seconds": time.time() - start,
            })
    finally:
        run.close()
    return 0
