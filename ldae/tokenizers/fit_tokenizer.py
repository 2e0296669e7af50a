"""``ldae fit-tokenizer``: fit the patch AE / VAE tokenizers or write the pixel tokenizer (Sec. 4.2).

    ldae fit-tokenizer ../shared/data/imagenette-224-train2500.tar --kind ae --d 32 --patch-size 16 \\
        --img-size 256 --out ae_p16_d32.safetensors
    ldae fit-tokenizer --kind pixel --patch-size 16 --token-patch 4 --out pixel_p16_q4.safetensors

The patch-wise PCA, the default tokenizer, has its own command (``ldae fit-pca``). Images are
prepared exactly as there (resize + center crop to ``--img-size``, ``--norm``), patches are drawn
into one bank and the linear maps are trained on it by Adam (:meth:`ldae.tokenizers.linear_ae.PatchAE.fit`).
The pixel tokenizer learns nothing and needs no data. Every artifact records the command that
reproduces it and loads with :func:`ldae.tokenizers.registry.load_tokenizer` or ``ldae pretrain --tokenizer``.
"""
from __future__ import annotations

import shlex
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from ldae.tokenizers.base import NORMS
from ldae.tokenizers.fit_config import FitTokenizerConfig
from ldae.tokenizers.linear_ae import PatchAE, PatchVAE
from ldae.tokenizers.pixel import PixelTokenizer
from ldae.utils.io import sha256_file
from ldae.utils.progress import progress

__all__ = ["KINDS", "run_fit_tokenizer", "fit_command", "fit_from_config"]

KINDS = ("ae", "vae", "pixel")


def fit_command(cfg: FitTokenizerConfig) -> str:
    """The canonical ``ldae fit-tokenizer`` command line that reproduces ``cfg``."""
    if cfg.kind == "pixel":
        parts = ["ldae", "fit-tokenizer", "--kind", "pixel", "--patch-size", str(cfg.patch_size),
                 "--token-patch", str(cfg.token_patch), "--norm", cfg.norm]
        return shlex.join(parts + ["--out", str(cfg.out)])
    parts = ["ldae", "fit-tokenizer", str(cfg.data), "--kind", cfg.kind]
    if cfg.split is not None:
        parts += ["--split", cfg.split]
    parts += ["--img-size", str(cfg.img_size), "--patch-size", str(cfg.patch_size), "--d", str(cfg.d), "--norm", cfg.norm]
    if cfg.interpolation != "bicubic":
        parts += ["--interpolation", cfg.interpolation]
    for flag in ("patches_per_image", "max_images", "lr"):
        if getattr(cfg, flag) is not None:
            parts += [f"--{flag.replace('_', '-')}", str(getattr(cfg, flag))]
    parts += ["--max-patches", str(cfg.max_patches), "--steps", str(cfg.steps), "--patch-batch", str(cfg.patch_batch)]
    if cfg.kind == "vae":
        parts += ["--kl-weight", str(cfg.kl_weight)]
    parts += ["--seed", str(cfg.seed), "--out", str(cfg.out)]
    return shlex.join(parts)


def _check_args(cfg: FitTokenizerConfig) -> None:
    if cfg.kind not in KINDS:
        raise ValueError(f"--kind must be one of {', '.join(KINDS)}, got {cfg.kind!r}")
    if cfg.norm not in NORMS:
        raise ValueError(f"--norm must be one of {', '.join(NORMS)}, got {cfg.norm!r}")
    if not str(cfg.out).endswith(".safetensors"):
        raise ValueError(f"--out must name a .safetensors file, got {cfg.out}")
    if cfg.patch_size < 1:
        raise ValueError(f"--patch-size must be >= 1, got {cfg.patch_size}")
    if cfg.kind == "pixel":
        if cfg.token_patch is None or cfg.token_patch < 1 or cfg.patch_size % cfg.token_patch:
            raise ValueError(f"--kind pixel needs --token-patch q dividing --patch-size {cfg.patch_size}, got {cfg.token_patch}")
        if cfg.data is not None or cfg.d is not None:
            raise ValueError("--kind pixel learns nothing: it takes no data and no --d (d = token_patch^2 * 3)")
        return
    if cfg.token_patch is not None:
        raise ValueError(f"--token-patch is for --kind pixel, not --kind {cfg.kind}")
    if cfg.data is None:
        raise ValueError(f"--kind {cfg.kind} is fitted on images: pass the data path")
    if not Path(cfg.data).exists():
        raise FileNotFoundError(f"data not found: {cfg.data} (expected an image folder, .tar or .tar.gz)")
    if cfg.d is None or cfg.img_size is None:
        raise ValueError(f"--kind {cfg.kind} needs --d (latent dimension) and --img-size")
    dim = cfg.patch_size * cfg.patch_size * 3
    if not 1 <= cfg.d <= dim:
        raise ValueError(f"--d must be in [1, {dim}] for {cfg.patch_size}x{cfg.patch_size}x3 patches, got {cfg.d}")
    if cfg.img_size < cfg.patch_size:
        raise ValueError(f"--img-size {cfg.img_size} is smaller than --patch-size {cfg.patch_size}")
    for flag in ("patches_per_image", "max_images", "max_patches", "steps", "patch_batch", "batch_size"):
        value = getattr(cfg, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if cfg.kl_weight < 0 or (cfg.lr is not None and cfg.lr <= 0):
        raise ValueError(f"need --kl-weight >= 0 and --lr > 0, got {cfg.kl_weight} and {cfg.lr}")


def fit_from_config(cfg: FitTokenizerConfig) -> tuple[PatchAE | PixelTokenizer, dict[str, str]]:
    """The tokenizer ``cfg`` describe (fitted for ae / vae) and the provenance metadata to save with it."""
    _check_args(cfg)
    mean, std = NORMS[cfg.norm]
    meta = {"command": fit_command(cfg), "norm": cfg.norm, "ldae_version": _version()}
    if cfg.kind == "pixel":
        return PixelTokenizer(cfg.patch_size, cfg.token_patch, 3, mean, std), meta

    from ldae.data.folders import build_dataset
    from ldae.data.transforms import build_transform

    transform = build_transform(cfg.img_size, train=False, mean=mean, std=std, crop_pct=1.0, interpolation=cfg.interpolation)
    dataset = build_dataset(cfg.data, cfg.split, transform, bad_images=cfg.bad_images)
    gen = torch.Generator().manual_seed(cfg.seed)
    # A seeded order (and subset): the patch bank stops at --max-patches, so it must not hold only the first classes.
    order = torch.randperm(len(dataset), generator=gen)[: cfg.max_images].tolist()
    loader = DataLoader(Subset(dataset, order), batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers)
    batches = progress(loader, desc=f"fit-tokenizer {cfg.kind}: patches", unit="batch", quiet=cfg.quiet)
    cls = {"ae": PatchAE, "vae": PatchVAE}[cfg.kind]
    kwargs = {"kl_weight": cfg.kl_weight} if cfg.kind == "vae" else {}
    tok = cls.fit(
        batches, cfg.patch_size, cfg.d, norm_mean=mean, norm_std=std, patches_per_image=cfg.patches_per_image,
        max_patches=cfg.max_patches, steps=cfg.steps, batch_size=cfg.patch_batch, lr=cfg.lr, seed=cfg.seed,
        device=cfg.device, log_every=0 if cfg.quiet else cfg.log_every, **kwargs,
    )
    meta.update({"data": Path(cfg.data).name + (f" (split {cfg.split})" if cfg.split else ""), "img_size": str(cfg.img_size)})
    if Path(cfg.data).is_file():  # an archive: its checksum pins the data exactly
        meta["data_sha256"] = sha256_file(cfg.data)
    return tok, meta


def _version() -> str:
    from ldae import __version__

    return __version__


def summary(tok: PatchAE | PixelTokenizer) -> list[str]:
    """Human-readable lines describing a fitted tokenizer (what ``main`` prints)."""
    if isinstance(tok, PixelTokenizer):
        q, p, s = tok.token_patch, tok.patch_size, tok.factor
        return [f"pixel tokenizer: images resized by 1/{s}, {q}x{q}x{tok.in_chans} tokens (d = {tok.fixed_d}), "
                f"one per {p}x{p} patch of the model's input (e.g. 256 px -> {256 // s} px)"]
    info, p = tok.fit_info, tok.patch_size
    total = max(info["total_variance"], 1e-30)
    lines = [
        f"fitted patch {tok.KIND.upper()}: {tok.num_images} images, {tok.num_patches} patches of {p}x{p}x{tok.in_chans} "
        f"(D = {tok.dim}), d = {tok.fixed_d}, {info['steps']} steps",
        f"variance unexplained (reconstruction error / total patch variance): {100 * info['reconstruction_mse'] / total:.2f}% "
        f"(PCA optimum at d = {tok.fixed_d}: {100 * info['pca_reconstruction_mse'] / total:.2f}%)",
    ]
    if "kl" in info:
        lines.append(f"KL to N(0, I): {info['kl']:.3f} nats per patch (weight {info['kl_weight']}); "
                     f"{info['active_dims']} of {tok.fixed_d} latent dimensions active")
    return lines


def run_fit_tokenizer(cfg: FitTokenizerConfig) -> int:
    tok, meta = fit_from_config(cfg)
    tok.save(cfg.out, extra_metadata=meta)
    for line in summary(tok):
        print(line)
    print(f"saved {cfg.out} (sha256 {sha256_file(cfg.out)})")
    return 0
