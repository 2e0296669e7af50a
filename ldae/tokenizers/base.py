"""What every patch tokenizer shares: patches, its pixel contract and how its artifact is read.

An image is cut into non-overlapping p x p x C patches, each flattened to a D = p*p*C vector in the
order of ``torch.nn.functional.unfold`` (channel-major, then rows, then columns). A tokenizer (patch
PCA, patch AE / VAE, pixel) is fitted on such patches of images normalised with a per-channel
mean/std, and a model may only use it with the same patch size, channel count and normalisation.
:class:`PatchTokenizer` holds those facts, the fit counts, the input check, the compatibility check
and the safetensors reading, so each tokenizer's own file holds only its own math.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open

from ldae.utils.checks import check_images, check_tokenizer_compatible

__all__ = ["PatchTokenizer", "patchify", "unpatchify", "sample_image_patches", "DIT_NORM", "IMAGENET_NORM", "NORMS"]

# DiT's pixel range [-1, 1]: the paper builds on DiT, so this is the default normalisation.
DIT_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# MAE's per-channel ImageNet statistics, the alternative.
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The pixel normalisations by their flag name (``--norm``).
NORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {"dit": DIT_NORM, "imagenet": IMAGENET_NORM}


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, D) non-overlapping patches, N = HW/p^2, D = C p^2, in ``F.unfold``'s order.

    A reshape and one permuted copy: the same values as ``F.unfold(x, p, stride=p).transpose(1, 2)``
    (a test checks it) at a fraction of im2col's cost. Pixels beyond a multiple of p are dropped, as unfold does.
    """
    b, c, h, w = x.shape
    p = patch_size
    gh, gw = h // p, w // p
    x = x[..., : gh * p, : gw * p].reshape(b, c, gh, p, gw, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * p * p)


def unpatchify(patches: torch.Tensor, patch_size: int, hw: tuple[int, int]) -> torch.Tensor:
    """(B, N, D) -> (B, C, H, W); the exact inverse of :func:`patchify` (``F.fold``'s values, without col2im)."""
    b, n, dim = patches.shape
    p = patch_size
    gh, gw = hw[0] // p, hw[1] // p
    c = dim // (p * p)
    if gh * gw != n or c * p * p != dim:
        raise ValueError(f"cannot fold {n} patches of {dim} values with patch size {p} into a {hw[0]}x{hw[1]} image")
    x = patches.reshape(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, gh * p, gw * p)
    if (gh * p, gw * p) != tuple(hw):  # rows and columns no patch covers are zero, as F.fold leaves them
        x = F.pad(x, (0, hw[1] - gw * p, 0, hw[0] - gh * p))
    return x


@torch.no_grad()
def sample_image_patches(
    batches: Iterable[torch.Tensor | tuple | list],
    patch_size: int,
    in_chans: int,
    patches_per_image: int | None = None,
    random_offset: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Iterator[list[torch.Tensor]]:
    """Per batch of normalised images (B, C, H, W) (or (batch, label) pairs), the sampled patches of each
    image: a list of B float32 tensors (N_i, D).

    Each image's non-overlapping patch grid is shifted by a random offset in [0, p) where the image
    leaves room (``random_offset``), then ``patches_per_image`` grid cells are drawn without
    replacement (all of them when None). Every tokenizer fit samples through here, so PCA, AE and VAE
    see the same patches for the same seed.
    """
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        check_images(x, in_chans, 1, name="fit batch")
        if device is not None:
            x = x.to(device)
        h, w = x.shape[-2:]
        if h < patch_size or w < patch_size:
            raise ValueError(f"fit batch: images of {h}x{w} are smaller than the patch size {patch_size}")
        picked = []
        for img in x:
            oy = ox = 0
            if random_offset:
                oy = int(torch.randint(0, h % patch_size + 1, (1,), generator=generator))
                ox = int(torch.randint(0, w % patch_size + 1, (1,), generator=generator))
            gh, gw = (h - oy) // patch_size, (w - ox) // patch_size
            crop = img[None, :, oy : oy + gh * patch_size, ox : ox + gw * patch_size]
            patches = patchify(crop.float(), patch_size)[0]  # (N, D)
            if patches_per_image is not None and patches_per_image < patches.shape[0]:
                keep = torch.randperm(patches.shape[0], generator=generator)[:patches_per_image]
                patches = patches[keep.to(patches.device)]
            picked.append(patches)
        yield picked


class PatchTokenizer(nn.Module):
    """Base of the patch tokenizers: ``patch_size``, ``in_chans``, ``norm_mean`` / ``norm_std`` (the pixel
    normalisation it was fitted under), ``num_images`` / ``num_patches`` (how much data the fit saw)."""

    def __init__(
        self,
        patch_size: int,
        in_chans: int,
        norm_mean: Sequence[float],
        norm_std: Sequence[float],
        num_images: int = 0,
        num_patches: int = 0,
    ) -> None:
        super().__init__()
        if len(norm_mean) != in_chans or len(norm_std) != in_chans:
            raise ValueError(f"norm_mean/norm_std need {in_chans} values, got {list(norm_mean)} / {list(norm_std)}")
        self.patch_size = int(patch_size)
        self.in_chans = int(in_chans)
        self.norm_mean = tuple(float(v) for v in norm_mean)
        self.norm_std = tuple(float(v) for v in norm_std)
        self.num_images = int(num_images)
        self.num_patches = int(num_patches)

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """Checked images (B, C, H, W) -> float32 patches (B, N, D)."""
        check_images(x, self.in_chans, self.patch_size, check_finite=False)
        return patchify(x.float(), self.patch_size)

    # Linear tokenizers (PCA, AE, VAE) have a ``mean`` patch and ``latent_std``; these are their maps.
    def _linear_encode(self, x: torch.Tensor, weight: torch.Tensor, whiten: bool) -> torch.Tensor:
        """Images (B, C, H, W) -> latents (B, N, d) = (patches - mean) @ weight.T, divided by latent_std if whitened."""
        z = (self._patches(x) - self.mean) @ weight.T  # (B, N, d)
        if whiten:
            z = z / self.latent_std(weight.shape[0])
        return z.to(x.dtype)

    def _linear_decode(self, z: torch.Tensor, weight: torch.Tensor, hw: tuple[int, int], whiten: bool) -> torch.Tensor:
        """Latents (B, N, d) -> images (B, C, H, W) = unpatchify(z @ weight + mean), z scaled back if whitened."""
        zf = z.float()
        if whiten:
            zf = zf * self.latent_std(weight.shape[0])
        return unpatchify(zf @ weight + self.mean, self.patch_size, hw).to(z.dtype)

    def check_compatible(
        self, patch_size: int, in_chans: int, norm_mean: Sequence[float] | None = None, norm_std: Sequence[float] | None = None
    ) -> None:
        """Raise ``ValueError`` listing every way this tokenizer differs from what a model expects."""
        check_tokenizer_compatible(self, patch_size, in_chans, norm_mean, norm_std)

    @staticmethod
    def read_artifact(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """(tensors, metadata) of a safetensors artifact; no pickle involved. ``FileNotFoundError`` /
        ``ValueError`` (one line) for a missing file or one that is not safetensors."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer artifact not found: {path} (fit one with `ldae fit-pca` or `ldae fit-tokenizer`)")
        try:
            with safe_open(str(path), framework="pt", device=str(map_location)) as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except Exception as e:  # not a safetensors file at all
            raise ValueError(f"{path}: not a tokenizer artifact (safetensors could not read it: {e})") from e
