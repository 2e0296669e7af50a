"""What the patch PCAs hold: the share of patch variance in the top-d components, from their eigenvalues.

    python bench/pca_variance.py --out bench/results/pca_variance_cpu.json [EXTRA.safetensors ...]

Reads the shipped PCA artifacts of ``weights/`` and any extra ones (e.g. the PCA the claims sweep fits,
``<work>/pca.safetensors`` of ``bench/sweep_claims.py``). For each: the fraction of the total patch
variance held by the top d components (what ``ldae fit-pca`` prints), and how many of the top 32
directions have a variance above 1/2 in normalised pixel units. A linear VAE whose loss is the
squared error plus KL (weight 1) has an observation variance of 1/2, and it collapses a direction to
the prior when that direction's variance falls below it, so the count says how much of d = 32 such a
VAE keeps. Each row records the artifact's sha256 and the ``ldae fit-pca`` command it was fitted with.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ldae.tokenizers.fit_pca import explained_variance  # noqa: E402
from ldae.tokenizers.pca import PatchPCA  # noqa: E402
from ldae.utils.io import atomic_write_text, sha256_file  # noqa: E402
from ldae.utils.provenance import git_commit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DS = (4, 8, 16, 32, 64)
VAE_OBSERVATION_VARIANCE = 0.5  # squared error = Gaussian log-likelihood with variance 1/2 (up to a constant)


def describe(path: Path) -> dict:
    """The variance record of one PCA artifact."""
    pca = PatchPCA.load(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    ev = pca.eigenvalues
    top = ev[:32]
    return {
        "artifact": path.name, "sha256": sha256_file(path), "fit_command": meta.get("command"),
        "patch": f"{pca.patch_size}x{pca.patch_size}x{pca.in_chans}", "D": int(ev.numel()),
        "num_images": pca.num_images, "num_patches": pca.num_patches,
        "explained_percent": {str(d): round(100 * explained_variance(pca, d), 2) for d in DS if d <= ev.numel()},
        "top32_above_half": int((top > VAE_OBSERVATION_VARIANCE).sum()), "top32_count": int(top.numel()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("extra", nargs="*", help="more PCA artifacts (.safetensors)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    paths = sorted((ROOT / "weights").glob("pca_*.safetensors")) + [Path(x) for x in a.extra]
    for path in paths:
        if not path.is_file():
            p.error(f"no such PCA artifact: {path}")
    record = {
        "benchmark": "share of patch variance in the top-d PCA components (from the stored eigenvalues)",
        "command": "python bench/pca_variance.py" + (f" --out {a.out}" if a.out else "") + "".join(f" {x}" for x in a.extra),
        "device": f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)",
        "commit": git_commit(), "torch": torch.__version__,
        "rows": [describe(path) for path in paths],
    }
    text = json.dumps(record, indent=2) + "\n"
    if a.out:
        atomic_write_text(a.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
