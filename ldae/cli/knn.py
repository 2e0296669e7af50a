"""``ldae knn``: k-NN classification of frozen features (flags = the fields of :class:`~ldae.eval.configs.KnnConfig`)."""
from __future__ import annotations

import argparse

from ldae.cli.configs import bind_config, to_config
from ldae.cli.shared_flags import add_backbone_args, add_data_args, add_runtime_args
from ldae.eval.configs import KnnConfig
from ldae.eval.knn import run_knn

__all__ = ["get_args_parser", "main", "CONFIG"]

CONFIG = KnnConfig  # the library config the flags fill (ldae.cli.configs.bind_config)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "ldae knn", add_help=add_help, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="k-NN classification (cosine similarity, votes weighted by exp(s/T)) of frozen features.",
        epilog="example:\n  ldae knn --model ckpt/checkpoint-last.pth --data ../shared/data/cifar10-jpeg.tar.gz "
               "--output-dir out/knn\n  prints 'k-NN k=20 top-1 .. top-5 ..' per k and writes out/knn/knn_results.json",
    )
    add_backbone_args(parser)
    add_data_args(parser)
    g = parser.add_argument_group("k-NN")
    g.add_argument("--k", type=int, nargs="+", help="numbers of neighbours")
    g.add_argument("--temperature", type=float, help="vote weight exp(similarity / T) (DINO: 0.07)")
    g.add_argument("--batch-size", type=int, help="images per forward pass (feature extraction)")
    add_runtime_args(parser)
    return bind_config(parser, KnnConfig)


def main(args: argparse.Namespace) -> int:
    """Run ``ldae knn`` with the parsed flags (see :func:`ldae.eval.knn.run_knn`)."""
    return run_knn(to_config(KnnConfig, args))
