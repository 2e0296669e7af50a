"""Frozen features of any backbone at a fixed noise level, with a safetensors cache.

A backbone is named by one string (``--model``):

* a timm model name (``vit_base_patch16_224``, ``ldae_vit_base``, ``hf-hub:org/name``,
  ``local-dir:/path``); ``pretrained=False`` gives the random-init control;
* a folder written by ``timm.models.save_for_hf`` / ``ldae export`` (read as ``local-dir:``);
* an l-DAE pretraining checkpoint (``.pth``): its encoder is folded at level ``t`` into a plain timm
  ``VisionTransformer`` (:func:`ldae.models.export.export_to_timm`, exact), EMA weights by default.

Features are the model's pooled output (``num_classes=0``; global average pooling for l-DAE), computed
in eval mode without autograd. For an exported l-DAE encoder (zoo name or export folder) the level t
is baked into the weights and recorded with them; for a checkpoint it is ``--t`` (default: the
schedule's evaluation level, t = 10 of 1000, App. A). The input view (:data:`INPUT_VIEWS`) says what
the encoder is shown: the clean image (default); the image projected onto the top-d latent span of
the model's tokenizer, as every training input was (sigma -> 0); or the image corrupted at the same t
by the latent noise of the model's pretraining (:class:`~ldae.diffusion.noise.LatentNoise`: the checkpoint's
own, or the tokenizer and schedule a zoo name / export records; App. A's "w/ noisy input" row).

Preprocessing comes from the model's ``pretrained_cfg`` through ``timm.data.resolve_model_data_config``
(l-DAE checkpoints: the tokenizer's normalisation, full-image center crop).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors import safe_open
from timm.data import resolve_model_data_config
from torch.utils.data import DataLoader, Dataset, Subset

from ldae.engine.dist import get_rank, get_world_size
from ldae.utils.io import save_safetensors
from ldae.diffusion.noise import LatentNoise
from ldae.utils.progress import progress
from ldae.tokenizers.pca import DIT_NORM

__all__ = [
    "Backbone", "FeatureSet", "FeatureExtractor", "create_backbone", "rebuild_architecture",
    "backbone_from_config", "extract_features", "cached_features",
    "save_features", "load_features", "dataset_identity", "resolve_data_config", "to_jsonable", "FEATURES_FORMAT",
    "INPUT_VIEWS",
]

FEATURES_FORMAT = "ldae.features.v1"
# What a frozen encoder is shown (see the module docstring).
INPUT_VIEWS = ("clean", "projected", "noisy")
_CKPT_SUFFIXES = (".pth", ".pt", ".ckpt")


# ----------------------------------------------------------------------------------------------
# Backbones
# ----------------------------------------------------------------------------------------------

@dataclass
class Backbone:
    """A timm model and everything needed to feed it and to name it.

    model: timm model (pooled output when built with ``num_classes=0``); data_config: timm data config
    (input_size, mean, std, crop_pct, crop_mode, interpolation); spec: what the user passed; source:
    ``'timm'``, ``'local-dir'`` or ``'ldae-checkpoint'``; t: the fixed level (l-DAE checkpoints) or None;
    noise: the checkpoint's latent-noise transform (for noisy input) or None; arch: a JSON record that
    rebuilds the architecture without the weights (:func:`rebuild_architecture`); identity: what makes
    its features what they are (for cache keys).
    """

    model: nn.Module
    data_config: dict[str, Any]
    spec: str
    source: str
    t: int | None = None
    noise: LatentNoise | None = None
    arch: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def num_features(self) -> int:
        return int(getattr(self.model, "num_features"))


def _file_identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _is_checkpoint_file(spec: str) -> bool:
    return os.path.isfile(spec) or spec.lower().endswith(_CKPT_SUFFIXES)


def create_backbone(
    spec: str,
    *,
    pretrained: bool = True,
    t: int | None = None,
    use_ema: bool = True,
    num_classes: int | None = 0,
    data_overrides: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> Backbone:
    """Build the backbone that ``spec`` names (see module docstring), in eval mode on the CPU.

    Args:
        spec: timm name, ``save_for_hf`` folder, or l-DAE pretraining checkpoint file.
        pretrained: load the timm name's weights (False: random init, the control).
        t: level for an l-DAE checkpoint (default: its schedule's ``eval_t``); refused for other models,
            whose level (if any) is fixed by their weights.
        use_ema: take a checkpoint's EMA weights when it has them.
        num_classes: classifier size (0: pooled features, for probing; None: the model's own classifier).
        data_overrides: timm data-config keys (``input_size``, ``mean``, ``std``, ``crop_pct``,
            ``interpolation``) that replace the model's ``pretrained_cfg`` values.
        model_kwargs: extra ``timm.create_model`` / ``VisionTransformer`` arguments (``drop_path_rate``, ...).
    """
    import ldae  # noqa: F401  (importing the package registers the ldae_* architectures with timm)

    data_overrides = {k: v for k, v in (data_overrides or {}).items() if v is not None}
    if not pretrained and (_is_checkpoint_file(spec) or os.path.isdir(spec)):
        # A file or folder *is* trained weights: ignoring --no-pretrained would give a wrong control.
        raise ValueError(f"--no-pretrained asks for a random initialisation, but {spec!r} is trained weights; for the "
                         "random-init control pass the architecture's timm name (e.g. ldae_vit_micro_patch4_32 --no-pretrained)")
    if _is_checkpoint_file(spec):
        backbone = _from_ldae_checkpoint(spec, t, use_ema, num_classes, model_kwargs)
    else:
        if t is not None:
            raise ValueError(
                f"--t applies to l-DAE pretraining checkpoints only; the level of {spec!r} is fixed by its weights "
                "(pass a checkpoint .pth to choose t)")
        name, source = spec, "timm"
        if os.path.isdir(spec):
            if not (Path(spec) / "config.json").is_file():
                raise FileNotFoundError(
                    f"{spec} is a folder without config.json: expected a timm save_for_hf / `ldae export` folder")
            name, source = f"local-dir:{Path(spec).resolve()}", "local-dir"
        elif spec.startswith("local-dir:"):
            source = "local-dir"
        model = _create_timm(name, pretrained, num_classes, model_kwargs)
        arch = {"kind": "timm", "name": name,
                "kwargs": {"num_classes": getattr(model, "num_classes", num_classes), **model_kwargs}}
        identity: dict[str, Any] = {"model": name, "pretrained": pretrained}
        if source == "local-dir":
            folder = Path(name.removeprefix("local-dir:"))
            identity["files"] = [_file_identity(p) for p in sorted(folder.iterdir()) if p.is_file()]
        else:
            identity["tag"] = getattr(model, "pretrained_cfg", {}).get("tag")
        noise_cfg = _ldae_noise_config(name)  # an l-DAE zoo name or export: the level it was exported at
        if noise_cfg is not None:
            identity["t"] = noise_cfg.t
        backbone = Backbone(model.eval(), {}, spec, source, t=noise_cfg.t if noise_cfg else None, arch=arch,
                            identity=identity)
    backbone.data_config = resolve_data_config(backbone.model, data_overrides)
    backbone.identity["data_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in backbone.data_config.items()}
    return backbone


def _ldae_noise_config(name: str) -> Any:
    """The :class:`ldae.release.manifest.NoiseConfig` of an l-DAE zoo name or ``ldae export`` folder, else None."""
    from ldae.release.manifest import ARCH_PREFIX, get_noise_config

    if not name.startswith((ARCH_PREFIX, "local-dir:", "hf-hub:")):
        return None
    try:
        return get_noise_config(name)
    except (ValueError, KeyError, FileNotFoundError):  # another model's export, or an unreachable hub
        return None


def _zoo_noise(name: str) -> LatentNoise | None:
    """The latent noise an l-DAE zoo model or export was pretrained with (None for other models)."""
    from ldae.release.manifest import get_noise_transform

    if _ldae_noise_config(name) is None:
        return None
    try:
        return get_noise_transform(name, batched=True)
    except (ValueError, FileNotFoundError):  # e.g. a size without a shipped tokenizer
        return None


def _create_timm(name: str, pretrained: bool, num_classes: int | None, kwargs: dict[str, Any]) -> nn.Module:
    if num_classes is not None:
        kwargs = {"num_classes": num_classes, **kwargs}
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ValueError(
                f"unknown model {name!r}: expected a timm model name (timm.list_models()), an ldae_* name, a "
                "save_for_hf folder or an l-DAE checkpoint file") from e
        raise
    except FileNotFoundError as e:  # huggingface_hub's LocalEntryNotFoundError when offline
        raise FileNotFoundError(
            f"weights of {name!r} are not available offline ({e}); pass --no-pretrained for a random-init "
            "control, or a local folder / checkpoint") from e


def _from_ldae_checkpoint(path: str, t: int | None, use_ema: bool, num_classes: int | None, kwargs: dict[str, Any]) -> Backbone:
    from ldae.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from ldae.models.export import export_to_timm, vit_kwargs

    ckpt = load_checkpoint(path)  # FileNotFoundError / ValueError naming the file
    ldae_model = model_from_checkpoint(ckpt, use_ema=use_ema)
    t = ldae_model.schedule.eval_t if t is None else int(t)
    # The export is exact with the encoder's own head-less layout; a classifier is added afterwards.
    vit = export_to_timm(ldae_model, t, **kwargs)
    num_classes = num_classes or 0  # the pretraining model has no classifier of its own
    if num_classes:
        vit.reset_classifier(num_classes)
    tok = ldae_model.tokenizer
    mean, std = (tok.norm_mean, tok.norm_std) if tok is not None else DIT_NORM
    size = ldae_model.size
    # The pretraining input: the whole image, shorter side resized, center-cropped (crop_pct 1).
    vit.pretrained_cfg = {
        **(getattr(vit, "pretrained_cfg", None) or {}),
        "input_size": (size.in_chans, size.img_size, size.img_size), "mean": tuple(mean), "std": tuple(std),
        "crop_pct": 1.0, "crop_mode": "center", "interpolation": "bicubic", "num_classes": num_classes,
    }
    has_ema = ckpt.get("ema") is not None
    return Backbone(
        vit.eval(), {}, path, "ldae-checkpoint", t=t, noise=ldae_model.noise,
        arch={"kind": "vit", "kwargs": {**vit_kwargs(size), **kwargs, "num_classes": num_classes},
              "pretrained_cfg": {k: list(v) if isinstance(v, tuple) else v for k, v in vit.pretrained_cfg.items()}},
        identity={"checkpoint": _file_identity(Path(path)), "t": t, "ema": bool(use_ema and has_ema)},
    )


def rebuild_architecture(arch: dict[str, Any]) -> nn.Module:
    """The architecture an :attr:`Backbone.arch` record describes, randomly initialised (for loading a
    fine-tuned state dict without the original pretrained weights)."""
    import ldae  # noqa: F401
    from timm.models.vision_transformer import VisionTransformer

    if arch.get("kind") == "vit":
        model = VisionTransformer(**arch["kwargs"])
        model.pretrained_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in arch.get("pretrained_cfg", {}).items()}
        return model
    if arch.get("kind") == "timm":
        return timm.create_model(arch["name"], pretrained=False, **arch["kwargs"])
    raise ValueError(f"unknown architecture record {arch!r}: expected kind 'vit' or 'timm'")


def resolve_data_config(model: nn.Module, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """timm's data config of ``model`` with ``overrides``; a fixed-size ViT built at another size than its
    ``pretrained_cfg`` says (``img_size=32`` on a 224 cfg) gets its own size, the only one it accepts."""
    overrides = dict(overrides or {})
    cfg = resolve_model_data_config(model, args=overrides)
    pe = getattr(model, "patch_embed", None)
    img_size = getattr(pe, "img_size", None)
    fixed = pe is not None and getattr(pe, "strict_img_size", True) and not getattr(pe, "dynamic_img_size", False)
    if "input_size" not in overrides and "img_size" not in overrides and fixed and img_size is not None:
        if tuple(cfg["input_size"][1:]) != tuple(img_size):
            cfg["input_size"] = (cfg["input_size"][0], *img_size)
    return cfg


# ----------------------------------------------------------------------------------------------
# The frozen extractor
# ----------------------------------------------------------------------------------------------

class FeatureExtractor(nn.Module):
    """A frozen backbone as a function: normalised images (B, C, H, W) -> pooled features (B, D).

    The backbone never trains: its parameters do not require grad, :meth:`train` leaves it in eval
    mode (dropout, drop path and BatchNorm keep their inference behaviour), and forward runs without
    autograd. With ``noise`` the images are first corrupted at level ``t`` in the latent space.
    """

    def __init__(self, model: nn.Module, noise: LatentNoise | None = None, t: int | None = None, view: str | None = None) -> None:
        super().__init__()
        view = view or ("noisy" if noise is not None else "clean")
        if view not in INPUT_VIEWS:
            raise ValueError(f"input view must be one of {INPUT_VIEWS}, got {view!r}")
        if view != "clean" and noise is None:
            raise ValueError(f"the {view!r} input view needs the model's latent noise")
        if view == "noisy" and t is None:
            raise ValueError("noisy input needs the level t the backbone was exported at")
        if view == "projected" and (noise.space != "latent" or noise.tokenizer is None):  # type: ignore[union-attr]
            raise ValueError("the 'projected' input view needs a model pretrained with latent noise (a tokenizer to "
                             "project onto); this one used pixel-space noise")
        self.model = model.eval().requires_grad_(False)
        self.noise = noise if view != "clean" else None
        self.t = t
        self.view = view

    @classmethod
    def from_backbone(cls, backbone: Backbone, noisy_input: bool = False, view: str | None = None) -> "FeatureExtractor":
        """The extractor of ``backbone`` for an input ``view`` (``noisy_input=True`` is ``view='noisy'``). The
        projected and noisy views use the latent noise its pretraining used (an l-DAE checkpoint's own, or the
        tokenizer and schedule an l-DAE zoo name / export records)."""
        view = view or ("noisy" if noisy_input else "clean")
        if view not in INPUT_VIEWS:
            raise ValueError(f"input view must be one of {INPUT_VIEWS}, got {view!r}")
        noise = backbone.noise
        if view != "clean" and noise is None and backbone.arch.get("kind") == "timm":
            noise = backbone.noise = _zoo_noise(backbone.arch["name"])
        if view != "clean" and (noise is None or backbone.t is None):
            raise ValueError(
                f"{view} input needs an l-DAE model (a pretraining checkpoint, an ldae_vit_* name or an `ldae export` "
                f"folder: its tokenizer and schedule define the noise); {backbone.spec!r} is not one")
        return cls(backbone.model, noise, backbone.t, view)

    def train(self, mode: bool = True) -> "FeatureExtractor":
        self.training = mode  # the backbone stays in eval mode whatever the caller's mode
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, C, H, W) -> features (B, D) (float32)."""
        if self.view == "noisy":
            x = self.noise(x, self.t, generator=generator).x_t  # (B, C, H, W), same t as the weights
        elif self.view == "projected":  # the top-d span: what every training input lies in at sigma -> 0
            x = self.noise.decode_latent(self.noise.encode_latent(x), x.shape[-2:]).to(x.dtype)  # (B, C, H, W)
        f = self.model(x)  # (B, D)
        if f.ndim != 2:
            raise ValueError(
                f"expected pooled features (B, D) from the backbone, got shape {tuple(f.shape)}: build it with "
                "num_classes=0 and a global pool")
        return f.float()


# ----------------------------------------------------------------------------------------------
# Extraction and the cache
# ----------------------------------------------------------------------------------------------

@dataclass
class FeatureSet:
    """features: (N, D) float32; labels: (N,) int64; classes: class names (label i = classes[i])."""

    features: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def _rank_world() -> tuple[int, int]:
    return get_rank(), get_world_size()


def _gather_strided(local: torch.Tensor, n: int, world: int) -> torch.Tensor:
    """Rows computed by rank r for indices r, r + world, ... -> all n rows in index order, on every rank."""
    per = -(-n // world)  # ranks hold per or per - 1 rows: pad to equal size for all_gather
    pad = torch.zeros((per - len(local), *local.shape[1:]), dtype=local.dtype, device=local.device)
    parts = [torch.empty((per, *local.shape[1:]), dtype=local.dtype, device=local.device) for _ in range(world)]
    dist.all_gather(parts, torch.cat([local, pad]))
    return torch.stack(parts, 1).flatten(0, 1)[:n]  # row i*world + r = parts[r][i]


def _batch_seed(*parts: int) -> int:
    """A 63-bit seed mixing (seed, rank, batch): distinct streams without collisions between the parts."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor,
    dataset: Dataset,
    *,
    batch_size: int = 256,
    num_workers: int = 4,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    seed: int = 0,
    quiet: bool = False,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) float32 and labels (N,) int64 of a dataset of (image tensor, label), on the CPU.

    Under torchrun each rank computes the indices ``rank::world_size`` and all ranks receive the whole
    result. Noisy input draws its noise from CPU generators seeded by (seed, rank, batch), so a run
    repeats exactly on any device.
    """
    device = torch.device(device)
    rank, world = _rank_world()
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("cannot extract features of an empty dataset")
    local = Subset(dataset, range(rank, n, world)) if world > 1 else dataset
    loader = DataLoader(local, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda", drop_last=False)
    extractor = extractor.to(device).eval()
    feats, labels = [], []
    for i, (x, y) in enumerate(progress(loader, desc=desc, quiet=quiet, unit="batch")):
        g = torch.Generator().manual_seed(_batch_seed(seed, rank, i)) if extractor.view == "noisy" else None
        x = x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            f = extractor(x, generator=g)  # (B, D)
        feats.append(f.float())
        labels.append(torch.as_tensor(y).to(device))
    f_local, y_local = torch.cat(feats), torch.cat(labels).long()
    if world > 1:
        f_local, y_local = _gather_strided(f_local, n, world), _gather_strided(y_local, n, world)
    return f_local.cpu(), y_local.cpu()


def _content_hash(features: torch.Tensor, labels: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in (features.float().contiguous(), labels.long().contiguous()):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def save_features(path: str | os.PathLike, fs: FeatureSet, metadata: dict[str, Any]) -> None:
    """Write a :class:`FeatureSet` as safetensors (atomic), ``metadata`` kept as JSON, with the sha256 of
    its tensors so a damaged file is never reused."""
    meta = {"format": FEATURES_FORMAT, "classes": json.dumps(fs.classes), "identity": json.dumps(metadata, sort_keys=True),
            "sha256": _content_hash(fs.features, fs.labels)}
    save_safetensors({"features": fs.features.float(), "labels": fs.labels.long()}, path, meta)


def load_features(path: str | os.PathLike) -> tuple[FeatureSet, dict[str, Any]]:
    """Read a file written by :func:`save_features` -> (features, the identity it was computed with)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"feature file not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FEATURES_FORMAT:
            raise ValueError(f"{path}: not a feature file (expected format {FEATURES_FORMAT!r}, got {meta.get('format')!r})")
        fs = FeatureSet(f.get_tensor("features"), f.get_tensor("labels"), json.loads(meta["classes"]))
    if fs.features.ndim != 2 or fs.labels.shape != (fs.features.shape[0],):
        raise ValueError(f"{path}: expected features (N, D) and labels (N,), got {tuple(fs.features.shape)} and {tuple(fs.labels.shape)}")
    if meta.get("sha256") != _content_hash(fs.features, fs.labels):
        raise ValueError(f"{path}: the features do not match the sha256 they were saved with (damaged file)")
    if not bool(torch.isfinite(fs.features).all()):
        raise ValueError(f"{path}: the features hold NaN or infinite values")
    return fs, json.loads(meta["identity"])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(text.removeprefix("local-dir:").rstrip("/")).name or text)[:60]


def cached_features(
    extractor: FeatureExtractor,
    dataset: Dataset,
    identity: dict[str, Any],
    cache_dir: str | os.PathLike | None,
    *,
    name: str = "features",
    recompute: bool = False,
    **extract_kwargs: Any,
) -> tuple[FeatureSet, Path | None]:
    """Features of ``dataset``, read from ``cache_dir`` when an identical computation was cached.

    ``identity`` (JSON-able: backbone, level, noise, data, split, preprocessing) names the computation;
    its sha256 is the file name, and the identity stored in the file is compared in full on reading.
    ``cache_dir=None`` disables the cache. Returns the features and the cache file (or None).
    """
    classes = list(getattr(dataset, "classes", []))
    identity = {**identity, "num_images": len(dataset), "classes": classes}  # type: ignore[arg-type]
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{_slug(name)}-{key}.safetensors" if cache_dir is not None else None
    rank, _ = _rank_world()
    if path is not None and path.is_file() and not recompute:
        try:
            fs, stored = load_features(path)
        except ValueError as e:  # damaged or foreign: computed again and overwritten
            warnings.warn(f"not reusing the feature cache: {e}; computing the features again", stacklevel=2)
        else:
            if json.loads(json.dumps(identity, sort_keys=True, default=str)) == stored:
                return fs, path
    feats, labels = extract_features(extractor, dataset, **extract_kwargs)
    fs = FeatureSet(feats, labels, classes)
    if path is not None and rank == 0:
        save_features(path, fs, json.loads(json.dumps(identity, sort_keys=True, default=str)))
    return fs, path


def backbone_from_config(cfg: Any, **kwargs: Any) -> Backbone:
    """The :class:`Backbone` a :class:`~ldae.eval.configs.BackboneConfig` describes."""
    overrides = {
        "input_size": (3, cfg.input_size, cfg.input_size) if cfg.input_size else None,
        "crop_pct": cfg.crop_pct, "interpolation": cfg.interpolation,
        "mean": tuple(cfg.mean) if cfg.mean else None, "std": tuple(cfg.std) if cfg.std else None,
    }
    return create_backbone(cfg.model, pretrained=cfg.pretrained, t=cfg.t, use_ema=cfg.ema,
                           data_overrides=overrides, **kwargs)


def dataset_identity(path: str | os.PathLike, split: str | None) -> dict[str, Any]:
    """What identifies a dataset's contents for a cache key: its path, size/mtime and split."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    return {"data": str(p), "data_bytes": st.st_size if p.is_file() else None, "data_mtime_ns": st.st_mtime_ns,
            "split": split}


def to_jsonable(x: Any) -> Any:
    """Tuples to lists, recursively (for identity records)."""
    if isinstance(x, dict):
        return {k: to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    return x
