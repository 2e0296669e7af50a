"""Patch-wise linear autoencoder and VAE tokenizers (Sec. 4.2, Tab. 2, Fig. 4).

An image is cut into non-overlapping p x p x C patches, flattened as :func:`ldae.tokenizers.base.patchify`
does (D = p*p*C), and each patch is encoded on its own by one linear map:

    AE:   z = V (x - m),                                    x_hat = U^T z + m
          loss = ||x - x_hat||^2
    VAE:  q(z | x) = N(V (x - m), diag(exp(logvar))),       x_hat = U^T z + m,  z ~ q(z | x)
          loss = ||x - x_hat||^2 + kl_weight * KL[q(z | x) | N(0, I)]

U and V are d x D matrices trained by gradient descent (Adam, cosine decay) on randomly sampled
patches. Patch-wise PCA is the special case V = U with V V^T = I (:mod:`ldae.tokenizers.pca`), which is
why the AE's reconstruction error can only approach, never beat, PCA's at the same d (Eckart-Young);
:meth:`PatchAE.fit` records both numbers.

Choices the paper leaves open, made here:

* Centring: m is the mean patch, fixed before training, as in :class:`ldae.tokenizers.pca.PatchPCA`, so
  AE, VAE and PCA differ only in the constraint on U, V and in the KL term.
* VAE posterior variance: one learned log-variance per latent dimension, independent of x (the
  linear VAE of Lucas et al., 2019), so the encoder stays the single d x D matrix of the paper.
* KL weight 1 against the per-patch sum of squares: the paper's loss as written. On pixels in
  [-1, 1] that is a Gaussian decoder of variance 1/2, so latent directions along which patches vary
  less than about that are driven to the prior (posterior collapse); ``kl_weight`` trades this off.
* ``encode`` returns the posterior mean (DiT samples the posterior): the tokenizer stays affine, so
  a fixed-t export folds it into the ViT's patch embedding exactly.
* Latent scale: ``latent_scale`` holds the standard deviation of each latent dimension over the fit
  patches (the per-dimension form of DiT's 0.18215 latent scale); ``whiten=True`` divides by it, the
  same convention as PCA's whitening by the component standard deviations.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Sequence

import torch

from ldae.tokenizers.base import DIT_NORM, PatchTokenizer, sample_image_patches
from ldae.utils.io import save_safetensors

__all__ = ["PatchAE", "PatchVAE", "gaussian_kl", "sample_patches"]


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL[N(mu, diag(exp(logvar))) | N(0, I)] summed over the last dimension: (..., d) -> (...)."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)


@torch.no_grad()
def sample_patches(
    batches: Iterable[torch.Tensor | tuple | list],
    patch_size: int,
    in_chans: int = 3,
    patches_per_image: int | None = None,
    max_patches: int | None = None,
    random_offset: bool = True,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, int]:
    """(patches (M, D) float32, number of images used) from normalised image batches (B, C, H, W).

    Patches are drawn by :func:`ldae.tokenizers.base.sample_image_patches`, as for
    :meth:`PatchPCA.fit`; collection stops after ``max_patches`` patches (shuffle the stream).
    """
    gen = torch.Generator().manual_seed(seed)
    picked: list[torch.Tensor] = []
    total = num_images = 0
    for per_image in sample_image_patches(batches, patch_size, in_chans, patches_per_image, random_offset, gen, device):
        for patches in per_image:
            if max_patches is not None:
                patches = patches[: max_patches - total]
            picked.append(patches)
            total += patches.shape[0]
            num_images += 1
            if max_patches is not None and total >= max_patches:
                return torch.cat(picked), num_images
    if not picked:
        raise ValueError("fit: no images were given")
    return torch.cat(picked), num_images


class PatchAE(PatchTokenizer):
    """A fitted patch-wise linear autoencoder (frozen: every tensor is a buffer, none a parameter).

    Buffers (float32): ``encoder`` V (d, D), ``decoder`` U (d, D), ``mean`` m (D,) and
    ``latent_scale`` (d,). Attributes as :class:`ldae.tokenizers.pca.PatchPCA`: ``patch_size``,
    ``in_chans``, ``norm_mean`` / ``norm_std``, ``num_images``, ``num_patches``; ``fit_info`` holds
    the training record (steps, final reconstruction error and PCA's at the same d).

    Unlike PCA, whose components are ordered, the d latent dimensions are trained together, so the
    tokenizer works only at its own d (``fixed_d``).
    """

    FORMAT = "ldae.patch_ae.v1"
    KIND = "ae"
    TENSORS = ("encoder", "decoder", "mean", "latent_scale")
    encoder: torch.Tensor
    decoder: torch.Tensor
    mean: torch.Tensor
    latent_scale: torch.Tensor

    def __init__(
        self,
        encoder: torch.Tensor,
        decoder: torch.Tensor,
        mean: torch.Tensor,
        latent_scale: torch.Tensor | None = None,
        patch_size: int = 16,
        in_chans: int = 3,
        norm_mean: Sequence[float] = DIT_NORM[0],
        norm_std: Sequence[float] = DIT_NORM[1],
        num_images: int = 0,
        num_patches: int = 0,
        fit_info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(patch_size, in_chans, norm_mean, norm_std, num_images, num_patches)
        dim = patch_size * patch_size * in_chans
        d = encoder.shape[0] if encoder.ndim == 2 else -1
        latent_scale = torch.ones(max(d, 0)) if latent_scale is None else latent_scale
        if encoder.shape != (d, dim) or decoder.shape != (d, dim) or mean.shape != (dim,) or latent_scale.shape != (d,):
            raise ValueError(
                f"expected encoder and decoder (d, {dim}), mean ({dim},), latent_scale (d,) for patch {patch_size} and "
                f"{in_chans} channels, got {tuple(encoder.shape)}, {tuple(decoder.shape)}, {tuple(mean.shape)}, "
                f"{tuple(latent_scale.shape)}"
            )
        self.register_buffer("encoder", encoder.float().contiguous())
        self.register_buffer("decoder", decoder.float().contiguous())
        self.register_buffer("mean", mean.float().contiguous())
        self.register_buffer("latent_scale", latent_scale.float().contiguous())
        self.fit_info = dict(fit_info or {})

    # ------------------------------------------------------------------ shape
    @property
    def dim(self) -> int:
        """D, the flattened patch dimension."""
        return self.mean.shape[0]

    @property
    def fixed_d(self) -> int:
        """The one latent dimension this tokenizer was trained for."""
        return self.encoder.shape[0]

    def _check_d(self, d: int) -> int:
        if d != self.fixed_d:
            raise ValueError(
                f"this patch {self.KIND.upper()} was trained for latent dimension d={self.fixed_d}, got d={d} "
                f"(fit another with `ldae fit-tokenizer --kind {self.KIND} --d {d}`)"
            )
        return d

    # ------------------------------------------------------------------ transforms
    def encode(self, x: torch.Tensor, d: int, whiten: bool = False) -> torch.Tensor:
        """Images (B, C, H, W) -> latents (B, N, d) (the posterior mean for a VAE)."""
        self._check_d(d)
        return self._linear_encode(x, self.encoder, whiten)

    def decode(self, z: torch.Tensor, hw: tuple[int, int], whiten: bool = False) -> torch.Tensor:
        """Latents (B, N, d) -> images (B, C, H, W) through the linear decoder U^T (mean restored)."""
        self._check_d(z.shape[-1])
        return self._linear_decode(z, self.decoder, hw, whiten)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """decode(encode(x)): images (B, C, H, W) -> their reconstruction (B, C, H, W)."""
        return self.decode(self.encode(x.float(), self.fixed_d), x.shape[-2:]).to(x.dtype)

    def latent_std(self, d: int) -> torch.Tensor:
        """(d,) standard deviation of each latent over the fit patches (floored so whitening never divides by 0)."""
        self._check_d(d)
        eps = torch.finfo(torch.float32).eps * self.latent_scale.max().clamp_min(1e-12)
        return self.latent_scale.clamp_min(eps)

    @torch.no_grad()
    def patch_affine(self, d: int, whiten: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (d, D), c (d,)) in float64 with ``encode(x, d, whiten) = patchify(x) @ A.T + c``."""
        self._check_d(d)
        a = self.encoder.double()
        if whiten:
            a = a / self.latent_std(d).double()[:, None]
        return a, -(a @ self.mean.double())

    def basis_images(self, k: int | None = None) -> torch.Tensor:
        """The first k encoder filters (rows of V) as (k, C, p, p) images min-max scaled to [0, 1] (Fig. 4)."""
        k = self.fixed_d if k is None else min(int(k), self.fixed_d)
        b = self.encoder[:k].reshape(k, self.in_chans, self.patch_size, self.patch_size)
        lo = b.flatten(1).min(1).values[:, None, None, None]
        hi = b.flatten(1).max(1).values[:, None, None, None]
        return (b - lo) / (hi - lo).clamp_min(1e-12)

    # ------------------------------------------------------------------ training
    @staticmethod
    def _make_init(d: int, dim: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        # Small random (not PCA) initial maps: the tokenizer must be found by gradient descent alone.
        std = 1.0 / math.sqrt(dim)
        return {"encoder": torch.randn(d, dim, generator=gen) * std, "decoder": torch.randn(d, dim, generator=gen) * std}

    @staticmethod
    def _objective(x: torch.Tensor, params: dict[str, torch.Tensor], kl_weight: float, gen: torch.Generator | None):
        """(loss, reconstruction, kl) on centred patches x (M, D); reconstruction = mean ||x - x_hat||^2."""
        z = x @ params["encoder"].T  # (M, d)
        rec = (x - z @ params["decoder"]).square().sum(-1).mean()
        return rec, rec, torch.zeros((), device=x.device)

    @classmethod
    def fit(
        cls,
        batches: Iterable[torch.Tensor | tuple | list],
        patch_size: int,
        d: int,
        norm_mean: Sequence[float] = DIT_NORM[0],
        norm_std: Sequence[float] = DIT_NORM[1],
        patches_per_image: int | None = None,
        max_patches: int | None = 1 << 17,
        steps: int = 3000,
        batch_size: int = 1024,
        lr: float | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        log_every: int = 0,
    ) -> "PatchAE":
        """Train on patches of normalised image batches (B, C, H, W) (or (batch, label) pairs).

        Patches are drawn as in :func:`sample_patches` into one bank (at most ``max_patches``), the
        mean patch is removed, then ``steps`` Adam steps on random minibatches of ``batch_size``
        patches, with a 5% linear warmup and cosine decay of ``lr`` to 0. The default lr is
        0.2 / sqrt(D): the maps' entries are of order 1 / sqrt(D), and Adam's steps have a fixed size,
        so the step shrinks with them (this lands within about 1-4% of PCA's reconstruction error for
        4x4 and 16x16 RGB patches). ``log_every`` > 0 prints the objective every that many steps.
        """
        return cls._fit(
            batches, patch_size, d, norm_mean, norm_std, patches_per_image, max_patches, steps, batch_size, lr, seed,
            device, log_every, kl_weight=0.0,
        )

    @classmethod
    def _fit(
        cls, batches, patch_size, d, norm_mean, norm_std, patches_per_image, max_patches, steps, batch_size, lr, seed,
        device, log_every, kl_weight: float,
    ) -> "PatchAE":
        in_chans = len(norm_mean)
        dim = patch_size * patch_size * in_chans
        if not 1 <= d <= dim:
            raise ValueError(f"latent dimension d must be in [1, {dim}] for {patch_size}x{patch_size}x{in_chans} patches, got {d}")
        lr = 0.2 / math.sqrt(dim) if lr is None else lr
        if steps < 1 or batch_size < 1 or lr <= 0:
            raise ValueError(f"need steps >= 1, batch_size >= 1 and lr > 0, got {steps}, {batch_size}, {lr}")
        patches, num_images = sample_patches(
            batches, patch_size, in_chans, patches_per_image, max_patches, seed=seed, device=device
        )
        if patches.shape[0] < 2:
            raise ValueError(f"fit: need at least 2 patches, got {patches.shape[0]}")
        gen = torch.Generator().manual_seed(seed)
        mean = patches.double().mean(0)
        x_all = (patches.double() - mean).float()  # (M, D) centred bank
        params = {k: v.to(x_all.device).requires_grad_() for k, v in cls._make_init(d, dim, gen).items()}
        opt = torch.optim.Adam(params.values(), lr=lr)
        warmup = max(1, steps // 20)

        def lr_factor(s: int) -> float:
            if s < warmup:
                return (s + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
        noise_gen = torch.Generator(device=x_all.device).manual_seed(seed + 1)
        m = x_all.shape[0]
        for step in range(steps):
            idx = torch.randint(0, m, (min(batch_size, m),), generator=gen).to(x_all.device)
            loss, rec, kl = cls._objective(x_all[idx], params, kl_weight, noise_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if log_every and (step % log_every == 0 or step == steps - 1):
                print(f"step {step:>6d}/{steps}  loss {loss.item():.5f}  reconstruction {rec.item():.5f}  kl {kl.item():.5f}")
        params = {k: v.detach() for k, v in params.items()}
        with torch.no_grad():
            z = x_all @ params["encoder"].T  # (M, d) deterministic (mean) latents
            evals = torch.linalg.eigvalsh(torch.cov(x_all.double().T, correction=0)).flip(0)
            info = {
                "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                # mean per-patch squared error on the bank, with the deterministic (mean) encoding
                "reconstruction_mse": (x_all - z @ params["decoder"]).square().sum(-1).mean().item(),
                "pca_reconstruction_mse": evals[d:].clamp_min(0).sum().item(),  # Eckart-Young optimum at d
                "total_variance": evals.clamp_min(0).sum().item(),
                **cls._extra_info(z, params, kl_weight),
            }
        return cls(
            **{k: v.cpu() for k, v in params.items()}, mean=mean.cpu(), latent_scale=z.std(0).cpu(),
            patch_size=patch_size, in_chans=in_chans, norm_mean=norm_mean, norm_std=norm_std,
            num_images=num_images, num_patches=m, fit_info=info, **cls._fit_kwargs(kl_weight),
        )

    @classmethod
    def _extra_info(cls, z: torch.Tensor, params: dict[str, torch.Tensor], kl_weight: float) -> dict[str, Any]:
        return {}

    @classmethod
    def _fit_kwargs(cls, kl_weight: float) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------ persistence
    def _tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in self.TENSORS}

    def metadata(self) -> dict[str, str]:
        return {
            "format": self.FORMAT,
            "kind": self.KIND,
            "patch_size": str(self.patch_size),
            "in_chans": str(self.in_chans),
            "d": str(self.fixed_d),
            "norm_mean": json.dumps(list(self.norm_mean)),
            "norm_std": json.dumps(list(self.norm_std)),
            "num_images": str(self.num_images),
            "num_patches": str(self.num_patches),
            "fit_info": json.dumps(self.fit_info, sort_keys=True),
        }

    def save(self, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> None:
        """Write the artifact as safetensors (atomic); ``extra_metadata`` records e.g. the fit command."""
        save_safetensors(self._tensors(), path, {**(extra_metadata or {}), **self.metadata()})

    @classmethod
    def _kwargs_from_metadata(cls, meta: dict[str, str]) -> dict[str, Any]:
        return {}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, str], source: str = "tokenizer") -> "PatchAE":
        """Rebuild from the tensors of :meth:`save` (or a model state dict) and :meth:`metadata`."""
        if meta.get("format") != cls.FORMAT:
            raise ValueError(f"{source}: not a patch-{cls.KIND} artifact (expected format {cls.FORMAT!r}, got {meta.get('format')!r})")
        missing = [k for k in cls.TENSORS if k not in tensors]
        if missing:
            raise ValueError(f"{source}: patch-{cls.KIND} tensors {missing} are missing")
        return cls(
            **{k: tensors[k] for k in cls.TENSORS},
            patch_size=int(meta["patch_size"]),
            in_chans=int(meta["in_chans"]),
            norm_mean=json.loads(meta["norm_mean"]),
            norm_std=json.loads(meta["norm_std"]),
            num_images=int(meta.get("num_images", 0)),
            num_patches=int(meta.get("num_patches", 0)),
            fit_info=json.loads(meta.get("fit_info", "{}")),
            **cls._kwargs_from_metadata(meta),
        )

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "PatchAE":
        """Read an artifact written by :meth:`save` (no pickle involved)."""
        tensors, meta = cls.read_artifact(path, map_location)
        return cls.from_tensors(tensors, meta, source=str(path))

    def extra_repr(self) -> str:
        return (
            f"patch_size={self.patch_size}, in_chans={self.in_chans}, dim={self.dim}, d={self.fixed_d}, "
            f"norm_mean={self.norm_mean}, norm_std={self.norm_std}, images={self.num_images}, patches={self.num_patches}"
        )


class PatchVAE(PatchAE):
    """A fitted patch-wise linear VAE: :class:`PatchAE` plus the per-dimension posterior log-variance
    ``logvar`` (d,) and the ``kl_weight`` it was trained with. ``encode`` returns the posterior mean."""

    FORMAT = "ldae.patch_vae.v1"
    KIND = "vae"
    TENSORS = PatchAE.TENSORS + ("logvar",)
    logvar: torch.Tensor

    def __init__(self, *args: Any, logvar: torch.Tensor | None = None, kl_weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        logvar = torch.zeros(self.fixed_d) if logvar is None else logvar
        if logvar.shape != (self.fixed_d,):
            raise ValueError(f"expected logvar ({self.fixed_d},), got {tuple(logvar.shape)}")
        self.register_buffer("logvar", logvar.float().contiguous())
        self.kl_weight = float(kl_weight)

    def kl(self, x: torch.Tensor) -> torch.Tensor:
        """Per-patch KL[q(z | x) | N(0, I)] of images (B, C, H, W) -> (B, N)."""
        mu = (self._patches(x) - self.mean) @ self.encoder.T  # (B, N, d)
        return gaussian_kl(mu, self.logvar.expand_as(mu))

    @staticmethod
    def _make_init(d: int, dim: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        init = PatchAE._make_init(d, dim, gen)
        init["logvar"] = torch.zeros(d)  # start at the prior's variance
        return init

    @staticmethod
    def _objective(x: torch.Tensor, params: dict[str, torch.Tensor], kl_weight: float, gen: torch.Generator | None):
        mu = x @ params["encoder"].T  # (M, d)
        logvar = params["logvar"].expand_as(mu)
        eps = torch.randn(mu.shape, generator=gen, device=gen.device if gen is not None else mu.device).to(mu.device)
        z = mu + (0.5 * logvar).exp() * eps  # reparameterised sample of q(z | x)
        rec = (x - z @ params["decoder"]).square().sum(-1).mean()
        kl = gaussian_kl(mu, logvar).mean()
        return rec + kl_weight * kl, rec, kl

    @classmethod
    def fit(  # type: ignore[override]
        cls,
        batches: Iterable[torch.Tensor | tuple | list],
        patch_size: int,
        d: int,
        norm_mean: Sequence[float] = DIT_NORM[0],
        norm_std: Sequence[float] = DIT_NORM[1],
        patches_per_image: int | None = None,
        max_patches: int | None = 1 << 17,
        steps: int = 3000,
        batch_size: int = 1024,
        lr: float | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        log_every: int = 0,
        kl_weight: float = 1.0,
    ) -> "PatchVAE":
        """:meth:`PatchAE.fit` with the KL term weighted by ``kl_weight`` (1 = the paper's loss as written)."""
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        return cls._fit(  # type: ignore[return-value]
            batches, patch_size, d, norm_mean, norm_std, patches_per_image, max_patches, steps, batch_size, lr, seed,
            device, log_every, kl_weight=kl_weight,
        )

    @classmethod
    def _extra_info(cls, z: torch.Tensor, params: dict[str, torch.Tensor], kl_weight: float) -> dict[str, Any]:
        lv = params["logvar"]
        kl_dim = 0.5 * (z.square().mean(0) + lv.exp() - 1.0 - lv)  # (d,) mean per-patch KL of each dimension
        return {
            "kl_weight": kl_weight,
            "kl": kl_dim.sum().item(),  # mean per-patch KL to the prior
            # dimensions carrying under 0.01 nats per patch have collapsed to the prior
            "active_dims": int((kl_dim > 0.01).sum()),
        }

    @classmethod
    def _fit_kwargs(cls, kl_weight: float) -> dict[str, Any]:
        return {"kl_weight": kl_weight}

    def metadata(self) -> dict[str, str]:
        return {**super().metadata(), "kl_weight": repr(self.kl_weight)}

    @classmethod
    def _kwargs_from_metadata(cls, meta: dict[str, str]) -> dict[str, Any]:
        return {"kl_weight": float(meta.get("kl_weight", 1.0))}
