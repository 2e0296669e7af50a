"""Input validation shared by the tokenizer, the noise transform and the model.

Errors name what was expected, so a wrong call is fixed from the message alone.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

__all__ = ["check_images", "check_tokenizer_compatible", "check_finite_weights"]


def check_images(
    x: torch.Tensor,
    in_chans: int,
    patch_size: int,
    img_size: int | tuple[int, int] | None = None,
    check_finite: bool = True,
    name: str = "images",
) -> None:
    """Raise ``ValueError`` unless ``x`` is a finite float batch (B, in_chans, H, W) of patch-divisible size.

    ``img_size`` (if given) fixes H and W, as for a model with a fixed position embedding.
    ``check_finite`` costs a device sync; hot loops may turn it off.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor of shape (B, {in_chans}, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name}: expected shape (B, {in_chans}, H, W), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one image, got an empty batch {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(
            f"{name}: expected a floating-point tensor of normalised pixels, got dtype {x.dtype} "
            "(convert uint8 images with ToTensor/Normalize first)"
        )
    if x.shape[1] != in_chans:
        raise ValueError(f"{name}: expected {in_chans} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    h, w = x.shape[-2:]
    if h % patch_size or w % patch_size:
        raise ValueError(f"{name}: height and width must be divisible by the patch size {patch_size}, got {h}x{w}")
    if img_size is not None:
        eh, ew = (img_size, img_size) if isinstance(img_size, int) else img_size
        if (h, w) != (eh, ew):
            raise ValueError(f"{name}: expected {eh}x{ew} images for this model, got {h}x{w}")
    if check_finite and not torch.isfinite(x).all():
        raise ValueError(f"{name}: expected finite values, found NaN or inf")


def check_tokenizer_compatible(
    tok: Any, patch_size: int, in_chans: int, norm_mean: Sequence[float] | None = None, norm_std: Sequence[float] | None = None
) -> None:
    """Raise ``ValueError`` listing every way tokenizer ``tok`` differs from what a model expects.

    ``tok`` has ``patch_size``, ``in_chans``, ``norm_mean`` and ``norm_std`` (every tokenizer kind does).
    """
    diffs = []
    if patch_size != tok.patch_size:
        diffs.append(f"patch size {tok.patch_size} (model expects {patch_size})")
    if in_chans != tok.in_chans:
        diffs.append(f"{tok.in_chans} channels (model expects {in_chans})")
    for name, want, have in (("mean", norm_mean, tok.norm_mean), ("std", norm_std, tok.norm_std)):
        if want is not None and (len(want) != len(have) or any(not math.isclose(a, b, abs_tol=1e-6) for a, b in zip(want, have))):
            diffs.append(f"normalisation {name} {list(have)} (model expects {list(want)})")
    if diffs:
        raise ValueError("tokenizer does not match the model: it was fitted with " + "; ".join(diffs))


def check_finite_weights(tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """``ValueError`` naming ``source`` and the first tensor that holds NaN or inf (a diverged run, a damaged file)."""
    for name, t in tensors.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{source}: {name} holds {bad:,} NaN or infinite values of {t.numel():,}; "
                             f"weights that are not finite cannot be used (a run that diverged, or a damaged file)")
