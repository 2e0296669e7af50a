"""DiT building blocks conditioned on the noise level through adaLN-Zero (App. A).

Attention and MLP are timm's own modules with timm's parameter names, so a block at a fixed t folds
into a timm ``Block`` by rewriting only the LayerNorm affine and the output projections.
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
import torch.nn as nn
from timm.layers import Mlp
from timm.models.vision_transformer import Attention

__all__ = ["TimestepEmbedder", "AdaLNBlock", "FinalLayer", "sincos_pos_embed_2d", "modulate", "LN_EPS"]

LN_EPS = 1e-6  # DiT's and timm ViT's LayerNorm epsilon


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, N, D) * (1 + scale) + shift with per-sample (B, D) shift/scale."""
    return x * (1 + scale[:, None]) + shift[:, None]


def sincos_pos_embed_2d(embed_dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (N, D), N = grid_h * grid_w, rows in raster order (MAE/DiT)."""
    if embed_dim % 4:
        raise ValueError(f"sin-cos position embedding needs embed_dim divisible by 4, got {embed_dim}")
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 4, dtype=np.float64) / (embed_dim / 4.0))  # (D/4,)

    def embed_1d(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)  # (N, D/4)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (N, D/2)

    ys, xs = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing="ij")
    emb = np.concatenate([embed_1d(xs), embed_1d(ys)], axis=1)  # (N, D): first half width, second height
    return torch.from_numpy(emb).float()


class TimestepEmbedder(nn.Module):
    """Level t -> conditioning vector (B, hidden): sinusoidal features then a two-layer SiLU MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """(B,) levels -> (B, dim) [cos | sin] features at geometric frequencies (DiT / GLIDE)."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = self.timestep_embedding(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype)
        return self.mlp(freq)  # (B, hidden)


class AdaLNBlock(nn.Module):
    """Transformer block with adaLN-Zero: LayerNorm without affine, then shift/scale from the
    conditioning vector, and a gate on each residual branch (all six from one zero-initialised linear)."""

    def __init__(self, dim: int, num_heads: int, cond_dim: int, mlp_ratio: float = 4.0, act: str = "gelu_tanh") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        # 'gelu_tanh': the tanh-approximated GELU of DiT; 'gelu': the exact form (see ldae.models.sizes).
        approximate = {"gelu_tanh": "tanh", "gelu": "none"}[act]
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=partial(nn.GELU, approximate=approximate))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Six (B, D) vectors: shift/scale/gate for attention, then for the MLP."""
        return self.adaLN_modulation(c).chunk(6, dim=-1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (B, N, D)
        x = x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (B, N, D)
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm then a linear map to p*p*C pixels per patch (zero-initialised)."""

    def __init__(self, dim: int, patch_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.linear = nn.Linear(dim, patch_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, N, p*p*C)
