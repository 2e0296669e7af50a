"""CPU benchmark of the pretraining step: fp32 vs bf16, l-DAE vs a timm ViT of the same shape, vs the matmul peak.

    python bench/bench_cpu.py                  # writes bench/results/pretrain_cpu.json
    python bench/bench_cpu.py --smoke --out x.json   # plumbing check with a tiny model (not a result)

For each CPU-practical size, in ONE process and interleaved round by round (so that a slower or
busier moment of the machine hits every variant alike), the training step of:

* ``ldae_fp32``: the l-DAE step as ``ldae pretrain`` runs it on a CPU without bf16 (fp32, the
  explicit-matmul attention ``--attention auto`` picks on CPUs);
* ``ldae_bf16``: what ``--precision auto`` runs on a CPU with AMX / AVX512-BF16 (bf16 autocast,
  numerically sensitive parts in fp32, explicit-matmul attention);
* ``ldae_bf16_sdpa``: the same with timm's default ``F.scaled_dot_product_attention`` (before the
  CPU attention choice), to show what that choice is worth;
* ``timm_bf16`` / ``timm_bf16_math``: a timm ``VisionTransformer`` with the same depth (encoder +
  decoder), width and token count, a per-patch linear head and an MSE loss, bf16, with timm's
  default (SDPA) attention and with the explicit path.

Each step is :func:`ldae.engine.pretrain_loop.train_step` (AdamW, the real noise, network and Eq. 4 loss
for l-DAE). The matmul peaks (fp32 and bf16 2048^3, and bf16 at the model's own MLP shape) are
measured in the same run; ``peak_fraction`` = analytic training FLOPs x img/s / bf16 2048^3 peak.
``--compile`` also times ``torch.compile`` of the l-DAE bf16 step for the first size, compile time
included. Timings on a shared machine are noisy: read the ratios, not the absolute numbers.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import timm  # noqa: E402

from bench_pretrain import TimmMSE  # noqa: E402
from ldae.engine.pretrain_loop import StepConfig, TrainState, train_step  # noqa: E402
from ldae.models.flops import model_train_flops, vit_mse_train_flops  # noqa: E402
from ldae.models.ldae import LDAE  # noqa: E402
from ldae.models.size_spec import parse_model_spec  # noqa: E402
from ldae.tokenizers.pca import PatchPCA  # noqa: E402
from ldae.utils.amp import cpu_flags, device_name, set_fused_attention  # noqa: E402
from ldae.utils.provenance import git_commit  # noqa: E402

DEFAULT_SIZES = ("custom:img=32,patch=4,dim=64,enc=2,dec=2,heads=2,d=16", "custom:img=32,patch=4,dim=128,enc=4,dec=4,heads=4,d=16",
                 "micro_patch4_32",
                 "custom:img=32,patch=4,dim=256,enc=4,dec=4,heads=4,d=16", "tiny_patch4_32")
VARIANTS = ("ldae_fp32", "ldae_bf16", "ldae_bf16_sdpa", "timm_bf16", "timm_bf16_math")
TARGETS = {"bf16_over_fp32": 1.5, "peak_fraction": 0.5, "ldae_over_timm": 1.0}
SMOKE_SIZE = "custom:img=32,patch=4,dim=32,enc=1,dec=1,heads=2,d=8"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=";".join(DEFAULT_SIZES), help="--model values separated by ';' (names or custom: "
                   "specs, which hold commas themselves)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each variant's best round is reported")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant before the first round")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the l-DAE bf16 step (first size)")
    p.add_argument("--profile", default="micro_patch4_32", help="torch.profiler of two l-DAE bf16 steps of this size: the "
                   "share of step time per op, before and after the CPU attention choice ('' to skip)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "pretrain_cpu.json"))
    p.add_argument("--smoke", action="store_true", help="one tiny size, one step: checks the plumbing only")
    return p


def _gflops(m: int, k: int, n: int, dtype: torch.dtype, iters: int) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    out = torch.empty(m, n, dtype=dtype)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(iters):
            torch.mm(a, b, out=out)
        best = min(best, (time.perf_counter() - t0) / iters)
    return 2 * m * k * n / best / 1e9


class _Stepper:
    """One model + optimizer whose training step can be timed repeatedly."""

    def __init__(self, model: torch.nn.Module, amp: torch.dtype | None, batch: int, img: int) -> None:
        self.state = TrainState(model.train(), torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0))
        self.cfg = StepConfig(base_lr=1e-4, total_steps=10**9, amp_dtype=amp)
        self.x = torch.randn(batch, 3, img, img, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
        self.gen = torch.Generator()
        self.net: Callable[..., torch.Tensor] = model

    def step(self) -> None:
        train_step(self.state, self.net, [self.x], self.cfg, self.gen)

    def time(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        return (time.perf_counter() - t0) / steps


def _build(variant: str, spec: str, batch: int) -> tuple[_Stepper, float]:
    size = parse_model_spec(spec)
    torch.manual_seed(0)
    amp = None if variant.endswith("fp32") else torch.bfloat16
    if variant.startswith("ldae"):
        tok = PatchPCA.fit([torch.randn(16, size.in_chans, size.img_size, size.img_size)], size.patch_size)  # timing only
        model: torch.nn.Module = LDAE(size, tok, check_inputs=False)
        flops = model_train_flops(model)
    else:
        model = TimmMSE(size)
        flops = vit_mse_train_flops(size.img_size, size.patch_size, size.embed_dim, size.depth, size.mlp_ratio, size.in_chans)
    set_fused_attention([model], "sdpa" if variant in ("ldae_bf16_sdpa", "timm_bf16") else "math")
    return _Stepper(model, amp, batch, size.img_size), flops


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [SMOKE_SIZE] if args.smoke else [s.strip() for s in args.sizes.split(";") if s.strip()]
    if args.smoke:
        args.batch_size, args.rounds, args.steps, args.warmup = 4, 1, 1, 1
    for s in sizes:
        parse_model_spec(s)  # fail before any timing
    peaks = {"fp32_2048": _gflops(2048, 2048, 2048, torch.float32, 1 if args.smoke else 3),
             "bf16_2048": _gflops(2048, 2048, 2048, torch.bfloat16, 1 if args.smoke else 10)}
    print(f"matmul 2048^3: fp32 {peaks['fp32_2048']:.0f} GFLOP/s, bf16 {peaks['bf16_2048']:.0f} GFLOP/s", flush=True)
    rows: list[dict[str, Any]] = []
    for spec in sizes:
        size = parse_model_spec(spec)
        tokens = args.batch_size * (size.img_size // size.patch_size) ** 2
        shape_peak = _gflops(tokens, size.embed_dim, 4 * size.embed_dim, torch.bfloat16, 1 if args.smoke else 5)
        steppers = {v: _build(v, spec, args.batch_size) for v in VARIANTS}
        for st, _ in steppers.values():
            for _ in range(args.warmup):
                st.step()
        best = {v: float("inf") for v in VARIANTS}
        for r in range(args.rounds):  # interleaved: every variant once per round
            for v, (st, _) in steppers.items():
                best[v] = min(best[v], st.time(args.steps))
        img_s = {v: args.batch_size / best[v] for v in VARIANTS}
        row: dict[str, Any] = {
            "size": spec, "embed_dim": size.embed_dim, "depth": size.depth, "tokens_per_image": (size.img_size // size.patch_size) ** 2,
            "batch": args.batch_size, "img_per_s": {v: round(x, 2) for v, x in img_s.items()},
            "train_gflops_per_image": {v: round(steppers[v][1] / 1e9, 4) for v in VARIANTS},
            "bf16_matmul_gflops_at_mlp_shape": round(shape_peak, 1),
        }
        ldae_gflops = steppers["ldae_bf16"][1] * img_s["ldae_bf16"] / 1e9
        row["ratios"] = {
            "bf16_over_fp32": round(img_s["ldae_bf16"] / img_s["ldae_fp32"], 3),
            "math_over_sdpa_attention": round(img_s["ldae_bf16"] / img_s["ldae_bf16_sdpa"], 3),
            "ldae_over_timm": round(img_s["ldae_bf16"] / img_s["timm_bf16"], 3),
            "ldae_over_timm_math": round(img_s["ldae_bf16"] / img_s["timm_bf16_math"], 3),
            "peak_fraction": round(ldae_gflops / peaks["bf16_2048"], 3),
            "mlp_shape_fraction": round(ldae_gflops / shape_peak, 3),
        }
        row["achieved_gflops"] = round(ldae_gflops, 1)
        row["targets_met"] = {k: row["ratios"][k] >= t for k, t in TARGETS.items()}
        rows.append(row)
        print(f"{spec}: " + "  ".join(f"{v} {x:.1f}" for v, x in img_s.items()) + " img/s | "
              + "  ".join(f"{k} {x}" for k, x in row["ratios"].items()), flush=True)
        del steppers
    compiled = None
    if args.compile and not args.smoke:
        compiled = _time_compile(sizes[0], args)
    profiles = {}
    if args.profile and not args.smoke:
        profiles = {kind: _profile(args.profile, kind, args.batch_size) for kind in ("ldae_bf16_sdpa", "ldae_bf16")}
    return {
        "benchmark": "pretrain_step_cpu", "device": device_name(torch.device("cpu")), "cpu_flags": cpu_flags(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "timm": timm.__version__,
        "python": platform.python_version(), "command": shlex.join(["python", *sys.argv]), "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "smoke": bool(args.smoke),
        "rounds": args.rounds, "steps": args.steps, "matmul_gflops": {k: round(v, 1) for k, v in peaks.items()},
        "targets": TARGETS, "results": rows, "compile": compiled, "profile": profiles,
    }


def _profile(spec: str, variant: str, batch: int, top: int = 12) -> dict[str, Any]:
    """Self CPU time per op of two training steps (torch.profiler), as shares of the total: what dominates."""
    from torch.profiler import ProfilerActivity, profile

    st, _ = _build(variant, spec, batch)
    st.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            st.step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    ops = [{"op": e.key, "share": round(e.self_cpu_time_total / total, 4), "calls": e.count} for e in events[:top]]
    matmul = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"))
    print(f"profile {spec} {variant}: " + ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in ops[:6]), flush=True)
    return {"size": spec, "variant": variant, "step_ms": round(total / 2 / 1000, 1), "matmul_share": round(matmul / total, 4), "top_ops": ops}


def _time_compile(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """torch.compile of the l-DAE bf16 step: first-step time (compilation) and steady img/s against eager."""
    eager, _ = _build("ldae_bf16", spec, args.batch_size)
    comp, _ = _build("ldae_bf16", spec, args.batch_size)
    comp.net = torch.compile(comp.state.model)
    t0 = time.perf_counter()
    comp.step()
    compile_s = time.perf_counter() - t0
    eager.step()
    best_e = best_c = float("inf")
    for _ in range(args.rounds):
        best_e, best_c = min(best_e, eager.time(args.steps)), min(best_c, comp.time(args.steps))
    res = {"size": spec, "first_step_s": round(compile_s, 1), "eager_img_per_s": round(args.batch_size / best_e, 2),
           "compiled_img_per_s": round(args.batch_size / best_c, 2), "compiled_over_eager": round(best_e / best_c, 3)}
    print(f"compile {spec}: first step {compile_s:.0f} s, compiled/eager {res['compiled_over_eager']}", flush=True)
    return res


def readme_table(report: dict[str, Any]) -> str:
    """The README's CPU table, rendered from a report (a test keeps the README equal to the committed JSON)."""
    lines = ["| size | blocks x width | tokens | l-DAE bf16 img/s | bf16 / fp32 | math / SDPA attention | "
             "l-DAE / timm ViT (SDPA) | l-DAE / timm ViT (same attention) | of bf16 matmul peak |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        q = r["ratios"]
        lines.append(f"| `{r['size']}` | {r['depth']} x {r['embed_dim']} | {r['tokens_per_image']} | {r['img_per_s']['ldae_bf16']:.0f} | "
                     f"{q['bf16_over_fp32']:.2f}x | {q['math_over_sdpa_attention']:.2f}x | {q['ldae_over_timm']:.2f}x | "
                     f"{q['ldae_over_timm_math']:.2f}x | {100 * q['peak_fraction']:.0f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    report = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(readme_table(report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
