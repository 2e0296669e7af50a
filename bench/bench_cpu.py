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
  default (SDPA) attention and with the explicit path, and timm's default (exact) GELU;
* ``timm_bf16_math_same_act``: the same twin with the l-DAE size's own MLP activation (``act``; DiT's
  tanh GELU for ``gelu_tanh`` sizes), i.e. the same blocks as the exported encoder.

The process keeps freed memory on the heap as ``ldae pretrain`` does on CPUs (:mod:`ldae.utils.malloc`).

Each step is :func:`ldae.engine.pretrain_loop.train_step` (AdamW, the real noise, network and Eq. 4 loss
for l-DAE). The matmul peaks (fp32 and bf16 2048^3, and bf16 at the model's own MLP shape) are
measured in the same run; ``peak_fraction`` = analytic training FLOPs x img/s / bf16 2048^3 peak.
``--compile`` also times ``torch.compile`` of the l-DAE bf16 step (the whole model, and block by block)
at each of ``--compile-sizes``, from a cold inductor cache, compile time included, and the minutes of
training after which it has paid for itself. ``--baseline-commit`` times the l-DAE bf16 step of an older
commit (a git worktree, in a child process between the rounds) for the ratio this code gains over it. Timings on a shared machine are noisy: read the ratios, not the absolute numbers.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
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
from ldae.utils.malloc import keep_freed_memory  # noqa: E402
from ldae.utils.provenance import git_commit  # noqa: E402

# CIFAR's micro size and the paper's patch geometry at 128 px (16x16x3 patches, 64 tokens), each with
# DiT's tanh GELU and with the exact GELU (act=gelu).
P16 = "custom:img=128,patch=16,dim=192,enc=4,dec=4,heads=3,d=32"
DEFAULT_SIZES = ("micro_patch4_32", "custom:img=32,patch=4,dim=192,enc=4,dec=4,heads=3,d=16,act=gelu", P16, P16 + ",act=gelu")
VARIANTS = ("ldae_fp32", "ldae_bf16", "ldae_bf16_sdpa", "timm_bf16", "timm_bf16_math", "timm_bf16_math_same_act")
TARGETS = {"bf16_over_fp32": 1.5, "peak_fraction": 0.4, "ldae_over_timm_math": 1.0}
SMOKE_SIZE = "custom:img=32,patch=4,dim=32,enc=1,dec=1,heads=2,d=8"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=";".join(DEFAULT_SIZES), help="--model values separated by ';' (names or custom: "
                   "specs, which hold commas themselves)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each variant's best round is reported")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant before the first round")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the l-DAE bf16 step (--compile-sizes)")
    p.add_argument("--compile-sizes", default=f"micro_patch4_32;{P16}", help="sizes for --compile, separated by ';'")
    p.add_argument("--baseline-commit", default=None, help="also time this commit's l-DAE bf16 step (e.g. a687de4)")
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
    elif variant in ("timm_bf16", "timm_bf16_math"):
        model = TimmMSE(size)
        flops = vit_mse_train_flops(size.img_size, size.patch_size, size.embed_dim, size.depth, size.mlp_ratio, size.in_chans)
    elif variant == "timm_bf16_math_same_act":
        model = TimmMSE(size, act_layer=size.act)
        flops = vit_mse_train_flops(size.img_size, size.patch_size, size.embed_dim, size.depth, size.mlp_ratio, size.in_chans)
    set_fused_attention([model], "sdpa" if variant in ("ldae_bf16_sdpa", "timm_bf16") else "math")
    return _Stepper(model, amp, batch, size.img_size), flops


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [SMOKE_SIZE] if args.smoke else [s.strip() for s in args.sizes.split(";") if s.strip()]
    if args.smoke:
        args.batch_size, args.rounds, args.steps, args.warmup = 4, 1, 1, 1
    for s in sizes:
        parse_model_spec(s)  # fail before any timing
    heap = keep_freed_memory()  # as `ldae pretrain` runs on CPUs
    baseline = _Baseline(args.baseline_commit, args) if args.baseline_commit and not args.smoke else None
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
        base_best = float("inf")
        for r in range(args.rounds):  # interleaved: every variant once per round
            for v, (st, _) in steppers.items():
                best[v] = min(best[v], st.time(args.steps))
            if baseline is not None and baseline.available(spec):
                base_best = min(base_best, baseline.time(spec))
        img_s = {v: args.batch_size / best[v] for v in VARIANTS}
        row: dict[str, Any] = {
            "size": spec, "embed_dim": size.embed_dim, "depth": size.depth, "act": size.act,
            "tokens_per_image": (size.img_size // size.patch_size) ** 2,
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
            "ldae_over_timm_same_blocks": round(img_s["ldae_bf16"] / img_s["timm_bf16_math_same_act"], 3),
            "peak_fraction": round(ldae_gflops / peaks["bf16_2048"], 3),
            "mlp_shape_fraction": round(ldae_gflops / shape_peak, 3),
        }
        if base_best < float("inf"):
            row["baseline_img_per_s"] = round(args.batch_size / base_best, 2)
            row["ratios"]["over_baseline_commit"] = round(base_best / best["ldae_bf16"], 3)
        row["achieved_gflops"] = round(ldae_gflops, 1)
        row["targets_met"] = {k: row["ratios"][k] >= t for k, t in TARGETS.items()}
        rows.append(row)
        print(f"{spec}: " + "  ".join(f"{v} {x:.1f}" for v, x in img_s.items()) + " img/s | "
              + "  ".join(f"{k} {x}" for k, x in row["ratios"].items()), flush=True)
        del steppers
    compiled = []
    if args.compile and not args.smoke:
        for spec in [s.strip() for s in args.compile_sizes.split(";") if s.strip()]:
            for scope in ("model", "blocks"):
                compiled.append(_time_compile(spec, scope, args, baseline))
    profiles = {}
    if args.profile and not args.smoke:
        profiles = {kind: _profile(args.profile, kind, args.batch_size) for kind in ("ldae_bf16_sdpa", "ldae_bf16")}
    if baseline is not None:
        baseline.close()
    return {
        "benchmark": "pretrain_step_cpu", "device": device_name(torch.device("cpu")), "cpu_flags": cpu_flags(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "timm": timm.__version__,
        "python": platform.python_version(), "command": shlex.join(["python", *sys.argv]), "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "smoke": bool(args.smoke),
        "cpu_allocator": "heap (mmap off)" if heap else "default", "baseline_commit": args.baseline_commit,
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


def _time_compile(spec: str, scope: str, args: argparse.Namespace, baseline: "_Baseline | None") -> dict[str, Any]:
    """torch.compile of the l-DAE bf16 step (``scope``: the whole model, or each block) from a cold inductor
    cache: the first step's seconds (compilation), steady img/s against eager, and the break-even minutes."""
    torch._dynamo.reset()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="ldae-bench-inductor-")  # cold: what a user's first run pays
    eager, _ = _build("ldae_bf16", spec, args.batch_size)
    comp, _ = _build("ldae_bf16", spec, args.batch_size)
    model = comp.state.model
    model.schedule.lookup(torch.zeros(1, dtype=torch.long), check=False)  # as ldae pretrain does before compiling
    if scope == "model":
        comp.net = torch.compile(model)
    else:
        for block in model.blocks:
            block.compile()
    t0 = time.perf_counter()
    comp.step()
    first = time.perf_counter() - t0
    eager.step()
    best_e = best_c = float("inf")
    base_best = float("inf")
    for _ in range(args.rounds):
        best_e, best_c = min(best_e, eager.time(args.steps)), min(best_c, comp.time(args.steps))
        if baseline is not None and baseline.available(spec):
            base_best = min(base_best, baseline.time(spec))
    gain = best_e / best_c
    # Minutes after which compiled training has processed more images than eager: first - best_c is the
    # compile's extra time, recovered at (best_e - best_c) per step.
    steps_even = max(0.0, (first - best_c) / max(best_e - best_c, 1e-9))
    res = {"size": spec, "scope": scope, "first_step_s": round(first, 1), "eager_img_per_s": round(args.batch_size / best_e, 2),
           "compiled_img_per_s": round(args.batch_size / best_c, 2), "compiled_over_eager": round(gain, 3),
           "break_even_min": round(steps_even * best_e / 60, 1) if best_e > best_c else None}
    if base_best < float("inf"):
        res["baseline_img_per_s"] = round(args.batch_size / base_best, 2)
        res["compiled_over_baseline_eager"] = round(base_best / best_c, 3)
    print(f"compile {spec} ({scope}): first step {first:.0f} s, compiled/eager {gain:.3f}, "
          f"break-even {res['break_even_min']} min", flush=True)
    return res


class _Baseline:
    """The l-DAE bf16 step of an older commit, timed in a child process from a git worktree of it."""

    _CHILD = (
        "import sys, time, torch\n"
        "sys.path.insert(0, 'bench'); sys.path.insert(0, '.')\n"
        "import bench_cpu as bc, ldae\n"
        "assert ldae.__file__.startswith(sys.argv[4]), ldae.__file__\n"
        "st = bc._build('ldae_bf16', sys.argv[1], int(sys.argv[2]))[0]\n"
        "st.step()\n"
        "print(st.time(int(sys.argv[3])))\n"
    )

    def __init__(self, commit: str, args: argparse.Namespace) -> None:
        self.commit, self.args = commit, args
        self.tree = Path(tempfile.mkdtemp(prefix="ldae-baseline-"))
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(self.tree), commit], check=True,
                       capture_output=True)

    def available(self, spec: str) -> bool:
        # Sizes with an activation other than DiT's did not exist before: nothing to compare.
        return parse_model_spec(spec).act == "gelu_tanh"

    def time(self, spec: str) -> float:
        env = {**os.environ, "PYTHONPATH": str(self.tree)}
        out = subprocess.run([sys.executable, "-c", self._CHILD, spec, str(self.args.batch_size), str(self.args.steps),
                              str(self.tree)], cwd=self.tree, env=env, check=True, capture_output=True, text=True)
        return float(out.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(self.tree)], capture_output=True)


def readme_table(report: dict[str, Any]) -> str:
    """The README's CPU table, rendered from a report (a test keeps the README equal to the committed JSON)."""
    base = report.get("baseline_commit")
    lines = ["| size | MLP activation | blocks x width | tokens | l-DAE bf16 img/s | " + (f"vs {base} | " if base else "")
             + "bf16 / fp32 | math / SDPA attention | l-DAE / timm ViT (same attention) | l-DAE / timm ViT (same blocks) | "
             "of bf16 matmul peak |",
             "|---|---|---|---|---|" + ("---|" if base else "") + "---|---|---|---|---|"]
    for r in report["results"]:
        q = r["ratios"]
        vs = (f"{q['over_baseline_commit']:.2f}x | " if "over_baseline_commit" in q else "- | ") if base else ""
        lines.append(f"| `{r['size']}` | {r['act']} | {r['depth']} x {r['embed_dim']} | {r['tokens_per_image']} | "
                     f"{r['img_per_s']['ldae_bf16']:.0f} | {vs}{q['bf16_over_fp32']:.2f}x | {q['math_over_sdpa_attention']:.2f}x | "
                     f"{q['ldae_over_timm_math']:.2f}x | {q['ldae_over_timm_same_blocks']:.2f}x | {100 * q['peak_fraction']:.0f}% |")
    return "\n".join(lines)


def compile_table(report: dict[str, Any]) -> str:
    """The README's torch.compile table, rendered from a report's ``compile`` block."""
    base = report.get("baseline_commit")
    lines = ["| size | compiled | first step (compile) | compiled / eager | pays back after | "
             + (f"compiled / eager of {base} |" if base else ""),
             "|---|---|---|---|---|" + ("---|" if base else "")]
    for c in report["compile"]:
        even = f"{c['break_even_min']:.0f} min" if c["break_even_min"] is not None else "never"
        tail = f" {c['compiled_over_baseline_eager']:.2f}x |" if base and "compiled_over_baseline_eager" in c else (" - |" if base else "")
        lines.append(f"| `{c['size']}` | {'whole model' if c['scope'] == 'model' else 'each block'} | {c['first_step_s']:.0f} s | "
                     f"{c['compiled_over_eager']:.2f}x | {even} |{tail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    report = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(readme_table(report))
    if report["compile"]:
        print(compile_table(report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
