"""``ldae probe``: the linear probe of a frozen backbone (flags = the fields of :class:`~ldae.eval.configs.ProbeConfig`)."""
from __future__ import annotations

import argparse

from ldae.cli.configs import bind_config, to_config
from ldae.cli.shared_flags import add_backbone_args, add_checkpoint_args, add_data_args, add_runtime_args
from ldae.eval.configs import ProbeConfig
from ldae.eval.probe import run_probe

__all__ = ["get_args_parser", "main", "CONFIG"]

CONFIG = ProbeConfig  # the library config the flags fill (ldae.cli.configs.bind_config)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(
        "ldae probe", add_help=add_help, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Linear probe of a frozen backbone: parameter-free BatchNorm + linear layer on globally "
                    "average-pooled features, LARS, cosine schedule (App. A / MAE). Defaults are the paper's.",
        epilog="examples:\n"
               "  ldae probe --model ckpt/checkpoint-last.pth --data /data/imagenet        # App. A protocol\n"
               "  torchrun --nproc-per-node 8 -m ldae.probe --model ldae_vit_base --data /data/imagenet\n"
               "  ldae probe --mode cached --model ckpt/checkpoint-last.pth \\\n"
               "      --data ../shared/data/cifar10-jpeg.tar.gz --batch-size 1024 --output-dir out/probe\n"
               "prints one line per epoch and 'probe top-1 .. top-5 ..'; writes <output-dir>/probe_results.json,\n"
               "log.txt (JSON lines) and head.safetensors",
    )
    parser.add_argument("--mode", choices=("paper", "cached"),
                        help="paper: augmented crops through the frozen backbone every epoch; cached: center-crop "
                             "features computed once and cached, same head and optimizer")
    add_backbone_args(parser)
    add_data_args(parser)
    g = parser.add_argument_group("optimisation (App. A defaults)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="global batch (all processes) per LARS update")
    g.add_argument("--micro-batch-size", type=int,
                   help="images per backbone forward pass per process; micro-batches are concatenated into the "
                        "batch before the head, which is exact because the backbone is frozen")
    g.add_argument("--blr", type=float,
                   help="base lr (MAE convention): lr = blr * batch-size / 256, 6.4 at batch 16384")
    g.add_argument("--lr", type=float,
                   help="absolute LARS lr, overrides --blr. The paper's App. A states 6.4e-3 at batch 16384: that is "
                        "MAE's 6.4 times LARS' trust coefficient 1e-3 (the relative step size); passing 6.4e-3 here "
                        "applies it literally and trains 1000x slower than MAE's setting")
    g.add_argument("--warmup-epochs", type=float, help="linear warmup before the cosine decay (MAE: 10)")
    g.add_argument("--min-lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--trust-coeff", type=float, help="LARS trust coefficient (timm / MAE: 1e-3)")
    g.add_argument("--eval-every", type=int, help="evaluate every N epochs (0: at the end only)")
    add_checkpoint_args(parser)
    add_runtime_args(parser)
    return bind_config(parser, ProbeConfig)


def main(args: argparse.Namespace) -> int:
    """Run ``ldae probe`` with the parsed flags (see :func:`ldae.eval.probe.run_probe`)."""
    return run_probe(to_config(ProbeConfig, args))
