"""Shared fixtures-as-functions of the evaluation-recipe tests (probe, knn, finetune)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ldae.cli.model_flags import add_model_args
from ldae.engine.checkpoint import save_checkpoint
from ldae.models.ldae import LDAE
from ldae.models.model_config import build_model
from ldae.tokenizers.pca import PatchPCA


def tiny_ldae(seed: int = 0, enc_depth: int = 2) -> tuple[LDAE, argparse.Namespace]:
    """An LDAE of size tiny_patch4_32 (32 px, patch 4, width 192) with a 2-block encoder, a patch PCA
    fitted on smooth random images, and random (non-zero) adaLN weights, so that t matters."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.randn(64, 3, 8, 8, generator=g), size=32, mode="bilinear").clamp(-1, 1)
    tok = PatchPCA.fit([x], patch_size=4)
    args = add_model_args(argparse.ArgumentParser()).parse_args(
        ["--model", "tiny_patch4_32", "--enc-depth", str(enc_depth)])
    with torch.random.fork_rng():  # the same weights on every call, the caller's RNG untouched
        torch.manual_seed(seed)
        model = build_model(args, tok)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval(), args


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write :func:`tiny_ldae` as an l-DAE pretraining checkpoint (no EMA) and return its path."""
    model, args = tiny_ldae(seed)
    save_checkpoint({"model": model.state_dict(), "ema": None, "optimizer": {}, "scaler": None, "rng": {},
                     "step": 0, "epoch": 0, "args": vars(args), "tokenizer": model.tokenizer.metadata()}, path)
    return path
