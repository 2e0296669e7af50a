"""Pretraining checkpoints: one format, written atomically, read without unpickling arbitrary objects.

A checkpoint is a dict of tensors and plain Python values (``torch.load(..., weights_only=True)``
reads it):

    format      "ldae.checkpoint.v1"
    model       LDAE state dict (the tokenizer's buffers included)
    ema         EMA weights of the model (state dict) or None
    optimizer   optimizer state dict;  scaler: grad-scaler state dict or None
    rng         {"torch": ByteTensor, "cuda": [ByteTensor] , "python": tuple}
    step, epoch ints (the next step / epoch to run)
    args        the run's config as a dict (:class:`~ldae.engine.pretrain_config.PretrainConfig`; its
                model fields rebuild the model, :class:`~ldae.models.model_config.ModelConfig`)
    tokenizer   the tokenizer's metadata (patch size, normalisation, fit counts) or None
"""
from __future__ import annotations

import os
from typing import Any

import torch

from ldae.models.model_config import build_model
from ldae.utils.io import atomic_path
from ldae.models.ldae import LDAE
from ldae.tokenizers.registry import tokenizer_from_state_dict  # every tokenizer format (PCA, AE, VAE, pixel)

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "model_from_checkpoint", "tokenizer_from_state_dict",
           "build_checked_model"]

FORMAT = "ldae.checkpoint.v1"


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` (see module docstring) to ``path`` atomically: temp file, fsync, rename."""
    state = {"format": FORMAT, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary code runs) and check its format."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated or foreign file: say which
        raise ValueError(f"{path}: not a readable l-DAE checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not an l-DAE checkpoint (expected format {FORMAT!r})")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any] | str | os.PathLike, use_ema: bool = True) -> LDAE:
    """The :class:`LDAE` a checkpoint holds (EMA weights when present and ``use_ema``), in eval mode."""
    where = "checkpoint" if isinstance(ckpt, dict) else str(ckpt)
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    weights = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    tokenizer = tokenizer_from_state_dict(weights, ckpt.get("tokenizer"))
    model = build_checked_model(ckpt["args"], weights, tokenizer, source=where)
    model.load_state_dict(weights, strict=True)
    return model.eval()


def build_checked_model(args: dict[str, Any], weights: dict[str, torch.Tensor], tokenizer: Any, source: str) -> LDAE:
    """The model ``args`` describe, built only after its parameter shapes matched ``weights``.

    The shapes are read from a skeleton on the ``meta`` device (no memory), so stored args that ask
    for another (e.g. huge) size than the tensors hold are refused before anything is allocated.
    """
    with torch.device("meta"):
        skeleton = build_model(args, tokenizer)
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = [k for k in want if k in got and want[k] != got[k]]
    if missing or unexpected or wrong:
        detail = "; ".join(part for part in (
            f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
            ", ".join(f"{k}: args give {want[k]}, weights hold {got[k]}" for k in wrong[:3])) if part)
        raise ValueError(f"{source}: its model args ({args.get('model')!r}) do not describe its weights ({detail})")
    return build_model(args, tokenizer)
