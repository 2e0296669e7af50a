"""Analytic FLOPs of a pretraining step and model FLOPs utilisation (MFU).

Convention (PaLM, nanoGPT): only matrix multiplications are counted, at 2 FLOPs per multiply-add,
attention's QK^T and AV products included; a training step costs 3x the forward pass (the backward
pass computes gradients for both inputs and weights). Recomputation by activation checkpointing is
not counted: MFU measures useful model FLOPs, so turning checkpointing on lowers MFU honestly.

    mfu = train_flops_per_image * images_per_second / peak_flops_per_second

Norms, activations, softmax and the optimizer are a few percent of a ViT step and are left out, as
in the conventions above, so MFU here is comparable with published ViT / LLM MFU numbers.
"""
from __future__ import annotations

import time

import torch

from ldae.models.sizes import ModelSize

__all__ = [
    "vit_block_flops", "vit_forward_flops", "ldae_forward_flops", "ldae_train_flops", "vit_mse_train_flops",
    "model_train_flops", "mfu", "measure_matmul_peak", "TRAIN_FACTOR",
]

TRAIN_FACTOR = 3  # forward + backward (grad wrt inputs and wrt weights)


def vit_block_flops(tokens: int, dim: int, mlp_ratio: float = 4.0) -> int:
    """Forward matmul FLOPs of one pre-norm transformer block on ``tokens`` tokens of width ``dim``.

    qkv 2*N*D*3D + scores 2*N*N*D + weighted sum 2*N*N*D + proj 2*N*D*D + MLP 2 * 2*N*D*(r*D).
    """
    hidden = int(dim * mlp_ratio)
    return 2 * tokens * dim * 3 * dim + 4 * tokens * tokens * dim + 2 * tokens * dim * dim + 4 * tokens * dim * hidden


def vit_forward_flops(
    img_size: int, patch_size: int, embed_dim: int, depth: int, mlp_ratio: float = 4.0, in_chans: int = 3,
    out_dim: int = 0, class_token: bool = False,
) -> int:
    """Forward FLOPs per image of a ViT: patch embedding, ``depth`` blocks and a per-token linear head
    of ``out_dim`` outputs (0: none)."""
    patches = (img_size // patch_size) ** 2
    tokens = patches + int(class_token)
    patch_dim = patch_size * patch_size * in_chans
    return (
        2 * patches * patch_dim * embed_dim
        + depth * vit_block_flops(tokens, embed_dim, mlp_ratio)
        + 2 * tokens * embed_dim * out_dim
    )


def ldae_forward_flops(size: ModelSize, cond_dim: int, freq_dim: int = 256, in_dim: int | None = None, out_dim: int | None = None) -> int:
    """Forward FLOPs per image of the l-DAE network (encoder + decoder, adaLN-Zero, output head).

    ``in_dim`` / ``out_dim``: numbers per token going in and out (default p*p*C pixels; d for a model
    that embeds latent tokens or predicts a latent target).
    """
    dim = size.embed_dim
    tokens = (size.img_size // size.patch_size) ** 2
    in_dim, out_dim = in_dim or size.patch_dim, out_dim or size.patch_dim
    net = 2 * tokens * in_dim * dim + size.depth * vit_block_flops(tokens, dim, size.mlp_ratio) + 2 * tokens * dim * out_dim
    cond = 2 * freq_dim * cond_dim + 2 * cond_dim * cond_dim  # timestep MLP, once per image
    adaln = size.depth * 2 * cond_dim * 6 * dim + 2 * cond_dim * 2 * dim  # per image, not per token
    return net + cond + adaln


def ldae_train_flops(size: ModelSize, cond_dim: int, d: int | None, latent: bool = True, in_dim: int | None = None,
                     out_dim: int | None = None) -> int:
    """Training FLOPs per image of an l-DAE step: 3x the network forward, plus the latent corruption
    (project to d and back) and Eq. 4's projection of the error (forward and its gradient)."""
    flops = TRAIN_FACTOR * ldae_forward_flops(size, cond_dim, in_dim=in_dim, out_dim=out_dim)
    if latent and d is not None:
        tokens = (size.img_size // size.patch_size) ** 2
        flops += 4 * tokens * size.patch_dim * d  # corruption: encode + decode (no gradient)
        flops += 4 * tokens * size.patch_dim * d  # loss: V_d e and its gradient
    return flops


def vit_mse_train_flops(img_size: int, patch_size: int, embed_dim: int, depth: int, mlp_ratio: float = 4.0, in_chans: int = 3) -> int:
    """Training FLOPs per image of a plain ViT with a per-token linear head regressing the patch pixels (MSE)."""
    return TRAIN_FACTOR * vit_forward_flops(
        img_size, patch_size, embed_dim, depth, mlp_ratio, in_chans, out_dim=patch_size * patch_size * in_chans
    )


def model_train_flops(model: torch.nn.Module) -> int:
    """Training FLOPs per image of an :class:`ldae.models.ldae.LDAE` instance."""
    latent = model.noise.space == "latent" and model.tokenizer is not None
    in_dim = model.d if getattr(model, "input_space", "image") == "latent" else None
    out_dim = model.d if getattr(model, "output_space", "image") != "image" else None
    return ldae_train_flops(model.size, model.cond_dim, model.d, latent=latent, in_dim=in_dim, out_dim=out_dim)


def mfu(train_flops_per_image: float, images_per_second: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1] (None without a peak)."""
    if not peak_flops:
        return None
    return train_flops_per_image * images_per_second / peak_flops


@torch.no_grad()
def measure_matmul_peak(
    device: torch.device | str, dtype: torch.dtype | None = None, n: int | None = None, iters: int = 20, repeats: int = 3
) -> float:
    """Best measured FLOP/s of an n x n x n matmul on ``device`` (bf16 8192^3 on GPUs, fp32 on CPUs).

    This is the denominator of MFU when no ``--peak-tflops`` is given: the attainable dense-matmul
    rate of this very card (clocks, power cap and MIG slice included), not the datasheet number.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    n = n or (8192 if cuda else 512)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(3):  # warm-up: cuBLAS heuristics, clocks
        torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                torch.mm(a, b, out=out)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                torch.mm(a, b, out=out)
            seconds = time.perf_counter() - t0
        best = min(best, seconds / iters)
    return 2 * n**3 / best
