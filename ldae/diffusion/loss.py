"""The l-DAE reconstruction loss (Eq. 4 of the paper).

With e = x_0 - net(x_t) per patch and r = V e over the full D x D PCA basis,

    loss = lambda_t * sum_i w_i r_i^2,   w_i = 1 for i <= d, w_tail for i > d (0.1 in the paper).

Because V is orthonormal this equals lambda_t * (||P_d e||^2 + w_tail ||(I - P_d) e||^2)
= lambda_t * (w_tail ||e||^2 + (1 - w_tail) ||V_d e||^2), which needs only the d x D top block of V;
that form is what is computed. The per-patch sum is averaged over patches and the batch (the
paper's normalisation is not stated; it only rescales the learning rate, and AdamW is invariant
to it).
"""
from __future__ import annotations

import torch

from ldae.tokenizers.pca import PatchPCA, patchify
from ldae.utils.amp import float32_region

__all__ = ["pca_weighted_loss", "pca_weighted_patch_loss"]


def pca_weighted_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    tokenizer: PatchPCA | None,
    d: int,
    tail_weight: float = 0.1,
    patch_size: int | None = None,
) -> torch.Tensor:
    """Scalar Eq. 4 loss for images pred, target (B, C, H, W) and per-sample lambda_t ``weight`` (B,).

    Without a tokenizer (pixel-space DAE) every dimension has weight 1: lambda_t * ||e||^2 per patch,
    with patches of ``patch_size``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    p = tokenizer.patch_size if tokenizer is not None else patch_size
    if p is None:
        raise ValueError("pixel-space loss needs patch_size")
    return pca_weighted_patch_loss(patchify(pred, p), patchify(target, p), weight, tokenizer, d, tail_weight)


def pca_weighted_patch_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    tokenizer: PatchPCA | None,
    d: int,
    tail_weight: float = 0.1,
) -> torch.Tensor:
    """:func:`pca_weighted_loss` on patches: pred, target (B, N, D) (any float dtype), weight (B,).

    The training step calls this form directly: its prediction comes out of the final layer as
    patches, so no image is assembled and cut up again.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    # The loss is a small sum of squares; keep it in float32 even inside a bf16 autocast region.
    with float32_region(pred.device):
        e = target.float() - pred.float()  # (B, N, D)
        per_patch = torch.linalg.vecdot(e, e)  # (B, N) = ||e||^2, one pass
        if tokenizer is not None and d < tokenizer.dim and tail_weight != 1.0:
            head = e @ tokenizer.components[:d].T  # (B, N, d) = V_d e
            per_patch = tail_weight * per_patch + (1.0 - tail_weight) * head.square().sum(-1)
        return (weight.float()[:, None] * per_patch).mean()
