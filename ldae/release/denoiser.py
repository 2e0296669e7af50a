"""Where the demo and the figures get a tokenizer and a denoiser: a file, a released tag, or the default.

A *denoiser* is the whole pretraining model (encoder and decoder), which the denoising figure needs;
a released backbone (:mod:`ldae.models.registry`) is only the encoder folded at one level t. It is read from

* a pretraining checkpoint (``.pth``, :mod:`ldae.engine.checkpoint`; EMA weights when present), or
* a denoiser file (``.safetensors`` in the ``ldae.denoiser.v1`` format written by :func:`save_denoiser`:
  the model's state dict, its constructor flags and its tokenizer's metadata, no pickle), or
* a released tag whose manifest entry names such a file under ``denoiser`` (sha256-checked first).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open

from ldae.engine.checkpoint import build_checked_model, model_from_checkpoint
from ldae.models.ldae import LDAE
from ldae.models.model_config import ModelConfig
from ldae.release.manifest import load_manifest, split_name, verify_file
from ldae.tokenizers.pca import PatchPCA
from ldae.tokenizers.registry import tokenizer_from_state_dict
from ldae.utils.checks import check_finite_weights
from ldae.utils.io import save_safetensors

__all__ = [
    "DENOISER_FORMAT", "DEFAULT_TOKENIZER_ARCH", "resolve_tokenizer", "released_tags", "denoiser_tags",
    "save_denoiser", "load_denoiser_file", "load_denoiser",
]

DENOISER_FORMAT = "ldae.denoiser.v1"
# The tokenizer shown when nothing else is asked for: the 16x16x3 PCA of the paper's 256 px models.
DEFAULT_TOKENIZER_ARCH = "ldae_vit_base"
_CKPT_SUFFIXES = (".pth", ".pt", ".ckpt")


def resolve_tokenizer(spec: str | None = None) -> tuple[PatchPCA, str]:
    """(tokenizer, description) from a patch-PCA ``.safetensors`` file, a model name or tag
    (its tokenizer, :func:`ldae.release.manifest.get_tokenizer`), or ``None``: the shipped 16x16 PCA."""
    from ldae.release.manifest import get_tokenizer

    if spec is None:
        spec = DEFAULT_TOKENIZER_ARCH
    if spec.endswith(".safetensors") or os.path.isfile(spec):
        tok = PatchPCA.load(spec)  # one-line errors for a missing or unreadable file
        return tok, f"{Path(spec).name} ({tok.num_images} images)"
    tok = get_tokenizer(spec)
    return tok, f"the shipped tokenizer of {spec} ({tok.num_images} images)"


def released_tags() -> list[str]:
    """Every ``<arch>.<tag>`` with released (trained) backbone weights, in manifest order."""
    return list(load_manifest().weights)


def _denoiser_entry(name: str) -> Mapping[str, Any] | None:
    entry = load_manifest().weights.get(name)
    return getattr(entry, "denoiser", None) if entry is not None else None


def denoiser_tags() -> list[str]:
    """The released tags that also ship their denoiser (the full model), in manifest order."""
    return [n for n in released_tags() if _denoiser_entry(n)]


# ---------------------------------------------------------------------------------------------- the file format
def save_denoiser(model: LDAE, args: Mapping[str, Any], path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model`` (parameters in ``dtype``; buffers such as the PCA basis stay float32) as a denoiser file.

    ``args`` are the model flags it was built from (a checkpoint's ``args``; only the fields of
    :class:`~ldae.models.model_config.ModelConfig` are kept).
    """
    kept = ModelConfig.from_saved(args).to_dict()
    params = {name for name, _ in model.named_parameters()}  # buffers (PCA basis, pos_embed) stay exact
    check_finite_weights(model.state_dict(), "denoiser export")
    sd = {k: (v.to(dtype) if k in params and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    for k, v in sd.items():  # finite before the cast: anything not finite now overflowed the narrower dtype
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            top = float(model.state_dict()[k].abs().max())
            raise ValueError(f"{path}: {k} has values up to {top:.3g}, beyond {dtype}'s range; write the denoiser in "
                             f"float32 (--denoiser float32) or bfloat16")
    meta = {"format": DENOISER_FORMAT, "args": json.dumps(kept)}
    if model.tokenizer is not None:
        meta["tokenizer"] = json.dumps(model.tokenizer.metadata())
    save_safetensors(sd, path, meta)
    return Path(path)


def load_denoiser_file(path: str | os.PathLike) -> LDAE:
    """The :class:`LDAE` of a denoiser file (float32, eval mode)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"denoiser file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()} if meta.get("format") == DENOISER_FORMAT else {}
    except Exception as e:  # safetensors' own error names no file
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    if meta.get("format") != DENOISER_FORMAT:
        raise ValueError(f"{path}: not an l-DAE denoiser file (expected format {DENOISER_FORMAT!r}, got {meta.get('format')!r})")
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}  # stored maybe in half precision
    tok_meta = json.loads(meta["tokenizer"]) if "tokenizer" in meta else None
    model = build_checked_model(json.loads(meta["args"]), sd, tokenizer_from_state_dict(sd, tok_meta), source=str(path))
    model.load_state_dict(sd, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------- resolution
def load_denoiser(spec: str | None = None) -> tuple[LDAE, str]:
    """(model, description) from a checkpoint, a denoiser file, a released tag, or ``None``: the
    first released tag that ships a denoiser. Raises ``ValueError`` saying how to get one otherwise."""
    if spec is None:
        tags = denoiser_tags()
        if not tags:
            raise ValueError(
                "no released model ships its denoiser yet; pass --model with a pretraining checkpoint (.pth from "
                "`ldae pretrain`) or a denoiser .safetensors file"
            )
        spec = tags[0]
    path = Path(spec).expanduser()
    if path.suffix in _CKPT_SUFFIXES or path.suffix == ".safetensors" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path} (expected a pretraining checkpoint .pth or a denoiser .safetensors)")
        if path.suffix == ".safetensors":
            return load_denoiser_file(path), path.name
        return model_from_checkpoint(str(path)), path.name
    split_name(spec)  # raises for names that are not l-DAE models
    manifest = load_manifest()
    if spec not in manifest.weights:
        raise ValueError(f"unknown tag {spec!r}; released tags: {released_tags() or 'none yet'}")
    entry = _denoiser_entry(spec)
    if not entry:
        raise ValueError(
            f"{spec} ships only its encoder (a timm backbone), not the denoiser the figure needs; "
            f"released tags with a denoiser: {denoiser_tags() or 'none yet'}"
        )
    file = verify_file(manifest.root / entry["file"], entry["sha256"], entry["bytes"], f"{spec} denoiser")
    return load_denoiser_file(file), spec
