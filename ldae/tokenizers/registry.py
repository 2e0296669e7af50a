"""One interface for every tokenizer of the trajectory, and loading any of them from its artifact.

Tab. 2 and Fig. 5 compare tokenizers that all map each p x p patch of an image to a d-dim token and
back. The noise transform, the model and the fixed-t export use only the :class:`Tokenizer`
protocol below, so any of these is a drop-in for another:

=================================  ==========================  ==============================
class                              artifact ``format``         fitted by
=================================  ==========================  ==============================
:class:`ldae.tokenizers.pca.PatchPCA`   ``ldae.patch_pca.v1``       ``ldae fit-pca``
:class:`ldae.tokenizers.linear_ae.PatchAE`     ``ldae.patch_ae.v1``        ``ldae fit-tokenizer --kind ae``
:class:`ldae.tokenizers.linear_ae.PatchVAE`    ``ldae.patch_vae.v1``       ``ldae fit-tokenizer --kind vae``
:class:`ldae.tokenizers.pixel.PixelTokenizer`  ``ldae.pixel.v1``  ``ldae fit-tokenizer --kind pixel``
=================================  ==========================  ==============================

The convolutional VAE of the DiT baseline (Tab. 1, Tab. 2 first row) is not among them: it is a
deep network with its own training recipe (and, in DiT, a supervised perceptual loss), outside the
scope of this project.

Every tokenizer here is affine per patch (``encode(x) = patchify(x) @ A.T + c``; the VAE encodes to
its posterior mean), which :func:`patch_affine` exposes: it is what lets a model that embeds latent
tokens export at a fixed t to a plain ViT on images, with the tokenizer folded into the patch
embedding.
"""
from __future__ import annotations

import json
import os
from typing import Protocol, Sequence, runtime_checkable

import torch

from ldae.tokenizers.base import PatchTokenizer
from ldae.tokenizers.linear_ae import PatchAE, PatchVAE
from ldae.tokenizers.pca import FORMAT as PCA_FORMAT
from ldae.tokenizers.pca import PatchPCA, validate_pca_tensors
from ldae.tokenizers.pixel import PixelTokenizer

__all__ = [
    "Tokenizer", "TOKENIZER_FORMATS", "TOKENIZER_KINDS", "load_tokenizer", "tokenizer_from_state_dict",
    "patch_affine", "fixed_latent_dim", "tokenizer_kind",
]


@runtime_checkable
class Tokenizer(Protocol):
    """What the noise transform, the model and the export need from a tokenizer.

    ``patch_size`` is the model's patch size: every tokenizer yields N = HW / p^2 tokens. ``d`` is
    the latent dimension used; tokenizers trained for one d (AE, VAE, pixel) expose it as ``fixed_d``
    and reject any other in ``_check_d``.
    """

    patch_size: int
    in_chans: int
    norm_mean: tuple[float, ...]
    norm_std: tuple[float, ...]

    def encode(self, x: torch.Tensor, d: int, whiten: bool = False) -> torch.Tensor:
        """Images (B, C, H, W) -> latents (B, N, d)."""
        ...

    def decode(self, z: torch.Tensor, hw: tuple[int, int], whiten: bool = False) -> torch.Tensor:
        """Latents (B, N, d) -> images (B, C, H, W)."""
        ...

    def latent_std(self, d: int) -> torch.Tensor:
        """(d,) scale of each latent dimension; ``whiten=True`` works in latents divided by it."""
        ...

    def _check_d(self, d: int) -> int:
        """Return d, or raise ``ValueError`` if the tokenizer cannot encode to d dimensions."""
        ...

    def metadata(self) -> dict[str, str]:
        """String metadata of the artifact, ``format`` included."""
        ...

    def save(self, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> None:
        ...

    def check_compatible(
        self, patch_size: int, in_chans: int, norm_mean: Sequence[float] | None = None, norm_std: Sequence[float] | None = None
    ) -> None:
        ...


TOKENIZER_FORMATS: dict[str, type] = {
    PCA_FORMAT: PatchPCA,
    PatchAE.FORMAT: PatchAE,
    PatchVAE.FORMAT: PatchVAE,
    PixelTokenizer.FORMAT: PixelTokenizer,
}
TOKENIZER_KINDS: dict[str, type] = {"pca": PatchPCA, "ae": PatchAE, "vae": PatchVAE, "pixel": PixelTokenizer}


def tokenizer_kind(tokenizer: Tokenizer) -> str:
    """'pca', 'ae', 'vae' or 'pixel'."""
    for kind, cls in TOKENIZER_KINDS.items():
        if type(tokenizer) is cls:
            return kind
    raise ValueError(f"unknown tokenizer type {type(tokenizer).__name__}; expected one of {sorted(TOKENIZER_KINDS)}")


def fixed_latent_dim(tokenizer: Tokenizer | None) -> int | None:
    """The one latent dimension a tokenizer supports (AE, VAE, pixel), or None when any d <= D works (PCA)."""
    return getattr(tokenizer, "fixed_d", None)


def _from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, str], source: str) -> Tokenizer:
    """The tokenizer of an artifact's tensors and metadata; any inconsistency is a ``ValueError`` naming ``source``."""
    try:
        return _build_from_tensors(tensors, meta, source)
    except (KeyError, ValueError, TypeError) as e:  # metadata that lies: missing keys, 'abc' for a size, wrong shapes
        if str(e).startswith(source):
            raise
        what = f"missing metadata key {e.args[0]!r}" if isinstance(e, KeyError) else str(e)
        raise ValueError(f"{source}: inconsistent tokenizer artifact ({what})") from None


def _build_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, str], source: str) -> Tokenizer:
    fmt = meta.get("format")
    if fmt not in TOKENIZER_FORMATS:
        raise ValueError(f"{source}: unknown tokenizer format {fmt!r}; expected one of {sorted(TOKENIZER_FORMATS)}")
    if fmt == PCA_FORMAT:
        missing = [k for k in ("components", "eigenvalues", "mean") if k not in tensors]
        if missing:
            raise ValueError(f"{source}: patch-PCA tensors {missing} are missing")
        validate_pca_tensors(tensors["components"], tensors["eigenvalues"], tensors["mean"],
                             json.loads(meta["norm_std"]), source)
        return PatchPCA(
            tensors["components"], tensors["eigenvalues"], tensors["mean"],
            patch_size=int(meta["patch_size"]), in_chans=int(meta["in_chans"]),
            norm_mean=json.loads(meta["norm_mean"]), norm_std=json.loads(meta["norm_std"]),
            num_images=int(meta.get("num_images", 0)), num_patches=int(meta.get("num_patches", 0)),
        )
    return TOKENIZER_FORMATS[fmt].from_tensors(tensors, meta, source=source)


def load_tokenizer(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Tokenizer:
    """Load any tokenizer artifact, choosing the class from its ``format`` metadata (no pickle involved)."""
    tensors, meta = PatchTokenizer.read_artifact(path, map_location)
    return _from_tensors(tensors, meta, source=str(path))


def tokenizer_from_state_dict(
    state_dict: dict[str, torch.Tensor], meta: dict[str, str] | None, prefix: str = "noise.tokenizer."
) -> Tokenizer | None:
    """Rebuild the tokenizer held inside a model state dict from its :meth:`metadata` (None without one).

    The tensors are the state dict's entries under ``prefix``; the pixel tokenizer has none and is
    rebuilt from ``meta`` alone. Works for every format in :data:`TOKENIZER_FORMATS`.
    """
    if not meta:
        return None
    tensors = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return _from_tensors(tensors, dict(meta), source="checkpoint tokenizer")


@torch.no_grad()
def patch_affine(tokenizer: Tokenizer, d: int, whiten: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (d, P), c (d,)) in float64, P = p*p*C, with ``tokenizer.encode(x, d, whiten) = patchify(x, p) @ A.T + c``."""
    if isinstance(tokenizer, PatchPCA):
        tokenizer._check_d(d)
        a = tokenizer.components[:d].double()  # (d, P)
        if whiten:
            a = a / tokenizer.latent_std(d).double()[:, None]
        return a, -(a @ tokenizer.mean.double())
    if not hasattr(tokenizer, "patch_affine"):
        raise ValueError(f"{type(tokenizer).__name__} is not affine per patch; it cannot be folded into a patch embedding")
    return tokenizer.patch_affine(d, whiten)  # type: ignore[attr-defined]
