"""``ldae finetune``: end-to-end fine-tuning (flags = the fields of :class:`~ldae.eval.configs.FinetuneConfig`)."""
from __future__ import annotations

import argparse

from ldae.cli.configs import bind_config, to_config
from ldae.cli.shared_flags import add_backbone_args, add_checkpoint_args, add_data_args, add_runtime_args
from ldae.eval.configs import FinetuneConfig
from ldae.eval.finetune import run_finetune

__all__ = ["get_args_parser", "main", "CONFIG"]

CONFIG = FinetuneConfig  # the library config the flags fill (ldae.cli.configs.bind_config)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(
        "ldae finetune", add_help=add_help, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune a backbone end to end (MAE's recipe, App. B settings): AdamW + layer-wise lr decay, "
                    "Mixup/CutMix, RandAugment, drop path, label smoothing, EMA. Defaults are the paper's.",
        epilog="examples:\n"
               "  torchrun --nproc-per-node 8 -m ldae.finetune --model ckpt/checkpoint-last.pth --data /data/imagenet\n"
               "  ldae finetune --model ldae_vit_small_patch4_32 --data ../shared/data/cifar10-jpeg.tar.gz \\\n"
               "      --batch-size 256 --epochs 100 --output-dir out/ft\n"
               "  ldae finetune --eval --resume out/ft/checkpoint-last.pth --data ../shared/data/cifar10-jpeg.tar.gz\n"
               "prints one line per epoch and 'finetune top-1 .. top-5 ..'; writes <output-dir>/finetune_results.json,\n"
               "log.txt (JSON lines) and checkpoint-last.pth",
    )
    add_backbone_args(parser, frozen=False, model_required=False)  # --resume CKPT rebuilds its own model
    add_data_args(parser)
    g = parser.add_argument_group("optimisation (App. B defaults)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="global batch (all processes) per update")
    g.add_argument("--accum-iter", type=int, help="gradient accumulation steps per update")
    g.add_argument("--blr", type=float, help="base lr: lr = blr * batch-size / 256 (4e-3 at 1024, App. B)")
    g.add_argument("--lr", type=float, help="absolute lr, overrides --blr")
    g.add_argument("--min-lr", type=float)
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--layer-decay", type=float, help="layer-wise lr decay (default: 0.85 up to 12 "
                   "blocks as ViT-B, 0.65 from 24 blocks as ViT-L; App. B)")
    g.add_argument("--drop-path", type=float)
    g.add_argument("--clip-grad", type=float, help="gradient norm clip (default: none, as MAE)")
    a = parser.add_argument_group("augmentation and regularisation")
    a.add_argument("--aa", help="timm auto-augment policy (RandAugment 9, 0.5)")
    a.add_argument("--reprob", type=float, help="random erasing probability")
    a.add_argument("--remode")
    a.add_argument("--recount", type=int)
    a.add_argument("--smoothing", type=float, help="label smoothing")
    a.add_argument("--mixup", type=float, help="Mixup alpha (0: off)")
    a.add_argument("--cutmix", type=float, help="CutMix alpha (0: off)")
    a.add_argument("--cutmix-minmax", type=float, nargs=2)
    a.add_argument("--mixup-prob", type=float)
    a.add_argument("--mixup-switch-prob", type=float)
    a.add_argument("--mixup-mode", choices=("batch", "pair", "elem"))
    a.add_argument("--model-ema", action=argparse.BooleanOptionalAction, help="keep an EMA of the weights")
    a.add_argument("--model-ema-decay", type=float)
    parser.add_argument("--eval", action="store_true",
                        help="evaluate only: the --resume checkpoint (model and EMA), or --model's own classifier")
    parser.add_argument("--eval-every", type=int, help="evaluate every N epochs (0: at the end only)")
    add_checkpoint_args(parser)
    add_runtime_args(parser, feature_cache=False)
    return bind_config(parser, FinetuneConfig)


def main(args: argparse.Namespace) -> int:
    """Run ``ldae finetune`` with the parsed flags (see :func:`ldae.eval.finetune.run_finetune`)."""
    return run_finetune(to_config(FinetuneConfig, args))
