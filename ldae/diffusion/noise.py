"""Latent-noise injection (Fig. 1): noise added in the top-d PCA latent, shown to the network as an image.

    x_t = mean + V_d^T (gamma_t V_d (x_0 - mean) + sigma_t s * eps),   eps ~ N(0, I_d)

with the latent scale s chosen by ``latent_scale``:

* ``'whiten'`` (default): s_i = sqrt(eigenvalue_i), noise on unit-variance latents;
* ``'raw'``: s = 1, noise on the raw PCA coordinates;
* ``'global'``: one s for every dimension, s = sqrt(mean_i eigenvalue_i), so the latent has unit
  *average* variance, as latent-diffusion VAEs scale theirs (DiT's 0.18215).

The input is therefore also projected onto the top-d subspace: the network never sees the D - d
dimensions PCA drops, and must predict them (Eq. 4).

Whitening is the default. The paper leaves the latent scale open, but its lambda_t = 1/(1+sigma^2)
equals gamma^2 under the standard map between scaled and unscaled noise only on unit-variance data,
and raw coordinates of natural patches differ in scale by tens of times, so sigma up to sqrt(2)
would barely touch the first components and drown the last. The global scale keeps the components'
relative scales (the first dominates, as in raw coordinates) at the unit scale the schedule assumes.

``space='pixel'`` is the classical DAE of the ablations: x_t = gamma_t x_0 + sigma_t eps on all D
pixel dimensions, with no projection.

The earlier rows of the paper's trajectory (Tab. 2, Tab. 3 rows 1-3) work on the tokens themselves.
There the transform runs in latent coordinates w = encode(x_0) / s: w_t = gamma_t w_0 + sigma_t eps, and the network input is w_t itself
(``input_space='latent'``) or the image decode(w_t) (``'image'``, the inverse projection; for PCA the
same x_t as above). Any tokenizer of :mod:`ldae.tokenizers.registry` (patch PCA, AE, VAE, pixel) works here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ldae.diffusion.schedules import LinearSigmaSchedule, NoiseSchedule
from ldae.tokenizers.pca import PatchPCA, patchify, unpatchify
from ldae.tokenizers.registry import patch_affine
from ldae.utils.amp import float32_region
from ldae.utils.checks import check_images

__all__ = ["NoisyBatch", "LatentNoise", "AddLatentNoise", "NOISE_SPACES", "INPUT_SPACES", "LATENT_SCALES"]

NOISE_SPACES = ("latent", "pixel")
# What the network is shown: the noisy image (l-DAE), or the noisy latent tokens (DiT on a tokenizer).
INPUT_SPACES = ("image", "latent")
# How latent coordinates are scaled before the noise is added (see the module docstring).
LATENT_SCALES = ("whiten", "raw", "global")


@dataclass
class NoisyBatch:
    """A corrupted batch and what the loss needs.

    x_t: the network input, (B, C, H, W) noisy images, or (B, N, d) noisy latents when the input
    space is ``'latent'``; t: (B,) long levels; gamma, sigma, weight: (B,) float32
    (weight = lambda_t); eps: the unit Gaussian draw, (B, N, d) in latent space or (B, C, H, W) in
    pixel space; z0: the clean latents (B, N, d) in the noise's coordinates, when the transform keeps
    them (latent inputs and latent or decoded targets), else None.
    """

    x_t: torch.Tensor
    t: torch.Tensor
    gamma: torch.Tensor
    sigma: torch.Tensor
    weight: torch.Tensor
    eps: torch.Tensor
    z0: torch.Tensor | None = None


class LatentNoise(nn.Module):
    """Batched latent-noise transform for the training step (any device; float32 math).

    Args:
        tokenizer: the fitted :class:`PatchPCA`, or any :class:`ldae.tokenizers.registry.Tokenizer`
            (required for ``space='latent'``).
        d: latent dimension the noise lives in (Tab. 2: 16-32 best for 16x16x3 patches).
        whiten: shorthand for ``latent_scale``: True = ``'whiten'``, False = ``'raw'``.
        space: ``'latent'`` (l-DAE) or ``'pixel'`` (classical DAE ablation).
        schedule: gamma/sigma/lambda tables; l-DAE's linear sigma schedule by default.
        input_space: ``'image'`` (x_t is a noisy image) or ``'latent'`` (x_t is the noisy tokens).
        keep_latent: also return the clean latents ``z0`` (for latent and decoded targets).
        latent_scale: ``'whiten'``, ``'raw'`` or ``'global'`` (module docstring); overrides ``whiten``.
    """

    def __init__(
        self,
        tokenizer: PatchPCA | None,
        d: int,
        whiten: bool = True,
        space: str = "latent",
        schedule: NoiseSchedule | None = None,
        input_space: str = "image",
        keep_latent: bool = False,
        latent_scale: str | None = None,
    ) -> None:
        super().__init__()
        if space not in NOISE_SPACES:
            raise ValueError(f"noise space must be one of {NOISE_SPACES}, got {space!r}")
        if input_space not in INPUT_SPACES:
            raise ValueError(f"input space must be one of {INPUT_SPACES}, got {input_space!r}")
        if space == "pixel" and (input_space != "image" or keep_latent):
            raise ValueError(
                "pixel-space noise is the classical DAE on images (image input, image target); for a DDM on "
                "pixel tokens (Fig. 5) use the pixel tokenizer (`ldae fit-tokenizer --kind pixel`) with latent noise"
            )
        if space == "latent" and tokenizer is None:
            raise ValueError("latent noise needs a fitted PatchPCA tokenizer (PatchPCA.fit or `ldae fit-pca`)")
        latent_scale = latent_scale if latent_scale is not None else ("whiten" if whiten else "raw")
        if latent_scale not in LATENT_SCALES:
            raise ValueError(f"latent scale must be one of {LATENT_SCALES}, got {latent_scale!r}")
        if tokenizer is not None:
            tokenizer._check_d(d)
        self.tokenizer = tokenizer
        self.d = int(d)
        self.latent_scale = latent_scale
        self.whiten = latent_scale == "whiten"  # the tokenizers' own per-dimension whitening
        self.space = space
        self.schedule = schedule or LinearSigmaSchedule()
        self.input_space = input_space
        self.keep_latent = bool(keep_latent)

    def forward(
        self,
        x0: torch.Tensor,
        t: torch.Tensor | int | None = None,
        generator: torch.Generator | None = None,
        check_t: bool = True,
    ) -> NoisyBatch:
        """Corrupt clean images x0 (B, C, H, W) at levels t ((B,), an int, or None = uniform)."""
        t, gamma, sigma, weight = self._levels(x0.shape[0], x0.device, t, generator, check_t)
        if self.input_space == "latent" or self.keep_latent:
            z0, z_t, eps = self.corrupt_latent(x0, gamma, sigma, generator)  # (B, N, d) each
            x_t = z_t if self.input_space == "latent" else self.decode_latent(z_t, x0.shape[-2:])
            return NoisyBatch(x_t=x_t.to(x0.dtype), t=t, gamma=gamma, sigma=sigma, weight=weight, eps=eps, z0=z0)
        x_t, eps = self.corrupt(x0, gamma, sigma, generator)
        return NoisyBatch(x_t=x_t, t=t, gamma=gamma, sigma=sigma, weight=weight, eps=eps)

    def forward_patches(
        self,
        p0: torch.Tensor,
        hw: tuple[int, int],
        t: torch.Tensor | int | None = None,
        generator: torch.Generator | None = None,
        check_t: bool = True,
    ) -> NoisyBatch:
        """:meth:`forward` on patches: clean float32 patches p0 (B, N, D) of (H, W) = ``hw`` images.

        x_t is the noisy image as float32 patches (B, N, D), the same values as ``patchify(forward(x0).x_t)``
        up to float32 rounding, with the same draws of t and eps. The training step uses this form: the
        network embeds patches and predicts patches, so no image is assembled and cut up again.
        Image input and image target only (``input_space='image'``, ``keep_latent=False``).
        """
        if self.input_space != "image" or self.keep_latent:
            raise ValueError("forward_patches is the image-input, image-target transform; use forward() for latent inputs or targets")
        t, gamma, sigma, weight = self._levels(p0.shape[0], p0.device, t, generator, check_t)
        with float32_region(p0.device):
            x_t, eps = self._corrupt_patches(p0.float(), hw, gamma.float(), sigma.float(), generator)
        return NoisyBatch(x_t=x_t, t=t, gamma=gamma, sigma=sigma, weight=weight, eps=eps)

    def _levels(
        self, b: int, device: torch.device, t: torch.Tensor | int | None, generator: torch.Generator | None, check_t: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t, gamma, sigma, weight), each (B,): t drawn uniformly when None, an int broadcast to the batch."""
        if t is None:
            t, check_t = self.schedule.sample_t(b, device, generator), False
        elif isinstance(t, int) or (isinstance(t, torch.Tensor) and t.ndim == 0):
            t = torch.full((b,), int(t), dtype=torch.long, device=device)
        t = t.to(device)
        return (t, *self.schedule.lookup(t, check=check_t))

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> float32 latents (B, N, d) in the noise's coordinates (divided by the latent scale)."""
        if self.tokenizer is None:
            raise ValueError("latent coordinates need a tokenizer; this transform adds pixel-space noise")
        with float32_region(x.device):
            z = self.tokenizer.encode(x.float(), self.d, whiten=self.whiten)
            return z / self.global_scale() if self.latent_scale == "global" else z

    def decode_latent(self, z: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Latents (B, N, d) in the noise's coordinates -> float32 images (B, C, H, W) (inverse projection)."""
        if self.tokenizer is None:
            raise ValueError("latent coordinates need a tokenizer; this transform adds pixel-space noise")
        with float32_region(z.device):
            z = z.float() * self.global_scale() if self.latent_scale == "global" else z.float()
            return self.tokenizer.decode(z, hw, whiten=self.whiten)

    def global_scale(self) -> torch.Tensor:
        """The ``'global'`` latent scale: sqrt of the mean variance of the top-d latents (a 0-dim float32 tensor)."""
        if self.tokenizer is None:
            raise ValueError("a latent scale needs a tokenizer; this transform adds pixel-space noise")
        return self.tokenizer.latent_std(self.d).float().square().mean().sqrt()

    def latent_scales(self) -> torch.Tensor:
        """(d,) float32 scale s_i of each latent dimension: noise sigma_t s_i eps_i in raw coordinates."""
        if self.tokenizer is None:
            raise ValueError("a latent scale needs a tokenizer; this transform adds pixel-space noise")
        std = self.tokenizer.latent_std(self.d).float()
        if self.latent_scale == "whiten":
            return std
        return torch.ones_like(std) * (self.global_scale() if self.latent_scale == "global" else 1.0)

    @torch.no_grad()
    def patch_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (d, P), c (d,)) float64 with ``encode_latent(x) = patchify(x) @ A.T + c`` (P = p*p*C): the exact
        affine map from a patch to its latent in the noise's coordinates (for folding into a patch embedding)."""
        if self.tokenizer is None:
            raise ValueError("latent coordinates need a tokenizer; this transform adds pixel-space noise")
        a, c = patch_affine(self.tokenizer, self.d, self.whiten)
        if self.latent_scale == "global":
            g = self.global_scale().double()
            a, c = a / g, c / g
        return a, c

    def corrupt_latent(
        self, x0: torch.Tensor, gamma: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z0, z_t, eps), each float32 (B, N, d): z_t = gamma z0 + sigma eps in the noise's latent coordinates."""
        z0 = self.encode_latent(x0)  # (B, N, d)
        with float32_region(x0.device):
            eps = _randn(z0.shape, x0.device, generator)
            z_t = gamma.float()[:, None, None] * z0 + sigma.float()[:, None, None] * eps  # (B, N, d)
        return z0, z_t, eps

    def corrupt(
        self, x0: torch.Tensor, gamma: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t (B, C, H, W) in x0's dtype, eps) for per-sample gamma, sigma (B,)."""
        # The corruption is data preparation: float32 even inside the training step's bf16 autocast.
        with float32_region(x0.device):
            return self._corrupt(x0, gamma.float(), sigma.float(), generator)

    def _corrupt(self, x0, gamma, sigma, generator):
        x = x0.float()
        if self.space == "latent" and not isinstance(self.tokenizer, PatchPCA):  # through its encode / decode
            _, z_t, eps = self.corrupt_latent(x, gamma, sigma, generator)
            return self.decode_latent(z_t, x.shape[-2:]).to(x0.dtype), eps
        p = self.tokenizer.patch_size if self.tokenizer is not None else 1
        x_t, eps = self._corrupt_patches(patchify(x, p), x.shape[-2:], gamma, sigma, generator)
        return unpatchify(x_t, p, x.shape[-2:]).to(x0.dtype), eps

    def _corrupt_patches(
        self, p0: torch.Tensor, hw: tuple[int, int], gamma: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 patches p0 (B, N, D) -> (noisy patches (B, N, D), eps); gamma, sigma (B,) float32."""
        b, n, dim = p0.shape
        tok = self.tokenizer
        if self.space == "pixel":
            # eps is drawn in image layout (B, C, H, W), so a seed gives the same noise in either form.
            p = math.isqrt(hw[0] * hw[1] // n)  # N = HW / p^2 patches of D = C p^2 values
            eps = _randn((b, dim // (p * p), *hw), p0.device, generator)
            return gamma[:, None, None] * p0 + sigma[:, None, None] * patchify(eps, p), eps
        if not isinstance(tok, PatchPCA):
            x_t, eps = self._corrupt(unpatchify(p0, tok.patch_size, hw), gamma, sigma, generator)
            return patchify(x_t, tok.patch_size), eps
        v = tok.components[: self.d]  # (d, D)
        flat = p0.reshape(b * n, dim)
        z = ((flat - tok.mean) @ v.T).reshape(b, n, self.d)  # (B, N, d)
        eps = _randn(z.shape, p0.device, generator)
        scale = self.latent_scales().to(p0.device)  # (d,)
        z_t = gamma[:, None, None] * z + sigma[:, None, None] * (eps * scale)  # (B, N, d)
        return torch.addmm(tok.mean, z_t.reshape(b * n, self.d), v).reshape(b, n, dim), eps  # mean + z_t V_d

    def extra_repr(self) -> str:
        extra = f", input_space={self.input_space!r}" if self.input_space != "image" else ""
        return f"d={self.d}, latent_scale={self.latent_scale!r}, space={self.space!r}, schedule={self.schedule}{extra}"


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
