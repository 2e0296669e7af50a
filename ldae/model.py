"""The l-DAE pretraining model: a DiT-style encoder-decoder that denoises latent-noised images.

    loss = model(images)                          # noise, denoise and Eq. 4 in one call
    out = model(images, return_dict=True)         # out.loss, out.pred, out.x_t, out.t

Patch embedding (timm ``PatchEmbed``), a fixed 2-D sin-cos position embedding, no class token,
adaLN-Zero blocks conditioned on the level t (no class conditioning), and a final adaLN layer that
predicts p*p*C pixels per patch. The encoder is the first ``enc_depth`` blocks; what it computes at
a fixed t is exactly a timm ``VisionTransformer`` (see :mod:`ldae.export`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from torch.utils.checkpoint import checkpoint

from .checks import check_images
from .configs import ModelSize, get_size
from .layers import AdaLNBlock, FinalLayer, TimestepEmbedder, sincos_pos_embed_2d
from .loss import pca_weighted_loss
from .noise import LatentNoise, NoisyBatch
from .schedule import NoiseSchedule, build_schedule
from .tokenizer import PatchPCA, unpatchify

__all__ = ["LDAE", "LDAEOutput", "build_ldae"]


@dataclass
class LDAEOutput:
    """loss: scalar; pred: (B, C, H, W) denoised image; x_t: (B, C, H, W) noisy input; t: (B,) levels."""

    loss: torch.Tensor
    pred: torch.Tensor
    x_t: torch.Tensor
    t: torch.Tensor


class LDAE(nn.Module):
    """Latent denoising autoencoder.

    Args:
        size: a name in :data:`ldae.configs.SIZES` or a :class:`ModelSize`.
        tokenizer: fitted patch PCA of the same patch size (required for latent noise).
        d: latent dimension of the noise and of Eq. 4's weights (default: the size's ``default_d``).
        whiten: noise on unit-variance latents (default) or raw PCA coordinates.
        noise_space: ``'latent'`` (l-DAE) or ``'pixel'`` (classical DAE ablation).
        schedule: a :class:`NoiseSchedule` or its name (``'linear_sigma'``; ``'single'`` for one level).
        tail_weight: Eq. 4's weight of the D - d dimensions PCA drops (0.1).
        enc_depth: override the size's encoder/decoder split (total depth unchanged).
        cond_ratio: width of the conditioning vector relative to the model width; 1/4 as in App. A.
        check_inputs: validate every batch (a finite check costs a host sync; the trainer may turn it off).
    """

    def __init__(
        self,
        size: str | ModelSize = "base",
        tokenizer: PatchPCA | None = None,
        d: int | None = None,
        whiten: bool = True,
        noise_space: str = "latent",
        schedule: NoiseSchedule | str = "linear_sigma",
        tail_weight: float = 0.1,
        enc_depth: int | None = None,
        cond_ratio: float = 0.25,
        check_inputs: bool = True,
    ) -> None:
        super().__init__()
        size = get_size(size)
        if enc_depth is not None:
            if not 1 <= enc_depth < size.depth:
                raise ValueError(f"enc_depth must be in [1, {size.depth - 1}] for a {size.depth}-block model, got {enc_depth}")
            size = ModelSize(**{**size.to_dict(), "enc_depth": enc_depth, "dec_depth": size.depth - enc_depth})
        if tokenizer is not None:
            tokenizer.check_compatible(size.patch_size, size.in_chans)
        self.size = size
        self.d = int(d if d is not None else size.default_d)
        self.tail_weight = float(tail_weight)
        self.check_inputs = check_inputs
        if isinstance(schedule, str):
            schedule = build_schedule(schedule)
        self.noise = LatentNoise(tokenizer, self.d, whiten=whiten, space=noise_space, schedule=schedule)
        if tokenizer is None and not 1 <= self.d <= size.patch_dim:
            raise ValueError(f"d must be in [1, {size.patch_dim}], got {self.d}")

        dim, self.cond_dim = size.embed_dim, max(1, int(size.embed_dim * cond_ratio))
        self.patch_embed = PatchEmbed(size.img_size, size.patch_size, size.in_chans, dim)
        grid = self.patch_embed.grid_size
        pos = sincos_pos_embed_2d(dim, *grid).to(self.patch_embed.proj.weight.device)
        self.register_buffer("pos_embed", pos[None], persistent=True)  # (1, N, D), fixed
        self.t_embedder = TimestepEmbedder(self.cond_dim)
        self.blocks = nn.ModuleList(
            AdaLNBlock(dim, size.num_heads, self.cond_dim, size.mlp_ratio) for _ in range(size.depth)
        )
        self.final_layer = FinalLayer(dim, size.patch_dim, self.cond_dim)
        self.grad_checkpointing = False
        self.initialize_weights()

    # ------------------------------------------------------------------ init
    def initialize_weights(self) -> None:
        """DiT initialisation: xavier linears, N(0, 0.02) timestep MLP, zeroed modulation and output."""

        def _basic_init(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(_basic_init)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a linear map, like MAE/DiT
        nn.init.zeros_(self.patch_embed.proj.bias)
        for layer in self.t_embedder.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ------------------------------------------------------------------ properties
    @property
    def tokenizer(self) -> PatchPCA | None:
        return self.noise.tokenizer

    @property
    def enc_depth(self) -> int:
        return self.size.enc_depth

    @property
    def schedule(self) -> NoiseSchedule:
        return self.noise.schedule

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass (less memory, ~30% more compute)."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return set()  # the position embedding is a buffer; l-DAE uses no weight decay at all

    # ------------------------------------------------------------------ forward
    def _check(self, x: torch.Tensor, name: str = "images") -> None:
        if self.check_inputs and not torch.compiler.is_compiling():
            check_images(x, self.size.in_chans, self.size.patch_size, self.size.img_size, name=name)

    def _as_levels(self, t: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
        if isinstance(t, int) or (isinstance(t, torch.Tensor) and t.ndim == 0):
            t = torch.full((batch,), int(t), dtype=torch.long, device=device)
        if self.check_inputs and not torch.compiler.is_compiling():
            self.schedule.check_t(t)
        return t.to(device)

    def _run_blocks(self, x: torch.Tensor, c: torch.Tensor, blocks) -> torch.Tensor:
        for block in blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, c, use_reentrant=False)
            else:
                x = block(x, c)
        return x

    def forward_encoder(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Noisy images (B, C, H, W) and levels t -> encoder tokens (B, N, D)."""
        self._check(x_t)
        t = self._as_levels(t, x_t.shape[0], x_t.device)
        c = self.t_embedder(t)  # (B, cond_dim)
        x = self.patch_embed(x_t) + self.pos_embed  # (B, N, D)
        return self._run_blocks(x, c, self.blocks[: self.enc_depth])

    def forward_features(self, x: torch.Tensor, t: torch.Tensor | int | None = None) -> torch.Tensor:
        """Pooled encoder features (B, D) at level t (default: the schedule's eval level) on input as given."""
        t = self.schedule.eval_t if t is None else t
        return self.forward_encoder(x, t).mean(1)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Noisy images (B, C, H, W) at levels t -> predicted clean images (B, C, H, W)."""
        self._check(x_t)
        return self._denoise(x_t, self._as_levels(t, x_t.shape[0], x_t.device))

    def _denoise(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = self.t_embedder(t)  # (B, cond_dim)
        x = self.patch_embed(x_t) + self.pos_embed  # (B, N, D)
        x = self._run_blocks(x, c, self.blocks)  # (B, N, D)
        patches = self.final_layer(x, c)  # (B, N, p*p*C)
        return unpatchify(patches, self.size.patch_size, x_t.shape[-2:])  # (B, C, H, W)

    def corrupt(self, images: torch.Tensor, t: torch.Tensor | int | None = None, generator: torch.Generator | None = None) -> NoisyBatch:
        """Add the configured noise to clean images (B, C, H, W)."""
        if t is not None:
            t = self._as_levels(t, images.shape[0], images.device)
        return self.noise(images, t, generator=generator, check_t=False)

    def forward(
        self,
        images: torch.Tensor,
        t: torch.Tensor | int | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool = False,
    ) -> torch.Tensor | LDAEOutput:
        """Clean normalised images (B, C, H, W) -> Eq. 4 loss (scalar), or an :class:`LDAEOutput`."""
        self._check(images)
        noisy = self.corrupt(images, t, generator)
        pred = self._denoise(noisy.x_t, noisy.t)  # (B, C, H, W)
        loss = pca_weighted_loss(
            pred, images, noisy.weight, self.tokenizer, self.d, self.tail_weight, patch_size=self.size.patch_size
        )
        if return_dict:
            return LDAEOutput(loss=loss, pred=pred, x_t=noisy.x_t, t=noisy.t)
        return loss

    def extra_repr(self) -> str:
        return f"size={self.size}, d={self.d}, tail_weight={self.tail_weight}, cond_dim={self.cond_dim}"


def build_ldae(size: str | ModelSize = "base", tokenizer: PatchPCA | str | None = None, **kwargs) -> LDAE:
    """Build an :class:`LDAE`; ``tokenizer`` may be a path to a saved patch-PCA artifact."""
    if isinstance(tokenizer, str):
        tokenizer = PatchPCA.load(tokenizer)
    return LDAE(size, tokenizer, **kwargs)
