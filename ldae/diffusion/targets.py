"""Prediction targets and their losses: the Tab. 3 switches between a DDM and l-DAE.

============  ===========================  ==================  ======================================
``target``    the network predicts         output              loss per token / patch
============  ===========================  ==================  ======================================
``eps``       the noise eps (DDM)          latent (B, N, d)    ||eps - net||^2 (Eq. 2)
``z0``        the clean latent z_0         latent (B, N, d)    lambda_t ||z_0 - net||^2 (Eq. 3)
``decoded``   z_0 decoded (inverse PCA)    image (B, C, H, W)  lambda_t ||dec(z_0) - net||^2
``image``     the original image x_0       image (B, C, H, W)  lambda_t sum_i w_i r_i^2 (Eq. 4)
============  ===========================  ==================  ======================================

lambda_t is the schedule's weight: gamma_t^2 on the variance-preserving schedules (Sec. 4.3: "setting
lambda_t = gamma_t^2 works better") and 1 / (1 + sigma_t^2) once input scaling is removed. The
noise-prediction loss of Eq. 2 is unweighted, as in DDPM and DiT. Latents are in the noise's
coordinates (whitened when the noise is), so z_0 and eps have comparable, unit scale.

``'decoded'`` is Tab. 3 row 5 (for PCA: the projection of x_0 onto the top-d subspace, every pixel
dimension weighted 1); ``'image'`` is row 6 and the l-DAE default, computed by
:func:`ldae.diffusion.loss.pca_weighted_loss` (Eq. 4 needs the PCA basis; with another tokenizer only the
unweighted form, ``tail_weight=1``, is defined).

Every loss sums over a token's (or patch's) dimensions and averages over tokens and the batch, the
normalisation of :mod:`ldae.diffusion.loss`.
"""
from __future__ import annotations

import torch

from ldae.diffusion.loss import pca_weighted_loss
from ldae.diffusion.noise import LatentNoise, NoisyBatch
from ldae.tokenizers.pca import PatchPCA
from ldae.utils.amp import float32_region

__all__ = [
    "TARGETS", "target_space", "check_target", "latent_mse", "eps_loss", "z0_loss", "decoded_image_loss",
    "prediction_target", "target_loss",
]

TARGETS = ("image", "decoded", "z0", "eps")
_LATENT_TARGETS = ("z0", "eps")


def target_space(target: str) -> str:
    """'latent' for the targets the network predicts as d-dim tokens (z0, eps), else 'image'."""
    if target not in TARGETS:
        raise ValueError(f"prediction target must be one of {TARGETS}, got {target!r}")
    return "latent" if target in _LATENT_TARGETS else "image"


def check_target(target: str, noise_space: str, tokenizer: object | None, tail_weight: float) -> None:
    """Raise ``ValueError`` (before any work) unless ``target`` is defined for this noise and tokenizer."""
    target_space(target)
    if target != "image" and (noise_space != "latent" or tokenizer is None):
        raise ValueError(
            f"target {target!r} is defined on a tokenizer's latents: it needs noise_space='latent' and a tokenizer "
            f"(got noise_space={noise_space!r}, tokenizer={'None' if tokenizer is None else type(tokenizer).__name__})"
        )
    if target == "image" and tokenizer is not None and not isinstance(tokenizer, PatchPCA) and tail_weight != 1.0:
        raise ValueError(
            f"target 'image' with tail_weight={tail_weight} is Eq. 4, whose weights are defined on the PCA basis; "
            f"with a {type(tokenizer).__name__} tokenizer pass tail_weight=1 (--tail-weight 1) for the unweighted loss"
        )


def latent_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Scalar mean over tokens and batch of weight_b * ||target - pred||^2 for tokens (B, N, d), weight (B,) or None."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    # A small sum of squares: float32 even inside a bf16 autocast region, as in ldae.diffusion.loss.
    with float32_region(pred.device):
        per_token = (target.float() - pred.float()).square().sum(-1)  # (B, N)
        if weight is not None:
            per_token = weight.float()[:, None] * per_token
        return per_token.mean()


def eps_loss(pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Eq. 2: ||eps - net(z_t)||^2 for predicted and drawn noise (B, N, d)."""
    return latent_mse(pred, eps)


def z0_loss(pred: torch.Tensor, z0: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Eq. 3: lambda_t ||z_0 - net(z_t)||^2 for latents (B, N, d) and lambda_t (B,)."""
    return latent_mse(pred, z0, weight)


def decoded_image_loss(pred: torch.Tensor, decoded: torch.Tensor, weight: torch.Tensor, patch_size: int) -> torch.Tensor:
    """lambda_t ||dec(z_0) - net(x_t)||^2 per p x p patch for images (B, C, H, W) and lambda_t (B,)."""
    return pca_weighted_loss(pred, decoded, weight, None, 1, 1.0, patch_size=patch_size)


def prediction_target(target: str, images: torch.Tensor, noisy: NoisyBatch, noise: LatentNoise) -> torch.Tensor:
    """The tensor the network is trained to output: x_0, dec(z_0), z_0 or eps."""
    space = target_space(target)
    if target == "image":
        return images  # (B, C, H, W)
    if target == "eps":
        return noisy.eps  # (B, N, d)
    if noisy.z0 is None:
        raise ValueError(f"target {target!r} needs the clean latents: build the noise with keep_latent=True")
    if space == "latent":
        return noisy.z0  # (B, N, d)
    return noise.decode_latent(noisy.z0, images.shape[-2:])  # (B, C, H, W)


def target_loss(
    target: str,
    pred: torch.Tensor,
    target_tensor: torch.Tensor,
    weight: torch.Tensor,
    tokenizer: object | None,
    d: int,
    tail_weight: float,
    patch_size: int,
) -> torch.Tensor:
    """Scalar loss of ``pred`` against :func:`prediction_target`'s tensor (see the module table)."""
    if target == "eps":
        return eps_loss(pred, target_tensor)
    if target == "z0":
        return z0_loss(pred, target_tensor, weight)
    if target == "decoded":
        return decoded_image_loss(pred, target_tensor, weight, patch_size)
    if target == "image":
        pca = tokenizer if isinstance(tokenizer, PatchPCA) else None
        return pca_weighted_loss(pred, target_tensor, weight, pca, d, tail_weight, patch_size=patch_size)
    raise ValueError(f"prediction target must be one of {TARGETS}, got {target!r}")
