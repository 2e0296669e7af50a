"""The paper's comparative claims at CPU scale: every ablation row at equal budget, one command.

    python bench/sweep_claims.py --data ../shared/data/cifar10-jpeg.tar.gz --work runs/claims \\
        --out bench/results/claims_cifar10_cpu.json

Each row pretrains the same model (same size, images seen, optimiser and seed unless the row is about
the seed) from one shared patch PCA, then the cached linear probe and k-NN read its frozen features.
Rows differ only in the flags they name (the paper's ablations, Tab. 1-5 and Fig. 6):

* random init: the same architecture, not trained (what the features are worth without pretraining);
* latent noise vs pixel noise (the classical DAE) on D = 8x8x3 = 192-dim patches, where pixel noise
  is high-dimensional (the paper: 65.1% at d = 32 against 23.6% with pixel noise on 768-dim patches);
* the latent dimension d in {4, 8, 16, 32, 64} of 192;
* one noise level (sigma = sqrt(1/3)) against the multi-level schedule;
* the latent scale: whitened (the default), raw PCA coordinates, one global scale;
* the encoder split: 1/4, 1/2 (the default) and 3/4 of the blocks;
* the default row again with another seed: the run-to-run spread every claim is judged against.

The default row is also probed on the image projected onto the top-d span and on the noisy image.

Resumable: a row whose result file exists is not run again, an interrupted pretraining continues
from its last checkpoint (``--resume auto``), and cached features are reused. Every row's logs,
checkpoints and result files stay under ``--work``; the summary JSON and a bar chart go to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ldae.utils.io import atomic_write_text  # noqa: E402
from ldae.utils.provenance import git_commit  # noqa: E402

DEFAULT_MODEL = "custom:img=32,patch=8,dim=192,enc=4,dec=4,heads=3,d=16"


@dataclass(frozen=True)
class Row:
    """One ablation: its name, the pretraining flags that set it apart, and what it tests."""

    name: str
    flags: tuple[str, ...] = ()
    group: str = "default"
    label: str = ""
    train: bool = True
    view: str = "clean"  # the probe's input view (rows of the same training share its checkpoint)
    of: str | None = None  # the row whose checkpoint this one probes (input-view rows)


def rows_for(depth: int, d: int) -> list[Row]:
    """The rows, in the order they run (the claims' essentials first, should a budget run out)."""
    q = depth // 4
    return [
        Row("default", (), "default", f"l-DAE default (latent noise, d = {d}, whitened, multi-level, encoder 1/2)"),
        Row("pixel_noise", ("--noise-space", "pixel"), "noise space", "pixel-noise DAE (all 192 dims)"),
        Row("random_init", (), "control", "random init (same architecture)", train=False),
        Row("single_level", ("--schedule", "single"), "noise levels", "single level, sigma = sqrt(1/3)"),
        Row("default_seed1", ("--seed", "1"), "default", "l-DAE default, seed 1"),
        Row("raw_scale", ("--latent-scale", "raw"), "latent scale", "raw PCA coordinates"),
        Row("global_scale", ("--latent-scale", "global"), "latent scale", "one global scale (unit average variance)"),
        Row("d4", ("--d", "4"), "latent dim", "d = 4"),
        Row("d8", ("--d", "8"), "latent dim", "d = 8"),
        Row("d32", ("--d", "32"), "latent dim", "d = 32"),
        Row("d64", ("--d", "64"), "latent dim", "d = 64"),
        Row("default_projected", (), "probe input", "default row, probe on the top-d projection", train=False,
            view="projected", of="default"),
        Row("default_noisy", (), "probe input", "default row, probe on the noisy image (t = 10)", train=False,
            view="noisy", of="default"),
        Row(f"enc{q}", ("--enc-depth", str(q)), "encoder split", f"encoder {q} of {depth} blocks (1/4)"),
        Row(f"enc{depth - q}", ("--enc-depth", str(depth - q)), "encoder split", f"encoder {depth - q} of {depth} blocks (3/4)"),
    ]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10-jpeg.tar.gz"),
                   help="ImageFolder-layout folder or archive with train/ and test/ splits")
    p.add_argument("--work", default="runs/claims", help="where each row's run, checkpoints and evaluations go")
    p.add_argument("--out", default="bench/results/claims_cifar10_cpu.json", help="summary JSON (and .png beside it)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="the one model size every row trains")
    p.add_argument("--epochs", type=int, default=2, help="pretraining epochs of every row (the equal budget)")
    p.add_argument("--global-batch", type=int, default=256)
    p.add_argument("--blr", type=float, default=1e-3)
    p.add_argument("--warmup-epochs", type=float, default=0.2)
    p.add_argument("--probe-epochs", type=int, default=90, help="cached linear probe epochs")
    p.add_argument("--probe-batch", type=int, default=1024)
    p.add_argument("--probe-blr", type=float, default=10.0)
    p.add_argument("--rows", default=None, help="run only these rows (comma-separated names), e.g. for a quick check")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="start no new pretraining once the rows done have used this many minutes (their recorded training "
                        "and evaluation time); the rows left out are listed as not run")
    p.add_argument("--device", default="cpu")
    return p


@dataclass
class Sweep:
    args: argparse.Namespace
    work: Path
    depth: int
    d: int
    rows: list[Row] = field(default_factory=list)

    # ---------------------------------------------------------------------------------------- steps
    def run_logged(self, argv: list[str], log: Path) -> float:
        """Run ``argv`` with its output in ``log``; return its wall time (s). A failure names the log."""
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.time()
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(argv)}\n")
            f.flush()
            rc = subprocess.call(argv, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        if rc != 0:
            raise RuntimeError(f"{shlex.join(argv[:4])} ... failed (exit {rc}); see {log}")
        return time.time() - start

    def tokenizer(self) -> Path:
        path = self.work / "pca.safetensors"
        if not path.is_file():
            from ldae.models.size_spec import parse_model_spec

            patch = parse_model_spec(self.args.model).patch_size
            size = parse_model_spec(self.args.model).img_size
            self.run_logged([sys.executable, "-m", "ldae.fit_pca", self.args.data, "--split", "train", "--img-size", str(size),
                             "--patch-size", str(patch), "--out", str(path), "--quiet"], self.work / "fit_pca.log")
        return path

    def pretrain_argv(self, row: Row, out: Path) -> list[str]:
        a = self.args
        return [sys.executable, "-m", "ldae.pretrain", "--data", a.data, "--model", a.model, "--gpu-data",
                "--tokenizer", str(self.tokenizer()), "--global-batch", str(a.global_batch), "--blr", str(a.blr),
                "--epochs", str(a.epochs), "--warmup-epochs", str(a.warmup_epochs), "--hflip", "--device", a.device,
                "--output-dir", str(out), "--resume", "auto", "--quiet", *row.flags]

    def checkpoint(self, row: Row) -> tuple[Path, dict[str, Any]]:
        """Pretrain ``row`` (or write its untrained initialisation); its checkpoint and training record."""
        out = self.work / row.name
        record_path = out / "train.json"
        if record_path.is_file():
            rec = json.loads(record_path.read_text())
            return Path(rec["checkpoint"]), rec
        argv = self.pretrain_argv(row, out)
        if row.train:
            seconds = self.run_logged(argv, out / "pretrain.log")
            info = json.loads((out / "run.json").read_text())
            ckpt = out / f"checkpoint-{self.args.epochs:04d}.pth"
            images = info["total_steps"] * info["global_batch"]
        else:
            seconds, images, ckpt = 0.0, 0, out / "checkpoint-init.pth"
            write_initial_checkpoint(argv[3:], ckpt)
        rec = {"checkpoint": str(ckpt), "images_seen": images, "train_minutes": round(seconds / 60, 2),
               "pretrain_command": shlex.join(["python", *argv[1:]]) if row.train else None}
        atomic_write_text(record_path, json.dumps(rec, indent=1))
        return ckpt, rec

    def evaluate(self, row: Row, ckpt: Path) -> dict[str, Any]:
        """Cached linear probe and k-NN of ``ckpt``'s frozen encoder (features shared between the two)."""
        a = self.args
        out = self.work / row.name
        cache = self.work / (row.of or row.name) / "cache"
        common = ["--model", str(ckpt), "--data", a.data, "--device", a.device, "--cache-dir", str(cache), "--quiet",
                  "--input-view", row.view]
        res = {}
        for recipe, extra in (("probe", ["--mode", "cached", "--epochs", str(a.probe_epochs), "--batch-size",
                                         str(a.probe_batch), "--blr", str(a.probe_blr),
                                         "--warmup-epochs", str(a.probe_epochs / 9)]), ("knn", [])):  # MAE: 10 of 90
            path = out / recipe / f"{recipe}_results.json"
            if not path.is_file():
                self.run_logged([sys.executable, "-m", f"ldae.{recipe}", *common, *extra, "--output-dir", str(out / recipe)],
                                out / f"{recipe}.log")
            res[recipe] = json.loads(path.read_text())
        return {"probe_top1": res["probe"]["top1"], "knn_top1": res["knn"]["top1"],
                "eval_seconds": round(res["probe"]["seconds"] + res["knn"]["seconds"], 1)}

    def row_result(self, row: Row) -> dict[str, Any]:
        path = self.work / row.name / "result.json"
        if path.is_file():
            return json.loads(path.read_text())
        base = next(r for r in self.rows if r.name == row.of) if row.of else row
        ckpt, rec = self.checkpoint(base)
        d = int(base.flags[base.flags.index("--d") + 1]) if "--d" in base.flags else self.d
        result = {"name": row.name, "group": row.group, "label": row.label, "flags": shlex.join(row.flags), "d": d,
                  "input_view": row.view, **({k: v for k, v in rec.items() if k != "checkpoint"} if not row.of else
                                             {"images_seen": rec["images_seen"], "train_minutes": rec["train_minutes"],
                                              "pretrain_command": None}),
                  **self.evaluate(row, ckpt)}
        atomic_write_text(path, json.dumps(result, indent=1))
        return result


def write_initial_checkpoint(pretrain_argv: list[str], path: Path) -> None:
    """The checkpoint ``ldae pretrain`` would start from (same flags, same seed), untrained."""
    import torch

    from ldae.models.model_config import build_model
    from ldae.engine.checkpoint import save_checkpoint
    from ldae.cli.configs import to_config
    from ldae.cli.pretrain import get_args_parser
    from ldae.engine.pretrain import _norm_name, _tokenizer_norm
    from ldae.engine.pretrain_config import PretrainConfig
    from ldae.tokenizers.registry import load_tokenizer

    args = to_config(PretrainConfig, get_args_parser().parse_args(pretrain_argv))
    tokenizer = load_tokenizer(args.tokenizer)
    args.norm = _norm_name(*_tokenizer_norm(args, tokenizer)) or args.norm  # as `ldae pretrain` records it
    torch.manual_seed(args.seed)  # as `ldae pretrain` seeds before building the model
    model = build_model(args, tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"model": model.state_dict(), "ema": None, "epoch": 0, "step": 0, "args": args.to_dict(),
                     "tokenizer": tokenizer.metadata()}, path)


# -------------------------------------------------------------------------------------------- claims
def claims(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each paper claim checked against the seed spread (|default - default_seed1|, per metric)."""
    out = []
    if "default" not in results or "default_seed1" not in results:
        return out
    spread = {m: abs(results["default"][m] - results["default_seed1"][m]) for m in ("probe_top1", "knn_top1")}

    def mean_default(m: str) -> float:
        return (results["default"][m] + results["default_seed1"][m]) / 2

    def verdict(margin: float, m: str) -> str:
        if margin > spread[m]:
            return "reproduced"
        return "within the seed spread" if margin >= -spread[m] else "contradicted"

    def claim(text: str, better: str, worse: list[str], paper: str) -> None:
        names = [better, *worse]
        if not all(n in results or n == "default" for n in names):
            return
        rec: dict[str, Any] = {"claim": text, "paper": paper, "better": better, "worse": worse}
        for m in ("probe_top1", "knn_top1"):
            top = mean_default(m) if better == "default" else results[better][m]
            margin = min(top - (mean_default(m) if w == "default" else results[w][m]) for w in worse)
            rec[m] = {"margin": round(margin, 2), "spread": round(spread[m], 2), "verdict": verdict(margin, m)}
        out.append(rec)

    claim("noise in a low-dimensional latent beats noise on pixels", "default", ["pixel_noise"],
          "65.1% (latent, d = 32) vs 23.6% (pixel noise, 768-dim patches), Sec. 4.2")
    claim("multi-level noise beats a single level", "default", ["single_level"], "64.5% vs 61.5%, Tab. 5")
    ds = [n for n in ("d4", "d8", "d32", "d64") if n in results]
    if ds:
        best_d = max(["default", *ds], key=lambda n: mean_default("probe_top1") if n == "default" else results[n]["probe_top1"])
        claim(f"a low latent dimension beats the extremes (best here: {best_d}; the default row is d = {parse_d(results)})", "default",
              [n for n in ds if n in ("d4", "d64")], "d = 16-32 best of 768, Fig. 6 / Tab. 2")
    encs = [n for n in results if n.startswith("enc")]
    if encs:
        claim("half the depth is the best encoder split", "default", encs, "the 1/2 split, Tab. 4 (ViT-1/2L)")
    claim("pretraining beats the random-init control", "default", ["random_init"], "all rows of Tab. 1-5 vs random init")
    return out


def parse_d(results: dict[str, dict[str, Any]]) -> str:
    return str(results["default"].get("d", "?"))


# -------------------------------------------------------------------------------------------- output
def readme_table(summary: dict[str, Any]) -> str:
    """The README's "equal budget" table of a summary JSON written by this script."""
    lines = ["| row | flags | images seen | minutes | cached probe top-1 | k-NN top-1 (k = 20) |", "|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        flags = f"`{r['flags']}`" if r["flags"] else ("`--input-view " + r["input_view"] + "`" if r["input_view"] != "clean" else "")
        mins = f"{r['train_minutes']:.1f}" if r["train_minutes"] and r["input_view"] == "clean" else "-"
        lines.append(f"| {r['label']} | {flags} | {r['images_seen']:,} | {mins} | {r['probe_top1']:.2f}% | {r['knn_top1']:.2f}% |")
    if summary.get("not_run"):
        lines += ["", f"Not run within `--max-minutes {summary['max_minutes']:g}`: {', '.join(summary['not_run'])}."]
    lines += ["", "| claim | paper | probe: margin (seed spread) | k-NN: margin (seed spread) |", "|---|---|---|---|"]
    for c in summary["claims"]:
        p, k = c["probe_top1"], c["knn_top1"]
        lines.append(f"| {c['claim']} | {c['paper']} | {p['margin']:+.2f} ({p['spread']:.2f}): {p['verdict']} "
                     f"| {k['margin']:+.2f} ({k['spread']:.2f}): {k['verdict']} |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    """Bar chart of the probe and k-NN top-1 of every row, the default's seed range drawn as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.42 * len(rows) + 1.5), sharey=True)
    names = [r["label"] for r in rows]
    seeds = [r for r in rows if r["name"] in ("default", "default_seed1")]
    for ax, metric, title in zip(axes, ("probe_top1", "knn_top1"), ("cached linear probe top-1 (%)", "k-NN top-1 (%), k = 20")):
        vals = [r[metric] for r in rows]
        colors = ["tab:blue" if r["group"] == "default" else "tab:gray" if r["group"] == "control" else "tab:orange" for r in rows]
        ax.barh(range(len(rows)), vals, color=colors)
        if len(seeds) == 2:
            lo, hi = sorted(s[metric] for s in seeds)
            ax.axvspan(lo, hi, color="tab:blue", alpha=0.2, label="default: seed range")
            ax.legend(loc="lower right", fontsize=8)
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.1f}", va="center", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlim(min(vals) - 5, max(vals) + 4)
    axes[0].set_yticks(range(len(rows)), names, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"l-DAE ablations at equal budget: {summary['budget']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    import torch

    from ldae.utils.amp import device_name
    from ldae.models.size_spec import parse_model_spec

    size = parse_model_spec(args.model)
    sweep = Sweep(args, Path(args.work), size.depth, size.default_d)
    sweep.rows = rows_for(size.depth, size.default_d)
    wanted = sweep.rows if args.rows is None else [r for r in sweep.rows if r.name in args.rows.split(",")]
    if args.rows is not None and len(wanted) != len(args.rows.split(",")):
        raise SystemExit(f"sweep_claims: error: --rows: expected names among {[r.name for r in sweep.rows]}, got {args.rows!r}")
    sweep.work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    results: dict[str, dict[str, Any]] = {}
    not_run: list[str] = []
    for row in wanted:
        used = sum(r["train_minutes"] * (r["input_view"] == "clean") + r["eval_seconds"] / 60 for r in results.values())
        done = (sweep.work / row.name / "result.json").is_file()
        if row.train and not done and args.max_minutes is not None and used >= args.max_minutes:
            not_run.append(row.name)
            print(f"{row.name:18s} not run: {used:.1f} of --max-minutes {args.max_minutes:g} used", flush=True)
            continue
        res = sweep.row_result(row)
        results[row.name] = res
        print(f"{row.name:18s} {res['images_seen']:>8,} images {res['train_minutes']:6.1f} min  probe {res['probe_top1']:6.2f}  "
              f"knn {res['knn_top1']:6.2f}", flush=True)
    summary = {
        "what": "paper ablations at equal budget (same model, images seen, optimiser and probes)",
        "command": shlex.join(["python", "bench/sweep_claims.py", *(argv if argv is not None else sys.argv[1:])]),
        "commit": git_commit(), "device": device_name(torch.device(args.device)), "data": args.data, "model": args.model,
        "budget": f"{args.model}, {args.epochs} epochs x batch {args.global_batch} per row",
        "epochs": args.epochs, "global_batch": args.global_batch, "blr": args.blr, "warmup_epochs": args.warmup_epochs,
        "probe": {"mode": "cached", "epochs": args.probe_epochs, "batch_size": args.probe_batch, "blr": args.probe_blr},
        "wall_minutes_this_invocation": round((time.time() - start) / 60, 1),
        "total_minutes": round(sum(r["train_minutes"] for r in results.values() if r["input_view"] == "clean")
                               + sum(r["eval_seconds"] for r in results.values()) / 60, 1),
        "rows": list(results.values()), "not_run": not_run, "max_minutes": args.max_minutes, "claims": claims(results),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(summary, indent=1) + "\n")
    plot(summary, out.with_suffix(".png"))
    print(readme_table(summary))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return summary


if __name__ == "__main__":
    main()
