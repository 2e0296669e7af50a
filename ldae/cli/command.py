"""The ``ldae`` command: one entry point, one subcommand per recipe.

Each subcommand lives in its own module of :mod:`ldae.cli` exposing ``get_args_parser(add_help=True)``
and ``main(args)``, which turns the flags into the library's typed config and runs it; modules are
imported only when their subcommand runs, so ``ldae --help`` is fast. ``ldae <command> ...`` and
``python -m ldae.<module> ...`` (:data:`ENTRY_POINTS`) are the same program.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from ldae import __version__
from ldae.utils.io import DiskFullError

__all__ = ["main", "run", "SUBCOMMANDS", "ENTRY_POINTS", "EXAMPLES", "USER_ERRORS", "EXIT_USER_ERROR"]

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("ldae.cli.demo", "offline demo on bundled images: denoising, noise and tokenizer figures, features"),
    "fit-pca": ("ldae.cli.fit_pca", "fit the patch-PCA tokenizer on an image folder or tar"),
    "fit-tokenizer": ("ldae.cli.fit_tokenizer", "fit a patch AE / VAE / pixel tokenizer (trajectory ablations)"),
    "pretrain": ("ldae.cli.pretrain", "pretrain an l-DAE (one GPU to multi-node torchrun)"),
    "probe": ("ldae.cli.probe", "linear probe of a frozen backbone (paper protocol or cached features)"),
    "knn": ("ldae.cli.knn", "k-nearest-neighbour classification of frozen features"),
    "finetune": ("ldae.cli.finetune", "fine-tune a backbone end to end (MAE recipe on timm parts)"),
    "export": ("ldae.cli.export", "export a pretraining checkpoint at a fixed t to a timm / Hugging Face folder"),
    "figures": ("ldae.cli.figures", "denoising grid, pixel vs latent noise, PCA bases, training curves"),
}

# ``python -m <module>`` (and ``torchrun -m <module>``) runs the same program as ``ldae <name>``.
ENTRY_POINTS: dict[str, str] = {"demo": "ldae.demo", "fit-pca": "ldae.fit_pca", "fit-tokenizer": "ldae.fit_tokenizer",
                                "pretrain": "ldae.pretrain", "probe": "ldae.probe", "knn": "ldae.knn", "finetune": "ldae.finetune",
                                "export": "ldae.publish", "figures": "ldae.figures"}

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


# What a user can cause and fix (a bad flag value, a missing or wrong file, an incompatible artifact):
# one line, exit 2. Anything else is a bug and keeps its traceback. LDAE_DEBUG=1 (or --debug before
# the command) shows the traceback of user errors too.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
                                                IsADirectoryError, PermissionError, DiskFullError)
EXIT_USER_ERROR = 2
# Operating-system errors about the user's files and disks (their message names the path): read-only
# or full file systems, missing permissions, symlink loops, names too long.
_USER_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.ELOOP, errno.ENAMETOOLONG}


def _is_user_error(e: BaseException) -> bool:
    from ldae.release.manifest import WeightsIntegrityError  # a damaged or tampered weights file

    return isinstance(e, (*USER_ERRORS, WeightsIntegrityError)) or (isinstance(e, OSError) and e.errno in _USER_ERRNOS)


def _debug() -> bool:
    return os.environ.get("LDAE_DEBUG", "") not in ("", "0")


def _one_line(e: BaseException) -> str:
    text = str(e)
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: the worker's own message is the last line
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    text = " ".join(text.split()) or type(e).__name__
    return text.strip("'\"") if isinstance(e, KeyError) else text


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--debug"]:
        os.environ["LDAE_DEBUG"] = "1"
        argv = argv[1:]
    if not argv or argv[0] not in SUBCOMMANDS:
        parser = _parser()
        if not argv:
            parser.print_help()
            return 0
        if argv[0].startswith("-"):
            parser.parse_args(argv)  # --help / --version exit here; other flags are an error
        parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(SUBCOMMANDS)}")
    return run(argv[0], argv[1:])


def run(command: str, argv: list[str]) -> int:
    """``ldae <command> <argv>``: parse, check every numeric flag's range, run; user errors as one line."""
    from ldae.cli.flag_domains import check_flags

    module = importlib.import_module(SUBCOMMANDS[command][0])
    parser = module.get_args_parser(add_help=True)
    parser.prog = f"ldae {command}"
    args = parser.parse_args(argv)
    try:
        check_flags(parser, args)
        result = module.main(args)
    except Exception as e:  # a bug is re-raised with its traceback; see _is_user_error
        if _debug() or not _is_user_error(e):
            raise
        print(f"ldae {command}: error: {_one_line(e)}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
