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

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch.nn as nn
from timm.data import resolve_model_data_config

from ldae.data.transforms import check_interpolation
from ldae.diffusion.noise import LatentNoise
from ldae.tokenizers.pca import DIT_NORM
from ldae.utils.config import to_jsonable

__all__ = ["Backbone", "backbone_from_config", "create_backbone", "rebuild_architecture", "data_overrides", "resolve_data_config", "zoo_noise"]


_CKPT_SUFFIXES = (".pth", ".pt", ".ckpt")


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
    backbone.identity["data_config"] = to_jsonable(backbone.data_config)
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


def zoo_noise(name: str) -> LatentNoise | None:
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
    from ldae.models.export import export_to_timm
    from ldae.models.sizes import vit_kwargs

    ckpt = load_checkpoint(path)  # FileNotFoundError / ValueError naming the file
    ldae_model = model_from_checkpoint(ckpt, use_ema=use_ema, source=path)
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
              "pretrained_cfg": to_jsonable(vit.pretrained_cfg)},
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


def data_overrides(cfg: Any) -> dict[str, Any]:
    """The timm data-config keys a :class:`~ldae.eval.configs.BackboneConfig` sets (the unset ones left out,
    so the model's ``pretrained_cfg`` decides them)."""
    values = {
        "input_size": (3, cfg.input_size, cfg.input_size) if cfg.input_size else None,
        "crop_pct": cfg.crop_pct, "interpolation": cfg.interpolation and check_interpolation(cfg.interpolation),
        "mean": tuple(cfg.mean) if cfg.mean else None, "std": tuple(cfg.std) if cfg.std else None,
    }
    return {k: v for k, v in values.items() if v is not None}


def backbone_from_config(cfg: Any, **kwargs: Any) -> Backbone:
    """The :class:`Backbone` a :class:`~ldae.eval.configs.BackboneConfig` describes (``kwargs``: timm's
    ``create_model`` arguments, e.g. ``num_classes``)."""
    return create_backbone(cfg.model, pretrained=cfg.pretrained, t=cfg.t, use_ema=cfg.ema,
                           data_overrides=data_overrides(cfg), **kwargs)
