"""``ldae pretrain``: pretrain an l-DAE, from one GPU to multi-node torchrun.

    ldae pretrain --data /data/imagenet --tokenizer pca_p16.safetensors --output-dir runs/ldae_half_large
    torchrun --nproc_per_node 8 -m ldae.pretrain --data /data/imagenet --fit-tokenizer --output-dir runs/x
    python -m ldae.pretrain --data ../shared/data/cifar10-jpeg.tar.gz --model tiny_patch4_32 --gpu-data ...

The flags are the fields of :class:`~ldae.engine.pretrain_config.PretrainConfig` (their defaults are
its defaults); :func:`main` turns them into one and runs :func:`ldae.engine.pretrain.run_pretrain`.
"""
from __future__ import annotations

import argparse

from ldae.cli.configs import bind_config, to_config
from ldae.cli.model_flags import add_model_args
from ldae.cli.shared_flags import add_bad_images_arg
from ldae.engine.compile_policy import COMPILE_CHOICES
from ldae.engine.pretrain import SKIPPED_FILE, run_pretrain
from ldae.engine.pretrain_config import PretrainConfig
from ldae.tokenizers.base import NORMS
from ldae.utils.amp import PRECISIONS

__all__ = ["get_args_parser", "main", "CONFIG"]

CONFIG = PretrainConfig  # the library config the flags fill (ldae.cli.configs.bind_config)

_EPILOG = """\
examples:
  # one GPU, CIFAR-10 resident on the GPU, tokenizer fitted from the training images:
  ldae pretrain --data ../shared/data/cifar10-jpeg.tar.gz --model tiny_patch4_32 --gpu-data --fit-tokenizer \\
      --global-batch 512 --epochs 400 --warmup-epochs 40 --output-dir runs/cifar_tiny
  # one node, 8 GPUs, the paper's ImageNet setting (l-DAE with a ViT-1/2L encoder):
  torchrun --nproc_per_node 8 -m ldae.pretrain --data /data/imagenet --tokenizer pca_p16.safetensors \\
      --model half_large --compile --output-dir runs/ldae_half_large
  # 4 nodes x 8 GPUs: the same command on every node (HEAD = one node's address; the output dir and
  # the data on a shared file system):
  torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint $HEAD:29500 --rdzv_id ldae1 \\
      -m ldae.pretrain --data /data/imagenet --tokenizer pca_p16.safetensors --compile --resume auto \\
      --output-dir /shared/runs/ldae_half_large
"""


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "ldae pretrain", add_help=add_help, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pretrain an l-DAE (latent denoising autoencoder) with the paper's recipe; "
        "runs under python and torchrun alike.", epilog=_EPILOG,
    )
    add_model_args(parser)  # --model also takes inline custom:... sizes (ldae.models.size_spec)

    g = parser.add_argument_group("data")
    g.add_argument("--data", help="image folder, .tar or .tar.gz in ImageFolder layout (<split>/<class>/<image>)")
    g.add_argument("--data-shards", help="WebDataset-style shards instead of --data: a brace pattern "
                   "'/data/in1k-{000000..001023}.tar', a folder of .tar files, or a list separated by commas")
    g.add_argument("--epoch-samples", type=int, help="images per epoch when streaming --data-shards (required there)")
    g.add_argument("--split", help="split folder of --data ('none': the data has class folders directly)")
    g.add_argument("--gpu-data", "--in-memory", dest="gpu_data", action="store_true", help="decode --data once into uint8 "
                   "on the training device (GPU memory, or RAM on a CPU) and augment there: no loader workers competing "
                   "with the training step (datasets that fit, e.g. CIFAR-10)")
    g.add_argument("--norm", choices=sorted(NORMS), help="pixel normalisation: dit = [-1, 1], imagenet = MAE's "
                   "(default: the tokenizer's; dit when fitting one)")
    g.add_argument("--crop", choices=("center", "random_resized"), help="center crop (paper default) or "
                   "RandomResizedCrop (+0.5 in the paper)")
    g.add_argument("--crop-scale", type=float, nargs=2, metavar=("MIN", "MAX"), help="RandomResizedCrop area range (MAE's)")
    g.add_argument("--hflip", action="store_true", help="random horizontal flips")
    g.add_argument("--num-workers", type=int, help="data loading processes per GPU")
    g.add_argument("--shuffle-buffer", type=int, help="samples in the shuffle buffer of --data-shards")
    add_bad_images_arg(g, f"; listed in <output-dir>/{SKIPPED_FILE} and counted in run.json")

    g = parser.add_argument_group("tokenizer")
    g.add_argument("--tokenizer", help="tokenizer artifact: a patch PCA from `ldae fit-pca` (or a patch AE / "
                   "VAE / pixel tokenizer from `ldae fit-tokenizer`)")
    g.add_argument("--fit-tokenizer", action="store_true", help="fit the patch PCA on the training images at the start "
                   "(stored in the checkpoint and in <output-dir>/tokenizer.safetensors)")
    g.add_argument("--fit-images", type=int, help="images the --fit-tokenizer PCA is fitted on")
    g.add_argument("--fit-patches-per-image", type=int, help="random patches per image for the fit (default: all)")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--warmup-epochs", type=float, help="linear warmup (paper: 100 of 400 epochs)")
    g.add_argument("--global-batch", type=int, help="images per optimizer step, over all GPUs")
    g.add_argument("--batch-size", type=int, help="images per GPU per forward (default: global / (world x accum))")
    g.add_argument("--accum-iter", type=int, help="gradient accumulation steps (default: global / (world x batch), else 1)")
    g.add_argument("--blr", type=float, help="base learning rate: lr = blr * global batch / 256")
    g.add_argument("--lr", type=float, help="absolute learning rate (overrides --blr)")
    g.add_argument("--min-lr", type=float, help="lr at the end of the cosine")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay (paper/DiT: 0)")
    g.add_argument("--betas", type=float, nargs=2, help="AdamW betas (DiT's: torch defaults)")
    g.add_argument("--clip-grad", type=float, help="clip the gradient norm (off in the paper)")
    g.add_argument("--ema-decay", type=float, help="keep an EMA of the weights with this decay (0: off; DiT: 0.9999)")

    g = parser.add_argument_group("speed")
    g.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    g.add_argument("--precision", choices=("auto", *PRECISIONS), help="autocast dtype (auto: bf16 on GPUs and "
                   "on CPUs with AMX or AVX512-BF16, else fp32)")
    g.add_argument("--attention", choices=("auto", "sdpa", "math"), help="attention kernel (auto: SDPA on GPUs, "
                   "explicit matmuls on CPUs, where SDPA's bf16 backward is slower); same function either way")
    g.add_argument("--threads", type=int, help="CPU threads of this process (default: torch's, one per core); "
                   "use 1 when another job shares the cores")
    g.add_argument("--compile", nargs="?", const="on", choices=COMPILE_CHOICES,
                   help="torch.compile: on = the whole model (also a bare --compile), blocks = each block, off, or auto "
                   "(default; CPU runs: the whole model when the steps ahead would take >= 30 min eager, each block from "
                   "5 min, where the compile time pays back; off on GPUs)")
    g.add_argument("--compile-mode", help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations in the backward pass (less memory)")
    g.add_argument("--peak-tflops", type=float, help="per-GPU peak for MFU (default: a measured bf16 matmul on GPUs, none on CPUs)")

    g = parser.add_argument_group("run")
    g.add_argument("--output-dir", help="checkpoints, log.jsonl, run.json, tokenizer.safetensors")
    g.add_argument("--resume", help="a checkpoint to continue from, or 'auto': <output-dir>/checkpoint-last.pth if present")
    g.add_argument("--save-every-epochs", type=int, help="keep checkpoint-<epoch>.pth every N epochs")
    g.add_argument("--last-every-epochs", type=int, help="refresh checkpoint-last.pth every N epochs")
    g.add_argument("--save-every-steps", type=int, help="also refresh checkpoint-last.pth every N steps inside an epoch")
    g.add_argument("--stop-at-step", type=int, help="stop cleanly after this global step (same schedule; resume later)")
    g.add_argument("--log-every", type=int, help="steps between log lines (the only host syncs of the loop)")
    g.add_argument("--seed", type=int)
    g.add_argument("--quiet", action="store_true", help="no console output (log.jsonl is still written)")
    return bind_config(parser, PretrainConfig)


def main(args: argparse.Namespace) -> int:
    """Run the pretraining the parsed flags describe (see :func:`ldae.engine.pretrain.run_pretrain`)."""
    return run_pretrain(to_config(PretrainConfig, args))
