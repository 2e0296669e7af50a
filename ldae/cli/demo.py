"""``ldae demo``: flags = the fields of :class:`~ldae.viz.demo_config.DemoConfig`."""
from __future__ import annotations

import argparse
import time

from ldae.cli.configs import bind_config, to_config
from ldae.viz.demo import run_demo
from ldae.viz.demo_config import DemoConfig

__all__ = ["get_args_parser", "main", "CONFIG"]

CONFIG = DemoConfig  # the library config the flags fill (ldae.cli.configs.bind_config)

EPILOG = """examples:
  ldae demo                                         # bundled images, shipped weights -> ./ldae-demo/
  ldae demo photos/ cat.jpg --out demo/             # your own images and folders
  ldae demo --model runs/cifar/checkpoint.pth       # your pretraining checkpoint: adds the denoising figure
"""


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldae demo",
        description="Offline demo: tokenizer bases (Fig. 4), pixel vs latent noise (Fig. 7), denoising (Fig. 8) "
        "and pooled features, on the bundled sample images or on your own.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=add_help,
    )
    parser.add_argument("images", nargs="*", help="image files or folders (default: the bundled sample images)")
    parser.add_argument("--out", help="output folder (default: ./ldae-demo)")
    parser.add_argument("--model", help="released tag (ldae_vit_<size>.<tag>), pretraining checkpoint .pth or "
                        "denoiser .safetensors (default: the first released tag, else a random-init ldae_vit_base)")
    parser.add_argument("--tokenizer", help="patch-PCA .safetensors for the figures when --model brings none "
                        "(default: the shipped 16x16 PCA)")
    parser.add_argument("--limit", type=int, help="at most this many images")
    parser.add_argument("--seed", type=int, help="seed of the noise draws")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return bind_config(parser, DemoConfig)


def main(args: argparse.Namespace) -> int:
    """Run ``ldae demo`` with the parsed flags (see :func:`ldae.viz.demo.run_demo`)."""
    t0 = time.perf_counter()
    cfg = to_config(DemoConfig, args)
    res = run_demo(cfg)
    if not cfg.quiet:
        print(f"done in {time.perf_counter() - t0:.1f} s; open {res.out}/ to see the figures")
    return 0
