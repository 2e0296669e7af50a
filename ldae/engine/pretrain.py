"""A pretraining run: data, tokenizer, model, optimizer and EMA assembled from a :class:`PretrainConfig`.

    from ldae.engine.pretrain import run_pretrain
    from ldae.engine.pretrain_config import PretrainConfig
    run_pretrain(PretrainConfig(data="cifar10-jpeg.tar.gz", model="micro_patch4_32", fit_tokenizer=True, ...))

The same function runs in one process and under torchrun (``ldae pretrain`` / ``python -m ldae.pretrain``
parse the flags into the config and call it). Defaults are the paper's (App. A): 256 px, global batch 2048 (= per-GPU batch x accumulation x
world size), blr 1e-4 with lr = blr * batch / 256, 100 warmup epochs then a half-cycle cosine stepped
per iteration, AdamW without weight decay, 400 epochs, center crop. The run is exactly resumable
(``--resume auto``): checkpoints hold the model, EMA, optimizer, scaler, RNG states, step, args and the
tokenizer, and the data order and noise are functions of (seed, step) alone.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from ldae.data.image_decode import ImagePolicy, read_skipped
from ldae.data.pretrain_data import GPUResidentData, LoaderData, PretrainData, ShardData, check_min_image_size
from ldae.engine import dist
from ldae.engine.checkpoint import load_checkpoint, save_checkpoint
from ldae.engine.compile_policy import COMPILE_CHOICES, apply_compile, decide_compile, time_eager_pass
from ldae.engine.lr_schedule import resolve_lr
from ldae.engine.metrics_log import MetricsLogger
from ldae.engine.pretrain_config import PretrainConfig
from ldae.engine.pretrain_loop import EpochContext, NonFiniteLossError, StepConfig, TrainState, train_one_epoch
from ldae.engine.stop_signal import StopSignal
from ldae.models.flops import measure_matmul_peak, model_train_flops
from ldae.models.ldae import LDAE
from ldae.models.model_config import MODEL_FIELDS, build_model, saved_model_args
from ldae.models.size_spec import parse_model_spec
from ldae.tokenizers.base import NORMS
from ldae.tokenizers.pca import PatchPCA
from ldae.tokenizers.registry import Tokenizer, load_tokenizer, tokenizer_from_state_dict
from ldae.utils.amp import PRECISIONS, device_name, resolve_attention, resolve_precision, set_fused_attention
from ldae.utils.checks import check_images
from ldae.utils.io import atomic_write_text
from ldae.utils.malloc import keep_freed_memory
from ldae.utils.provenance import command_line, git_commit

__all__ = ["run_pretrain", "check_args", "resolve_batch", "LAST", "SKIPPED_FILE", "EXIT_NONFINITE", "checkpoint_name"]

LAST = "checkpoint-last.pth"
SKIPPED_FILE = "skipped_images.txt"  # --bad-images skip: the unreadable files, one per line
EXIT_NONFINITE = 3


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


def check_args(cfg: PretrainConfig, world_size: int) -> None:
    """Every argument error, raised before any work starts (``ValueError`` / ``FileNotFoundError``)."""
    parse_model_spec(cfg.model)
    resolve_batch(cfg.global_batch, world_size, cfg.batch_size, cfg.accum_iter)
    if (cfg.data is None) == (cfg.data_shards is None):
        raise ValueError("give the training images with exactly one of --data (folder, .tar, .tar.gz) and --data-shards")
    if cfg.data is not None and not os.path.exists(cfg.data):
        raise FileNotFoundError(f"--data {cfg.data} does not exist (expected an image folder, .tar or .tar.gz)")
    if cfg.data_shards is not None:
        if cfg.gpu_data:
            raise ValueError("--gpu-data reads --data (a folder or archive), not --data-shards")
        if cfg.epoch_samples is None or cfg.epoch_samples < 1:
            raise ValueError("--data-shards needs --epoch-samples (images per epoch; the stream has no length)")
    if cfg.tokenizer is not None and cfg.fit_tokenizer:
        raise ValueError("pass either --tokenizer or --fit-tokenizer, not both")
    if cfg.tokenizer is not None and not os.path.isfile(cfg.tokenizer):
        raise FileNotFoundError(f"--tokenizer {cfg.tokenizer} does not exist (expected a .safetensors file from `ldae fit-pca`)")
    if cfg.epochs < 1 or not 0 <= cfg.warmup_epochs <= cfg.epochs:
        raise ValueError(f"need --epochs >= 1 and 0 <= --warmup-epochs <= --epochs, got {cfg.epochs} and {cfg.warmup_epochs}")
    if min(cfg.log_every, cfg.save_every_epochs, cfg.last_every_epochs) < 1 or cfg.save_every_steps < 0:
        raise ValueError("--log-every, --save-every-epochs and --last-every-epochs must be >= 1, --save-every-steps >= 0")
    if cfg.resume not in (None, "auto") and not os.path.isfile(cfg.resume):
        raise FileNotFoundError(f"--resume {cfg.resume} does not exist (pass a checkpoint file or 'auto')")
    on_cpu = cfg.device == "cpu" or (cfg.device is None and not torch.cuda.is_available())
    if cfg.precision == "fp16" and on_cpu:
        raise ValueError("--precision fp16 needs a GPU (use bf16 or fp32 on CPUs)")
    if cfg.threads is not None and cfg.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {cfg.threads}")
    if not str(cfg.output_dir or "").strip():
        raise ValueError("--output-dir is empty; name the run's folder (e.g. --output-dir runs/my_run)")
    if cfg.compile not in (*COMPILE_CHOICES, True, False):
        raise ValueError(f"--compile must be one of {', '.join(COMPILE_CHOICES)}, got {cfg.compile!r}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ValueError(f"--ema-decay must be in [0, 1), got {cfg.ema_decay}")


def checkpoint_name(epoch: int) -> str:
    """The kept checkpoint after ``epoch`` completed epochs."""
    return f"checkpoint-{epoch:04d}.pth"


def _split(cfg: PretrainConfig) -> str | None:
    return None if cfg.split in ("", "none", "None") else cfg.split


# ---------------------------------------------------------------------------------------------- building
def _resume_path(cfg: PretrainConfig) -> str | None:
    if cfg.resume == "auto":
        path = Path(cfg.output_dir) / LAST
        return str(path) if path.is_file() else None
    return cfg.resume


def _tokenizer_norm(cfg: PretrainConfig, tokenizer: Tokenizer | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The data normalisation: the tokenizer's, which an explicit --norm must match."""
    if tokenizer is None:
        return NORMS[cfg.norm or "dit"]
    if cfg.norm is not None:
        mean, std = NORMS[cfg.norm]
        tokenizer.check_compatible(tokenizer.patch_size, tokenizer.in_chans, mean, std)
    return tuple(tokenizer.norm_mean), tuple(tokenizer.norm_std)


def _norm_name(mean: tuple[float, ...], std: tuple[float, ...]) -> str | None:
    for name, (m, s) in NORMS.items():
        if all(abs(a - b) < 1e-6 for a, b in zip((*m, *s), (*mean, *std))):
            return name
    return None


def _build_data(cfg: PretrainConfig, env: dist.DistEnv, img_size: int, mean, std, batch: int, accum: int) -> PretrainData:
    record = str(Path(cfg.output_dir) / SKIPPED_FILE) if cfg.bad_images == "skip" else None
    common = dict(batch_size=batch, accum=accum, seed=cfg.seed, device=env.device, crop=cfg.crop, hflip=cfg.hflip,
                  scale=tuple(cfg.crop_scale), num_workers=cfg.num_workers, policy=ImagePolicy(cfg.bad_images, record))
    if cfg.data_shards is not None:
        urls: Any = cfg.data_shards.split(",") if "," in cfg.data_shards and "{" not in cfg.data_shards else cfg.data_shards
        return ShardData(urls, img_size, mean, std, epoch_samples=cfg.epoch_samples, world_size=env.world_size,
                         shuffle_buffer=cfg.shuffle_buffer, **common)
    if cfg.gpu_data:
        return GPUResidentData.from_path(cfg.data, _split(cfg), img_size, mean, std, rank=env.rank, world_size=env.world_size, **common)
    return LoaderData(cfg.data, _split(cfg), img_size, mean, std, rank=env.rank, world_size=env.world_size, **common)


def _fit_tokenizer(cfg: PretrainConfig, data: PretrainData, patch_size: int, mean, std, env: dist.DistEnv, log: MetricsLogger) -> PatchPCA:
    """Fit on rank 0, broadcast to the other ranks, save a copy in the output folder."""
    tok = None
    if env.is_main:
        log.info(f"fitting the patch PCA (p={patch_size}) on {cfg.fit_images} training images ...")
        tok = PatchPCA.fit(data.fit_batches(cfg.fit_images, cfg.seed), patch_size, norm_mean=mean, norm_std=std,
                           patches_per_image=cfg.fit_patches_per_image, seed=cfg.seed, device=env.device)
        meta = {"fitted_by": "ldae pretrain --fit-tokenizer", "data": str(cfg.data or cfg.data_shards)}
        tok.save(Path(cfg.output_dir) / "tokenizer.safetensors", extra_metadata=meta)
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


def _check_resume_args(saved: dict[str, Any], cfg: PretrainConfig, log: MetricsLogger) -> None:
    saved = saved_model_args(saved)  # checkpoints from before later flags hold their defaults
    diff = [k for k in MODEL_FIELDS if k in saved and saved[k] != getattr(cfg, k)]
    if diff:
        shown = ", ".join(f"--{k.replace('_', '-')} {getattr(cfg, k)!r} (checkpoint: {saved[k]!r})" for k in diff)
        raise ValueError(f"--resume: the model flags differ from the checkpoint's: {shown}")
    changed = [k for k in ("global_batch", "blr", "lr", "epochs", "warmup_epochs", "seed", "data", "crop", "hflip", "norm")
               if k in saved and getattr(cfg, k) is not None and saved[k] != getattr(cfg, k)]
    if changed:
        log.info("warning: resuming with changed " + ", ".join(f"{k} ({saved[k]!r} -> {getattr(cfg, k)!r})" for k in changed)
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
def run_pretrain(cfg: PretrainConfig) -> int:
    """Run (or resume) the pretraining ``cfg`` describes; the exit status (0 done or stopped at a step,
    128 + signal when stopped by a signal, 3 when the loss became non-finite)."""
    cfg = dataclasses.replace(cfg)  # the run records resolved fields (norm) in its copy, not in the caller's
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    check_args(cfg, world_size)
    batch, accum = resolve_batch(cfg.global_batch, world_size, cfg.batch_size, cfg.accum_iter)
    size = parse_model_spec(cfg.model)
    if cfg.data is not None:
        check_min_image_size(cfg.data, _split(cfg), size.patch_size)

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    env = dist.init_distributed(cfg.device)
    out = Path(cfg.output_dir)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    log = MetricsLogger(out / "log.jsonl", enabled=env.is_main, quiet=cfg.quiet)
    try:
        return _run(cfg, env, size, batch, accum, log)
    except NonFiniteLossError as e:
        log.log({"step": None, "event": "nonfinite", "message": str(e)})
        if env.is_main:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_NONFINITE
    finally:
        log.close()
        dist.destroy_distributed()


def _run(cfg: PretrainConfig, env: dist.DistEnv, size: Any, batch: int, accum: int, log: MetricsLogger) -> int:
    out = Path(cfg.output_dir)
    cuda = env.device.type == "cuda"
    # A CPU step frees and re-allocates tensors of tens of MiB: keep them on the heap (ldae.utils.malloc).
    heap = env.device.type == "cpu" and keep_freed_memory()
    resume = _resume_path(cfg)
    ckpt = load_checkpoint(resume, map_location="cpu") if resume else None
    if ckpt is not None:
        _check_resume_args(ckpt["args"], cfg, log)
    if env.is_main:
        _clean_stale_temp_files(out, log)

    # --- tokenizer and normalisation (on resume, the checkpoint's tokenizer)
    tokenizer: Tokenizer | None = None
    if ckpt is not None:
        tokenizer = tokenizer_from_state_dict(ckpt["model"], ckpt.get("tokenizer"))
        if cfg.tokenizer is not None and tokenizer is not None and not _same_tokenizer(load_tokenizer(cfg.tokenizer), tokenizer):
            raise ValueError(f"--tokenizer {cfg.tokenizer} differs from the tokenizer stored in {resume}")
    elif cfg.tokenizer is not None:
        tokenizer = load_tokenizer(cfg.tokenizer)
    elif cfg.noise_space == "latent" and not cfg.fit_tokenizer:
        raise ValueError("latent noise needs a tokenizer: pass --tokenizer PATH or --fit-tokenizer "
                         f"(no checkpoint to resume from in {out})")
    if tokenizer is not None:
        tokenizer.check_compatible(size.patch_size, size.in_chans)
    mean, std = _tokenizer_norm(cfg, tokenizer)
    cfg.norm = _norm_name(mean, std) or cfg.norm  # recorded, so the checkpoint names its normalisation

    data = _build_data(cfg, env, size.img_size, mean, std, batch, accum)
    if tokenizer is None and cfg.noise_space == "latent":
        tokenizer = _fit_tokenizer(cfg, data, size.patch_size, mean, std, env, log)

    # --- model, optimizer, EMA: identical initial weights on every rank (DDP also broadcasts rank 0's)
    import timm.optim
    from timm.utils import ModelEmaV3

    torch.manual_seed(cfg.seed)
    model: LDAE = build_model(cfg, tokenizer)
    model.to(env.device)
    model.check_inputs = False  # the first batch is validated explicitly; the hot loop never syncs
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    global_batch = batch * accum * env.world_size
    base_lr = resolve_lr(cfg.lr, cfg.blr, global_batch)
    optimizer = timm.optim.create_optimizer_v2(
        model, "adamw", lr=base_lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas), **({"fused": True} if cuda else {})
    )
    precision = resolve_precision(cfg.precision, env.device)
    attention = resolve_attention(cfg.attention, env.device)
    set_fused_attention([model], attention)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
    state = TrainState(model, optimizer, scaler, ema)
    dist.seed_everything(cfg.seed, env.rank)  # the noise and augmentation draw from their own seeded generators
    if ckpt is not None:
        state.load_state_dict(ckpt, restore_rng=env.is_main)
        log.info(f"resumed from {resume} at step {state.step}")

    # --- schedule
    spe = data.steps_per_epoch
    total_steps = cfg.epochs * spe
    if ckpt is not None and state.step // spe != int(ckpt["epoch"]):
        raise ValueError(f"--resume: the checkpoint's step {state.step} lies in its epoch {ckpt['epoch']}, but {spe} steps per "
                         f"epoch put it in epoch {state.step // spe}: the data or the batch size changed")
    step_cfg = StepConfig(
        accum=accum, rank=env.rank, world_size=env.world_size, seed=cfg.seed, base_lr=base_lr, min_lr=cfg.min_lr,
        total_steps=total_steps, warmup_steps=round(cfg.warmup_epochs * spe), amp_dtype=PRECISIONS[precision],
        clip_grad=cfg.clip_grad, device=env.device,
    )

    net: Any = model
    ddp = None
    if env.world_size > 1:
        ddp = _wrap_ddp(model, env)
        net = ddp
    compiled, compile_why = decide_compile(cfg.compile, env.device, env.world_size, (total_steps - state.step) * accum,
                                           lambda: time_eager_pass(model, batch, PRECISIONS[precision]))
    if compiled != "off":
        # Fill the schedule's per-device table cache first: filling it inside the compiled forward
        # would invalidate a guard and compile the graph twice.
        model.schedule.lookup(torch.zeros(1, dtype=torch.long, device=env.device), check=False)
        net = apply_compile(compiled, net, model.blocks, cfg.compile_mode)

    peak = cfg.peak_tflops * 1e12 if cfg.peak_tflops else (measure_matmul_peak(env.device) if cuda else None)
    flops = model_train_flops(model)
    params = sum(p.numel() for p in model.parameters())
    _write_run_info(cfg, env, out, dict(
        world_size=env.world_size, batch_size=batch, accum_iter=accum, global_batch=global_batch, lr=base_lr,
        steps_per_epoch=spe, total_steps=total_steps, warmup_steps=step_cfg.warmup_steps, params=params,
        train_gflops_per_image=flops / 1e9, peak_tflops=peak / 1e12 if peak else None, precision=precision,
        sdpa_attention=all(getattr(b.attn, "fused_attn", False) for b in model.blocks),  # timm's F.scaled_dot_product_attention path
        attention=attention, threads=torch.get_num_threads(), cpu_allocator="heap (mmap off)" if heap else "default",
        compile={"on": "model", "blocks": "blocks", "off": None}[compiled], compile_reason=compile_why,
    ))
    log.info(f"l-DAE {cfg.model}: {params / 1e6:.1f}M params, d={model.d}, {precision}, {attention} attention, "
             f"{torch.get_num_threads()} threads, compile {compiled} ({compile_why}); "
             f"{env.world_size} x {env.device.type} x batch {batch} x accum {accum} = {global_batch} per step, lr {base_lr:.3g}; "
             f"{spe} steps/epoch, {total_steps} steps, warmup {step_cfg.warmup_steps}; {flops / 1e9:.3g} GFLOP per image and step")

    ctx = EpochContext(
        logger=log, steps_per_epoch=spe, global_batch=global_batch, log_every=cfg.log_every, train_flops_per_image=flops,
        peak_flops=peak, stop_at_step=cfg.stop_at_step, save_every_steps=cfg.save_every_steps, last_good_checkpoint=resume,
        validate=lambda x: check_images(x, size.in_chans, size.patch_size, size.img_size, name="training batch"),
    )

    def save(name: str) -> None:
        """Write a checkpoint on rank 0 (never of non-finite weights)."""
        if not bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()):
            raise NonFiniteLossError(f"the weights became NaN or inf before step {state.step}; stopping without saving. "
                                     f"The last good checkpoint is kept ({ctx.last_good_checkpoint or 'none was saved yet'}).")
        if env.is_main:
            save_checkpoint({**state.state_dict(), "epoch": state.step // spe, "args": cfg.to_dict(),
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
            stopped = train_one_epoch(state, net, data.batches(epoch, start), step_cfg, ctx, epoch, gen, ddp)
            done = state.step // spe
            if stopped or done % cfg.last_every_epochs == 0 or state.step == total_steps:
                save(LAST)
            if state.step % spe == 0 and (done % cfg.save_every_epochs == 0 or state.step == total_steps):
                save(checkpoint_name(done))
            if stopped:
                why = f"by {stop.name}" if stop.signum is not None else "(--stop-at-step)"
                message = f"stopped {why} after step {state.step}; {out / LAST} written; continue with --resume auto"
                if stop.signum is not None and not log.console and env.is_main:  # said even under --quiet
                    print(message, file=sys.stderr, flush=True)
                log.info(message)
                break
    _report_skipped(cfg, env, out, log)
    if state.step >= total_steps:
        last = out / checkpoint_name(total_steps // spe)
        log.info(f"done: {total_steps} steps; checkpoint {last}. next: ldae export {last} --out {out / 'export'} --denoiser  "
                 f"|  ldae probe --mode cached --model {last} --data {cfg.data or '<images>'}")
    dist.barrier()
    return 128 + stop.signum if stop.signum is not None else 0


def _wrap_ddp(model: torch.nn.Module, env: dist.DistEnv) -> torch.nn.parallel.DistributedDataParallel:
    """DDP without per-step buffer broadcasts: the buffers (position embedding, tokenizer) are constants."""
    import inspect

    DDP = torch.nn.parallel.DistributedDataParallel
    # Newer torch renames the flag (and deprecates the old name); older torch only knows the old one.
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters else {"broadcast_buffers": False}
    return DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None, **no_sync)


def _report_skipped(cfg: PretrainConfig, env: dist.DistEnv, out: Path, log: MetricsLogger) -> None:
    """With ``--bad-images skip``: the number of unreadable images replaced, in the log and run.json."""
    if cfg.bad_images != "skip" or not env.is_main:
        return
    skipped = read_skipped(out / SKIPPED_FILE)
    if skipped:
        log.info(f"skipped {len(skipped)} unreadable image(s), each replaced by the next readable one; listed in {out / SKIPPED_FILE}")
    info = json.loads((out / "run.json").read_text())
    info["skipped_images"] = len(skipped)
    atomic_write_text(out / "run.json", json.dumps(info, indent=2) + "\n")


def _write_run_info(cfg: PretrainConfig, env: dist.DistEnv, out: Path, info: dict[str, Any]) -> None:
    if not env.is_main:
        return
    import timm

    record = {"command": command_line(), "args": cfg.to_dict(), **info, "commit": git_commit(),
              "torch": torch.__version__, "timm": timm.__version__,
              "device": device_name(env.device)}
    atomic_write_text(out / "run.json", json.dumps(record, indent=2) + "\n")


