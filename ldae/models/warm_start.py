"""Continue pretraining from released weights: an exported encoder unfolded back into an :class:`LDAE`.

A released backbone is the encoder folded at one level t (:mod:`ldae.models.export`): LayerNorm weights
1 + scale and biases shift, gates multiplied into ``attn.proj`` / ``mlp.fc2``. The fold has an exact
inverse that needs no knowledge of t: give every encoder block's adaLN layer a zero weight and the
bias (shift, scale, gate = 1) per branch, and copy the folded linear layers. The encoder then computes
the released backbone at *every* level (its t-dependence starts at zero and is learned again), the
decoder starts from its adaLN-Zero initialisation, and ``export_to_timm`` of the result gives the
released weights back.

    vit = timm.create_model("ldae_vit_micro_patch4_32.cifar10", pretrained=True)
    model = LDAE("small_patch4_32", ldae.get_tokenizer("ldae_vit_micro_patch4_32.cifar10"))
    init_encoder_from_vit(model, vit)      # then train: loss = model(images)
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from ldae.models.ldae import LDAE
from ldae.models.sizes import vit_kwargs

__all__ = ["init_encoder_from_vit"]


@torch.no_grad()
def init_encoder_from_vit(model: LDAE, vit: nn.Module | Mapping[str, torch.Tensor]) -> LDAE:
    """Load a released encoder (a timm ``VisionTransformer`` or its state dict) into ``model``'s encoder.

    Only the patch embedding and the first ``model.enc_depth`` blocks change; raises ``ValueError``
    when the backbone's shapes do not match the model's encoder.
    """
    sd = vit.state_dict() if isinstance(vit, nn.Module) else dict(vit)
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    if depth != model.enc_depth or sd["patch_embed.proj.weight"].shape != model.patch_embed.proj.weight.shape:
        raise ValueError(
            f"backbone does not match the encoder: it has {depth} blocks and patch embedding "
            f"{tuple(sd['patch_embed.proj.weight'].shape)}, the model expects {model.enc_depth} blocks "
            f"({vit_kwargs(model.size)['embed_dim']} wide) and {tuple(model.patch_embed.proj.weight.shape)}"
        )
    if "pos_embed" in sd and not torch.allclose(sd["pos_embed"].to(model.pos_embed), model.pos_embed, atol=1e-5):
        raise ValueError("backbone's position embedding is not l-DAE's fixed 2-D sin-cos embedding at this size")
    model.patch_embed.proj.weight.copy_(sd["patch_embed.proj.weight"])
    model.patch_embed.proj.bias.copy_(sd["patch_embed.proj.bias"])
    for i, block in enumerate(model.blocks[: model.enc_depth]):
        p = f"blocks.{i}."
        one = torch.ones_like(sd[p + "norm1.bias"])
        lin = block.adaLN_modulation[-1]
        lin.weight.zero_()  # no dependence on t ...
        lin.bias.copy_(torch.cat([  # ... and the constant (shift, scale, gate) the export folded
            sd[p + "norm1.bias"], sd[p + "norm1.weight"] - 1, one,
            sd[p + "norm2.bias"], sd[p + "norm2.weight"] - 1, one,
        ]))
        for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            layer = block.get_submodule(name)
            layer.weight.copy_(sd[p + name + ".weight"])
            layer.bias.copy_(sd[p + name + ".bias"])
    return model
