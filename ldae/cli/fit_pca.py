"""``ldae fit-pca``: flags = the fields of :class:`~ldae.tokenizers.fit_config.FitPCAConfig`."""
from __future__ import annotations

import argparse

from ldae.cli.configs import bind_config, to_config
from ldae.cli.shared_flags import add_bad_images_arg
from ldae.data.transforms import INTERPOLATIONS
from ldae.tokenizers.base import NORMS
from ldae.tokenizers.fit_config import FitPCAConfig
from ldae.tokenizers.fit_pca import run_fit_pca

__all__ = ["get_args_parser", "main", "CONFIG"]

CONFIG = FitPCAConfig  # the library config the flags fill (ldae.cli.configs.bind_config)


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
    parser.add_argument("--split", help="split folder to read (default: the only one present)")
    parser.add_argument("--img-size", type=int, required=True, help="resize + center-crop images to this size")
    parser.add_argument("--patch-size", type=int, required=True, help="patch side p (D = p * p * 3)")
    parser.add_argument("--norm", choices=sorted(NORMS), help="pixel normalisation: dit = [-1, 1] (default), imagenet = MAE's")
    parser.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize interpolation")
    parser.add_argument("--patches-per-image", type=int, help="random patches drawn per image (default: all)")
    parser.add_argument("--max-images", type=int, help="fit on a seeded random subset of this many images")
    parser.add_argument("--seed", type=int, help="seed of the image subset and the patch draws")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--workers", type=int, help="data loader processes (do not change the result)")
    add_bad_images_arg(parser)
    parser.add_argument("--device", help="device of the covariance accumulation (the result is float64 either way)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return bind_config(parser, FitPCAConfig)


def main(args: argparse.Namespace) -> int:
    """Run ``ldae fit-pca`` with the parsed flags (see :func:`ldae.tokenizers.fit_pca.run_fit_pca`)."""
    return run_fit_pca(to_config(FitPCAConfig, args))
