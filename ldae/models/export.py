"""Exact export of the encoder at a fixed level t to a plain timm ``VisionTransformer``.

At a fixed t the conditioning vector is a constant, so each block's six modulation vectors are
constants. LayerNorm(no affine) followed by x (1 + scale) + shift is a LayerNorm with weight
1 + scale and bias shift; a gate g on a residual branch folds into the branch's last linear layer
(W <- diag(g) W, b <- g * b). The encoder then *is* a standard ViT: no class token, average pooling,
no final or fc norm, the size's GELU (tanh form unless ``act='gelu'``), qkv bias, LayerNorm eps 1e-6, the sin-cos position embedding. The
folding is done in float64 and rounded once.

Models that embed latent tokens (``input_space='latent'``, the DiT-on-a-tokenizer rows of the
trajectory) export the same way: every tokenizer here is affine per patch, so tokenizer and token
embedding fold into one p x p patch embedding. The exported ViT takes images normalised as the
tokenizer expects (its ``norm_mean`` / ``norm_std``) and computes the encoder on the tokenizer's
latents of them, with no tokenizer in front.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer

from ldae.models import registry  # building by name needs the architectures registered with timm
from ldae.models.ldae import LDAE
from ldae.models.sizes import SIZES, ModelSize, vit_kwargs

__all__ = ["vit_kwargs", "export_encoder_state_dict", "export_to_timm", "timm_arch"]


@torch.no_grad()
def export_encoder_state_dict(model: LDAE, t: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """State dict of a timm ``VisionTransformer(**vit_kwargs(model.size))`` equal to the encoder at level t."""
    model.schedule.check_t(torch.tensor([t]))
    f64 = torch.float64
    device = model.pos_embed.device
    # A float64 copy of the timestep MLP, so the model itself is left untouched.
    c = copy.deepcopy(model.t_embedder).double()(torch.tensor([t], device=device))  # (1, cond_dim)
    # A latent-input model's token embedding comes back folded with its (affine) tokenizer.
    proj_weight, proj_bias = model.image_patch_embed()
    sd: dict[str, torch.Tensor] = {
        "patch_embed.proj.weight": proj_weight,
        "patch_embed.proj.bias": proj_bias,
        "pos_embed": model.pos_embed,
    }
    for i, block in enumerate(model.blocks[: model.enc_depth]):
        lin = block.adaLN_modulation[-1]
        mod = torch.nn.functional.linear(torch.nn.functional.silu(c), lin.weight.to(f64), lin.bias.to(f64))[0]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6)
        p = f"blocks.{i}."
        sd[p + "norm1.weight"], sd[p + "norm1.bias"] = 1 + scale_msa, shift_msa
        sd[p + "norm2.weight"], sd[p + "norm2.bias"] = 1 + scale_mlp, shift_mlp
        sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"] = block.attn.qkv.weight, block.attn.qkv.bias
        sd[p + "attn.proj.weight"] = gate_msa[:, None] * block.attn.proj.weight.to(f64)
        sd[p + "attn.proj.bias"] = gate_msa * block.attn.proj.bias.to(f64)
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = block.mlp.fc1.weight, block.mlp.fc1.bias
        sd[p + "mlp.fc2.weight"] = gate_mlp[:, None] * block.mlp.fc2.weight.to(f64)
        sd[p + "mlp.fc2.bias"] = gate_mlp * block.mlp.fc2.bias.to(f64)
    return {k: v.detach().to(device="cpu", dtype=dtype).contiguous() for k, v in sd.items()}


def export_to_timm(model: LDAE, t: int | None = None, **vit_overrides: Any) -> VisionTransformer:
    """A timm ``VisionTransformer`` (eval mode) computing the encoder of ``model`` at level t.

    ``t`` defaults to the schedule's evaluation level (t = 10 of 1000; the single level for a
    single-level schedule). ``vit_overrides`` go to the constructor (e.g. ``dynamic_img_size=True``).
    Every model is built through timm's registry, so it carries a full pretrained cfg (preprocessing
    for ``resolve_model_data_config``; ``save_for_hf`` works): a registered size as ``ldae_vit_<size>``,
    any other shape (a ``custom:`` size, another encoder split) as ``ldae_vit_custom`` with its shape
    as model args. The cfg's mean/std are the tokenizer's normalisation.
    """
    import timm

    t = model.schedule.eval_t if t is None else int(t)
    arch, shape = timm_arch(model.size)
    vit = timm.create_model(arch, pretrained=False, **{**shape, **vit_overrides})
    tok = model.tokenizer
    if tok is not None and hasattr(tok, "norm_mean"):
        vit.pretrained_cfg = {**vit.pretrained_cfg, "mean": tuple(tok.norm_mean), "std": tuple(tok.norm_std)}
    vit.load_state_dict(export_encoder_state_dict(model, t), strict=True)
    return vit.eval()


def timm_arch(size: ModelSize) -> tuple[str, dict[str, Any]]:
    """(registered architecture, shape model args) whose ViT is the encoder of ``size``.

    A registered size whose encoder matches gives its own name and no args; any other shape gives
    ``ldae_vit_custom`` and the args that rebuild it (recorded in an export's config.json).
    """
    enc = vit_kwargs(size)
    for name, s in SIZES.items():
        if vit_kwargs(s) == enc:
            return registry.ARCH_PREFIX + name, {}
    return registry.CUSTOM_ARCH, registry.custom_vit_args(size)
