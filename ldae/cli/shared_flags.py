"""Flags several commands share: unreadable images, the evaluated backbone, the evaluation data, the run.

The defaults come from the command's config class (:func:`ldae.cli.configs.bind_config`).
"""
from __future__ import annotations

import argparse
from typing import Any

from ldae.data.image_decode import BAD_IMAGE_POLICIES
from ldae.data.transforms import INTERPOLATIONS
from ldae.eval.features import INPUT_VIEWS

__all__ = ["add_bad_images_arg", "add_backbone_args", "add_data_args", "add_runtime_args", "add_checkpoint_args"]


def add_bad_images_arg(group: Any, record_note: str = "") -> None:
    """The ``--bad-images`` flag (one definition for every subcommand that reads images)."""
    group.add_argument("--bad-images", choices=BAD_IMAGE_POLICIES,
                       help="an unreadable image file: stop, naming it (error), or use the next readable image in its "
                            f"place (skip: the same replacement on every run, each file named in a warning{record_note})")


def add_backbone_args(parser: argparse.ArgumentParser, frozen: bool = True, model_required: bool = True) -> argparse.ArgumentParser:
    """The backbone flags every evaluation recipe shares (``frozen``: the probes' input-view flags too)."""
    g = parser.add_argument_group("backbone")
    g.add_argument("--model", required=model_required,
                   help="timm model name (e.g. ldae_vit_base, vit_small_patch16_224, hf-hub:org/name), "
                        "a save_for_hf / `ldae export` folder, or an l-DAE pretraining checkpoint .pth")
    g.add_argument("--pretrained", action=argparse.BooleanOptionalAction,
                   help="load the timm name's weights; --no-pretrained is the random-init control")
    g.add_argument("--t", type=int,
                   help="noise level of an l-DAE checkpoint's encoder (default: its eval level, t=10 of 1000; App. A); "
                        "zoo names and exports carry the level they were exported at")
    g.add_argument("--ema", action=argparse.BooleanOptionalAction, help="use a checkpoint's EMA weights")
    if frozen:
        g.add_argument("--input-view", choices=INPUT_VIEWS,
                       help="what the encoder is shown: the clean image; the image 'projected' onto the top-d latent span "
                            "of the model's tokenizer (as in training); or 'noisy', with the model's pretraining latent "
                            "noise at its level t (App. A 'w/ noisy input'). The last two: l-DAE checkpoints, zoo names, exports")
        g.add_argument("--noisy-input", dest="input_view", action="store_const", const="noisy",
                       help="the same as --input-view noisy")
    g.add_argument("--input-size", type=int, help="image size (default: the model's pretrained_cfg)")
    g.add_argument("--crop-pct", type=float, help="eval center-crop fraction (default: the model's)")
    g.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize interpolation (default: the model's)")
    g.add_argument("--mean", type=float, nargs=3, help="normalisation mean (default: the model's)")
    g.add_argument("--std", type=float, nargs=3, help="normalisation std (default: the model's)")
    return parser


def add_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("data")
    g.add_argument("--data", required=True,
                   help="ImageFolder folder, .tar or .tar.gz holding <split>/<class>/<image> (e.g. "
                        "../shared/data/cifar10-jpeg.tar.gz, /data/imagenet)")
    g.add_argument("--train-split", help="training split folder")
    g.add_argument("--val-split", help="evaluation split folder (default: 'val', else 'test')")
    g.add_argument("--num-classes", type=int,
                   help="expected number of classes (checked against the class folders; default: what they hold)")
    g.add_argument("--num-workers", type=int, help="data loading processes")
    add_bad_images_arg(g)
    return parser


def add_runtime_args(parser: argparse.ArgumentParser, feature_cache: bool = True) -> argparse.ArgumentParser:
    g = parser.add_argument_group("run")
    g.add_argument("--output-dir", help="where results, log.txt and checkpoints go")
    g.add_argument("--device", help="cuda / cpu (default: cuda when available)")
    g.add_argument("--seed", type=int)
    g.add_argument("--amp", action=argparse.BooleanOptionalAction,
                   help="bfloat16 autocast on CUDA (ignored on CPU, which runs float32)")
    if feature_cache:
        g.add_argument("--cache-dir",
                       help="feature cache folder (default: $LDAE_CACHE/features or ~/.cache/ldae/features)")
        g.add_argument("--no-cache", action="store_true", help="neither read nor write cached features")
        g.add_argument("--recompute", action="store_true", help="recompute features and overwrite the cache")
    g.add_argument("--quiet", action="store_true", help="no progress bars and no per-epoch lines")
    return parser


def add_checkpoint_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("checkpoints")
    g.add_argument("--resume", help="continue from this checkpoint (default: <output-dir>/checkpoint-last.pth "
                   "when it exists, see --auto-resume)")
    g.add_argument("--auto-resume", action=argparse.BooleanOptionalAction,
                   help="resume from <output-dir>/checkpoint-last.pth when present")
    return parser
