"""The pixel "tokenizer" of Fig. 5: identity on the patches of a resized image.

The model sees an image of H x W pixels in p x p patches (N = HW / p^2 tokens). This tokenizer first
resizes the image by 1 / s, s = p / q, and then cuts it into q x q patches: the sequence length stays
N while a token holds D = q*q*C pixels. At 256 px with the model's p = 16 the paper's four settings
are q = 16, 8, 4, 2 (images of 256, 128, 64, 32 px; D = 768, 192, 48, 12 "latent" dimensions).

The resize is an s x s box average (area interpolation) and the inverse repeats each pixel s x s
times (nearest upsampling). So ``encode(decode(z)) == z`` exactly and ``decode(encode(x))`` is the
orthogonal projection of x onto images constant on s x s blocks: the same algebra as PCA's
V V^T = I, which makes this tokenizer drop-in for every noise space and target of the trajectory,
and affine per p x p patch, so a fixed-t export folds it into the ViT's patch embedding.
(The paper does not say how it resized; a box filter is the antialiased resize by an integer factor.)

There is nothing to learn: latents are the normalised pixels themselves (``latent_std`` is 1, so
whitening is the identity), and the artifact holds only metadata.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import torch
import torch.nn.functional as F

from ldae.tokenizers.base import DIT_NORM, PatchTokenizer, patchify, unpatchify
from ldae.utils.checks import check_images
from ldae.utils.io import save_safetensors

__all__ = ["PixelTokenizer"]


class PixelTokenizer(PatchTokenizer):
    """Identity tokens on a 1/s-resized image (Fig. 5), with the model's sequence length.

    Args:
        patch_size: the model's patch size p (N = HW / p^2 tokens, as for every tokenizer).
        token_patch: q, the patch size on the resized image; must divide p. q = p is plain
            pixel patches (D = p*p*C, the classical pixel-space case of Fig. 5).
        in_chans, norm_mean, norm_std: as for :class:`ldae.tokenizers.pca.PatchPCA`.
    """

    FORMAT = "ldae.pixel.v1"
    KIND = "pixel"

    def __init__(
        self,
        patch_size: int,
        token_patch: int,
        in_chans: int = 3,
        norm_mean: Sequence[float] = DIT_NORM[0],
        norm_std: Sequence[float] = DIT_NORM[1],
    ) -> None:
        super().__init__(patch_size, in_chans, norm_mean, norm_std)  # nothing is fitted: no image counts
        if token_patch < 1 or patch_size < 1 or patch_size % token_patch:
            raise ValueError(f"token_patch must divide the patch size {patch_size}, got {token_patch}")
        self.token_patch = int(token_patch)
        # Only so latent_std lands on the tokenizer's device; not part of any state dict.
        self.register_buffer("_unit", torch.ones(self.fixed_d), persistent=False)

    @property
    def factor(self) -> int:
        """s = p / q, the resize factor."""
        return self.patch_size // self.token_patch

    @property
    def dim(self) -> int:
        """D = q*q*C, the dimension of one token."""
        return self.token_patch * self.token_patch * self.in_chans

    @property
    def fixed_d(self) -> int:
        """Tokens are whole resized patches: the only latent dimension is D."""
        return self.dim

    def _check_d(self, d: int) -> int:
        if d != self.fixed_d:
            raise ValueError(
                f"the pixel tokenizer with {self.token_patch}x{self.token_patch}x{self.in_chans} tokens has latent "
                f"dimension d={self.fixed_d}, got d={d}"
            )
        return d

    # ------------------------------------------------------------------ transforms
    def encode(self, x: torch.Tensor, d: int, whiten: bool = False) -> torch.Tensor:
        """Images (B, C, H, W) -> tokens (B, N, D), N = HW / p^2; ``whiten`` is the identity here."""
        self._check_d(d)
        check_images(x, self.in_chans, self.patch_size, check_finite=False)
        small = F.avg_pool2d(x.float(), self.factor) if self.factor > 1 else x.float()  # (B, C, H/s, W/s)
        return patchify(small, self.token_patch).to(x.dtype)  # (B, N, q*q*C)

    def decode(self, z: torch.Tensor, hw: tuple[int, int], whiten: bool = False) -> torch.Tensor:
        """Tokens (B, N, D) -> images (B, C, H, W): unpatchify at H/s x W/s, then repeat each pixel s x s."""
        self._check_d(z.shape[-1])
        h, w = int(hw[0]), int(hw[1])
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"decode: height and width must be divisible by the patch size {self.patch_size}, got {h}x{w}")
        small = unpatchify(z.float(), self.token_patch, (h // self.factor, w // self.factor))  # (B, C, H/s, W/s)
        if self.factor > 1:
            small = small.repeat_interleave(self.factor, dim=-2).repeat_interleave(self.factor, dim=-1)
        return small.to(z.dtype)  # (B, C, H, W)

    def latent_std(self, d: int) -> torch.Tensor:
        """(d,) ones: pixel tokens are used at the scale of the normalised pixels (DiT on pixels)."""
        self._check_d(d)
        return self._unit

    @torch.no_grad()
    def patch_affine(self, d: int, whiten: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (d, p*p*C), c (d,)) in float64 with ``encode(x, d) = patchify(x, p) @ A.T + c`` (c = 0)."""
        self._check_d(d)
        c, p, q, s = self.in_chans, self.patch_size, self.token_patch, self.factor
        # A box average is linear: apply encode to the identity basis of one p x p patch.
        eye = torch.eye(c * p * p, dtype=torch.float64).reshape(-1, c, p, p)  # (P, C, p, p)
        small = F.avg_pool2d(eye, s) if s > 1 else eye
        a = patchify(small, q)[:, 0, :].T.contiguous()  # (d, P)
        return a, torch.zeros(d, dtype=torch.float64)

    # ------------------------------------------------------------------ persistence
    def metadata(self) -> dict[str, str]:
        return {
            "format": self.FORMAT,
            "kind": self.KIND,
            "patch_size": str(self.patch_size),
            "token_patch": str(self.token_patch),
            "in_chans": str(self.in_chans),
            "d": str(self.fixed_d),
            "norm_mean": json.dumps(list(self.norm_mean)),
            "norm_std": json.dumps(list(self.norm_std)),
        }

    def save(self, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> None:
        """Write the (tensor-free) artifact as safetensors metadata, atomically."""
        save_safetensors({}, path, {**(extra_metadata or {}), **self.metadata()})

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, str], source: str = "tokenizer") -> "PixelTokenizer":
        """Rebuild from :meth:`metadata` (``tensors`` is unused: there are none)."""
        if meta.get("format") != cls.FORMAT:
            raise ValueError(f"{source}: not a pixel-tokenizer artifact (expected format {cls.FORMAT!r}, got {meta.get('format')!r})")
        return cls(
            int(meta["patch_size"]), int(meta["token_patch"]), int(meta["in_chans"]),
            json.loads(meta["norm_mean"]), json.loads(meta["norm_std"]),
        )

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "PixelTokenizer":
        """Read an artifact written by :meth:`save`."""
        _, meta = cls.read_artifact(path, map_location)
        return cls.from_tensors({}, meta, source=str(path))

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, token_patch={self.token_patch}, in_chans={self.in_chans}, d={self.fixed_d}"
