"""``ldae fit-tokenizer``: flags = the fields of :class:`~ldae.tokenizers.fit_config.FitTokenizerConfig`."""
from __future__ import annotations

import argparse

from ldae.cli.configs import bind_config, to_config
from ldae.cli.shared_flags import add_bad_images_arg
from ldae.data.transforms import INTERPOLATIONS
from ldae.tokenizers.base import NORMS
from ldae.tokenizers.fit_config import FitTokenizerConfig
from ldae.tokenizers.fit_tokenizer import KINDS, run_fit_tokenizer

__all__ = ["get_args_parser", "main", "CONFIG"]

CONFIG = FitTokenizerConfig  # the library config the flags fill (ldae.cli.configs.bind_config)


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
    parser.add_argument("data", nargs="?", help="image folder, .tar or .tar.gz in ImageFolder layout (not for --kind pixel)")
    parser.add_argument("--kind", required=True, choices=KINDS, help="ae / vae: linear patch autoencoder / VAE; pixel: Fig. 5's pixel tokens")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--patch-size", type=int, required=True, help="the model's patch side p (D = p * p * 3)")
    parser.add_argument("--d", type=int, help="latent dimension (ae / vae; required for them)")
    parser.add_argument("--token-patch", type=int,
                        help="pixel: patch side q on the image resized by q/p, so the sequence length stays (H/p)^2 and d = q*q*3")
    parser.add_argument("--norm", choices=sorted(NORMS), help="pixel normalisation: dit = [-1, 1] (default), imagenet = MAE's")
    g = parser.add_argument_group("data (ae / vae)")
    g.add_argument("--split", help="split folder to read (default: the only one present)")
    g.add_argument("--img-size", type=int, help="resize + center-crop images to this size (required for ae / vae)")
    g.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize interpolation")
    g.add_argument("--patches-per-image", type=int, help="random patches drawn per image (default: all)")
    g.add_argument("--max-images", type=int, help="fit on a seeded random subset of this many images")
    g.add_argument("--max-patches", type=int, help="size of the patch bank trained on (default 131072)")
    g.add_argument("--batch-size", type=int, help="images per loader batch")
    g.add_argument("--workers", type=int, help="data loader processes (do not change the result)")
    add_bad_images_arg(g)
    g = parser.add_argument_group("training (ae / vae)")
    g.add_argument("--steps", type=int, help="Adam steps")
    g.add_argument("--patch-batch", type=int, help="patches per Adam step")
    g.add_argument("--lr", type=float, help="peak learning rate (default 0.2 / sqrt(D)); 5%% warmup, cosine decay")
    g.add_argument("--kl-weight", type=float, help="vae: weight of the KL term (1 = the paper's loss as written)")
    g.add_argument("--seed", type=int, help="seed of the image subset, the patch draws and the initial maps")
    g.add_argument("--device", help="device the maps are trained on")
    g.add_argument("--log-every", type=int, help="print the objective every this many steps (0: never)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no training log")
    return bind_config(parser, FitTokenizerConfig)


def main(args: argparse.Namespace) -> int:
    """Run ``ldae fit-tokenizer`` with the parsed flags (see :func:`ldae.tokenizers.fit_tokenizer.run_fit_tokenizer`)."""
    return run_fit_tokenizer(to_config(FitTokenizerConfig, args))
