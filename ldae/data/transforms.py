"""The resize / crop / flip / normalize pipeline of pretraining and tokenizer fitting (torchvision ops)."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from PIL import Image

__all__ = ["build_transform"]


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

    ``interpolation`` is a torchvision ``InterpolationMode`` value ('bicubic', 'bilinear', ...);
    PIL resizing is antialiased. Output is ``(x / 255 - mean) / std`` per channel.
    """
    from torchvision import transforms as T

    if crop not in ("center", "random_resized"):
        raise ValueError(f"crop must be 'center' or 'random_resized', got {crop!r}")
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    interp = T.InterpolationMode(interpolation)
    if train and crop == "random_resized":
        ops: list[Any] = [T.RandomResizedCrop(img_size, scale=scale, ratio=ratio, interpolation=interp)]
    else:
        ops = [T.Resize(math.floor(img_size / crop_pct), interpolation=interp), T.CenterCrop(img_size)]
    if train and hflip:
        ops.append(T.RandomHorizontalFlip())
    ops += [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    return T.Compose(ops)
