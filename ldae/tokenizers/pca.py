"""Patch-wise PCA tokenizer (Sec. 4.2 of the paper).

Patches are flattened as :func:`ldae.tokenizers.base.patchify` does. PCA of many such patches gives an orthonormal basis V (rows = eigenvectors, sorted by decreasing eigenvalue); the
latent of a patch x is V_d (x - mean), optionally divided by the component standard deviations
(whitening). Everything here works on *normalised* pixels, i.e. exactly the tensors the model sees;
the normalisation (per-channel mean/std) the basis was fitted under is stored with it.
"""
from __future__ import annotations

import json
import math
import os
from typing import Iterable, Sequence

import torch

from ldae.tokenizers.base import DIT_NORM, IMAGENET_NORM, PatchTokenizer, patchify, sample_image_patches, unpatchify
from ldae.utils.io import save_safetensors

__all__ = ["PatchPCA", "PatchCovariance", "patchify", "unpatchify", "validate_pca_tensors", "DIT_NORM", "IMAGENET_NORM"]

FORMAT = "ldae.patch_pca.v1"
ORTHONORMAL_TOL = 1e-3  # max |V V^T - I| of a stored basis (a float32 copy of a float64 fit is ~1e-6)


def validate_pca_tensors(components: torch.Tensor, eigenvalues: torch.Tensor, mean: torch.Tensor,
                         norm_std: Sequence[float], source: str) -> None:
    """Refuse a stored patch PCA that would give silently wrong latents, naming ``source``.

    Checks: floating dtypes, finite values, an orthonormal basis (within :data:`ORTHONORMAL_TOL`),
    eigenvalues >= 0 and in decreasing order (the top-d truncation relies on it), and a positive,
    finite pixel std.
    """
    for name, t in (("components", components), ("eigenvalues", eigenvalues), ("mean", mean)):
        if not t.is_floating_point():
            raise ValueError(f"{source}: {name} must be floating point, got {t.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{source}: {name} holds NaN or infinite values")
    v = components.double()
    err = float((v @ v.T - torch.eye(v.shape[0], dtype=torch.float64)).abs().max()) if v.numel() else 0.0
    if err > ORTHONORMAL_TOL:
        raise ValueError(f"{source}: the components are not an orthonormal basis (max |V V^T - I| = {err:.3g}, "
                         f"allowed {ORTHONORMAL_TOL:g})")
    ev = eigenvalues.double()
    scale = max(1.0, float(ev.abs().max())) if ev.numel() else 1.0
    if ev.numel() and float(ev.min()) < -1e-6 * scale:
        raise ValueError(f"{source}: eigenvalues must be >= 0, the smallest is {float(ev.min()):.3g}")
    if ev.numel() > 1 and float((ev[1:] - ev[:-1]).max()) > 1e-6 * scale:
        raise ValueError(f"{source}: eigenvalues must be in decreasing order (components sorted by variance)")
    std = [float(x) for x in norm_std]
    if not all(math.isfinite(x) and x > 0 for x in std):
        raise ValueError(f"{source}: norm_std must be positive and finite, got {std}")


class PatchCovariance:
    """Streaming float64 mean and covariance of D-dim patch vectors.

    Holds only a D-vector and a D x D matrix (plus a count), so millions of patches fit in memory.
    Sums are accumulated around a fixed shift (the first batch's mean) to avoid the catastrophic
    cancellation of the naive E[xx^T] - E[x]E[x]^T.
    """

    def __init__(self, dim: int, device: torch.device | str | None = None) -> None:
        self.dim = dim
        self.count = 0
        self.shift: torch.Tensor | None = None
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.sum_outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, patches: torch.Tensor) -> None:
        """Add a batch of patches (M, D)."""
        if patches.ndim != 2 or patches.shape[1] != self.dim:
            raise ValueError(f"expected patches of shape (M, {self.dim}), got {tuple(patches.shape)}")
        x = patches.to(device=self.sum.device, dtype=torch.float64)
        if self.shift is None:
            self.shift = x.mean(0)
        x = x - self.shift
        self.count += x.shape[0]
        self.sum += x.sum(0)
        self.sum_outer += x.T @ x

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (mean (D,), covariance (D, D)) in float64; covariance normalised by the count."""
        if self.count < 2 or self.shift is None:
            raise ValueError(f"need at least 2 patches to estimate a covariance, got {self.count}")
        m = self.sum / self.count
        cov = self.sum_outer / self.count - torch.outer(m, m)
        return self.shift + m, (cov + cov.T) / 2


class PatchPCA(PatchTokenizer):
    """A fitted patch-wise PCA basis.

    Buffers (float32): ``components`` (D, D) with rows = eigenvectors in decreasing eigenvalue order,
    ``eigenvalues`` (D,), ``mean`` (D,). Attributes: ``patch_size``, ``in_chans``, ``norm_mean`` /
    ``norm_std`` (the pixel normalisation the patches were fitted under), ``num_images``,
    ``num_patches`` (how much data the fit saw).

    Inputs may be any float dtype on any device; the math is float32 and results come back in the
    input dtype.
    """

    components: torch.Tensor
    eigenvalues: torch.Tensor
    mean: torch.Tensor

    def __init__(
        self,
        components: torch.Tensor,
        eigenvalues: torch.Tensor,
        mean: torch.Tensor,
        patch_size: int,
        in_chans: int = 3,
        norm_mean: Sequence[float] = DIT_NORM[0],
        norm_std: Sequence[float] = DIT_NORM[1],
        num_images: int = 0,
        num_patches: int = 0,
    ) -> None:
        super().__init__(patch_size, in_chans, norm_mean, norm_std, num_images, num_patches)
        dim = patch_size * patch_size * in_chans
        if components.shape != (dim, dim) or eigenvalues.shape != (dim,) or mean.shape != (dim,):
            raise ValueError(
                f"expected components ({dim}, {dim}), eigenvalues ({dim},), mean ({dim},) for patch {patch_size} "
                f"and {in_chans} channels, got {tuple(components.shape)}, {tuple(eigenvalues.shape)}, {tuple(mean.shape)}"
            )
        self.register_buffer("components", components.float().contiguous())
        self.register_buffer("eigenvalues", eigenvalues.float().contiguous())
        self.register_buffer("mean", mean.float().contiguous())

    # ------------------------------------------------------------------ construction
    @property
    def dim(self) -> int:
        """D, the flattened patch dimension."""
        return self.components.shape[0]

    @classmethod
    def from_covariance(cls, mean: torch.Tensor, cov: torch.Tensor, **kwargs) -> "PatchPCA":
        """Eigen-decompose a (D, D) covariance (float64) into a sorted, sign-fixed basis."""
        evals, evecs = torch.linalg.eigh(cov.double())
        order = torch.argsort(evals, descending=True)
        evals, basis = evals[order].clamp_min(0), evecs[:, order].T  # rows are components
        # eigh's signs are arbitrary; fix them (largest-magnitude entry positive) so fits reproduce.
        idx = basis.abs().argmax(dim=1)
        signs = torch.sign(basis.gather(1, idx[:, None]))
        basis = basis * signs
        return cls(basis, evals, mean.double(), **kwargs)

    @classmethod
    @torch.no_grad()
    def fit(
        cls,
        batches: Iterable[torch.Tensor],
        patch_size: int,
        norm_mean: Sequence[float] = DIT_NORM[0],
        norm_std: Sequence[float] = DIT_NORM[1],
        patches_per_image: int | None = None,
        random_offset: bool = True,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> "PatchPCA":
        """Fit from an iterable of normalised image batches (B, C, H, W) (or (batch, label) pairs).

        From each image, the non-overlapping patch grid is shifted by a random offset in [0, p)
        (when ``random_offset`` and the image is larger than the grid allows) and
        ``patches_per_image`` grid cells are drawn without replacement (all of them when None).
        """
        gen = torch.Generator().manual_seed(seed)
        acc: PatchCovariance | None = None
        in_chans = len(norm_mean)
        num_images = 0
        for per_image in sample_image_patches(batches, patch_size, in_chans, patches_per_image, random_offset, gen, device):
            patches = torch.cat(per_image)  # (M, D): one float64 update per batch, not per image
            if acc is None:
                acc = PatchCovariance(patches.shape[1], device=patches.device)
            acc.update(patches)
            num_images += len(per_image)
        if acc is None:
            raise ValueError("fit: no images were given")
        mean, cov = acc.mean_cov()
        return cls.from_covariance(
            mean.cpu(), cov.cpu(), patch_size=patch_size, in_chans=in_chans, norm_mean=norm_mean,
            norm_std=norm_std, num_images=num_images, num_patches=acc.count,
        )

    # ------------------------------------------------------------------ transforms
    def _check_d(self, d: int) -> int:
        if not 1 <= d <= self.dim:
            raise ValueError(f"latent dimension d must be in [1, {self.dim}], got {d}")
        return d

    def encode(self, x: torch.Tensor, d: int, whiten: bool = False) -> torch.Tensor:
        """Images (B, C, H, W) -> top-d latents (B, N, d); whitened latents have unit variance."""
        self._check_d(d)
        return self._linear_encode(x, self.components[:d], whiten)

    def decode(self, z: torch.Tensor, hw: tuple[int, int], whiten: bool = False) -> torch.Tensor:
        """Latents (B, N, d) -> images (B, C, H, W) by inverse PCA (mean restored)."""
        d = self._check_d(z.shape[-1])
        return self._linear_decode(z, self.components[:d], hw, whiten)

    def project(self, x: torch.Tensor, d: int) -> torch.Tensor:
        """Orthogonal projection of images (B, C, H, W) onto mean + span(top-d components)."""
        return self.decode(self.encode(x.float(), d), x.shape[-2:]).to(x.dtype)

    def latent_std(self, d: int) -> torch.Tensor:
        """(d,) standard deviations of the top-d components (floored so whitening never divides by 0)."""
        eps = torch.finfo(torch.float32).eps * self.eigenvalues[0].clamp_min(1e-12)
        return self.eigenvalues[:d].clamp_min(eps).sqrt()

    def basis_images(self, k: int) -> torch.Tensor:
        """The top-k components as (k, C, p, p) images, each min-max scaled to [0, 1] (paper Fig. 4)."""
        k = self._check_d(k)
        b = self.components[:k].reshape(k, self.in_chans, self.patch_size, self.patch_size)
        lo = b.flatten(1).min(1).values[:, None, None, None]
        hi = b.flatten(1).max(1).values[:, None, None, None]
        return (b - lo) / (hi - lo).clamp_min(1e-12)

    # ------------------------------------------------------------------ persistence
    def metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "patch_size": str(self.patch_size),
            "in_chans": str(self.in_chans),
            "norm_mean": json.dumps(list(self.norm_mean)),
            "norm_std": json.dumps(list(self.norm_std)),
            "num_images": str(self.num_images),
            "num_patches": str(self.num_patches),
        }

    def save(self, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> None:
        """Write the artifact as safetensors (atomic); ``extra_metadata`` records e.g. the fit command."""
        meta = {**(extra_metadata or {}), **self.metadata()}
        save_safetensors(
            {"components": self.components, "eigenvalues": self.eigenvalues, "mean": self.mean}, path, meta
        )

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "PatchPCA":
        """Read an artifact written by :meth:`save` (no pickle involved)."""
        tensors, meta = cls.read_artifact(path, map_location)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a patch-PCA artifact (expected format {FORMAT!r}, got {meta.get('format')!r})")
        tensors = {k: tensors[k] for k in ("components", "eigenvalues", "mean")}
        validate_pca_tensors(**tensors, norm_std=json.loads(meta["norm_std"]), source=str(path))
        return cls(
            **tensors,
            patch_size=int(meta["patch_size"]),
            in_chans=int(meta["in_chans"]),
            norm_mean=json.loads(meta["norm_mean"]),
            norm_std=json.loads(meta["norm_std"]),
            num_images=int(meta["num_images"]),
            num_patches=int(meta["num_patches"]),
        )

    def extra_repr(self) -> str:
        return (
            f"patch_size={self.patch_size}, in_chans={self.in_chans}, dim={self.dim}, "
            f"norm_mean={self.norm_mean}, norm_std={self.norm_std}, images={self.num_images}, patches={self.num_patches}"
        )
