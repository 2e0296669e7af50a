"""``ldae fit-pca``: fit the patch-wise PCA tokenizer (Sec. 4.2) on an image folder or tar.

    ldae fit-pca ../shared/data/imagenette-224-train2500.tar --patch-size 16 --img-size 224 \\
        --out weights/pca_p16_imagenette224.safetensors

Every image is resized (shorter side) and center-cropped to ``--img-size``, normalised exactly as
the model will see it (``--norm dit``: [-1, 1], the default; ``--norm imagenet``: MAE's per-channel
statistics), cut into non-overlapping p x p x 3 patches, and the covariance of all patches (or
``--patches-per-image`` random ones) is eigen-decomposed in float64. The artifact records the exact
command that reproduces it, the data, the number of images and patches and the normalisation.
"""
from __future__ import annotations

import shlex
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from ldae.tokenizers.base import NORMS
from ldae.tokenizers.fit_config import FitPCAConfig
from ldae.tokenizers.pca import PatchPCA
from ldae.utils.io import sha256_file
from ldae.utils.progress import progress

__all__ = ["run_fit_pca", "fit_command", "fit_from_config"]


def fit_command(cfg: FitPCAConfig) -> str:
    """The canonical ``ldae fit-pca`` command line that reproduces ``cfg`` (every result-relevant flag spelled out)."""
    parts = ["ldae", "fit-pca", str(cfg.data)]
    if cfg.split is not None:
        parts += ["--split", cfg.split]
    parts += ["--img-size", str(cfg.img_size), "--patch-size", str(cfg.patch_size), "--norm", cfg.norm]
    if cfg.interpolation != "bicubic":
        parts += ["--interpolation", cfg.interpolation]
    if cfg.patches_per_image is not None:
        parts += ["--patches-per-image", str(cfg.patches_per_image)]
    if cfg.max_images is not None:
        parts += ["--max-images", str(cfg.max_images)]
    parts += ["--seed", str(cfg.seed), "--out", str(cfg.out)]
    return shlex.join(parts)


def _check_args(cfg: FitPCAConfig) -> None:
    if cfg.norm not in NORMS:
        raise ValueError(f"--norm must be one of {', '.join(NORMS)}, got {cfg.norm!r}")
    if cfg.patch_size < 1:
        raise ValueError(f"--patch-size must be >= 1, got {cfg.patch_size}")
    if cfg.img_size < cfg.patch_size:
        raise ValueError(f"--img-size {cfg.img_size} is smaller than --patch-size {cfg.patch_size}")
    for flag in ("patches_per_image", "max_images"):
        value = getattr(cfg, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if not str(cfg.out).endswith(".safetensors"):
        raise ValueError(f"--out must name a .safetensors file, got {cfg.out}")
    if not Path(cfg.data).exists():
        raise FileNotFoundError(f"data not found: {cfg.data} (expected an image folder, .tar or .tar.gz)")


def fit_from_config(cfg: FitPCAConfig) -> tuple[PatchPCA, dict[str, str]]:
    """Fit the tokenizer ``cfg`` describe; returns it and the provenance metadata to save with it."""
    from ldae.data.folders import build_dataset
    from ldae.data.transforms import build_transform

    _check_args(cfg)
    mean, std = NORMS[cfg.norm]
    transform = build_transform(cfg.img_size, train=False, mean=mean, std=std, crop_pct=1.0, interpolation=cfg.interpolation)
    dataset = build_dataset(cfg.data, cfg.split, transform, bad_images=cfg.bad_images)
    if cfg.max_images is not None and cfg.max_images < len(dataset):
        gen = torch.Generator().manual_seed(cfg.seed)
        dataset = Subset(dataset, sorted(torch.randperm(len(dataset), generator=gen)[: cfg.max_images].tolist()))
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers)
    batches = progress(loader, desc="fit-pca", unit="batch", quiet=cfg.quiet)
    pca = PatchPCA.fit(
        batches, cfg.patch_size, norm_mean=mean, norm_std=std, patches_per_image=cfg.patches_per_image,
        seed=cfg.seed, device=cfg.device,
    )
    meta = {
        "command": fit_command(cfg),
        "data": Path(cfg.data).name + (f" (split {cfg.split})" if cfg.split else ""),
        "img_size": str(cfg.img_size),
        "norm": cfg.norm,
        "ldae_version": _version(),
    }
    if Path(cfg.data).is_file():  # an archive: its checksum pins the data exactly
        meta["data_sha256"] = sha256_file(cfg.data)
    return pca, meta


def _version() -> str:
    from ldae import __version__

    return __version__


def explained_variance(pca: PatchPCA, d: int) -> float:
    """Fraction of the patch variance the top-d components hold."""
    ev = pca.eigenvalues.double()
    return float(ev[:d].sum() / ev.sum().clamp_min(1e-30))


def run_fit_pca(cfg: FitPCAConfig) -> int:
    pca, meta = fit_from_config(cfg)
    pca.save(cfg.out, extra_metadata=meta)
    p, c = pca.patch_size, pca.in_chans
    print(f"fitted patch PCA: {pca.num_images} images, {pca.num_patches} patches of {p}x{p}x{c} (D = {pca.dim}), norm {cfg.norm}")
    shown = [d for d in (8, 16, 32, 64) if d < pca.dim]
    print("variance explained by the top-d components: " + ", ".join(f"d={d}: {100 * explained_variance(pca, d):.1f}%" for d in shown))
    print(f"saved {cfg.out} (sha256 {sha256_file(cfg.out)})")
    return 0
