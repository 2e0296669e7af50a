"""Latent-noise injection (Fig. 1): noise added in the top-d PCA latent, shown to the network as an image.

    x_t = mean + V_d^T (gamma_t V_d (x_0 - mean) + sigma_t s * eps),   eps ~ N(0, I_d)

with s = 1 (noise on the raw PCA coordinates) or s = sqrt(eigenvalue_i) (``whiten=True``: noise on
unit-variance latents). The input is therefore also projected onto the top-d subspace: the network
never sees the D - d dimensions PCA drops, and must predict them (Eq. 4).

Whitening is the default. The paper leaves the latent scale open, but its lambda_t = 1/(1+sigma^2)
equals gamma^2 under the standard map between scaled and unscaled noise only on unit-variance data,
and raw coordinates of natural patches differ in scale by tens of times, so sigma up to sqrt(2)
would barely touch the first components and drown the last.

``space='pixel'`` is the classical DAE of the ablations: x_t = gamma_t x_0 + sigma_t eps on all D
pixel dimensions, with no projection.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .amp import float32_region
from .checks import check_images
from .schedule import LinearSigmaSchedule, NoiseSchedule
from .tokenizer import PatchPCA, patchify, unpatchify

__all__ = ["NoisyBatch", "LatentNoise", "AddLatentNoise", "NOISE_SPACES"]

NOISE_SPACES = ("latent", "pixel")


@dataclass
class NoisyBatch:
    """A corrupted batch and what the loss needs.

    x_t: (B, C, H, W) network input; t: (B,) long levels; gamma, sigma, weight: (B,) float32
    (weight = lambda_t); eps: the unit Gaussian draw, (B, N, d) in latent space or (B, C, H, W) in
    pixel space.
    """

    x_t: torch.Tensor
    t: torch.Tensor
    gamma: torch.Tensor
    sigma: torch.Tensor
    weight: torch.Tensor
    eps: torch.Tensor


class LatentNoise(nn.Module):
    """Batched latent-noise transform for the training step (any device; float32 math).

    Args:
        tokenizer: the fitted :class:`PatchPCA` (required for ``space='latent'``).
        d: latent dimension the noise lives in (Tab. 2: 16-32 best for 16x16x3 patches).
        whiten: scale the noise by the component standard deviations (see module docstring).
        space: ``'latent'`` (l-DAE) or ``'pixel'`` (classical DAE ablation).
        schedule: gamma/sigma/lambda tables; l-DAE's linear sigma schedule by default.
    """

    def __init__(
        self,
        tokenizer: PatchPCA | None,
        d: int,
        whiten: bool = True,
        space: str = "latent",
        schedule: NoiseSchedule | None = None,
    ) -> None:
        super().__init__()
        if space not in NOISE_SPACES:
            raise ValueError(f"noise space must be one of {NOISE_SPACES}, got {space!r}")
        if space == "latent" and tokenizer is None:
            raise ValueError("latent noise needs a fitted PatchPCA tokenizer (PatchPCA.fit or `ldae fit-pca`)")
        if tokenizer is not None:
            tokenizer._check_d(d)
        self.tokenizer = tokenizer
        self.d = int(d)
        self.whiten = bool(whiten)
        self.space = space
        self.schedule = schedule or LinearSigmaSchedule()

    def forward(
        self,
        x0: torch.Tensor,
        t: torch.Tensor | int | None = None,
        generator: torch.Generator | None = None,
        check_t: bool = True,
    ) -> NoisyBatch:
        """Corrupt clean images x0 (B, C, H, W) at levels t ((B,), an int, or None = uniform)."""
        b = x0.shape[0]
        if t is None:
            t, check_t = self.schedule.sample_t(b, x0.device, generator), False
        elif isinstance(t, int) or (isinstance(t, torch.Tensor) and t.ndim == 0):
            t = torch.full((b,), int(t), dtype=torch.long, device=x0.device)
        t = t.to(x0.device)
        gamma, sigma, weight = self.schedule.lookup(t, check=check_t)  # (B,) each
        x_t, eps = self.corrupt(x0, gamma, sigma, generator)
        return NoisyBatch(x_t=x_t, t=t, gamma=gamma, sigma=sigma, weight=weight, eps=eps)

    def corrupt(
        self, x0: torch.Tensor, gamma: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t (B, C, H, W) in x0's dtype, eps) for per-sample gamma, sigma (B,)."""
        # The corruption is data preparation: float32 even inside the training step's bf16 autocast.
        with float32_region(x0.device):
            return self._corrupt(x0, gamma.float(), sigma.float(), generator)

    def _corrupt(self, x0, gamma, sigma, generator):
        x = x0.float()
        if self.space == "pixel":
            eps = _randn(x.shape, x.device, generator)
            x_t = gamma[:, None, None, None] * x + sigma[:, None, None, None] * eps
            return x_t.to(x0.dtype), eps
        tok = self.tokenizer
        assert tok is not None
        p = tok.patch_size
        v = tok.components[: self.d]  # (d, D)
        z = (patchify(x, p) - tok.mean) @ v.T  # (B, N, d)
        eps = _randn(z.shape, x.device, generator)
        scale = tok.latent_std(self.d) if self.whiten else torch.ones_like(tok.eigenvalues[: self.d])
        z_t = gamma[:, None, None] * z + sigma[:, None, None] * (eps * scale)  # (B, N, d)
        x_t = unpatchify(z_t @ v + tok.mean, p, x.shape[-2:])  # (B, C, H, W)
        return x_t.to(x0.dtype), eps

    def extra_repr(self) -> str:
        return f"d={self.d}, whiten={self.whiten}, space={self.space!r}, schedule={self.schedule}"


def _randn(shape, device, generator: torch.Generator | None) -> torch.Tensor:
    # A generator fixes its device; draw there and move, so CPU-seeded runs reproduce on any device.
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


class AddLatentNoise:
    """Per-sample, torchvision-style form of :class:`LatentNoise` for data pipelines and figures.

    Called on one normalised image (C, H, W) it returns the noisy image (C, H, W) at level ``t``
    (a fixed int, or uniform when None); ``return_t=True`` returns ``(image, t)``.
    """

    def __init__(self, noise: LatentNoise, t: int | None = None, return_t: bool = False, generator: torch.Generator | None = None) -> None:
        if t is not None:
            noise.schedule.check_t(torch.tensor([t]))
        self.noise, self.t, self.return_t, self.generator = noise, t, return_t, generator

    @torch.no_grad()
    def __call__(self, img: torch.Tensor):
        tok = self.noise.tokenizer
        chans = tok.in_chans if tok is not None else img.shape[0]
        if not isinstance(img, torch.Tensor) or img.ndim != 3:
            raise ValueError(f"expected one image tensor (C, H, W), got {getattr(img, 'shape', type(img))}")
        check_images(img[None], chans, tok.patch_size if tok is not None else 1, name="image")
        out = self.noise(img[None], self.t, generator=self.generator)
        return (out.x_t[0], int(out.t[0])) if self.return_t else out.x_t[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t={self.t}, {self.noise.extra_repr()})"
