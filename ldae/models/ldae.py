"""The l-DAE pretraining model: a DiT-style encoder-decoder that denoises latent-noised images.

    loss = model(images)                          # noise, denoise and Eq. 4 in one call
    out = model(images, return_dict=True)         # out.loss, out.pred, out.x_t, out.t

Patch embedding (timm ``PatchEmbed``), a fixed 2-D sin-cos position embedding, no class token,
adaLN-Zero blocks conditioned on the level t (no class conditioning), and a final adaLN layer that
predicts p*p*C pixels per patch. The encoder is the first ``enc_depth`` blocks; what it computes at
a fixed t is exactly a timm ``VisionTransformer`` (see :mod:`ldae.models.export`).

The earlier rows of the paper's trajectory are two switches away (see ``docs/trajectory.md``):
``input_space='latent'`` embeds the tokenizer's d-dim noisy latents with a linear layer instead of
the p x p patch embedding (DiT on a tokenizer), and ``target`` picks what is predicted
(:mod:`ldae.diffusion.targets`: eps, z0, the decoded z0, or the original image). With a latent target the final
layer outputs d numbers per token instead of p*p*C pixels.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed
from torch.utils.checkpoint import checkpoint

from ldae.diffusion.loss import pca_weighted_patch_loss
from ldae.diffusion.noise import LatentNoise, NoisyBatch
from ldae.diffusion.schedules import NoiseSchedule, build_schedule
from ldae.diffusion.targets import check_target, prediction_target, target_loss, target_space
from ldae.models.layers import AdaLNBlock, FinalLayer, TimestepEmbedder, sincos_pos_embed_2d
from ldae.models.sizes import ModelSize, get_size
from ldae.tokenizers.pca import PatchPCA, patchify, unpatchify
from ldae.tokenizers.registry import fixed_latent_dim, load_tokenizer
from ldae.utils.amp import float32_region
from ldae.utils.checks import check_images

__all__ = ["LDAE", "LDAEOutput", "build_ldae"]


@dataclass
class LDAEOutput:
    """loss: scalar; pred: (B, C, H, W) denoised image; x_t: (B, C, H, W) noisy input; t: (B,) levels.

    With a latent target (``'z0'``, ``'eps'``) pred is the network's (B, N, d) output, and with latent
    input x_t is the (B, N, d) noisy latents.
    """

    loss: torch.Tensor
    pred: torch.Tensor
    x_t: torch.Tensor
    t: torch.Tensor


class LDAE(nn.Module):
    """Latent denoising autoencoder.

    Args:
        size: a name in :data:`ldae.models.sizes.SIZES` or a :class:`ModelSize`.
        tokenizer: fitted patch PCA of the same patch size (required for latent noise), or any
            :class:`ldae.tokenizers.registry.Tokenizer` (patch AE / VAE, pixel tokenizer).
        d: latent dimension of the noise and of Eq. 4's weights (default: the tokenizer's ``fixed_d``
            for tokenizers trained for one d, else the size's ``default_d``).
        whiten: shorthand for ``latent_scale``: True = ``'whiten'`` (unit-variance latents), False = ``'raw'``.
        noise_space: ``'latent'`` (l-DAE) or ``'pixel'`` (classical DAE ablation).
        schedule: a :class:`NoiseSchedule` or its name (``'linear_sigma'``; ``'single'`` for one level).
        tail_weight: Eq. 4's weight of the D - d dimensions PCA drops (0.1).
        enc_depth: override the size's encoder/decoder split (total depth unchanged).
        cond_ratio: width of the conditioning vector relative to the model width; 1/4 as in App. A.
        check_inputs: validate every batch (a finite check costs a host sync; the trainer may turn it off).
        input_space: ``'image'`` (l-DAE: the noisy image through a p x p patch embedding) or
            ``'latent'`` (the noisy d-dim tokens through a linear embedding; Tab. 2, Tab. 3 rows 1-3).
        target: ``'image'`` (Eq. 4, l-DAE), ``'decoded'``, ``'z0'`` or ``'eps'`` (see :mod:`ldae.diffusion.targets`).
        latent_scale: ``'whiten'``, ``'raw'`` or ``'global'`` (see :mod:`ldae.diffusion.noise`); overrides ``whiten``.
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
        input_space: str = "image",
        target: str = "image",
        latent_scale: str | None = None,
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
        self.d = int(d if d is not None else (fixed_latent_dim(tokenizer) or size.default_d))
        self.tail_weight = float(tail_weight)
        self.check_inputs = check_inputs
        check_target(target, noise_space, tokenizer, self.tail_weight)
        self.input_space, self.target = input_space, target
        self.output_space = target_space(target)
        if isinstance(schedule, str):
            schedule = build_schedule(schedule)
        self.noise = LatentNoise(
            tokenizer, self.d, whiten=whiten, space=noise_space, schedule=schedule,
            input_space=input_space, keep_latent=target != "image", latent_scale=latent_scale,
        )
        if tokenizer is None and not 1 <= self.d <= size.patch_dim:
            raise ValueError(f"d must be in [1, {size.patch_dim}], got {self.d}")

        dim, self.cond_dim = size.embed_dim, max(1, int(size.embed_dim * cond_ratio))
        if input_space == "image":
            self.patch_embed = PatchEmbed(size.img_size, size.patch_size, size.in_chans, dim)
            grid = self.patch_embed.grid_size
            device = self.patch_embed.proj.weight.device
        else:  # DiT on a tokenizer: one linear map embeds each d-dim latent token
            self.token_embed = nn.Linear(self.d, dim)
            grid = (size.img_size // size.patch_size, size.img_size // size.patch_size)
            device = self.token_embed.weight.device
        if device.type == "meta":  # a shape-only skeleton: no float64 table of (possibly huge) saved args
            pos = torch.empty(grid[0] * grid[1], dim, device=device)
        else:
            pos = sincos_pos_embed_2d(dim, *grid).to(device)
        self.register_buffer("pos_embed", pos[None], persistent=True)  # (1, N, D), fixed
        self.t_embedder = TimestepEmbedder(self.cond_dim)
        self.blocks = nn.ModuleList(
            AdaLNBlock(dim, size.num_heads, self.cond_dim, size.mlp_ratio, size.act) for _ in range(size.depth)
        )
        self.final_layer = FinalLayer(dim, size.patch_dim if self.output_space == "image" else self.d, self.cond_dim)
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

        self.apply(_basic_init)  # includes the latent-input token embedding, a plain linear map
        if self.input_space == "image":
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

    def _check_input(self, x: torch.Tensor) -> None:
        """Images (B, C, H, W), or for latent-input models also latent tokens (B, N, d)."""
        if self.input_space == "image" or x.ndim == 4:
            return self._check(x)
        n = self.pos_embed.shape[1]
        if self.check_inputs and not torch.compiler.is_compiling() and (x.ndim != 3 or tuple(x.shape[1:]) != (n, self.d)):
            raise ValueError(f"latent input: expected images (B, {self.size.in_chans}, H, W) or tokens (B, {n}, {self.d}), got {tuple(x.shape)}")

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Network input -> embedded tokens (B, N, D), position embedding added.

        Input of another float dtype than the weights (fp16 / bf16 / fp64 images) is cast to theirs, as
        autocast would; under autocast the embedding runs in autocast's dtype either way."""
        weight = self.patch_embed.proj.weight if self.input_space == "image" else self.token_embed.weight
        if x.is_floating_point() and x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(weight.dtype)
        if self.input_space == "latent":
            if x.ndim == 4:  # an image: the latent-input encoder sees its tokenizer latents
                x = self.noise.encode_latent(x)  # (B, N, d)
            return self.token_embed(x) + self.pos_embed  # (B, N, D)
        return self.patch_embed(x) + self.pos_embed  # (B, N, D)

    @torch.no_grad()
    def image_patch_embed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight (D, C, p, p), bias (D,)) of the p x p patch embedding the encoder applies to an image.

        For image input: the patch embedding's own parameters. For latent input: the token embedding
        composed with the tokenizer's affine patch encoder (float64, exact), so the encoder is still a
        plain ViT on images with the tokenizer folded in (what :mod:`ldae.models.export` exports).
        """
        if self.input_space == "image":
            return self.patch_embed.proj.weight, self.patch_embed.proj.bias
        a, c = self.noise.patch_affine()  # (d, P), (d,)
        w = self.token_embed.weight.double()  # (D, d)
        a, c = a.to(w.device), c.to(w.device)
        p, chans = self.size.patch_size, self.size.in_chans
        return (w @ a).reshape(-1, chans, p, p), w @ c + self.token_embed.bias.double()

    def _as_levels(self, t: torch.Tensor | int | float, batch: int, device: torch.device) -> torch.Tensor:
        if isinstance(t, float):  # a Python number: a level only when it is a whole one
            if not t.is_integer():
                raise ValueError(f"noise level t must be an integer in [0, {self.schedule.num_levels - 1}], got {t}")
            t = int(t)
        if isinstance(t, numbers.Integral):  # int, numpy integers
            t = int(t)
        if not isinstance(t, (int, torch.Tensor)):
            raise ValueError(f"noise level t must be an int or a (B,) tensor of ints, got {type(t).__name__}")
        if isinstance(t, int) or t.ndim == 0:
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
        """Noisy images (B, C, H, W) and levels t -> encoder tokens (B, N, D).

        A latent-input model encodes images through its tokenizer first, or takes latents (B, N, d).
        """
        self._check_input(x_t)
        t = self._as_levels(t, x_t.shape[0], x_t.device)
        c = self.t_embedder(t)  # (B, cond_dim)
        x = self._embed(x_t)  # (B, N, D)
        return self._run_blocks(x, c, self.blocks[: self.enc_depth])

    def forward_features(self, x: torch.Tensor, t: torch.Tensor | int | None = None) -> torch.Tensor:
        """Pooled encoder features (B, D) at level t (default: the schedule's eval level) on input as given."""
        t = self.schedule.eval_t if t is None else t
        return self.forward_encoder(x, t).mean(1)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Noisy images (B, C, H, W) at levels t -> predicted clean images (B, C, H, W).

        Latent-input models also take noisy latents (B, N, d). Latent predictions are decoded by the
        tokenizer: z0 directly, eps through z0 = (z_t - sigma_t eps) / gamma_t (gamma floored at 1e-3:
        the linear-in-gamma^2 schedule reaches gamma = 0 at t = T-1, where nothing is recoverable).
        """
        self._check_input(x_t)
        t = self._as_levels(t, x_t.shape[0], x_t.device)
        pred = self._denoise(x_t, t)
        if self.output_space == "image":
            return pred
        z0 = pred.float()
        if self.target == "eps":
            gamma, sigma, _ = self.schedule.lookup(t, check=False)
            z_t = x_t.float() if x_t.ndim == 3 else self.noise.encode_latent(x_t)
            z0 = (z_t - sigma[:, None, None] * z0) / gamma.clamp_min(1e-3)[:, None, None]
        return self.noise.decode_latent(z0, (self.size.img_size, self.size.img_size)).to(pred.dtype)

    def _denoise(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Network output: images (B, C, H, W) for image targets, tokens (B, N, d) for latent ones."""
        patches = self._network(self._embed(x_t), t)  # (B, N, p*p*C) or (B, N, d)
        if self.output_space == "latent":
            return patches
        hw = x_t.shape[-2:] if x_t.ndim == 4 else (self.size.img_size, self.size.img_size)
        return unpatchify(patches, self.size.patch_size, hw)  # (B, C, H, W)

    def _network(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Embedded tokens (B, N, D) at levels t -> the final layer's output (B, N, p*p*C) or (B, N, d)."""
        c = self.t_embedder(t)  # (B, cond_dim)
        x = self._run_blocks(x, c, self.blocks)  # (B, N, D)
        return self.final_layer(x, c)

    def _embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Image patches (B, N, p*p*C) -> embedded tokens (B, N, D): the p x p patch embedding as the linear
        map it is (the conv's weight flattened in patchify's order), without assembling an image."""
        proj = self.patch_embed.proj
        return F.linear(patches, proj.weight.flatten(1), proj.bias) + self.pos_embed  # (B, N, D)

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
        """Clean normalised images (B, C, H, W) -> the target's loss (scalar; Eq. 4 by default), or an :class:`LDAEOutput`."""
        self._check(images)
        if self.input_space == "image" and self.target == "image":
            return self._forward_patches(images, t, generator, return_dict)
        noisy = self.corrupt(images, t, generator)
        pred = self._denoise(noisy.x_t, noisy.t)  # (B, C, H, W), or (B, N, d) for a latent target
        target = prediction_target(self.target, images, noisy, self.noise)
        loss = target_loss(
            self.target, pred, target, noisy.weight, self.tokenizer, self.d, self.tail_weight, self.size.patch_size
        )
        if return_dict:
            return LDAEOutput(loss=loss, pred=pred, x_t=noisy.x_t, t=noisy.t)
        return loss

    def _forward_patches(
        self, images: torch.Tensor, t: torch.Tensor | int | None, generator: torch.Generator | None, return_dict: bool
    ) -> torch.Tensor | LDAEOutput:
        """The l-DAE step (image input, Eq. 4 on the image) computed on patches from end to end.

        The same function as ``corrupt`` -> ``_denoise`` -> ``target_loss`` (tests compare them), with one
        patchify per batch: the noise, the patch embedding, the prediction and Eq. 4 all act per patch,
        so the (B, N, p*p*C) patches are never assembled into an image and cut up again.
        """
        p, hw = self.size.patch_size, tuple(images.shape[-2:])
        if t is not None:
            t = self._as_levels(t, images.shape[0], images.device)
        with float32_region(images.device):
            p0 = patchify(images.float(), p)  # (B, N, p*p*C), the clean patches and Eq. 4's target
        noisy = self.noise.forward_patches(p0, hw, t, generator, check_t=False)
        pred = self._network(self._embed_patches(noisy.x_t), noisy.t)  # (B, N, p*p*C)
        pca = self.tokenizer if isinstance(self.tokenizer, PatchPCA) else None
        loss = pca_weighted_patch_loss(pred, p0, noisy.weight, pca, self.d, self.tail_weight)
        if return_dict:
            x_t = unpatchify(noisy.x_t, p, hw).to(images.dtype)
            return LDAEOutput(loss=loss, pred=unpatchify(pred, p, hw), x_t=x_t, t=noisy.t)
        return loss

    def extra_repr(self) -> str:
        extra = "" if (self.input_space, self.target) == ("image", "image") else f", input_space={self.input_space!r}, target={self.target!r}"
        return f"size={self.size}, d={self.d}, tail_weight={self.tail_weight}, cond_dim={self.cond_dim}{extra}"


def build_ldae(size: str | ModelSize = "base", tokenizer: PatchPCA | str | None = None, **kwargs) -> LDAE:
    """Build an :class:`LDAE`; ``tokenizer`` may be a path to any saved tokenizer artifact (:func:`ldae.tokenizers.registry.load_tokenizer`)."""
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    return LDAE(size, tokenizer, **kwargs)
