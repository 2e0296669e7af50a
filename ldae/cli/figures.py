"""``ldae figures KIND``: the paper's figures for your model, tokenizer, images or training log.

    ldae figures denoise photos/ --model ldae_vit_micro_patch4_32.cifar10 --t 200 400 --out denoise.png
    ldae figures noise photos/cat.jpg --sigma 0.577 --out noise.png
    ldae figures bases --tokenizer weights/pca.safetensors --k 16 --out bases.png
    ldae figures curves runs/cifar/log.jsonl --keys loss lr --out curves.png

Without image arguments the bundled sample images are used (see :mod:`ldae.data.samples`); without
``--tokenizer``/``--model`` the shipped ones (see :mod:`ldae.release.denoiser`).
"""
from __future__ import annotations

import argparse
import math
import os

import torch

from ldae.data.samples import load_images
from ldae.engine.metrics_log import read_jsonl
from ldae.release.denoiser import load_denoiser, resolve_tokenizer
from ldae.tokenizers.pca import DIT_NORM
from ldae.viz import figures as viz

__all__ = ["get_args_parser", "main"]

EPILOG = """examples:
  ldae figures denoise photos/ --model ldae_vit_micro_patch4_32.cifar10 --t 200 400 --out denoise.png
  ldae figures denoise --model runs/cifar/checkpoint.pth          # bundled sample images
  ldae figures noise photos/cat.jpg --sigma 0.577 --out noise.png  # Fig. 7: pixel vs latent noise
  ldae figures bases --k 16 --out bases.png                        # Fig. 4: the shipped PCA bases
  ldae figures curves runs/cifar/log.jsonl --keys loss lr img_per_s --out curves.png
"""


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldae figures",
        description="Write one of the paper's figures as a PNG: denoising (Fig. 8), pixel vs latent noise "
        "(Fig. 7), PCA bases (Fig. 4), or training curves from a pretraining log.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=add_help,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="print nothing but errors")
    images = argparse.ArgumentParser(add_help=False)
    images.add_argument("images", nargs="*", help="image files or folders (default: the bundled sample images)")
    images.add_argument("--limit", type=int, default=8, help="at most this many images (rows)")
    images.add_argument("--seed", type=int, default=0, help="seed of the noise draw")
    fmt = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="kind", required=True, metavar="KIND")

    p = sub.add_parser("denoise", parents=[images, common], formatter_class=fmt, help="Fig. 8: clean | noisy | denoised",
                       epilog="example:\n  ldae figures denoise photos/ --model ldae_vit_micro_patch4_32.cifar10 --t 200 400")
    p.add_argument("--model", default=None, help="a pretraining checkpoint (.pth) or a zoo tag with denoiser weights "
                   "(default: the first shipped one)")
    p.add_argument("--t", type=int, nargs="+", default=None, help="noise levels, one noisy/denoised column pair each "
                   "(default: the level of sigma = sqrt(1/3))")
    p.add_argument("--out", default="denoise.png", help="output PNG")

    p = sub.add_parser("noise", parents=[images, common], formatter_class=fmt, help="Fig. 7: pixel noise vs latent noise",
                       epilog="example:\n  ldae figures noise photos/cat.jpg --sigma 0.577 --d 32 --out noise.png")
    p.add_argument("--tokenizer", default=None, help="patch-PCA file (.safetensors) or zoo tag (default: the shipped 16x16 PCA)")
    p.add_argument("--sigma", type=float, default=math.sqrt(1 / 3), help="noise scale of both panels (Fig. 7: sqrt(1/3))")
    p.add_argument("--d", type=int, default=None, help="latent dimension (default: the model sizes' d for this patch size)")
    p.add_argument("--whiten", action=argparse.BooleanOptionalAction, default=True, help="noise on unit-variance latents")
    p.add_argument("--img-size", type=int, default=None, help="image size (default: 256 for 16 px patches, 32 for smaller)")
    p.add_argument("--out", default="noise.png", help="output PNG")

    p = sub.add_parser("bases", parents=[common], formatter_class=fmt, help="Fig. 4: the top PCA bases",
                       epilog="example:\n  ldae figures bases --tokenizer pca.safetensors --k 16 --out bases.png")
    p.add_argument("--tokenizer", default=None, help="patch-PCA file (.safetensors) or zoo tag (default: the shipped 16x16 PCA)")
    p.add_argument("--k", type=int, default=16, help="number of bases (Fig. 4: 16)")
    p.add_argument("--cols", type=int, default=8, help="bases per row")
    p.add_argument("--out", default="bases.png", help="output PNG")

    p = sub.add_parser("curves", parents=[common], formatter_class=fmt, help="training curves from a pretraining log",
                       epilog="example:\n  ldae figures curves runs/cifar/log.jsonl --keys loss lr --out curves.png")
    p.add_argument("log", help="JSON-lines log written by `ldae pretrain` (log.jsonl in its --output-dir)")
    p.add_argument("--keys", nargs="+", default=["loss", "lr", "img_per_s"], help="numeric fields to plot, one panel each")
    p.add_argument("--x", default="step", help="field on the horizontal axis")
    p.add_argument("--size", type=int, nargs=2, default=(1200, 360), metavar=("W", "H"), help="image size in pixels")
    p.add_argument("--out", default="curves.png", help="output PNG")
    return parser


def _say(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(msg)


def _figure(args: argparse.Namespace):
    if args.kind == "curves":
        if not os.path.isfile(args.log):
            raise FileNotFoundError(f"training log not found: {args.log} (expected the log.jsonl that `ldae pretrain` writes)")
        records = read_jsonl(args.log)
        return viz.curves_figure(records, args.keys, args.x, tuple(args.size), title=args.log), f"{len(records)} records of {args.log}"
    if args.kind == "bases":
        tok, name = resolve_tokenizer(args.tokenizer)
        title = f"top-{args.k} PCA bases ({tok.patch_size}x{tok.patch_size}x{tok.in_chans}) of {name}"
        return viz.bases_figure(tok, args.k, args.cols, title=title), title
    if args.kind == "noise":
        tok, name = resolve_tokenizer(args.tokenizer)
        img_size = args.img_size or (256 if tok.patch_size >= 16 else 32)
        x, names = load_images(args.images, img_size, tok.norm_mean, tok.norm_std, args.limit)
        cmp = viz.pixel_vs_latent_noise(x, tok, args.sigma, args.d, args.whiten, args.seed)
        kind = "whitened " if cmp.whiten else ""
        title = [f"Fig. 7: noise sigma={args.sigma:.3f} on pixels vs on the top-{cmp.d} {kind}PCA latent",
                 f"tokenizer: {name}"]
        return viz.noise_figure(cmp, tok, title), title[0]
    model, name = load_denoiser(args.model)
    tok = model.tokenizer  # None for a pixel-noise model: pixels in DiT's [-1, 1]
    mean, std = (tok.norm_mean, tok.norm_std) if tok is not None else DIT_NORM
    x, names = load_images(args.images, model.size.img_size, mean, std, args.limit)
    levels = args.t if args.t is not None else [None]
    runs = [viz.denoise_examples(model, x, t, args.seed) for t in levels]
    title = [f"Fig. 8: l-DAE denoising, {name}", f"images: {', '.join(names)}"]
    return viz.denoising_figure(runs, mean, std, title), title[0]


def main(args: argparse.Namespace) -> int:
    with torch.inference_mode():
        image, what = _figure(args)
    path = viz.save_png(image, args.out)
    _say(args, f"wrote {path} ({image.size[0]}x{image.size[1]} px): {what}")
    return 0
