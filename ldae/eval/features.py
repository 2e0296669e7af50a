"""Frozen features of a backbone: the encoder's input view, batched extraction over a dataset (any
number of processes, in dataset order).

:class:`FeatureExtractor` shows the encoder the clean image, the image projected onto the top-d
latent span of the model's tokenizer, or the image noised at level t (:data:`INPUT_VIEWS`);
:func:`extract_features` runs it over a dataset into a :class:`FeatureSet`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from ldae.diffusion.noise import LatentNoise
from ldae.engine.dist import get_rank, get_world_size
from ldae.eval.backbones import Backbone, zoo_noise
from ldae.utils.progress import progress

__all__ = ["FeatureExtractor", "FeatureSet", "INPUT_VIEWS", "extract_features"]


# What a frozen encoder is shown (see the module docstring).
INPUT_VIEWS = ("clean", "projected", "noisy")


class FeatureExtractor(nn.Module):
    """A frozen backbone as a function: normalised images (B, C, H, W) -> pooled features (B, D).

    The backbone never trains: its parameters do not require grad, :meth:`train` leaves it in eval
    mode (dropout, drop path and BatchNorm keep their inference behaviour), and forward runs without
    autograd. With ``noise`` the images are first corrupted at level ``t`` in the latent space.
    """

    def __init__(self, model: nn.Module, noise: LatentNoise | None = None, t: int | None = None, view: str | None = None) -> None:
        super().__init__()
        view = view or ("noisy" if noise is not None else "clean")
        if view not in INPUT_VIEWS:
            raise ValueError(f"input view must be one of {INPUT_VIEWS}, got {view!r}")
        if view != "clean" and noise is None:
            raise ValueError(f"the {view!r} input view needs the model's latent noise")
        if view == "noisy" and t is None:
            raise ValueError("noisy input needs the level t the backbone was exported at")
        if view == "projected" and (noise.space != "latent" or noise.tokenizer is None):  # type: ignore[union-attr]
            raise ValueError("the 'projected' input view needs a model pretrained with latent noise (a tokenizer to "
                             "project onto); this one used pixel-space noise")
        self.model = model.eval().requires_grad_(False)
        self.noise = noise if view != "clean" else None
        self.t = t
        self.view = view

    @classmethod
    def from_backbone(cls, backbone: Backbone, noisy_input: bool = False, view: str | None = None) -> "FeatureExtractor":
        """The extractor of ``backbone`` for an input ``view`` (``noisy_input=True`` is ``view='noisy'``). The
        projected and noisy views use the latent noise its pretraining used (an l-DAE checkpoint's own, or the
        tokenizer and schedule an l-DAE zoo name / export records)."""
        view = view or ("noisy" if noisy_input else "clean")
        if view not in INPUT_VIEWS:
            raise ValueError(f"input view must be one of {INPUT_VIEWS}, got {view!r}")
        noise = backbone.noise
        if view != "clean" and noise is None and backbone.arch.get("kind") == "timm":
            noise = backbone.noise = zoo_noise(backbone.arch["name"])
        if view != "clean" and (noise is None or backbone.t is None):
            raise ValueError(
                f"{view} input needs an l-DAE model (a pretraining checkpoint, an ldae_vit_* name or an `ldae export` "
                f"folder: its tokenizer and schedule define the noise); {backbone.spec!r} is not one")
        return cls(backbone.model, noise, backbone.t, view)

    def train(self, mode: bool = True) -> "FeatureExtractor":
        self.training = mode  # the backbone stays in eval mode whatever the caller's mode
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, C, H, W) -> features (B, D) (float32)."""
        if self.view == "noisy":
            x = self.noise(x, self.t, generator=generator).x_t  # (B, C, H, W), same t as the weights
        elif self.view == "projected":  # the top-d span: what every training input lies in at sigma -> 0
            x = self.noise.decode_latent(self.noise.encode_latent(x), x.shape[-2:]).to(x.dtype)  # (B, C, H, W)
        f = self.model(x)  # (B, D)
        if f.ndim != 2:
            raise ValueError(
                f"expected pooled features (B, D) from the backbone, got shape {tuple(f.shape)}: build it with "
                "num_classes=0 and a global pool")
        return f.float()


@dataclass
class FeatureSet:
    """features: (N, D) float32; labels: (N,) int64; classes: class names (label i = classes[i])."""

    features: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def _gather_strided(local: torch.Tensor, n: int, world: int) -> torch.Tensor:
    """Rows computed by rank r for indices r, r + world, ... -> all n rows in index order, on every rank."""
    per = -(-n // world)  # ranks hold per or per - 1 rows: pad to equal size for all_gather
    pad = torch.zeros((per - len(local), *local.shape[1:]), dtype=local.dtype, device=local.device)
    parts = [torch.empty((per, *local.shape[1:]), dtype=local.dtype, device=local.device) for _ in range(world)]
    dist.all_gather(parts, torch.cat([local, pad]))
    return torch.stack(parts, 1).flatten(0, 1)[:n]  # row i*world + r = parts[r][i]


def _batch_seed(*parts: int) -> int:
    """A 63-bit seed mixing (seed, rank, batch): distinct streams without collisions between the parts."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor,
    dataset: Dataset,
    *,
    batch_size: int = 256,
    num_workers: int = 4,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    seed: int = 0,
    quiet: bool = False,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) float32 and labels (N,) int64 of a dataset of (image tensor, label), on the CPU.

    Under torchrun each rank computes the indices ``rank::world_size`` and all ranks receive the whole
    result. Noisy input draws its noise from CPU generators seeded by (seed, rank, batch), so a run
    repeats exactly on any device.
    """
    device = torch.device(device)
    rank, world = get_rank(), get_world_size()
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("cannot extract features of an empty dataset")
    local = Subset(dataset, range(rank, n, world)) if world > 1 else dataset
    loader = DataLoader(local, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda", drop_last=False)
    extractor = extractor.to(device).eval()
    feats, labels = [], []
    for i, (x, y) in enumerate(progress(loader, desc=desc, quiet=quiet, unit="batch")):
        g = torch.Generator().manual_seed(_batch_seed(seed, rank, i)) if extractor.view == "noisy" else None
        x = x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            f = extractor(x, generator=g)  # (B, D)
        feats.append(f.float())
        labels.append(torch.as_tensor(y).to(device))
    f_local, y_local = torch.cat(feats), torch.cat(labels).long()
    if world > 1:
        f_local, y_local = _gather_strided(f_local, n, world), _gather_strided(y_local, n, world)
    return f_local.cpu(), y_local.cpu()
