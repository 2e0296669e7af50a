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

import argparse
import os
import shlex
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from .image_decode import add_bad_images_arg
from .io import sha256_file
from .progress import progress
from .patch_tokenizer import NORMS
from .tokenizer import PatchPCA

__all__ = ["NORMS", "get_args_parser", "main", "fit_command", "fit_from_args"]

# name -> (mean, std) of the pixel normalisation applied before patches are cut.


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "ldae fit-pca",
        add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fit the patch-PCA tokenizer on an image folder, .tar or .tar.gz (ImageFolder layout).",
        epilog=(
            "example (the shipped tokenizer of the 256 px models):\n"
            "  ldae fit-pca ../shared/data/imagenette-224-train2500.tar --split train --img-size 224 \\\n"
            "      --patch-size 16 --norm dit --out weights/pca_p16_imagenette224.safetensors"
        ),
    )
    parser.add_argument("data", help="image folder, .tar or .tar.gz in ImageFolder layout (<split>/<class>/<image>)")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--split", default=None, help="split folder to read (default: the only one present)")
    parser.add_argument("--img-size", type=int, required=True, help="resize + center-crop images to this size")
    parser.add_argument("--patch-size", type=int, required=True, help="patch side p (D = p * p * 3)")
    parser.add_argument("--norm", default="dit", choices=sorted(NORMS), help="pixel normalisation: dit = [-1, 1] (default), imagenet = MAE's")
    parser.add_argument("--interpolation", default="bicubic", help="resize interpolation (torchvision InterpolationMode)")
    parser.add_argument("--patches-per-image", type=int, default=None, help="random patches drawn per image (default: all)")
    parser.add_argument("--max-images", type=int, default=None, help="fit on a seeded random subset of this many images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image subset and the patch draws")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="data loader processes (do not change the result)")
    add_bad_images_arg(parser)
    parser.add_argument("--device", default="cpu", help="device of the covariance accumulation (the result is float64 either way)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def fit_command(args: argparse.Namespace) -> str:
    """The canonical ``ldae fit-pca`` command line that reproduces ``args`` (every result-relevant flag spelled out)."""
    parts = ["ldae", "fit-pca", str(args.data)]
    if args.split is not None:
        parts += ["--split", args.split]
    parts += ["--img-size", str(args.img_size), "--patch-size", str(args.patch_size), "--norm", args.norm]
    if args.interpolation != "bicubic":
        parts += ["--interpolation", args.interpolation]
    if args.patches_per_image is not None:
        parts += ["--patches-per-image", str(args.patches_per_image)]
    if args.max_images is not None:
        parts += ["--max-images", str(args.max_images)]
    parts += ["--seed", str(args.seed), "--out", str(args.out)]
    return shlex.join(parts)


def _check_args(args: argparse.Namespace) -> None:
    if args.patch_size < 1:
        raise ValueError(f"--patch-size must be >= 1, got {args.patch_size}")
    if args.img_size < args.patch_size:
        raise ValueError(f"--img-size {args.img_size} is smaller than --patch-size {args.patch_size}")
    for flag in ("patches_per_image", "max_images"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if not str(args.out).endswith(".safetensors"):
        raise ValueError(f"--out must name a .safetensors file, got {args.out}")
    if not Path(args.data).exists():
        raise FileNotFoundError(f"data not found: {args.data} (expected an image folder, .tar or .tar.gz)")


def fit_from_args(args: argparse.Namespace) -> tuple[PatchPCA, dict[str, str]]:
    """Fit the tokenizer ``args`` describe; returns it and the provenance metadata to save with it."""
    from .data import build_dataset, build_transform

    _check_args(args)
    mean, std = NORMS[args.norm]
    transform = build_transform(args.img_size, train=False, mean=mean, std=std, crop_pct=1.0, interpolation=args.interpolation)
    dataset = build_dataset(args.data, args.split, transform, bad_images=args.bad_images)
    if args.max_images is not None and args.max_images < len(dataset):
        gen = torch.Generator().manual_seed(args.seed)
        dataset = Subset(dataset, sorted(torch.randperm(len(dataset), generator=gen)[: args.max_images].tolist()))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
    batches = progress(loader, desc="fit-pca", unit="batch", quiet=args.quiet)
    pca = PatchPCA.fit(
        batches, args.patch_size, norm_mean=mean, norm_std=std, patches_per_image=args.patches_per_image,
        seed=args.seed, device=args.device,
    )
    meta = {
        "command": fit_command(args),
        "data": Path(args.data).name + (f" (split {args.split})" if args.split else ""),
        "img_size": str(args.img_size),
        "norm": args.norm,
        "ldae_version": _version(),
    }
    if Path(args.data).is_file():  # an archive: its checksum pins the data exactly
        meta["data_sha256"] = sha256_file(args.data)
    return pca, meta


def _version() -> str:
    from . import __version__

    return __version__


def explained_variance(pca: PatchPCA, d: int) -> float:
    """Fraction of the patch variance the top-d components hold."""
    ev = pca.eigenvalues.double()
    return float(ev[:d].sum() / ev.sum().clamp_min(1e-30))


def main(args: argparse.Namespace) -> int:
    pca, meta = fit_from_args(args)
    pca.save(args.out, extra_metadata=meta)
    p, c = pca.patch_size, pca.in_chans
    print(f"fitted patch PCA: {pca.num_images} images, {pca.num_patches} patches of {p}x{p}x{c} (D = {pca.dim}), norm {args.norm}")
    shown = [d for d in (8, 16, 32, 64) if d < pca.dim]
    print("variance explained by the top-d components: " + ", ".join(f"d={d}: {100 * explained_variance(pca, d):.1f}%" for d in shown))
    print(f"saved {args.out} (sha256 {sha256_file(args.out)})")
    return 0


if __name__ == "__main__":
    from ldae.cli import run  # the same checks and one-line user errors as `ldae fit-pca`

    sys.exit(run("fit-pca", sys.argv[1:]))
