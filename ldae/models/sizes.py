"""The one table of l-DAE model sizes.

Every other module (the pretraining model, the fixed-t export, the timm registry) reads sizes from
here, so a size is defined exactly once.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ModelSize", "SIZES", "get_size", "vit_kwargs", "ACTIVATIONS"]

# MLP activations a size may use (timm names; both fold into a plain timm ViT).
ACTIVATIONS = ("gelu_tanh", "gelu")


@dataclass(frozen=True)
class ModelSize:
    """Shape of an l-DAE encoder-decoder.

    The encoder is the first ``enc_depth`` blocks, the decoder the remaining ``dec_depth`` blocks,
    all of width ``embed_dim`` (App. A: the split is artificial, half/half is best).
    ``default_d`` is the latent dimension used when a model is built without an explicit ``d``.
    ``act`` is the MLP activation, a timm name: ``'gelu_tanh'`` (DiT's tanh approximation, every size
    so far) or ``'gelu'`` (the exact erf form, timm's ViT default). On CPUs the exact form is the
    faster one in bf16 (``bench/results/pretrain_cpu.json``); the exported ViT uses the same activation.
    """

    img_size: int
    patch_size: int
    embed_dim: int
    enc_depth: int
    dec_depth: int
    num_heads: int
    default_d: int
    mlp_ratio: float = 4.0
    in_chans: int = 3
    act: str = "gelu_tanh"

    def __post_init__(self) -> None:
        if self.act not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.act!r}")

    @property
    def patch_dim(self) -> int:
        """D = p * p * C, the dimension of one flattened patch."""
        return self.patch_size * self.patch_size * self.in_chans

    @property
    def depth(self) -> int:
        return self.enc_depth + self.dec_depth

    def to_dict(self) -> dict:
        return asdict(self)


# 256 px sizes follow the paper (Sec. 5, Tab. 4): the encoder is ViT-B, ViT-1/2L or ViT-L and the
# decoder has the same size. d = 32 is the Tab. 2 optimum for 16x16x3 patches (D = 768).
# The 32 px sizes are for CIFAR-scale training: patch 4 gives D = 48 (d = 16, a third of D, near the
# optimum ratio of Fig. 5's pixel tokenizer) and patch 2 gives D = 12 (d = 8).
# micro_patch4_32 is the size that trains in minutes on a 2-core CPU (ViT-Ti width, 4 + 4 blocks).
SIZES: dict[str, ModelSize] = {
    "base": ModelSize(256, 16, 768, 12, 12, 12, default_d=32),
    "half_large": ModelSize(256, 16, 1024, 12, 12, 16, default_d=32),
    "large": ModelSize(256, 16, 1024, 24, 24, 16, default_d=32),
    "micro_patch4_32": ModelSize(32, 4, 192, 4, 4, 3, default_d=16),
    "tiny_patch4_32": ModelSize(32, 4, 192, 12, 12, 3, default_d=16),
    "tiny_patch2_32": ModelSize(32, 2, 192, 12, 12, 3, default_d=8),
    "small_patch4_32": ModelSize(32, 4, 384, 12, 12, 6, default_d=16),
    "small_patch2_32": ModelSize(32, 2, 384, 12, 12, 6, default_d=8),
}


def get_size(name: str | ModelSize) -> ModelSize:
    """Look a size up by name; a ``ModelSize`` passes through unchanged.

    Inline sizes ``custom:img=32,patch=4,dim=64,enc=2,dec=2,heads=2,d=16`` (see :mod:`ldae.models.size_spec`)
    are parsed too, so checkpoints of custom-size runs rebuild from their saved args.
    """
    if isinstance(name, ModelSize):
        return name
    if isinstance(name, str) and name.startswith("custom:"):
        from ldae.models.size_spec import parse_model_spec

        return parse_model_spec(name)
    if name not in SIZES:
        raise ValueError(f"unknown l-DAE size {name!r}; expected one of {sorted(SIZES)}")
    return SIZES[name]


def vit_kwargs(size: ModelSize) -> dict[str, Any]:
    """``VisionTransformer`` arguments of the encoder of ``size`` (JSON-serialisable, for save_for_hf)."""
    return dict(
        img_size=size.img_size,
        patch_size=size.patch_size,
        in_chans=size.in_chans,
        num_classes=0,
        global_pool="avg",
        embed_dim=size.embed_dim,
        depth=size.enc_depth,
        num_heads=size.num_heads,
        mlp_ratio=size.mlp_ratio,
        qkv_bias=True,
        class_token=False,
        fc_norm=False,
        final_norm=False,
        act_layer=size.act,
    )
