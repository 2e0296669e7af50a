"""``ldae export``: flags = the fields of :class:`~ldae.release.export_config.ExportConfig`."""
from __future__ import annotations

import argparse

from ldae.cli.configs import bind_config, to_config
from ldae.release.export_config import ExportConfig
from ldae.release.export_folder import DTYPES, run_export

__all__ = ["get_args_parser", "main", "CONFIG"]

CONFIG = ExportConfig  # the library config the flags fill (ldae.cli.configs.bind_config)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "ldae export",
        add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a pretraining checkpoint's encoder at a fixed t to a timm / Hugging Face folder.",
        epilog=(
            "example:\n"
            "  ldae export runs/cifar/checkpoint.pth --out exports/cifar10 --tag cifar10 --metric knn_top1=81.2\n"
            "then:  import ldae, timm; timm.create_model('local-dir:exports/cifar10', pretrained=True)"
        ),
    )
    parser.add_argument("checkpoint", help="pretraining checkpoint (ldae.engine.checkpoint format)")
    parser.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--t", type=int, help="noise level the encoder is folded at (default: the schedule's eval level)")
    parser.add_argument("--tag", help="pretrained tag, e.g. the data set: <arch>.<tag> (default: custom)")
    parser.add_argument("--no-ema", dest="ema", action="store_false", help="export the raw weights, not the EMA weights")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="storage dtype of model.safetensors")
    parser.add_argument("--denoiser", nargs="?", const="float16", choices=sorted(DTYPES), metavar="DTYPE",
                        help="also write the whole pretraining model (encoder + decoder) as denoiser.safetensors "
                             "(parameters in DTYPE, float16 if omitted), for denoising figures and continued pretraining")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx (float32, dynamic batch axis; "
                        "input 'images', output 'features')")
    parser.add_argument("--data", help="pretraining data, for the model card (default: from the checkpoint's args)")
    parser.add_argument("--recipe", help="the command that pretrained the checkpoint, for the model card")
    parser.add_argument("--metric", action="append", metavar="NAME=VALUE", help="a result to record (repeatable)")
    parser.add_argument("--device-info", help="hardware the pretraining ran on, e.g. '1x H100'")
    parser.add_argument("--minutes", type=float, help="pretraining wall-clock minutes")
    parser.add_argument("--caveat", action="append", help="a caveat for the model card (repeatable)")
    parser.add_argument("--license")
    parser.add_argument("--repo-id", help="Hugging Face repo id <org>/<name> (model card usage; --push target)")
    parser.add_argument("--push", action="store_true", help="upload the folder to --repo-id (needs network and a token)")
    parser.add_argument("--private", action="store_true", help="create the hub repo private")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out that is an earlier export "
                        "(every file listed in its SHA256SUMS); any other folder is refused, never deleted")
    return bind_config(parser, ExportConfig)


def main(args: argparse.Namespace) -> int:
    """Run ``ldae export`` with the parsed flags (see :func:`ldae.release.export_folder.run_export`)."""
    return run_export(to_config(ExportConfig, args))
