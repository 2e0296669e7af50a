"""The resize / crop / flip / normalize pipeline of pretraining and tokenizer fitting.

The center crop is timm's evaluation transform (``timm.data.create_transform``, the one the probe,
k-NN and fine-tuning use too), so a model sees the same pixels in pretraining and evaluation. The
random crop is torchvision's ``RandomResizedCrop``, MAE's pretraining crop: timm's
``RandomResizedCropAndInterpolation`` draws its box differently, so it would change the crops of
every ``--crop random_resized`` run. The GPU-resident path (:mod:`ldae.data.resident`) does the
same crops on the device.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from PIL import Image

__all__ = ["build_transform", "INTERPOLATIONS", "check_interpolation"]

# The resize modes timm's transforms know (``timm.data.transforms.str_to_interp_mode``); torchvision's
# 'nearest-exact' is not one of them.
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


def check_interpolation(name: str) -> str:
    """``name`` if it is one of :data:`INTERPOLATIONS`, else ``ValueError`` listing them."""
    if name not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {name!r}")
    return name


def build_transform(img_size: int, train: bool, mean: Sequence[float], std: Sequence[float],
                    crop: str = "center", hflip: bool = False, crop_pct: float = 1.0,
                    interpolation: str = "bicubic", scale: tuple[float, float] = (0.2, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalized float tensor ``(3, img_size, img_size)``.

    * ``crop='center'``: resize the shorter side to ``floor(img_size / crop_pct)`` then center-crop
      ``img_size`` (timm's convention; ``crop_pct=1.0`` keeps the whole shorter side, the l-DAE
      pretraining default; 0.875 is the classic 256 -> 224 evaluation crop).
    * ``crop='random_resized'``: ``RandomResizedCrop(img_size, scale, ratio)``; ``scale=(0.2, 1.0)`` is
      MAE's pretraining range (pass ``(0.08, 1.0)`` for the usual supervised one).
    * ``hflip``: random horizontal flip with p=0.5.
    * ``train=False`` ignores ``crop`` and ``hflip``: evaluation is always the deterministic center crop.

    ``interpolation`` is one of :data:`INTERPOLATIONS` ('bicubic', 'bilinear', ...); PIL resizing is
    antialiased. Output is ``(x / 255 - mean) / std`` per channel.
    """
    from timm.data import create_transform
    from torchvision import transforms as T

    if crop not in ("center", "random_resized"):
        raise ValueError(f"crop must be 'center' or 'random_resized', got {crop!r}")
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    interp = T.InterpolationMode(check_interpolation(interpolation))
    flip: list[Any] = [T.RandomHorizontalFlip()] if train and hflip else []
    if train and crop == "random_resized":
        crop_ops = [T.RandomResizedCrop(img_size, scale=scale, ratio=ratio, interpolation=interp)]
        return T.Compose([*crop_ops, *flip, T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))])
    # timm's eval transform: Resize(floor(img_size / crop_pct)), CenterCrop, to tensor, Normalize.
    center = create_transform(img_size, is_training=False, interpolation=interpolation, mean=tuple(mean),
                              std=tuple(std), crop_pct=crop_pct)
    center.transforms[2:2] = flip  # after the crop, before the conversion to a tensor
    return center
