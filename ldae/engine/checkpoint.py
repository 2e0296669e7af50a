"""Checkpoints: one container for every recipe, written atomically, read without unpickling arbitrary objects.

A checkpoint is a dict of tensors and plain Python values (``torch.load(..., weights_only=True)``
reads it) with a ``format`` tag (:func:`save_state`, :func:`load_state`); the probe and fine-tuning
write the same container under their own tags. A pretraining checkpoint holds:

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
import random
from typing import Any

import torch

from ldae.models.ldae import LDAE
from ldae.models.model_config import build_model
from ldae.tokenizers.registry import tokenizer_from_state_dict  # every tokenizer format (PCA, AE, VAE, pixel)
from ldae.utils.checks import check_finite_weights
from ldae.utils.io import atomic_path

__all__ = ["FORMAT", "save_state", "load_state", "save_checkpoint", "load_checkpoint", "model_from_checkpoint",
           "tokenizer_from_state_dict", "build_checked_model", "rng_state", "set_rng_state"]

FORMAT = "ldae.checkpoint.v1"


# ---------------------------------------------------------------------------------------------- the container
def save_state(state: dict[str, Any], path: str | os.PathLike, fmt: str) -> None:
    """Write ``{'format': fmt, **state}`` to ``path`` atomically (temp file, fsync, rename): a crash
    never leaves a half-written file where a resume would read it. Every recipe's checkpoints
    (pretraining, probe, fine-tuning) are this container, each with its own format tag."""
    with atomic_path(path) as tmp:
        torch.save({"format": fmt, **state}, tmp)


def load_state(path: str | os.PathLike, fmt: str, map_location: str | torch.device = "cpu",
               what: str = "checkpoint", article: str = "a") -> dict[str, Any]:
    """Read a :func:`save_state` file with ``weights_only=True`` (no arbitrary code runs) and check
    that its format is ``fmt``; errors name the file and call it ``what`` (after ``article``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated or foreign file: say which
        raise ValueError(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != fmt:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: not {article} {what} (expected format {fmt!r}, got {got!r})")
    return state


def rng_state() -> dict[str, Any]:
    """Torch, Python and (once initialised) CUDA RNG states, in types ``torch.load(weights_only=True)`` reads."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(rng: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (CUDA states only onto as many devices as they were taken from)."""
    torch.set_rng_state(rng["torch"])
    if rng.get("python") is not None:
        random.setstate(_as_tuple(rng["python"]))
    if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------------------------------------- pretraining
def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a pretraining checkpoint (``state``: see the module docstring) atomically."""
    save_state(state, path, FORMAT)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a pretraining checkpoint (``weights_only=True``) and check its format."""
    return load_state(path, FORMAT, map_location, what="l-DAE checkpoint", article="an")


def model_from_checkpoint(ckpt: dict[str, Any] | str | os.PathLike, use_ema: bool = True, source: str | None = None) -> LDAE:
    """The :class:`LDAE` a checkpoint holds (EMA weights when present and ``use_ema``), in eval mode;
    ``source`` names a loaded dict's file in errors."""
    where = source or ("checkpoint" if isinstance(ckpt, dict) else str(ckpt))
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
    check_finite_weights(weights, source)
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
