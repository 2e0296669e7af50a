"""The l-DAE backbones as timm models: ``ldae_vit_<size>`` for every size in :data:`ldae.models.sizes.SIZES`.

    import ldae, timm                      # importing ldae registers the models (timm has no plugin discovery)
    m = timm.create_model("ldae_vit_base")                    # random init, pooled features (num_classes=0)
    m = timm.create_model("ldae_vit_small_patch4_32.<tag>", pretrained=True)   # a released tag (weights/)

Each backbone is the encoder of an l-DAE at a fixed noise level, which is exactly a plain timm
``VisionTransformer`` (:mod:`ldae.models.export`): no class token, average pooling, no final norm,
tanh-GELU. Building goes through timm's ``build_model_with_cfg``, so ``features_only``,
``num_classes``, ``in_chans``, ``img_size`` / pos-embed resampling and every other timm option work.

Pretrained cfgs come from the weights manifest (:mod:`ldae.release.manifest`): a released tag is one manifest
entry plus its file. Architectures without a released tag get an ``untrained`` cfg; asking them for
``pretrained=True`` fails at once with the tags that do have weights and the ways to supply your own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from ldae.models.sizes import SIZES, ModelSize, vit_kwargs
from ldae.release.checksums import verify_export
from ldae.release.manifest import ARCH_PREFIX, CUSTOM_ARCH, CUSTOM_DEFAULT_SIZE, UNTRAINED_TAG, Manifest, load_manifest, no_weights_message, verify_file
from ldae.tokenizers.pca import DIT_NORM
from ldae.utils.checks import check_finite_weights

__all__: list[str] = ["pretrained_cfg_for", "ARCH_NAMES", "CUSTOM_ARCH", "arch_size", "custom_vit_args"]  # + the entrypoints

ARCH_NAMES: tuple[str, ...] = tuple(ARCH_PREFIX + s for s in SIZES)
# Any other encoder shape (a `custom:` size) is ``ldae_vit_custom`` (CUSTOM_ARCH) with its shape as
# model args, which export folders record in config.json.
_SHAPE_ARGS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "act_layer")
_PAPER = "Deconstructing Denoising Diffusion Models for Self-Supervised Learning"
_SOURCE_KEYS = ("url", "file", "state_dict", "hf_hub_id")  # an overlay with one of these brings its own weights


def arch_size(arch: str, **shape: Any) -> ModelSize:
    """The encoder size of a registered ``ldae_vit_*`` architecture; for ``ldae_vit_custom``, the size its
    shape arguments (``embed_dim``, ``depth``, ...) give, the rest from :data:`CUSTOM_DEFAULT_SIZE`."""
    if arch != CUSTOM_ARCH:
        return SIZES[arch[len(ARCH_PREFIX):]]
    base = SIZES[CUSTOM_DEFAULT_SIZE]
    img = shape.get("img_size", base.img_size)
    img = img if isinstance(img, int) else int(img[0])
    depth = int(shape.get("depth", base.enc_depth))
    return ModelSize(img, int(shape.get("patch_size", base.patch_size)), int(shape.get("embed_dim", base.embed_dim)), depth,
                     depth, int(shape.get("num_heads", base.num_heads)), default_d=base.default_d,
                     mlp_ratio=float(shape.get("mlp_ratio", base.mlp_ratio)), in_chans=int(shape.get("in_chans", base.in_chans)),
                     act=str(shape.get("act_layer", base.act)))


def custom_vit_args(size: ModelSize) -> dict[str, Any]:
    """The ``ldae_vit_custom`` model args of an encoder of ``size`` (JSON-serialisable; export config.json)."""
    kw = vit_kwargs(size)
    return {k: kw[k] for k in _SHAPE_ARGS}


def _cfg(arch: str, size: ModelSize | None = None, **kwargs: Any) -> dict[str, Any]:
    """The pretrained cfg of ``arch`` without weights: input and preprocessing of l-DAE pretraining."""
    size = size or arch_size(arch)
    return {
        "num_classes": 0,  # backbones: pooled features
        "input_size": (size.in_chans, size.img_size, size.img_size),
        "pool_size": None,
        "fixed_input_size": True,
        # Pretraining resizes the shorter side to img_size and center-crops it (Sec. 5: center crop).
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": DIT_NORM[0],  # the tokenizer's normalisation: DiT's [-1, 1]
        "std": DIT_NORM[1],
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2401.14404",
        "paper_name": _PAPER,
        "description": (
            f"l-DAE encoder ({size.enc_depth} x {size.embed_dim}, patch {size.patch_size}, {size.img_size} px) "
            "at a fixed noise level, as a plain ViT backbone."
        ),
        **kwargs,
    }


def pretrained_cfg_for(name: str, manifest: Manifest | None = None, file: str | None = None) -> dict[str, Any]:
    """The full pretrained cfg of ``'<arch>.<tag>'`` (tag ``untrained`` or a manifest tag).

    ``file`` sets the weight location (the zoo passes the verified path at load time; the registry
    itself records only where the file lives).
    """
    manifest = manifest or load_manifest()
    arch, _, tag = name.partition(".")
    if tag == UNTRAINED_TAG:
        return _cfg(arch, tag=tag)
    entry = manifest.weights[name]
    extra: dict[str, Any] = {"tag": tag, "file": file or str(manifest.path(entry)), "license": entry.license}
    if entry.tokenizer is not None:  # the weights expect the pixels their tokenizer was fitted on
        tok = manifest.tokenizers[entry.tokenizer]
        extra.update(mean=tuple(tok.norm_mean), std=tuple(tok.norm_std))
    if entry.description:
        extra["description"] = entry.description
    return _cfg(arch, **{**extra, **entry.cfg})


def _registry_cfgs(manifest: Manifest) -> dict[str, dict[str, Any]]:
    cfgs: dict[str, dict[str, Any]] = {}
    for arch in ARCH_NAMES:
        tags = manifest.tags(arch)
        for tag in tags:
            cfgs[f"{arch}.{tag}"] = pretrained_cfg_for(f"{arch}.{tag}", manifest)
        if not tags:
            cfgs[f"{arch}.{UNTRAINED_TAG}"] = _cfg(arch, tag=UNTRAINED_TAG)
    cfgs[f"{CUSTOM_ARCH}.{UNTRAINED_TAG}"] = _cfg(CUSTOM_ARCH, tag=UNTRAINED_TAG)
    return cfgs


default_cfgs = generate_default_cfgs(_registry_cfgs(load_manifest()))


def _resolve_cfg(variant: str, pretrained: bool, pretrained_cfg: Any, overlay: dict | None) -> Any:
    """Our cfg for a tag (or the default tag), with the manifest file verified before anything loads.

    The manifest is read again here (not only at import), so ``$LDAE_WEIGHTS_DIR`` set later applies.
    Dict cfgs (from ``hf-hub:`` / ``local-dir:`` exports) pass through to timm unchanged.
    """
    if pretrained_cfg is not None and not isinstance(pretrained_cfg, str):
        return _verified_export_cfg(pretrained_cfg, pretrained)
    manifest = load_manifest()
    tags = manifest.tags(variant)
    tag = pretrained_cfg or (tags[0] if tags else UNTRAINED_TAG)
    name = f"{variant}.{tag}"
    if tag != UNTRAINED_TAG and name not in manifest.weights:
        raise ValueError(f"unknown pretrained tag {name!r}; tags of {variant}: {tags + [UNTRAINED_TAG]}")
    own_weights = any((overlay or {}).get(k) for k in _SOURCE_KEYS)
    if not pretrained or own_weights:
        return pretrained_cfg_for(name, manifest)
    if tag == UNTRAINED_TAG:
        raise RuntimeError(no_weights_message(name, manifest))
    entry = manifest.weights[name]
    path = verify_file(manifest.path(entry), entry.sha256, entry.bytes, name)
    return pretrained_cfg_for(name, manifest, file=str(path))


def _verified_export_cfg(cfg: Any, pretrained: bool) -> Any:
    """An ``hf-hub:`` / ``local-dir:`` export's cfg, after its files matched the export's SHA256SUMS."""
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    if not pretrained:
        return cfg
    if get("source") == "local-dir" and get("file"):
        folder = Path(get("file"))
        verify_export(f"local-dir:{folder}", lambda f: folder / f)
    elif get("hf_hub_id"):
        from huggingface_hub import hf_hub_download

        repo, revision = get("hf_hub_id"), get("hf_hub_revision")
        verify_export(f"hf-hub:{repo}", lambda f: Path(hf_hub_download(repo, f, revision=revision)),
                      only=("config.json", "model.safetensors"))
    return cfg


def _create_ldae_vit(variant: str, pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    size = arch_size(variant, **kwargs)
    # img_size, in_chans and num_classes come from the pretrained cfg (timm fills them in), so an
    # export's cfg (e.g. a fine-tuned head) is honoured; explicit kwargs still win.
    model_args = {k: v for k, v in vit_kwargs(size).items() if k not in ("img_size", "in_chans", "num_classes")}
    out_indices = kwargs.pop("out_indices", 3)
    if variant == CUSTOM_ARCH:
        kwargs["pretrained_cfg"] = _custom_cfg(size, pretrained, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    else:
        kwargs["pretrained_cfg"] = _resolve_cfg(variant, pretrained, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    model = build_model_with_cfg(
        VisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,  # resamples pos_embed for another img_size
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **{**model_args, **kwargs},
    )
    if pretrained:  # loaded weights that are not finite would give NaN features without a word
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        where = cfg.get("file") or cfg.get("hf_hub_id") or f"{variant}.{cfg.get('tag', '')}".rstrip(".")
        check_finite_weights(model.state_dict(), where)
    return model


def _custom_cfg(size: ModelSize, pretrained: bool, pretrained_cfg: Any, overlay: dict | None) -> Any:
    """An export folder's cfg passes through; otherwise the untrained cfg at this shape's input size."""
    if pretrained_cfg is not None and not isinstance(pretrained_cfg, str):
        return _verified_export_cfg(pretrained_cfg, pretrained)
    if pretrained and not any((overlay or {}).get(k) for k in _SOURCE_KEYS):
        raise RuntimeError(no_weights_message(f"{CUSTOM_ARCH}.{UNTRAINED_TAG}"))
    return _cfg(CUSTOM_ARCH, size, tag=UNTRAINED_TAG)


@register_model
def ldae_vit_custom(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """l-DAE encoder of any shape (``embed_dim``, ``depth``, ``num_heads``, ``patch_size``, ``img_size``); default 4 x 192, patch 4, 32 px."""
    return _create_ldae_vit(CUSTOM_ARCH, pretrained, **kwargs)


@register_model
def ldae_vit_base(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """l-DAE ViT-B/16 encoder, 256 px: 12 blocks x 768 (paper Tab. 4)."""
    return _create_ldae_vit("ldae_vit_base", pretrained, **kwargs)


@register_model
def ldae_vit_half_large(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """l-DAE ViT-1/2L/16 encoder, 256 px: 12 blocks x 1024 (the paper's default size)."""
    return _create_ldae_vit("ldae_vit_half_large", pretrained, **kwargs)


@register_model
def ldae_vit_large(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """l-DAE ViT-L/16 encoder, 256 px: 24 blocks x 1024 (paper Tab. 4)."""
    return _create_ldae_vit("ldae_vit_large", pretrained, **kwargs)


@register_model
def ldae_vit_micro_patch4_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """l-DAE ViT-Ti/4 encoder with 4 blocks, 32 px (CIFAR scale, trains in minutes on a CPU): 4 blocks x 192."""
    return _create_ldae_vit("ldae_vit_micro_patch4_32", pretrained, **kwargs)


@register_model
def ldae_vit_tiny_patch4_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """l-DAE ViT-Ti/4 encoder, 32 px (CIFAR scale): 12 blocks x 192."""
    return _create_ldae_vit("ldae_vit_tiny_patch4_32", pretrained, **kwargs)


@register_model
def ldae_vit_tiny_patch2_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """l-DAE ViT-Ti/2 encoder, 32 px (CIFAR scale): 12 blocks x 192."""
    return _create_ldae_vit("ldae_vit_tiny_patch2_32", pretrained, **kwargs)


@register_model
def ldae_vit_small_patch4_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """l-DAE ViT-S/4 encoder, 32 px (CIFAR scale): 12 blocks x 384."""
    return _create_ldae_vit("ldae_vit_small_patch4_32", pretrained, **kwargs)


@register_model
def ldae_vit_small_patch2_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """l-DAE ViT-S/2 encoder, 32 px (CIFAR scale): 12 blocks x 384."""
    return _create_ldae_vit("ldae_vit_small_patch2_32", pretrained, **kwargs)
