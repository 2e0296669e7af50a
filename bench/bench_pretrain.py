"""Benchmark of the pretraining step: l-DAE against a plain timm ViT of the same depth and width.

    python bench/bench_pretrain.py                        # GPU: writes bench/results/pretrain_<gpu>.json
    python bench/bench_pretrain.py --smoke --out x.json   # CPU plumbing check with tiny models (not a result)

Two configurations, each in eager and compiled mode, in one process on one device:

* ``base``: l-DAE-B at 256 px (12 + 12 blocks of width 768) vs a timm ``VisionTransformer`` with 24
  blocks of width 768 and a linear per-patch head trained with MSE (same batch, bf16 autocast,
  fused AdamW, the same SDPA attention).
* ``cifar``: the CIFAR-scale l-DAE (``tiny_patch4_32``) vs its timm twin, plus the end-to-end step
  with the images resident on the GPU as uint8 and random-resized-crop + flip on the GPU.

The l-DAE step is the training script's own :func:`ldae.engine.pretrain_loop.train_step` (noise, adaLN
network, Eq. 4 loss, optimizer). MFU = analytic FLOPs (:mod:`ldae.models.flops`) x img/s over the peak of
a bf16 8192^3 matmul measured in the same run. Targets of the project: l-DAE-B >= 1.15x the compiled
timm baseline (>= 54% MFU), CIFAR end to end >= 20k img/s.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import timm  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from ldae.data.pretrain_data import GPUResidentData  # noqa: E402
from ldae.engine.pretrain_loop import StepConfig, TrainState, train_step  # noqa: E402
from ldae.models.flops import measure_matmul_peak, mfu, model_train_flops, vit_mse_train_flops  # noqa: E402
from ldae.models.ldae import LDAE  # noqa: E402
from ldae.models.size_spec import parse_model_spec  # noqa: E402
from ldae.models.sizes import ModelSize, get_size  # noqa: E402
from ldae.tokenizers.pca import DIT_NORM, PatchPCA, patchify  # noqa: E402
from ldae.utils.provenance import git_commit  # noqa: E402

TARGETS = {"base_ldae_over_timm_compiled": 1.15, "base_ldae_compiled_mfu": 0.54, "cifar_end_to_end_img_per_s": 20000.0}
SMOKE_SIZE = "custom:img=32,patch=4,dim=32,enc=1,dec=1,heads=2,d=8"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="base,cifar", help="comma-separated: base, cifar")
    p.add_argument("--base-model", default="base", help="l-DAE size of the 256 px configuration")
    p.add_argument("--cifar-model", default="tiny_patch4_32", help="l-DAE size of the CIFAR configuration")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--cifar-batch-size", type=int, default=None, help="default: --batch-size")
    p.add_argument("--modes", default="eager,compiled", help="comma-separated: eager, compiled")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode for both models")
    p.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation happens here)")
    p.add_argument("--cifar-images", type=int, default=50000, help="GPU-resident uint8 images of the end-to-end CIFAR step")
    p.add_argument("--peak-tflops", type=float, default=None, help="MFU denominator (default: measured bf16 matmul)")
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--out", default=None, help="JSON path (default on GPUs: bench/results/pretrain_<device>.json)")
    p.add_argument("--smoke", action="store_true", help="tiny CPU-sized models and 2 steps: checks the plumbing only")
    return p


# ---------------------------------------------------------------------------------------------- models
class TimmMSE(nn.Module):
    """A plain timm ViT (no class token) with a per-token linear head regressing its input patches (MSE)."""

    def __init__(self, size: ModelSize, act_layer: str | None = None) -> None:
        """``act_layer``: None for timm's default (exact GELU), or a timm name (e.g. the l-DAE size's ``act``)."""
        super().__init__()
        self.patch_size = size.patch_size
        self.vit = VisionTransformer(
            img_size=size.img_size, patch_size=size.patch_size, embed_dim=size.embed_dim, depth=size.depth,
            num_heads=size.num_heads, mlp_ratio=size.mlp_ratio, class_token=False, global_pool="", num_classes=0,
            **({"act_layer": act_layer} if act_layer else {}),
        )
        self.head = nn.Linear(size.embed_dim, size.patch_dim)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        pred = self.head(self.vit.forward_features(images))  # (B, N, p*p*C)
        return F.mse_loss(pred.float(), patchify(images, self.patch_size).float())


def _tokenizer(size: ModelSize) -> PatchPCA:
    # Timing does not depend on the basis; a fit on random images is instant and offline.
    return PatchPCA.fit([torch.randn(16, size.in_chans, size.img_size, size.img_size)], size.patch_size)


# ---------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per step after ``warmup`` untimed steps."""
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def bench_model(
    model: nn.Module, batch: int, img_size: int, device: torch.device, amp: torch.dtype | None, compiled: bool,
    compile_mode: str | None, warmup: int, steps: int, images: GPUResidentData | None = None,
) -> tuple[float, float | None]:
    """(seconds per training step, peak memory GB) of ``model`` with fused AdamW on the real train_step."""
    model = model.to(device).train()
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, **({"fused": True} if cuda else {}))
    state = TrainState(model, opt)
    cfg = StepConfig(accum=1, base_lr=1e-4, total_steps=10**9, warmup_steps=0, amp_dtype=amp, device=device)
    if compiled and hasattr(model, "schedule"):  # as ldae.engine.pretrain does: no recompile when the cache fills
        model.schedule.lookup(torch.zeros(1, dtype=torch.long, device=device), check=False)
    net = torch.compile(model, mode=compile_mode) if compiled else model
    gen = torch.Generator(device=device)
    fixed = torch.randn(batch, 3, img_size, img_size, device=device)
    stream = _cycle(images) if images is not None else None

    def step() -> None:
        micro = next(stream) if stream is not None else [fixed]
        train_step(state, net, micro, cfg, gen)

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    sec = time_steps(step, device, warmup, steps)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return sec, mem


def _cycle(data: GPUResidentData):
    epoch = 0
    while True:
        yield from data.batches(epoch)
        epoch += 1


# ---------------------------------------------------------------------------------------------- main
def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine() or "cpu")


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    amp = torch.bfloat16 if cuda else None
    if args.smoke:
        args.base_model = args.cifar_model = SMOKE_SIZE
        args.steps, args.warmup, args.cifar_images = 2, 2, 64
        args.batch_size = min(args.batch_size, 4)
        args.cifar_batch_size = min(args.cifar_batch_size or 4, 4)
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in ("eager", "compiled") for m in modes):
        raise ValueError(f"--modes must list eager and/or compiled, got {args.modes!r}")
    peak = args.peak_tflops * 1e12 if args.peak_tflops else measure_matmul_peak(device)
    results: list[dict[str, Any]] = []

    def record(config: str, kind: str, mode: str, batch: int, sec: float, mem: float | None, flops: float) -> None:
        img_s = batch / sec
        r = {"config": config, "model": kind, "mode": mode, "batch": batch, "step_ms": round(1000 * sec, 3),
             "img_per_s": round(img_s, 1), "train_gflops_per_image": round(flops / 1e9, 4),
             "mfu": round(mfu(flops, img_s, peak), 4), "mem_gb": round(mem, 2) if mem is not None else None}
        results.append(r)
        print(f"{config:6s} {kind:14s} {mode:9s} batch {batch:4d}  {r['step_ms']:9.2f} ms  {r['img_per_s']:9.1f} img/s  "
              f"MFU {100 * r['mfu']:5.1f}%" + (f"  {r['mem_gb']:.1f} GB" if mem is not None else ""), flush=True)

    for config in [c for c in args.configs.split(",") if c]:
        if config not in ("base", "cifar"):
            raise ValueError(f"unknown config {config!r}: expected base or cifar")
        spec = args.base_model if config == "base" else args.cifar_model
        size = parse_model_spec(spec) if spec.startswith("custom:") else get_size(spec)
        batch = args.batch_size if config == "base" else (args.cifar_batch_size or args.batch_size)
        tok = _tokenizer(size)
        for mode in modes:
            compiled = mode == "compiled"
            torch.manual_seed(0)
            ldae = LDAE(size, tok, check_inputs=False)
            sec, mem = bench_model(ldae, batch, size.img_size, device, amp, compiled, args.compile_mode, args.warmup, args.steps)
            record(config, "ldae", mode, batch, sec, mem, model_train_flops(ldae))
            if config == "cifar":
                torch.manual_seed(0)
                ldae = LDAE(size, tok, check_inputs=False)
                u8 = torch.randint(0, 256, (args.cifar_images, 3, size.img_size, size.img_size), dtype=torch.uint8)
                data = GPUResidentData(u8, size.img_size, *DIT_NORM, batch_size=batch, accum=1, rank=0, world_size=1, seed=0,
                                       device=device, crop="random_resized", hflip=True)
                sec, mem = bench_model(ldae, batch, size.img_size, device, amp, compiled, args.compile_mode, args.warmup,
                                       args.steps, images=data)
                record(config, "ldae_end2end", mode, batch, sec, mem, model_train_flops(ldae))
                del data, u8
            del ldae
            torch.manual_seed(0)
            vit = TimmMSE(size)
            sec, mem = bench_model(vit, batch, size.img_size, device, amp, compiled, args.compile_mode, args.warmup, args.steps)
            flops = vit_mse_train_flops(size.img_size, size.patch_size, size.embed_dim, size.depth, size.mlp_ratio, size.in_chans)
            record(config, "timm_vit_mse", mode, batch, sec, mem, flops)
            del vit
            if cuda:
                torch.cuda.empty_cache()

    def get(config: str, kind: str, mode: str) -> dict[str, Any] | None:
        return next((r for r in results if (r["config"], r["model"], r["mode"]) == (config, kind, mode)), None)

    ratios: dict[str, float] = {}
    for config in ("base", "cifar"):
        for mode in modes:
            a, b = get(config, "ldae", mode), get(config, "timm_vit_mse", mode)
            if a and b:
                ratios[f"{config}_ldae_over_timm_{mode}"] = round(a["img_per_s"] / b["img_per_s"], 4)
        for kind in ("ldae", "ldae_end2end", "timm_vit_mse"):
            a, b = get(config, kind, "compiled"), get(config, kind, "eager")
            if a and b:
                ratios[f"{config}_{kind}_compiled_over_eager"] = round(a["img_per_s"] / b["img_per_s"], 4)
    checks: dict[str, Any] = {}
    if "base_ldae_over_timm_compiled" in ratios:
        checks["base_ldae_over_timm_compiled"] = ratios["base_ldae_over_timm_compiled"]
    if (r := get("base", "ldae", "compiled")) is not None:
        checks["base_ldae_compiled_mfu"] = r["mfu"]
    e2e = [r["img_per_s"] for r in results if r["config"] == "cifar" and r["model"] == "ldae_end2end"]
    if e2e:
        checks["cifar_end_to_end_img_per_s"] = max(e2e)
    targets = {k: {"target": TARGETS[k], "measured": v, "met": v >= TARGETS[k]} for k, v in checks.items()}
    for k, v in ratios.items():
        print(f"ratio {k}: {v:.3f}")
    for k, v in targets.items():
        print(f"target {k}: measured {v['measured']} vs {v['target']}: {'met' if v['met'] else 'NOT met'}")
    return {
        "benchmark": "pretrain_step", "smoke": bool(args.smoke), "device": _device_name(device), "device_type": device.type,
        "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
        "cuda": torch.version.cuda if cuda else None, "command": shlex.join([sys.executable, *sys.argv]), "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "precision": "bf16" if amp is not None else "fp32", "optimizer": "AdamW (fused on CUDA)",
        "peak_tflops": round(peak / 1e12, 3), "peak_source": "given" if args.peak_tflops else "measured matmul",
        "steps": args.steps, "warmup": args.warmup, "compile_mode": args.compile_mode,
        "configs": {"base": args.base_model, "cifar": args.cifar_model}, "results": results, "ratios": ratios, "targets": targets,
    }


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    report = run(args)
    out = args.out
    if out is None and not args.smoke and report["device_type"] == "cuda":
        slug = "".join(c if c.isalnum() else "_" for c in report["device"].lower()).strip("_")
        out = str(ROOT / "bench" / "results" / f"pretrain_{slug}.json")
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
