"""``ldae pretrain``: pretrain an l-DAE, from one GPU to multi-node torchrun.

    ldae pretrain --data /data/imagenet --tokenizer pca_p16.safetensors --output-dir runs/ldae_half_large
    torchrun --nproc_per_node 8 -m ldae.pretrain --data /data/imagenet --fit-tokenizer --output-dir runs/x
    python -m ldae.pretrain --data ../shared/data/cifar10-jpeg.tar.gz --model tiny_patch4_32 --gpu-data ...

Defaults are the paper's (App. A): 256 px, global batch 2048 (= per-GPU batch x accumulation x
world size), blr 1e-4 with lr = blr * batch / 256, 100 warmup epochs then a half-cycle cosine stepped
per iteration, AdamW without weight decay, 400 epochs, center crop. The run is exactly resumable
(``--resume auto``): checkpoints hold the model, EMA, optimizer, scaler, RNG states, step, args and the
tokenizer, and the data order and noise are functions of (seed, step) alone.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from . import dist
from .amp import PRECISIONS, device_name, resolve_attention, resolve_precision, set_fused_attention
from .builder import MODEL_ARG_NAMES, TRAJECTORY_ARG_DEFAULTS, add_model_args, build_model_from_args, saved_model_args
from .checks import check_images
from .checkpoint import load_checkpoint, save_checkpoint
from .engine_pretrain import EpochContext, NonFiniteLossError, StepConfig, TrainState, train_one_epoch
from .flops import measure_matmul_peak, model_train_flops
from .image_decode import ImagePolicy, add_bad_images_arg, read_skipped
from .io import atomic_write_text
from .lr_sched import scaled_lr
from .metrics_log import MetricsLogger
from .model import LDAE
from .recipe import command_line, git_commit
from .pretrain_data import GPUResidentData, LoaderData, PretrainData, ShardData, check_min_image_size
from .size_spec import parse_model_spec
from .stop_signal import StopSignal
from .patch_tokenizer import NORMS
from .tokenizer import PatchPCA
from .tokenizers import Tokenizer, load_tokenizer, tokenizer_from_state_dict

__all__ = ["get_args_parser", "main", "check_args", "resolve_batch", "NORMS", "LAST", "checkpoint_name"]

LAST = "checkpoint-last.pth"
SKIPPED_FILE = "skipped_images.txt"  # --bad-images skip: the unreadable files, one per line
EXIT_NONFINITE = 3

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
    add_model_args(parser)  # --model also takes inline custom:... sizes (ldae.size_spec)

    g = parser.add_argument_group("data")
    g.add_argument("--data", default=None, help="image folder, .tar or .tar.gz in ImageFolder layout (<split>/<class>/<image>)")
    g.add_argument("--data-shards", default=None, help="WebDataset-style shards instead of --data: a brace pattern "
                   "'/data/in1k-{000000..001023}.tar', a folder of .tar files, or a list separated by commas")
    g.add_argument("--epoch-samples", type=int, default=None, help="images per epoch when streaming --data-shards (required there)")
    g.add_argument("--split", default="train", help="split folder of --data ('none': the data has class folders directly)")
    g.add_argument("--gpu-data", "--in-memory", dest="gpu_data", action="store_true", help="decode --data once into uint8 "
                   "on the training device (GPU memory, or RAM on a CPU) and augment there: no loader workers competing "
                   "with the training step (datasets that fit, e.g. CIFAR-10)")
    g.add_argument("--norm", default=None, choices=sorted(NORMS), help="pixel normalisation: dit = [-1, 1], imagenet = MAE's "
                   "(default: the tokenizer's; dit when fitting one)")
    g.add_argument("--crop", default="center", choices=("center", "random_resized"), help="center crop (paper default) or "
                   "RandomResizedCrop (+0.5 in the paper)")
    g.add_argument("--crop-scale", type=float, nargs=2, default=(0.2, 1.0), metavar=("MIN", "MAX"), help="RandomResizedCrop area range (MAE's)")
    g.add_argument("--hflip", action="store_true", help="random horizontal flips")
    g.add_argument("--num-workers", type=int, default=min(10, os.cpu_count() or 1), help="data loading processes per GPU")
    g.add_argument("--shuffle-buffer", type=int, default=5000, help="samples in the shuffle buffer of --data-shards")
    add_bad_images_arg(g, f"; listed in <output-dir>/{SKIPPED_FILE} and counted in run.json")

    g = parser.add_argument_group("tokenizer")
    g.add_argument("--tokenizer", default=None, help="tokenizer artifact: a patch PCA from `ldae fit-pca` (or a patch AE / "
                   "VAE / pixel tokenizer from `ldae fit-tokenizer`)")
    g.add_argument("--fit-tokenizer", action="store_true", help="fit the patch PCA on the training images at the start "
                   "(stored in the checkpoint and in <output-dir>/tokenizer.safetensors)")
    g.add_argument("--fit-images", type=int, default=10000, help="images the --fit-tokenizer PCA is fitted on")
    g.add_argument("--fit-patches-per-image", type=int, default=None, help="random patches per image for the fit (default: all)")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=400)
    g.add_argument("--warmup-epochs", type=float, default=100, help="linear warmup (paper: 100 of 400 epochs)")
    g.add_argument("--global-batch", type=int, default=2048, help="images per optimizer step, over all GPUs")
    g.add_argument("--batch-size", type=int, default=None, help="images per GPU per forward (default: global / (world x accum))")
    g.add_argument("--accum-iter", type=int, default=None, help="gradient accumulation steps (default: global / (world x batch), else 1)")
    g.add_argument("--blr", type=float, default=1e-4, help="base learning rate: lr = blr * global batch / 256")
    g.add_argument("--lr", type=float, default=None, help="absolute learning rate (overrides --blr)")
    g.add_argument("--min-lr", type=float, default=0.0, help="lr at the end of the cosine")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (paper/DiT: 0)")
    g.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999), help="AdamW betas (DiT's: torch defaults)")
    g.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm (off in the paper)")
    g.add_argument("--ema-decay", type=float, default=0.0, help="keep an EMA of the weights with this decay (0: off; DiT: 0.9999)")

    g = parser.add_argument_group("speed")
    g.add_argument("--device", default=None, choices=("cuda", "cpu"), help="default: cuda when available")
    g.add_argument("--precision", default="auto", choices=("auto", *PRECISIONS), help="autocast dtype (auto: bf16 on GPUs and "
                   "on CPUs with AMX or AVX512-BF16, else fp32)")
    g.add_argument("--attention", default="auto", choices=("auto", "sdpa", "math"), help="attention kernel (auto: SDPA on GPUs, "
                   "explicit matmuls on CPUs, where SDPA's bf16 backward is slower); same function either way")
    g.add_argument("--threads", type=int, default=None, help="CPU threads of this process (default: torch's, one per core); "
                   "use 1 when another job shares the cores")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations in the backward pass (less memory)")
    g.add_argument("--peak-tflops", type=float, default=None, help="per-GPU peak for MFU (default: a measured bf16 matmul on GPUs, none on CPUs)")

    g = parser.add_argument_group("run")
    g.add_argument("--output-dir", default="runs/pretrain", help="checkpoints, log.jsonl, run.json, tokenizer.safetensors")
    g.add_argument("--resume", default=None, help="a checkpoint to continue from, or 'auto': <output-dir>/checkpoint-last.pth if present")
    g.add_argument("--save-every-epochs", type=int, default=50, help="keep checkpoint-<epoch>.pth every N epochs")
    g.add_argument("--last-every-epochs", type=int, default=1, help="refresh checkpoint-last.pth every N epochs")
    g.add_argument("--save-every-steps", type=int, default=0, help="also refresh checkpoint-last.pth every N steps inside an epoch")
    g.add_argument("--stop-at-step", type=int, default=None, help="stop cleanly after this global step (same schedule; resume later)")
    g.add_argument("--log-every", type=int, default=50, help="steps between log lines (the only host syncs of the loop)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--quiet", action="store_true", help="no console output (log.jsonl is still written)")
    return parser


# ---------------------------------------------------------------------------------------------- checks
def resolve_batch(global_batch: int, world_size: int, batch_size: int | None, accum: int | None) -> tuple[int, int]:
    """(per-GPU batch, accumulation steps) with batch * accum * world_size == global_batch, or ``ValueError``."""
    if global_batch < 1:
        raise ValueError(f"--global-batch must be >= 1, got {global_batch}")
    for name, v in (("--batch-size", batch_size), ("--accum-iter", accum)):
        if v is not None and v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if batch_size is not None and accum is not None:
        if batch_size * accum * world_size != global_batch:
            raise ValueError(f"--global-batch {global_batch} != --batch-size {batch_size} x --accum-iter {accum} x world size "
                             f"{world_size} = {batch_size * accum * world_size}")
        return batch_size, accum
    if batch_size is not None:
        if global_batch % (batch_size * world_size):
            raise ValueError(f"--global-batch {global_batch} is not divisible by --batch-size {batch_size} x world size {world_size} "
                             f"= {batch_size * world_size}: choose a global batch that is a multiple of it")
        return batch_size, global_batch // (batch_size * world_size)
    accum = accum or 1
    if global_batch % (accum * world_size):
        raise ValueError(f"--global-batch {global_batch} is not divisible by world size {world_size} x --accum-iter {accum} "
                         f"= {accum * world_size}: choose a global batch that is a multiple of it")
    return global_batch // (accum * world_size), accum


def check_args(args: argparse.Namespace, world_size: int) -> None:
    """Every argument error, raised before any work starts (``ValueError`` / ``FileNotFoundError``)."""
    parse_model_spec(args.model)
    resolve_batch(args.global_batch, world_size, args.batch_size, args.accum_iter)
    if (args.data is None) == (args.data_shards is None):
        raise ValueError("give the training images with exactly one of --data (folder, .tar, .tar.gz) and --data-shards")
    if args.data is not None and not os.path.exists(args.data):
        raise FileNotFoundError(f"--data {args.data} does not exist (expected an image folder, .tar or .tar.gz)")
    if args.data_shards is not None:
        if args.gpu_data:
            raise ValueError("--gpu-data reads --data (a folder or archive), not --data-shards")
        if args.epoch_samples is None or args.epoch_samples < 1:
            raise ValueError("--data-shards needs --epoch-samples (images per epoch; the stream has no length)")
    if args.tokenizer is not None and args.fit_tokenizer:
        raise ValueError("pass either --tokenizer or --fit-tokenizer, not both")
    if args.tokenizer is not None and not os.path.isfile(args.tokenizer):
        raise FileNotFoundError(f"--tokenizer {args.tokenizer} does not exist (expected a .safetensors file from `ldae fit-pca`)")
    if args.epochs < 1 or not 0 <= args.warmup_epochs <= args.epochs:
        raise ValueError(f"need --epochs >= 1 and 0 <= --warmup-epochs <= --epochs, got {args.epochs} and {args.warmup_epochs}")
    if min(args.log_every, args.save_every_epochs, args.last_every_epochs) < 1 or args.save_every_steps < 0:
        raise ValueError("--log-every, --save-every-epochs and --last-every-epochs must be >= 1, --save-every-steps >= 0")
    if args.resume not in (None, "auto") and not os.path.isfile(args.resume):
        raise FileNotFoundError(f"--resume {args.resume} does not exist (pass a checkpoint file or 'auto')")
    on_cpu = args.device == "cpu" or (args.device is None and not torch.cuda.is_available())
    if args.precision == "fp16" and on_cpu:
        raise ValueError("--precision fp16 needs a GPU (use bf16 or fp32 on CPUs)")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if not 0.0 <= args.ema_decay < 1.0:
        raise ValueError(f"--ema-decay must be in [0, 1), got {args.ema_decay}")


def checkpoint_name(epoch: int) -> str:
    """The kept checkpoint after ``epoch`` completed epochs."""
    return f"checkpoint-{epoch:04d}.pth"


def _split(args: argparse.Namespace) -> str | None:
    return None if args.split in ("", "none", "None") else args.split


# ---------------------------------------------------------------------------------------------- building
def _resume_path(args: argparse.Namespace) -> str | None:
    if args.resume == "auto":
        path = Path(args.output_dir) / LAST
        return str(path) if path.is_file() else None
    return args.resume


def _tokenizer_norm(args: argparse.Namespace, tokenizer: Tokenizer | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The data normalisation: the tokenizer's, which an explicit --norm must match."""
    if tokenizer is None:
        return NORMS[args.norm or "dit"]
    if args.norm is not None:
        mean, std = NORMS[args.norm]
        tokenizer.check_compatible(tokenizer.patch_size, tokenizer.in_chans, mean, std)
    return tuple(tokenizer.norm_mean), tuple(tokenizer.norm_std)


def _norm_name(mean: tuple[float, ...], std: tuple[float, ...]) -> str | None:
    for name, (m, s) in NORMS.items():
        if all(abs(a - b) < 1e-6 for a, b in zip((*m, *s), (*mean, *std))):
            return name
    return None


def _build_data(args: argparse.Namespace, env: dist.DistEnv, img_size: int, mean, std, batch: int, accum: int) -> PretrainData:
    record = str(Path(args.output_dir) / SKIPPED_FILE) if args.bad_images == "skip" else None
    common = dict(batch_size=batch, accum=accum, seed=args.seed, device=env.device, crop=args.crop, hflip=args.hflip,
                  scale=tuple(args.crop_scale), num_workers=args.num_workers, policy=ImagePolicy(args.bad_images, record))
    if args.data_shards is not None:
        urls: Any = args.data_shards.split(",") if "," in args.data_shards and "{" not in args.data_shards else args.data_shards
        return ShardData(urls, img_size, mean, std, epoch_samples=args.epoch_samples, world_size=env.world_size,
                         shuffle_buffer=args.shuffle_buffer, **common)
    if args.gpu_data:
        return GPUResidentData.from_path(args.data, _split(args), img_size, mean, std, rank=env.rank, world_size=env.world_size, **common)
    return LoaderData(args.data, _split(args), img_size, mean, std, rank=env.rank, world_size=env.world_size, **common)


def _fit_tokenizer(args: argparse.Namespace, data: PretrainData, patch_size: int, mean, std, env: dist.DistEnv, log: MetricsLogger) -> PatchPCA:
    """Fit on rank 0, broadcast to the other ranks, save a copy in the output folder."""
    tok = None
    if env.is_main:
        log.info(f"fitting the patch PCA (p={patch_size}) on {args.fit_images} training images ...")
        tok = PatchPCA.fit(data.fit_batches(args.fit_images, args.seed), patch_size, norm_mean=mean, norm_std=std,
                           patches_per_image=args.fit_patches_per_image, seed=args.seed, device=env.device)
        meta = {"fitted_by": "ldae pretrain --fit-tokenizer", "data": str(args.data or args.data_shards)}
        tok.save(Path(args.output_dir) / "tokenizer.safetensors", extra_metadata=meta)
    if env.world_size == 1:
        assert tok is not None
        return tok
    meta = dist.broadcast_object(tok.metadata() if tok is not None else None)
    dim = patch_size * patch_size * len(mean)
    bufs = [t.to(env.device) for t in (tok.components, tok.eigenvalues, tok.mean)] if tok is not None else [
        torch.empty(dim, dim, device=env.device), torch.empty(dim, device=env.device), torch.empty(dim, device=env.device)]
    dist.broadcast_tensors(bufs)
    return PatchPCA(*(b.cpu() for b in bufs), patch_size=int(meta["patch_size"]), in_chans=int(meta["in_chans"]),
                    norm_mean=json.loads(meta["norm_mean"]), norm_std=json.loads(meta["norm_std"]),
                    num_images=int(meta["num_images"]), num_patches=int(meta["num_patches"]))


def _check_resume_args(saved: dict[str, Any], args: argparse.Namespace, log: MetricsLogger) -> None:
    saved = saved_model_args(saved)  # checkpoints from before later flags hold their defaults
    names = (*MODEL_ARG_NAMES, *TRAJECTORY_ARG_DEFAULTS)
    diff = [k for k in names if k in saved and saved[k] != getattr(args, k)]
    if diff:
        shown = ", ".join(f"--{k.replace('_', '-')} {getattr(args, k)!r} (checkpoint: {saved[k]!r})" for k in diff)
        raise ValueError(f"--resume: the model flags differ from the checkpoint's: {shown}")
    changed = [k for k in ("global_batch", "blr", "lr", "epochs", "warmup_epochs", "seed", "data", "crop", "hflip", "norm")
               if k in saved and getattr(args, k) is not None and saved[k] != getattr(args, k)]
    if changed:
        log.info("warning: resuming with changed " + ", ".join(f"{k} ({saved[k]!r} -> {getattr(args, k)!r})" for k in changed)
                 + "; the run will not match an uninterrupted one")


def _same_tokenizer(a: Tokenizer, b: Tokenizer) -> bool:
    """Same kind, metadata and tensors."""
    if type(a) is not type(b) or a.metadata() != b.metadata():
        return False
    sa = a.state_dict() if hasattr(a, "state_dict") else {}
    sb = b.state_dict() if hasattr(b, "state_dict") else {}
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _clean_stale_temp_files(out: Path, log: MetricsLogger) -> None:
    """Remove temporary files of checkpoint writes that a killed run left behind."""
    for p in glob.glob(str(out / ".checkpoint-*.tmp")):
        os.unlink(p)
        log.info(f"removed the partial checkpoint write {p}")


# ---------------------------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> int:
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    check_args(args, world_size)
    batch, accum = resolve_batch(args.global_batch, world_size, args.batch_size, args.accum_iter)
    size = parse_model_spec(args.model)
    if args.data is not None:
        check_min_image_size(args.data, _split(args), size.patch_size)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    env = dist.init_distributed(args.device)
    out = Path(args.output_dir)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    log = MetricsLogger(out / "log.jsonl", enabled=env.is_main, quiet=args.quiet)
    try:
        return _run(args, env, size, batch, accum, log)
    except NonFiniteLossError as e:
        log.log({"step": None, "event": "nonfinite", "message": str(e)})
        if env.is_main:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_NONFINITE
    finally:
        log.close()
        dist.destroy_distributed()


def _run(args: argparse.Namespace, env: dist.DistEnv, size: Any, batch: int, accum: int, log: MetricsLogger) -> int:
    out = Path(args.output_dir)
    cuda = env.device.type == "cuda"
    resume = _resume_path(args)
    ckpt = load_checkpoint(resume, map_location="cpu") if resume else None
    if ckpt is not None:
        _check_resume_args(ckpt["args"], args, log)
    if env.is_main:
        _clean_stale_temp_files(out, log)

    # --- tokenizer and normalisation (on resume, the checkpoint's tokenizer)
    tokenizer: Tokenizer | None = None
    if ckpt is not None:
        tokenizer = tokenizer_from_state_dict(ckpt["model"], ckpt.get("tokenizer"))
        if args.tokenizer is not None and tokenizer is not None and not _same_tokenizer(load_tokenizer(args.tokenizer), tokenizer):
            raise ValueError(f"--tokenizer {args.tokenizer} differs from the tokenizer stored in {resume}")
    elif args.tokenizer is not None:
        tokenizer = load_tokenizer(args.tokenizer)
    elif args.noise_space == "latent" and not args.fit_tokenizer:
        raise ValueError("latent noise needs a tokenizer: pass --tokenizer PATH or --fit-tokenizer "
                         f"(no checkpoint to resume from in {out})")
    if tokenizer is not None:
        tokenizer.check_compatible(size.patch_size, size.in_chans)
    mean, std = _tokenizer_norm(args, tokenizer)
    args.norm = _norm_name(mean, std) or args.norm  # recorded, so the checkpoint names its normalisation

    data = _build_data(args, env, size.img_size, mean, std, batch, accum)
    if tokenizer is None and args.noise_space == "latent":
        tokenizer = _fit_tokenizer(args, data, size.patch_size, mean, std, env, log)

    # --- model, optimizer, EMA: identical initial weights on every rank (DDP also broadcasts rank 0's)
    import timm.optim
    from timm.utils import ModelEmaV3

    torch.manual_seed(args.seed)
    model: LDAE = build_model_from_args(args, tokenizer)
    model.to(env.device)
    model.check_inputs = False  # the first batch is validated explicitly; the hot loop never syncs
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    global_batch = batch * accum * env.world_size
    base_lr = args.lr if args.lr is not None else scaled_lr(args.blr, global_batch)
    optimizer = timm.optim.create_optimizer_v2(
        model, "adamw", lr=base_lr, weight_decay=args.weight_decay, betas=tuple(args.betas), **({"fused": True} if cuda else {})
    )
    precision = resolve_precision(args.precision, env.device)
    attention = resolve_attention(args.attention, env.device)
    set_fused_attention([model], attention)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    ema = ModelEmaV3(model, decay=args.ema_decay) if args.ema_decay > 0 else None
    state = TrainState(model, optimizer, scaler, ema)
    dist.seed_everything(args.seed, env.rank)  # the noise and augmentation draw from their own seeded generators
    if ckpt is not None:
        state.load_state_dict(ckpt, restore_rng=env.is_main)
        log.info(f"resumed from {resume} at step {state.step}")

    # --- schedule
    spe = data.steps_per_epoch
    total_steps = args.epochs * spe
    if ckpt is not None and state.step // spe != int(ckpt["epoch"]):
        raise ValueError(f"--resume: the checkpoint's step {state.step} lies in its epoch {ckpt['epoch']}, but {spe} steps per "
                         f"epoch put it in epoch {state.step // spe}: the data or the batch size changed")
    cfg = StepConfig(
        accum=accum, rank=env.rank, world_size=env.world_size, seed=args.seed, base_lr=base_lr, min_lr=args.min_lr,
        total_steps=total_steps, warmup_steps=round(args.warmup_epochs * spe), amp_dtype=PRECISIONS[precision],
        clip_grad=args.clip_grad, device=env.device,
    )

    net: Any = model
    ddp = None
    if env.world_size > 1:
        ddp = _wrap_ddp(model, env)
        net = ddp
    if args.compile:
        # Fill the schedule's per-device table cache first: filling it inside the compiled forward
        # would invalidate a guard and compile the graph twice.
        model.schedule.lookup(torch.zeros(1, dtype=torch.long, device=env.device), check=False)
        net = torch.compile(net, mode=args.compile_mode)

    peak = args.peak_tflops * 1e12 if args.peak_tflops else (measure_matmul_peak(env.device) if cuda else None)
    flops = model_train_flops(model)
    params = sum(p.numel() for p in model.parameters())
    _write_run_info(args, env, out, dict(
        world_size=env.world_size, batch_size=batch, accum_iter=accum, global_batch=global_batch, lr=base_lr,
        steps_per_epoch=spe, total_steps=total_steps, warmup_steps=cfg.warmup_steps, params=params,
        train_gflops_per_image=flops / 1e9, peak_tflops=peak / 1e12 if peak else None, precision=precision,
        sdpa_attention=all(getattr(b.attn, "fused_attn", False) for b in model.blocks),  # timm's F.scaled_dot_product_attention path
        attention=attention, threads=torch.get_num_threads(),
    ))
    log.info(f"l-DAE {args.model}: {params / 1e6:.1f}M params, d={model.d}, {precision}, {attention} attention, "
             f"{torch.get_num_threads()} threads, compile={args.compile}; "
             f"{env.world_size} x {env.device.type} x batch {batch} x accum {accum} = {global_batch} per step, lr {base_lr:.3g}; "
             f"{spe} steps/epoch, {total_steps} steps, warmup {cfg.warmup_steps}; {flops / 1e9:.3g} GFLOP per image and step")

    ctx = EpochContext(
        logger=log, steps_per_epoch=spe, global_batch=global_batch, log_every=args.log_every, train_flops_per_image=flops,
        peak_flops=peak, stop_at_step=args.stop_at_step, save_every_steps=args.save_every_steps, last_good_checkpoint=resume,
        validate=lambda x: check_images(x, size.in_chans, size.patch_size, size.img_size, name="training batch"),
    )

    def save(name: str) -> None:
        """Write a checkpoint on rank 0 (never of non-finite weights)."""
        if not bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()):
            raise NonFiniteLossError(f"the weights became NaN or inf before step {state.step}; stopping without saving. "
                                     f"The last good checkpoint is kept ({ctx.last_good_checkpoint or 'none was saved yet'}).")
        if env.is_main:
            save_checkpoint({**state.state_dict(), "epoch": state.step // spe, "args": _jsonable_args(args),
                             "tokenizer": tokenizer.metadata() if tokenizer is not None else None}, out / name)
        ctx.last_good_checkpoint = str(out / name)

    ctx.save = lambda step: save(LAST)
    if state.step >= total_steps:
        log.info(f"nothing to do: the run is complete ({state.step} of {total_steps} steps)")
    log.start(total_steps, state.step)
    gen = torch.Generator(device=env.device)
    with StopSignal(env.world_size, env.device) as stop:  # SIGTERM / Ctrl-C: finish the step, save, exit
        ctx.stop_requested = stop.requested
        while state.step < total_steps:
            epoch, start = divmod(state.step, spe)
            stopped = train_one_epoch(state, net, data.batches(epoch, start), cfg, ctx, epoch, gen, ddp)
            done = state.step // spe
            if stopped or done % args.last_every_epochs == 0 or state.step == total_steps:
                save(LAST)
            if state.step % spe == 0 and (done % args.save_every_epochs == 0 or state.step == total_steps):
                save(checkpoint_name(done))
            if stopped:
                why = f"by {stop.name}" if stop.signum is not None else "(--stop-at-step)"
                message = f"stopped {why} after step {state.step}; {out / LAST} written; continue with --resume auto"
                if stop.signum is not None and not log.console and env.is_main:  # said even under --quiet
                    print(message, file=sys.stderr, flush=True)
                log.info(message)
                break
    _report_skipped(args, env, out, log)
    if state.step >= total_steps:
        last = out / checkpoint_name(total_steps // spe)
        log.info(f"done: {total_steps} steps; checkpoint {last}. next: ldae export {last} --out {out / 'export'} --denoiser  "
                 f"|  ldae probe --mode cached --model {last} --data {args.data or '<images>'}")
    dist.barrier()
    return 128 + stop.signum if stop.signum is not None else 0


def _wrap_ddp(model: torch.nn.Module, env: dist.DistEnv) -> torch.nn.parallel.DistributedDataParallel:
    """DDP without per-step buffer broadcasts: the buffers (position embedding, tokenizer) are constants."""
    import inspect

    DDP = torch.nn.parallel.DistributedDataParallel
    # Newer torch renames the flag (and deprecates the old name); older torch only knows the old one.
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters else {"broadcast_buffers": False}
    return DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None, **no_sync)


def _report_skipped(args: argparse.Namespace, env: dist.DistEnv, out: Path, log: MetricsLogger) -> None:
    """With ``--bad-images skip``: the number of unreadable images replaced, in the log and run.json."""
    if args.bad_images != "skip" or not env.is_main:
        return
    skipped = read_skipped(out / SKIPPED_FILE)
    if skipped:
        log.info(f"skipped {len(skipped)} unreadable image(s), each replaced by the next readable one; listed in {out / SKIPPED_FILE}")
    info = json.loads((out / "run.json").read_text())
    info["skipped_images"] = len(skipped)
    atomic_write_text(out / "run.json", json.dumps(info, indent=2) + "\n")


def _jsonable_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(args).items()}


def _write_run_info(args: argparse.Namespace, env: dist.DistEnv, out: Path, info: dict[str, Any]) -> None:
    if not env.is_main:
        return
    import timm

    record = {"command": command_line(), "args": _jsonable_args(args), **info, "commit": git_commit(),
              "torch": torch.__version__, "timm": timm.__version__,
              "device": device_name(env.device)}
    atomic_write_text(out / "run.json", json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    from ldae.cli import run  # the same checks and one-line user errors as `ldae pretrain`

    sys.exit(run("pretrain", sys.argv[1:]))
