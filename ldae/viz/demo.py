"""``ldae demo``: the library at work in one offline command, on bundled images or your own.

    ldae demo                                  # bundled sample images -> ./ldae-demo/
    ldae demo photos/ cat.jpg --out demo/      # your images and folders

It writes, and says what each shows:

* ``bases.png``   (Fig. 4) the top-16 patch-PCA bases of the tokenizer;
* ``noise.png``   (Fig. 7) the same Gaussian noise added to pixels and to the PCA latent;
* ``denoise.png`` (Fig. 8) clean | noisy | denoised, when a trained denoiser is at hand (a released
  tag that ships one, or ``--model`` with a pretraining checkpoint / denoiser file);
* ``features.safetensors`` pooled backbone features of the images (``features`` (B, D), names in the
  metadata): of the first released trained tag, else of a *randomly initialised* ``ldae_vit_base``
  (shapes and API only; nothing to read into the values);
* ``demo.json``   what ran and what was written.

Everything comes from the package itself (the shipped tokenizer and weights manifest) and from
images it can carry (see :mod:`ldae.data.samples`): no network access.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ldae.data.samples import load_images
from ldae.release.denoiser import DEFAULT_TOKENIZER_ARCH, denoiser_tags, load_denoiser, resolve_tokenizer, released_tags
from ldae.tokenizers.pca import DIT_NORM
from ldae.utils.io import atomic_write_text, save_safetensors
from ldae.utils.progress import progress
from ldae.viz import figures as viz
from ldae.viz.demo_config import DemoConfig

__all__ = ["run_demo", "DemoResult"]


@dataclass
class DemoResult:
    """files: name -> what it shows; model: the backbone used; trained: whether its weights are trained."""

    out: Path
    files: dict[str, str] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)
    model: str = ""
    trained: bool = False
    denoiser: str | None = None
    features: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)


def _is_file_spec(spec: str | None) -> bool:
    return spec is not None and (os.path.isfile(spec) or spec.endswith((".pth", ".pt", ".ckpt", ".safetensors")))


def _features(spec: str, trained: bool, paths: list[str] | None, limit: int, denoiser: Any) -> tuple[torch.Tensor, str]:
    """Pooled features (B, D) of the images through the backbone ``spec`` (preprocessed as its cfg says)."""
    from ldae.eval.backbones import create_backbone, resolve_data_config

    if denoiser is not None and _is_file_spec(spec) and spec.endswith(".safetensors"):
        from ldae.models.export import export_to_timm  # a denoiser file: fold its encoder at the eval level

        model, tok = export_to_timm(denoiser), denoiser.tokenizer
        mean, std = (tok.norm_mean, tok.norm_std) if tok is not None else DIT_NORM
        img_size = denoiser.size.img_size
        desc = f"encoder of {Path(spec).name} at t={denoiser.schedule.eval_t}"
    else:
        backbone = create_backbone(spec, pretrained=trained)
        model = backbone.model
        cfg = resolve_data_config(model, backbone.data_config or None)
        mean, std, img_size = cfg["mean"], cfg["std"], cfg["input_size"][-1]
        desc = spec if trained else f"{spec}, RANDOMLY INITIALISED (no trained weights released yet)"
    x, _ = load_images(paths, img_size, mean, std, limit)
    with torch.inference_mode():
        feats = torch.cat([model(b) for b in progress(x.split(16), desc="features", unit="batch")])  # (B, D)
    return feats.float(), desc


def _nearest(feats: torch.Tensor, names: list[str]) -> list[str]:
    f = torch.nn.functional.normalize(feats, dim=1)
    sim = f @ f.T  # (B, B) cosine similarities
    sim.fill_diagonal_(-2.0)
    best = sim.argmax(1)
    return [f"{n} -> {names[j]} (cos {float(sim[i, j]):.3f})" for i, (n, j) in enumerate(zip(names, best.tolist()))]


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Run the demo (see the module docstring); returns what it wrote."""
    out = Path(cfg.out)
    res = DemoResult(out=out)
    say = (lambda msg: None) if cfg.quiet else (lambda msg: print(msg, flush=True))

    # --- the model: a released tag, a file, or nothing trained yet
    tags = released_tags()
    spec = cfg.model or (tags[0] if tags else None)
    res.trained = spec is not None
    denoiser = None
    if spec is not None and (_is_file_spec(spec) or spec in denoiser_tags()):
        denoiser, res.denoiser = load_denoiser(spec)
    elif spec is not None:
        res.notes.append(f"{spec} ships its encoder only, so there is no denoising figure")
    else:
        res.notes.append("no trained l-DAE weights are released in this version: no denoising figure, random-init features")

    # --- the tokenizer: the model's own, else --tokenizer / the shipped one
    if denoiser is not None and denoiser.tokenizer is not None:
        tok, tok_name = denoiser.tokenizer, f"the tokenizer of {res.denoiser}"
    elif spec is not None and not _is_file_spec(spec):
        tok, tok_name = resolve_tokenizer(spec)
    else:
        tok, tok_name = resolve_tokenizer(cfg.tokenizer)
    img_size = denoiser.size.img_size if denoiser is not None else (256 if tok.patch_size >= 16 else 32)
    x, res.images = load_images(cfg.images, img_size, tok.norm_mean, tok.norm_std, cfg.limit)
    say(f"images ({len(res.images)}, {img_size}x{img_size} px): {', '.join(res.images)}")

    def write(name: str, image, what: str) -> None:
        path = viz.save_png(image, out / name)
        res.files[name] = what
        say(f"wrote {path} ({image.size[0]}x{image.size[1]} px): {what}")

    k = min(16, tok.dim)
    write("bases.png", viz.bases_figure(tok, k, title=f"Fig. 4: top-{k} PCA bases of {tok_name}"),
          f"Fig. 4, the top-{k} patch-PCA bases ({tok.patch_size}x{tok.patch_size}x{tok.in_chans}) of {tok_name}")
    cmp = viz.pixel_vs_latent_noise(x, tok, seed=cfg.seed)
    what = (f"Fig. 7, Gaussian noise of sigma={cmp.sigma:.3f} added to the pixels (middle) and to the top-{cmp.d} "
            f"whitened PCA latent (right), which corrupts each patch as a whole")
    title = [f"Fig. 7: noise sigma={cmp.sigma:.3f} on pixels vs on the top-{cmp.d} whitened PCA latent", f"tokenizer: {tok_name}"]
    write("noise.png", viz.noise_figure(cmp, tok, title), what)

    if denoiser is not None:
        runs = [viz.denoise_examples(denoiser, x, t, cfg.seed) for t in (None, denoiser.schedule.num_levels - 1)]
        what = (f"Fig. 8, clean | noisy | denoised by {res.denoiser} at t={runs[0].t} (sigma={runs[0].sigma:.2f}) "
                f"and t={runs[1].t} (sigma={runs[1].sigma:.2f})")
        write("denoise.png", viz.denoising_figure(runs, tok.norm_mean, tok.norm_std, f"Fig. 8: l-DAE denoising, {res.denoiser}"), what)

    # --- features
    feat_spec = spec if spec is not None else DEFAULT_TOKENIZER_ARCH
    feats, res.model = _features(feat_spec, res.trained, cfg.images, cfg.limit, denoiser)
    res.features = feats
    save_safetensors({"features": feats}, out / "features.safetensors",
                     {"model": res.model, "names": json.dumps(res.images), "trained": str(res.trained)})
    res.files["features.safetensors"] = f"pooled features {tuple(feats.shape)} of {res.model}"
    say(f"wrote {out / 'features.safetensors'}: pooled features {tuple(feats.shape)} of {res.model}")
    if res.trained and len(res.images) > 1:
        say("nearest image by cosine similarity of the features:\n  " + "\n  ".join(_nearest(feats, res.images)))
    for note in res.notes:
        say(f"note: {note}")

    record = {"out": str(out), "files": res.files, "images": res.images, "model": res.model, "trained": res.trained,
              "denoiser": res.denoiser, "features_shape": list(feats.shape), "notes": res.notes}
    atomic_write_text(out / "demo.json", json.dumps(record, indent=2) + "\n")
    res.files["demo.json"] = "this summary"
    return res
