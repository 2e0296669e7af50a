"""The ``ldae`` command: one entry point, one subcommand per recipe.

Each subcommand lives in its own module exposing ``get_args_parser(add_help=True)`` and
``main(args)``; modules are imported only when their subcommand runs, so ``ldae --help`` is fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "SUBCOMMANDS"]

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldae",
        description="l-DAE: latent denoising autoencoders as timm models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        parser = _parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(SUBCOMMANDS)}")
        parser.print_help()
        return 0
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    parser = module.get_args_parser(add_help=True)
    parser.prog = f"ldae {argv[0]}"
    result = module.main(parser.parse_args(argv[1:]))
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
