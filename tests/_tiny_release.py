"""A temporary weights folder releasing a tiny l-DAE, for tests of the code that reads releases.

``make_release(root, files)`` writes into ``root`` a 4x4-patch PCA tokenizer, the encoder of a
``tiny_patch4_32`` l-DAE exported at t=10 and a ``manifest.json`` releasing it as :data:`TAG`, and into
``files`` the full model as a denoiser file (float32 and float16) and as a pretraining checkpoint.
``with_denoiser(root, files, dest)`` makes ``dest`` the same release plus the float16 denoiser in the
manifest entry (hard links, no copies). The model's adaLN and output layers are drawn at random (not
adaLN-Zero's zeros), so its outputs depend on its weights, and every weight is rounded to float16
once, so the float16 file holds exactly this model.
"""
import os
import json
from pathlib import Path

import torch

from ldae.engine.checkpoint import save_checkpoint
from ldae.models.export import export_encoder_state_dict
from ldae.models.ldae import LDAE
from ldae.release.denoiser import save_denoiser
from ldae.tokenizers.pca import PatchPCA
from ldae.utils.io import save_safetensors, sha256_file

TAG = "ldae_vit_tiny_patch4_32.test"
ARGS = dict(model="tiny_patch4_32", d=None, whiten=True, noise_space="latent", schedule="linear_sigma",
            tail_weight=0.1, enc_depth=None, cond_ratio=0.25, num_levels=1000)


def _entry(root: Path, name: str) -> dict:
    return {"file": name, "sha256": sha256_file(root / name), "bytes": (root / name).stat().st_size}


def make_release(root: Path, files: Path) -> LDAE:
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(64, 3, 8, 8, generator=g), size=32, mode="bilinear") * 2 - 1
    tok = PatchPCA.fit([x], 4)
    tok.save(root / "pca_p4.safetensors")
    torch.manual_seed(0)
    model = LDAE("tiny_patch4_32", tok).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or "final_layer" in name:
                p.normal_(0, 0.02)
            p.copy_(p.half().float())
    save_safetensors(export_encoder_state_dict(model, 10), root / "encoder.safetensors")
    manifest = {
        "format": "ldae.weights.v1",
        "tokenizers": {"pca_p4": {**_entry(root, "pca_p4.safetensors"), "patch_size": 4, "in_chans": 3,
                                  "norm_mean": [0.5] * 3, "norm_std": [0.5] * 3, "models": ["ldae_vit_tiny_patch4_32"]}},
        "weights": {TAG: {**_entry(root, "encoder.safetensors"), "params": 5_000_000, "tokenizer": "pca_p4", "noise": {"t": 10}}},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    save_denoiser(model, ARGS, files / "denoiser.safetensors")
    save_denoiser(model, ARGS, files / "denoiser_fp16.safetensors", dtype=torch.float16)
    save_checkpoint({"model": model.state_dict(), "ema": None, "args": ARGS, "tokenizer": tok.metadata()}, files / "checkpoint.pth")
    return model


def with_denoiser(root: Path, files: Path, dest: Path) -> Path:
    """``dest``: the release of ``root`` whose manifest entry also ships the float16 denoiser."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in root.iterdir():
        if f.name != "manifest.json":
            os.link(f, dest / f.name)
    os.link(files / "denoiser_fp16.safetensors", dest / "denoiser.safetensors")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["weights"][TAG]["denoiser"] = _entry(dest, "denoiser.safetensors")
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest
