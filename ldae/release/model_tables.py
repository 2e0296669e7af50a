"""The README's model tables, generated from ``weights/manifest.json``.

``python -m ldae.release.model_tables`` prints them; a test keeps README.md equal to this output, so the
README never lists a tag, file or number the manifest does not hold.
"""
from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer

from ldae.models.sizes import SIZES, vit_kwargs
from ldae.release.manifest import Manifest, load_manifest

__all__ = ["architectures_table", "weights_table", "tokenizers_table", "render"]


def _params(name: str) -> str:
    """Encoder parameter count, counted on a meta-device timm model (no memory, no init)."""
    with torch.device("meta"):
        vit = VisionTransformer(**vit_kwargs(SIZES[name]))
    return f"{sum(p.numel() for p in vit.parameters()) / 1e6:.1f}M"


def architectures_table() -> str:
    """Every registered architecture (no weights needed)."""
    rows = ["| architecture | encoder (blocks x width, heads) | patch | input | params (encoder) | default d |", "|---|---|---|---|---|---|"]
    for name, s in SIZES.items():
        rows.append(
            f"| `ldae_vit_{name}` | {s.enc_depth} x {s.embed_dim}, {s.num_heads} | {s.patch_size} | {s.img_size} px "
            f"| {_params(name)} | {s.default_d} of {s.patch_dim} |"
        )
    return "\n".join(rows)


def weights_table(manifest: Manifest) -> str:
    """Tags with released weights (a line saying there are none when the manifest holds none)."""
    if not manifest.weights:
        return "_No tag has trained weights yet: `pretrained=True` explains how to load your own (see below)._"
    rows = ["| tag | data | recipe | device, minutes | metrics | file |", "|---|---|---|---|---|---|"]
    for name, e in sorted(manifest.weights.items()):
        metrics = ", ".join(f"{k} {v}" for k, v in e.metrics.items()) or "-"
        when = f"{e.device}, {e.minutes:g}" if e.minutes is not None else e.device or "-"
        rows.append(f"| `{name}` | {e.data} | `{e.recipe}` | {when} | {metrics} | `{e.file}` ({e.bytes / 1e6:.1f} MB) |")
    return "\n".join(rows)


def tokenizers_table(manifest: Manifest) -> str:
    """Shipped tokenizers with the data and command that reproduce them."""
    rows = ["| tokenizer | patch | fitted on | images / patches | default for |", "|---|---|---|---|---|"]
    for name, e in sorted(manifest.tokenizers.items()):
        models = ", ".join(f"`{m}`" for m in e.models) or "-"
        rows.append(f"| `{name}` | {e.patch_size}x{e.patch_size}x{e.in_chans} | {e.data.split(' (sha256')[0]} | {e.images:,} / {e.patches:,} | {models} |")
    return "\n".join(rows)


def render(manifest: Manifest | None = None) -> str:
    """All three tables as one markdown block."""
    manifest = manifest or load_manifest()
    return "\n\n".join(
        ["**Architectures**", architectures_table(), "**Trained weights**", weights_table(manifest), "**Tokenizers**", tokenizers_table(manifest)]
    )


if __name__ == "__main__":
    print(render())
