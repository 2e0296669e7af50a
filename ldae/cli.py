"""The ``ldae`` command: one entry point, one subcommand per recipe.

Each subcommand lives in its own module exposing ``get_args_parser(add_help=True)`` and
``main(args)``; modules are imported only when their subcommand runs, so ``ldae --help`` is fast.
``ldae <command> ...`` and ``python -m ldae.<module> ...`` are the same program.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

__all__ = ["main", "SUBCOMMANDS", "EXAMPLES"]

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("ldae.demo", "offline demo on bundled images: denoising, noise and tokenizer figures, features"),
    "fit-pca": ("ldae.fit_pca", "fit the patch-PCA tokenizer on an image folder or tar"),
    "fit-tokenizer": ("ldae.fit_tokenizer", "fit a patch AE / VAE / pixel tokenizer (trajectory ablations)"),
    "pretrain": ("ldae.pretrain", "pretrain an l-DAE (one GPU to multi-node torchrun)"),
    "probe": ("ldae.probe", "linear probe of a frozen backbone (paper protocol or cached features)"),
    "knn": ("ldae.knn", "k-nearest-neighbour classification of frozen features"),
    "finetune": ("ldae.finetune", "fine-tune a backbone end to end (MAE recipe on timm parts)"),
    "export": ("ldae.publish", "export a pretraining checkpoint at a fixed t to a timm / Hugging Face folder"),
    "figures": ("ldae.figures", "denoising grid, pixel vs latent noise, PCA bases, training curves"),
}

# One typical call per subcommand, shown by ``ldae --help`` (each subcommand's --help has more).
EXAMPLES: dict[str, str] = {
    "demo": "ldae demo                                   # offline, bundled images -> ./ldae-demo/",
    "fit-pca": "ldae fit-pca /data/imagenet --split train --img-size 256 --patch-size 16 --out pca.safetensors",
    "fit-tokenizer": "ldae fit-tokenizer /data/imagenet --kind vae --d 32 --patch-size 16 --img-size 256 --out vae.safetensors",
    "pretrain": "torchrun --nproc_per_node 8 -m ldae.pretrain --data /data/imagenet --tokenizer pca.safetensors",
    "probe": "ldae probe --model ldae_vit_micro_patch4_32.cifar10 --data cifar10-jpeg.tar.gz",
    "knn": "ldae knn --model ldae_vit_micro_patch4_32.cifar10 --data cifar10-jpeg.tar.gz",
    "finetune": "ldae finetune --model runs/in1k/checkpoint.pth --data /data/imagenet",
    "export": "ldae export runs/in1k/checkpoint.pth --out exported/",
    "figures": "ldae figures denoise my_photos/ --model runs/in1k/checkpoint.pth --out denoise.png",
}


def _parser() -> argparse.ArgumentParser:
    epilog = "examples:\n" + "\n".join(f"  {EXAMPLES[name]}" for name in SUBCOMMANDS if name in EXAMPLES)
    epilog += "\n\n`ldae COMMAND --help` shows each command's flags and examples."
    parser = argparse.ArgumentParser(
        prog="ldae",
        description="l-DAE: latent denoising autoencoders (arXiv:2401.14404) as timm models.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ldae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        parser = _parser()
        if not argv:
            parser.print_help()
            return 0
        if argv[0].startswith("-"):
            parser.parse_args(argv)  # --help / --version exit here; other flags are an error
        parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(SUBCOMMANDS)}")
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    parser = module.get_args_parser(add_help=True)
    parser.prog = f"ldae {argv[0]}"
    result = module.main(parser.parse_args(argv[1:]))
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
