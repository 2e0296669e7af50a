"""``ldae fit-tokenizer``: fit the patch AE / VAE tokenizers or write the pixel tokenizer (Sec. 4.2).

    ldae fit-tokenizer ../shared/data/imagenette-224-train2500.tar --kind ae --d 32 --patch-size 16 \\
        --img-size 256 --out ae_p16_d32.safetensors
    ldae fit-tokenizer --kind pixel --patch-size 16 --token-patch 4 --out pixel_p16_q4.safetensors

The patch-wise PCA, the default tokenizer, has its own command (``ldae fit-pca``). Images are
prepared exactly as there (resize + center crop to ``--img-size``, ``--norm``), patches are drawn
into one bank and the linear maps are trained on it by Adam (:meth:`ldae.patch_ae.PatchAE.fit`).
The pixel tokenizer learns nothing and needs no data. Every artifact records the command that
reproduces it and loads with :func:`ldae.tokenizers.load_tokenizer` or ``ldae pretrain --tokenizer``.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from .fit_pca import NORMS
from .image_decode import add_bad_images_arg
from .io import sha256_file
from .patch_ae import PatchAE, PatchVAE
from .pixel_tokenizer import PixelTokenizer
from .progress import progress

__all__ = ["KINDS", "get_args_parser", "main", "fit_command", "fit_from_args"]

KINDS = ("ae", "vae", "pixel")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "ldae fit-tokenizer",
        add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fit a patch-wise AE or VAE tokenizer on an image folder, .tar or .tar.gz, or write a pixel "
        "tokenizer (the tokenizer ablations of Tab. 2 and Fig. 5; the PCA has `ldae fit-pca`).",
        epilog=(
            "examples:\n"
            "  ldae fit-tokenizer ../shared/data/imagenette-224-train2500.tar --kind vae --d 32 --patch-size 16 \\\n"
            "      --img-size 256 --out vae_p16_d32.safetensors\n"
            "  ldae fit-tokenizer ../shared/data/cifar10-jpeg.tar.gz --split train --kind ae --d 16 --patch-size 4 \\\n"
            "      --img-size 32 --out ae_p4_d16.safetensors\n"
            "  ldae fit-tokenizer --kind pixel --patch-size 16 --token-patch 4 --out pixel_p16_q4.safetensors"
        ),
    )
    parser.add_argument("data", nargs="?", default=None, help="image folder, .tar or .tar.gz in ImageFolder layout (not for --kind pixel)")
    parser.add_argument("--kind", required=True, choices=KINDS, help="ae / vae: linear patch autoencoder / VAE; pixel: Fig. 5's pixel tokens")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--patch-size", type=int, required=True, help="the model's patch side p (D = p * p * 3)")
    parser.add_argument("--d", type=int, default=None, help="latent dimension (ae / vae; required for them)")
    parser.add_argument("--token-patch", type=int, default=None,
                        help="pixel: patch side q on the image resized by q/p, so the sequence length stays (H/p)^2 and d = q*q*3")
    parser.add_argument("--norm", default="dit", choices=sorted(NORMS), help="pixel normalisation: dit = [-1, 1] (default), imagenet = MAE's")
    g = parser.add_argument_group("data (ae / vae)")
    g.add_argument("--split", default=None, help="split folder to read (default: the only one present)")
    g.add_argument("--img-size", type=int, default=None, help="resize + center-crop images to this size (required for ae / vae)")
    g.add_argument("--interpolation", default="bicubic", help="resize interpolation (torchvision InterpolationMode)")
    g.add_argument("--patches-per-image", type=int, default=None, help="random patches drawn per image (default: all)")
    g.add_argument("--max-images", type=int, default=None, help="fit on a seeded random subset of this many images")
    g.add_argument("--max-patches", type=int, default=1 << 17, help="size of the patch bank trained on (default 131072)")
    g.add_argument("--batch-size", type=int, default=64, help="images per loader batch")
    g.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="data loader processes (do not change the result)")
    add_bad_images_arg(g)
    g = parser.add_argument_group("training (ae / vae)")
    g.add_argument("--steps", type=int, default=3000, help="Adam steps")
    g.add_argument("--patch-batch", type=int, default=1024, help="patches per Adam step")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (default 0.2 / sqrt(D)); 5%% warmup, cosine decay")
    g.add_argument("--kl-weight", type=float, default=1.0, help="vae: weight of the KL term (1 = the paper's loss as written)")
    g.add_argument("--seed", type=int, default=0, help="seed of the image subset, the patch draws and the initial maps")
    g.add_argument("--device", default="cpu", help="device the maps are trained on")
    g.add_argument("--log-every", type=int, default=500, help="print the objective every this many steps (0: never)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no training log")
    return parser


def fit_command(args: argparse.Namespace) -> str:
    """The canonical ``ldae fit-tokenizer`` command line that reproduces ``args``."""
    if args.kind == "pixel":
        parts = ["ldae", "fit-tokenizer", "--kind", "pixel", "--patch-size", str(args.patch_size),
                 "--token-patch", str(args.token_patch), "--norm", args.norm]
        return shlex.join(parts + ["--out", str(args.out)])
    parts = ["ldae", "fit-tokenizer", str(args.data), "--kind", args.kind]
    if args.split is not None:
        parts += ["--split", args.split]
    parts += ["--img-size", str(args.img_size), "--patch-size", str(args.patch_size), "--d", str(args.d), "--norm", args.norm]
    if args.interpolation != "bicubic":
        parts += ["--interpolation", args.interpolation]
    for flag in ("patches_per_image", "max_images", "lr"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    parts += ["--max-patches", str(args.max_patches), "--steps", str(args.steps), "--patch-batch", str(args.patch_batch)]
    if args.kind == "vae":
        parts += ["--kl-weight", str(args.kl_weight)]
    parts += ["--seed", str(args.seed), "--out", str(args.out)]
    return shlex.join(parts)


def _check_args(args: argparse.Namespace) -> None:
    if not str(args.out).endswith(".safetensors"):
        raise ValueError(f"--out must name a .safetensors file, got {args.out}")
    if args.patch_size < 1:
        raise ValueError(f"--patch-size must be >= 1, got {args.patch_size}")
    if args.kind == "pixel":
        if args.token_patch is None or args.token_patch < 1 or args.patch_size % args.token_patch:
            raise ValueError(f"--kind pixel needs --token-patch q dividing --patch-size {args.patch_size}, got {args.token_patch}")
        if args.data is not None or args.d is not None:
            raise ValueError("--kind pixel learns nothing: it takes no data and no --d (d = token_patch^2 * 3)")
        return
    if args.token_patch is not None:
        raise ValueError(f"--token-patch is for --kind pixel, not --kind {args.kind}")
    if args.data is None:
        raise ValueError(f"--kind {args.kind} is fitted on images: pass the data path")
    if not Path(args.data).exists():
        raise FileNotFoundError(f"data not found: {args.data} (expected an image folder, .tar or .tar.gz)")
    if args.d is None or args.img_size is None:
        raise ValueError(f"--kind {args.kind} needs --d (latent dimension) and --img-size")
    dim = args.patch_size * args.patch_size * 3
    if not 1 <= args.d <= dim:
        raise ValueError(f"--d must be in [1, {dim}] for {args.patch_size}x{args.patch_size}x3 patches, got {args.d}")
    if args.img_size < args.patch_size:
        raise ValueError(f"--img-size {args.img_size} is smaller than --patch-size {args.patch_size}")
    for flag in ("patches_per_image", "max_images", "max_patches", "steps", "patch_batch", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.kl_weight < 0 or (args.lr is not None and args.lr <= 0):
        raise ValueError(f"need --kl-weight >= 0 and --lr > 0, got {args.kl_weight} and {args.lr}")


def fit_from_args(args: argparse.Namespace) -> tuple[PatchAE | PixelTokenizer, dict[str, str]]:
    """The tokenizer ``args`` describe (fitted for ae / vae) and the provenance metadata to save with it."""
    _check_args(args)
    mean, std = NORMS[args.norm]
    meta = {"command": fit_command(args), "norm": args.norm, "ldae_version": _version()}
    if args.kind == "pixel":
        return PixelTokenizer(args.patch_size, args.token_patch, 3, mean, std), meta

    from .data import build_dataset, build_transform

    transform = build_transform(args.img_size, train=False, mean=mean, std=std, crop_pct=1.0, interpolation=args.interpolation)
    dataset = build_dataset(args.data, args.split, transform, bad_images=args.bad_images)
    gen = torch.Generator().manual_seed(args.seed)
    # A seeded order (and subset): the patch bank stops at --max-patches, so it must not hold only the first classes.
    order = torch.randperm(len(dataset), generator=gen)[: args.max_images].tolist()
    loader = DataLoader(Subset(dataset, order), batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
    batches = progress(loader, desc=f"fit-tokenizer {args.kind}: patches", unit="batch", quiet=args.quiet)
    cls = PatchVAE if args.kind == "vae" else PatchAE
    kwargs = {"kl_weight": args.kl_weight} if args.kind == "vae" else {}
    tok = cls.fit(
        batches, args.patch_size, args.d, norm_mean=mean, norm_std=std, patches_per_image=args.patches_per_image,
        max_patches=args.max_patches, steps=args.steps, batch_size=args.patch_batch, lr=args.lr, seed=args.seed,
        device=args.device, log_every=0 if args.quiet else args.log_every, **kwargs,
    )
    meta.update({"data": Path(args.data).name + (f" (split {args.split})" if args.split else ""), "img_size": str(args.img_size)})
    if Path(args.data).is_file():  # an archive: its checksum pins the data exactly
        meta["data_sha256"] = sha256_file(args.data)
    return tok, meta


def _version() -> str:
    from . import __version__

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


def main(args: argparse.Namespace) -> int:
    tok, meta = fit_from_args(args)
    tok.save(args.out, extra_metadata=meta)
    for line in summary(tok):
        print(line)
    print(f"saved {args.out} (sha256 {sha256_file(args.out)})")
    return 0


if __name__ == "__main__":
    from ldae.cli import run  # the same checks and one-line user errors as `ldae fit-tokenizer`

    sys.exit(run("fit-tokenizer", sys.argv[1:]))
