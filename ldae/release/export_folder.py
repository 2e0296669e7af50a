"""``ldae export``: a pretraining checkpoint -> a timm / Hugging Face model folder.

    ldae export runs/cifar/checkpoint.pth --out exports/ldae_vit_micro_patch4_32.cifar10 --tag cifar10 \\
        --metric knn_top1=81.2 --repo-id my-org/ldae_vit_micro_patch4_32.cifar10 [--push]

The encoder is folded at a fixed level t (default: the schedule's evaluation level, t = 10 of 1000)
into a plain timm ``VisionTransformer`` (:mod:`ldae.models.export`) and written with timm's ``save_for_hf``
(``config.json`` + ``model.safetensors``), together with the tokenizer (``tokenizer.safetensors``),
a model card (``README.md``) and ``manifest_entry.json``, the entry that releases the file in
``weights/manifest.json``. Before the folder appears (atomically), it is loaded back through
``timm.create_model('local-dir:<folder>', pretrained=True)`` and its features are compared with the
checkpoint's encoder. ``--push`` uploads the folder to the Hugging Face Hub in one commit.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ldae.engine.checkpoint import load_checkpoint, model_from_checkpoint
from ldae.models.export import timm_arch, export_encoder_state_dict
from ldae.models.ldae import LDAE
from ldae.models.sizes import SIZES
from ldae.release.checksums import CHECKSUM_FILE, read_checksums, write_checksums
from ldae.release.export_config import ExportConfig
from ldae.release.manifest import ARCH_PREFIX, EXPORT_CONFIG_KEY, EXPORT_TOKENIZER_FILE, NoiseConfig, load_manifest
from ldae.tokenizers.base import NORMS
from ldae.tokenizers.pca import DIT_NORM, PatchPCA
from ldae.utils.io import sha256_file

__all__ = ["run_export", "export_checkpoint", "model_card"]

EXPORT_FORMAT = "ldae.export.v1"
EXPORT_DENOISER_FILE = "denoiser.safetensors"
EXPORT_ONNX_FILE = "model.onnx"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Largest |difference| of pooled features, export vs. checkpoint encoder, accepted by the self-check.
_CHECK_TOL = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}


# ---------------------------------------------------------------------------------------------- helpers
def _parse_metrics(items: list[str]) -> dict[str, float]:
    metrics = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            metrics[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"--metric expects NAME=VALUE with a number, got {item!r}")
    return metrics


def _arch_and_overrides(model: LDAE, saved: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The registered architecture of the checkpoint's encoder and the model args that rebuild it.

    A registered size exports as itself; another encoder split of it as the same architecture with
    ``depth``; a ``custom:`` size as ``ldae_vit_custom`` with its whole shape (:func:`ldae.models.export.timm_arch`).
    """
    name = saved.get("model")
    if name in SIZES and model.size.embed_dim == SIZES[name].embed_dim:
        overrides = {"depth": model.enc_depth} if model.enc_depth != SIZES[name].enc_depth else {}
        return ARCH_PREFIX + name, overrides
    return timm_arch(model.size)


def _norm(model: LDAE, saved: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    tok = model.tokenizer
    if tok is not None:  # pixels are normalised as the tokenizer was fitted
        return tok.norm_mean, tok.norm_std
    return NORMS.get(saved.get("norm") or "dit", DIT_NORM)


def _data_name(saved: dict[str, Any]) -> str:
    for key in ("data", "data_shards", "data_path"):  # `ldae pretrain` records --data / --data-shards
        if saved.get(key):
            return str(saved[key])
    return "unknown"


def _noise_config(model: LDAE, saved: dict[str, Any], t: int) -> NoiseConfig:
    return NoiseConfig(
        t=t, d=model.d, whiten=model.noise.whiten, latent_scale=model.noise.latent_scale, noise_space=model.noise.space,
        schedule=str(saved.get("schedule", "linear_sigma")), num_levels=model.schedule.num_levels,
    )


def _shipped_tokenizer_name(tok) -> str | None:
    """Name of a shipped tokenizer holding exactly these tensors (so a release can reuse its file)."""
    if not isinstance(tok, PatchPCA):  # only PCA tokenizers ship in weights/
        return None
    manifest = load_manifest()
    for name, entry in manifest.tokenizers.items():
        if entry.patch_size != tok.patch_size or entry.in_chans != tok.in_chans:
            continue
        path = manifest.path(entry)
        if path.is_file():
            shipped = PatchPCA.load(path)
            if all(torch.equal(getattr(shipped, k), getattr(tok, k)) for k in ("components", "eigenvalues", "mean")):
                return name
    return None


# ---------------------------------------------------------------------------------------------- model card
def model_card(info: dict[str, Any]) -> str:
    """README.md (Hugging Face model card with YAML front matter) of an export; ``info`` as built by :func:`export_checkpoint`."""
    name, arch, noise = info["name"], info["arch"], info["noise"]
    repo = info.get("repo_id") or "<org>/<name>"
    metrics = info["metrics"]
    lines = [
        "---",
        "tags:", "- image-feature-extraction", "- timm", "- ldae", "- self-supervised",
        "library_name: timm",
        f"license: {info['license']}",
        "---",
        f"# {name}",
        "",
        f"An l-DAE (latent denoising autoencoder, [arXiv:2401.14404](https://arxiv.org/abs/2401.14404)) encoder "
        f"exported at the fixed noise level t = {noise['t']} as a plain timm `VisionTransformer` "
        f"(no class token, average pooling, {info['num_features']}-dim features).",
        "",
        "## Model details",
        f"- **Architecture:** `{arch}` ({info['depth']} blocks x {info['num_features']}, patch {info['patch_size']}, {info['img_size']} px)",
        f"- **Parameters:** {info['params']:,}",
        f"- **Pretraining data:** {info['data']}",
        f"- **Pretraining:** {info['epoch']} epochs ({info['step']} steps){', EMA weights' if info['ema'] else ''}"
        + (f"; {info['device']}" if info["device"] else "")
        + (f", {info['minutes']:.0f} min" if info["minutes"] is not None else ""),
        f"- **Noise:** {noise['noise_space']} space, d = {noise['d']}, latent scale {noise.get('latent_scale') or ('whiten' if noise['whiten'] else 'raw')}, "
        f"schedule {noise['schedule']} over {noise['num_levels']} levels; features at t = {noise['t']}",
        f"- **Input:** normalise with mean {list(info['mean'])}, std {list(info['std'])} "
        f"(the tokenizer's), resize + center crop to {info['img_size']} px",
        f"- **Files:** `model.safetensors` ({info['dtype']}), `config.json`, "
        + ("`tokenizer.safetensors` (the patch PCA, for noising / continued pretraining)" if info["tokenizer"] else "no tokenizer (pixel-space noise)"),
        "- **Paper:** Chen, Liu, Xie, He. Deconstructing Denoising Diffusion Models for Self-Supervised Learning. arXiv:2401.14404",
        "",
        "## Recipe",
        "```",
        info["recipe"] or "(pretraining command not recorded; the checkpoint's arguments follow)",
        "```",
        "<details><summary>checkpoint arguments</summary>",
        "",
        "```json",
        json.dumps(info["pretrain_args"], indent=1, sort_keys=True, default=str),
        "```",
        "</details>",
        "",
        "## Metrics",
    ]
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:g} |" for k, v in metrics.items()]
    else:
        lines.append("None recorded with this export.")
    lines += [
        "",
        "## Usage",
        "```python",
        "import ldae  # registers the ldae_vit_* architectures: import it before creating the model",
        "import timm",
        f"model = timm.create_model('hf-hub:{repo}', pretrained=True).eval()",
        "cfg = timm.data.resolve_model_data_config(model)",
        "transform = timm.data.create_transform(**cfg)",
        "features = model(transform(img).unsqueeze(0))             # (1, D) pooled",
        "tokens = model.forward_features(transform(img).unsqueeze(0))  # (1, N, D)",
        f"tokenizer = ldae.get_tokenizer('hf-hub:{repo}')",
        f"add_noise = ldae.get_noise_transform('hf-hub:{repo}', t=500)",
        "```",
        "",
        "## Caveats",
        "- `import ldae` must run before `timm.create_model`: timm does not discover out-of-tree architectures.",
        f"- The features are the encoder's at t = {noise['t']}; other levels need the full pretraining checkpoint.",
        "- Numbers measured on small data (e.g. CIFAR-10 JPEG copy) are not comparable with the paper's ImageNet results.",
    ] + [f"- {c}" for c in info["caveats"]] + [
        "",
        "## Citation",
        "```bibtex",
        "@article{chen2024deconstructing,",
        "  title={Deconstructing Denoising Diffusion Models for Self-Supervised Learning},",
        "  author={Chen, Xinlei and Liu, Zhuang and Xie, Saining and He, Kaiming},",
        "  journal={arXiv preprint arXiv:2401.14404},",
        "  year={2024}",
        "}",
        "```",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- export
def check_replaceable_export(out: Path, checkpoint: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` whose replacement would delete what ``ldae export`` did not write.

    ``--out`` may not be the checkpoint's folder or hold the checkpoint (a run folder: its checkpoints
    and logs would go). An existing ``--out`` is replaced only with ``overwrite`` and only when it is an
    export folder: every file in it is listed in its ``SHA256SUMS`` (besides that list itself).
    """
    out_abs, ckpt_abs = out.resolve(), checkpoint.resolve()
    if out_abs == ckpt_abs.parent or out_abs in ckpt_abs.parents:
        raise ValueError(f"--out {out} holds the checkpoint {checkpoint}: replacing it would delete the run; "
                         f"export into a new folder, e.g. --out {out / 'export'}")
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"--out {out} exists; pass --overwrite to replace it (an earlier export only)")
    if not out.is_dir() or out.is_symlink():
        raise FileExistsError(f"--out {out} is not a folder; --overwrite replaces only an earlier export folder")
    sums = out / CHECKSUM_FILE
    if not sums.is_file():
        raise FileExistsError(f"--out {out} has no {CHECKSUM_FILE}, so it is not an export this command wrote; "
                              f"--overwrite will not delete it (remove it yourself or choose another --out)")
    listed = set(read_checksums(sums)) | {CHECKSUM_FILE}
    present = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() or p.is_symlink()}
    others = sorted(present - listed)
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise FileExistsError(f"--out {out} holds files an export did not write ({shown}); --overwrite replaces only "
                              f"an export folder, so nothing was deleted")


@torch.no_grad()
def export_checkpoint(cfg: ExportConfig) -> dict[str, Any]:
    """Write the export folder ``cfg.out`` (atomically) and return what it describes."""
    import timm
    from timm.models import save_for_hf

    out = Path(cfg.out)
    check_replaceable_export(out, Path(cfg.checkpoint), cfg.overwrite)
    if cfg.push and not cfg.repo_id:
        raise ValueError("--push needs --repo-id <org>/<name>")
    if not cfg.tag or "." in cfg.tag or "/" in cfg.tag:
        raise ValueError(f"--tag must be a non-empty name without '.' or '/', got {cfg.tag!r}")
    metrics = _parse_metrics(cfg.metric)
    ckpt = load_checkpoint(cfg.checkpoint)
    model = model_from_checkpoint(ckpt, use_ema=cfg.ema, source=str(cfg.checkpoint))
    pre_args = dict(ckpt["args"])
    t = model.schedule.eval_t if cfg.t is None else int(cfg.t)
    model.schedule.check_t(torch.tensor([t]))
    arch, overrides = _arch_and_overrides(model, pre_args)
    mean, std = _norm(model, pre_args)
    noise = _noise_config(model, pre_args, t)

    vit = timm.create_model(arch, pretrained=False, **overrides)
    vit.load_state_dict(export_encoder_state_dict(model, t), strict=True)
    vit.pretrained_cfg = {
        **vit.pretrained_cfg, "tag": cfg.tag, "mean": tuple(mean), "std": tuple(std), "license": cfg.license,
        "description": f"l-DAE encoder at t={t}, pretrained on {cfg.data or _data_name(pre_args)}",
    }
    vit.eval().to(DTYPES[cfg.dtype])
    tok = model.tokenizer
    info: dict[str, Any] = {
        "name": f"{arch}.{cfg.tag}", "arch": arch, "tag": cfg.tag, "repo_id": cfg.repo_id,
        "params": sum(p.numel() for p in vit.parameters()), "num_features": vit.num_features,
        "depth": model.enc_depth, "patch_size": model.size.patch_size, "img_size": model.size.img_size,
        "data": cfg.data or _data_name(pre_args), "recipe": cfg.recipe or "", "device": cfg.device_info,
        "minutes": cfg.minutes, "metrics": metrics, "license": cfg.license, "caveats": list(cfg.caveat),
        "epoch": ckpt.get("epoch"), "step": ckpt.get("step"), "ema": cfg.ema and ckpt.get("ema") is not None,
        "noise": noise.to_dict(), "mean": mean, "std": std, "dtype": cfg.dtype, "tokenizer": tok is not None,
        "pretrain_args": pre_args,
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tok_meta = None
        if tok is not None:
            tok.save(tmp / EXPORT_TOKENIZER_FILE, extra_metadata={"source": f"checkpoint {Path(cfg.checkpoint).name}"})
            tok_meta = {"file": EXPORT_TOKENIZER_FILE, "sha256": sha256_file(tmp / EXPORT_TOKENIZER_FILE),
                        "bytes": (tmp / EXPORT_TOKENIZER_FILE).stat().st_size}
        section = {
            "format": EXPORT_FORMAT, "size": pre_args["model"], "enc_depth": model.enc_depth, "noise": noise.to_dict(),
            "tokenizer": tok_meta, "checkpoint": {"file": Path(cfg.checkpoint).name, "epoch": info["epoch"],
                                                  "step": info["step"], "ema": info["ema"]},
        }
        save_for_hf(vit, tmp, model_config={EXPORT_CONFIG_KEY: section}, model_args=overrides or None, safe_serialization=True)
        _portable_config(tmp / "config.json")
        if cfg.denoiser:  # the full model, not just the encoder: what `ldae demo` / `figures denoise` need
            from ldae.release.denoiser import save_denoiser

            save_denoiser(model, pre_args, tmp / EXPORT_DENOISER_FILE, dtype=DTYPES[cfg.denoiser])
        (tmp / "README.md").write_text(model_card(info))
        if cfg.onnx:
            from ldae.release.onnx import export_onnx

            export_onnx(timm.create_model(f"local-dir:{tmp}", pretrained=True).float(), tmp / EXPORT_ONNX_FILE)
        write_checksums(tmp)  # the self-check below loads the folder as a user would, checksums verified
        info["check_max_abs_diff"] = _self_check(model, tmp, t, cfg.dtype)
        info["manifest_entry"] = None
        if not overrides:  # weights/ releases the registered sizes (a manifest cfg cannot carry model cfg)
            info["manifest_entry"] = _manifest_entry(info, tmp, tok)
            (tmp / "manifest_entry.json").write_text(json.dumps(info["manifest_entry"], indent=2) + "\n")
        write_checksums(tmp)  # again: manifest_entry.json is new
        _normal_permissions(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    if cfg.push:
        _push(out, cfg.repo_id, cfg.private, info["name"])
    return info


def _normal_permissions(folder: Path) -> None:
    """What ``mkdir`` / ``open`` would give under the current umask (mkdtemp and some writers use 0700 / 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)


def _portable_config(path: Path) -> None:
    """Keep ``num_classes`` only at the top level of config.json.

    timm >= 1.0.31 also writes it into ``model_args``; Hugging Face transformers' ``TimmWrapperModel``
    passes ``num_classes=0`` itself and then fails with "got multiple values for keyword argument
    'num_classes'". Every timm that loads ``local-dir:`` / ``hf-hub:`` reads the top-level value, so
    dropping the copy keeps timm loading unchanged and lets transformers load the folder.
    """
    config = json.loads(path.read_text())
    model_args = config.get("model_args")
    if isinstance(model_args, dict) and "num_classes" in model_args:
        if model_args.pop("num_classes") != config.get("num_classes"):
            raise RuntimeError(f"{path}: model_args num_classes differs from the top-level num_classes")
        if not model_args:
            config.pop("model_args")
        path.write_text(json.dumps(config, indent=2) + "\n")


def _self_check(model: LDAE, folder: Path, t: int, dtype: str) -> float:
    """Load the folder back through timm's local-dir path and compare features with the checkpoint's encoder."""
    import timm

    size = model.size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, size.in_chans, size.img_size, size.img_size, generator=gen).clamp(-1, 1)  # (2, C, H, W)
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    diff = float((loaded(x) - model.forward_features(x, t)).abs().max())
    if not math.isfinite(diff) or diff > _CHECK_TOL[dtype]:
        raise RuntimeError(f"export self-check failed: features differ from the checkpoint's encoder by {diff:.3g} "
                           f"(> {_CHECK_TOL[dtype]} for {dtype}); nothing was written")
    return diff


def _manifest_entry(info: dict[str, Any], folder: Path, tok: PatchPCA | None) -> dict[str, Any]:
    """The ``weights/manifest.json`` fragment that releases this export (file renamed to ``<name>.safetensors``)."""
    weights_file = folder / "model.safetensors"
    entry: dict[str, Any] = {
        "file": f"{info['name']}.safetensors", "sha256": sha256_file(weights_file), "bytes": weights_file.stat().st_size,
        "params": info["params"], "tokenizer": None, "noise": info["noise"], "data": info["data"],
        "recipe": info["recipe"], "device": info["device"], "minutes": info["minutes"], "metrics": info["metrics"],
        "license": info["license"], "description": f"l-DAE encoder at t={info['noise']['t']}, pretrained on {info['data']}",
    }
    denoiser = folder / EXPORT_DENOISER_FILE
    if denoiser.is_file():
        entry["denoiser"] = {"file": f"{info['name']}.denoiser.safetensors", "sha256": sha256_file(denoiser),
                             "bytes": denoiser.stat().st_size}
    fragment: dict[str, Any] = {"weights": {info["name"]: entry}, "tokenizers": {}}
    if tok is not None:
        shipped = _shipped_tokenizer_name(tok)
        if shipped is None:  # a tokenizer of its own: release it too
            shipped = f"pca_p{tok.patch_size}_{info['tag']}"
            tfile = folder / EXPORT_TOKENIZER_FILE
            fragment["tokenizers"][shipped] = {
                "file": f"{shipped}.safetensors", "sha256": sha256_file(tfile), "bytes": tfile.stat().st_size,
                "patch_size": tok.patch_size, "in_chans": tok.in_chans, "norm_mean": list(tok.norm_mean),
                "norm_std": list(tok.norm_std), "models": [], "data": info["data"], "images": tok.num_images,
                "patches": tok.num_patches, "img_size": info["img_size"], "command": info["recipe"], "license": info["license"],
            }
        entry["tokenizer"] = shipped
    return fragment


def _push(folder: Path, repo_id: str, private: bool, name: str) -> None:
    # One upload_folder commit carries the model card and the tokenizer too, which
    # timm.models.push_to_hf_hub (weights + config + a generated card) would leave out.
    from huggingface_hub import HfApi

    api = HfApi(library_name="timm")
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=f"Add {name} (ldae export)")
    print(f"pushed {folder} to https://huggingface.co/{repo_id}")


def run_export(cfg: ExportConfig) -> int:
    info = export_checkpoint(cfg)
    out = Path(cfg.out)
    print(f"exported {info['name']} ({info['params']:,} parameters, t = {info['noise']['t']}) to {out}"
          + (f" (+ {EXPORT_ONNX_FILE})" if cfg.onnx else ""))
    print(f"self-check: max |features - checkpoint encoder| = {info['check_max_abs_diff']:.3g}")
    print(f"load it with: import ldae, timm; timm.create_model('local-dir:{out}', pretrained=True)")
    if info["manifest_entry"] is None:
        print("not a registered size (custom size or encoder depth): load it through local-dir: or hf-hub:; weights/ releases registered sizes only")
        return 0
    copies = [f"{out / 'model.safetensors'} -> weights/{info['name']}.safetensors"]
    copies += [f"{out / 'tokenizer.safetensors'} -> weights/{e['file']}" for e in info["manifest_entry"]["tokenizers"].values()]
    print("release it in weights/: copy " + ", ".join(copies) + f", and merge {out / 'manifest_entry.json'} into weights/manifest.json")
    return 0
