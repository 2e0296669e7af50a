"""Noise schedules: the signal scale gamma_t, the noise scale sigma_t and the loss weight lambda_t.

A corrupted sample is z_t = gamma_t z_0 + sigma_t eps (Eq. 1) with t in {0, ..., T-1} (T = 1000, as
in DiT). l-DAE removes input scaling (gamma_t = 1) and puts sigma_t on a line from 0 to sqrt(2)
(Sec. 4.3), weighting the loss by lambda_t = 1 / (1 + sigma_t^2). Under the usual map between the two
forms on unit-variance data (sigma^2 = (1 - gamma^2) / gamma^2) that weight is exactly gamma^2, the
weight the paper uses for its gamma-scaled schedules, so every schedule here weights by its
``loss_weight``. The level t is what the network is conditioned on (DiT embeds t, not sigma).

The earlier rows of the paper's trajectory use variance-preserving schedules (gamma_t^2 + sigma_t^2 = 1):
DDPM's linear-beta schedule (``'ddpm'``, as in DiT) and the schedule linear in gamma^2
(``'linear_gamma2'``, Tab. 1 last row), both with lambda_t = gamma_t^2 (Sec. 4.3).
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "NoiseSchedule", "LinearSigmaSchedule", "SingleLevelSchedule", "DDPMSchedule", "LinearGammaSqSchedule",
    "build_schedule", "SCHEDULES",
]


class NoiseSchedule:
    """Tables of gamma_t, sigma_t and lambda_t over T levels (float64 on the CPU, cast on lookup)."""

    name = "base"

    def __init__(self, gammas: torch.Tensor, sigmas: torch.Tensor, weights: torch.Tensor) -> None:
        if not (gammas.shape == sigmas.shape == weights.shape) or gammas.ndim != 1:
            raise ValueError("gammas, sigmas and weights must be 1-D tables of the same length")
        self.gammas, self.sigmas, self.weights = gammas.double(), sigmas.double(), weights.double()
        self._device_tables: dict = {}

    @property
    def num_levels(self) -> int:
        return self.sigmas.numel()

    @property
    def eval_t(self) -> int:
        """The level used for features by default (App. A: t = 10 of 1000, with clean input)."""
        return min(10, self.num_levels - 1)

    def sample_t(self, batch: int, device: torch.device | str | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) levels drawn uniformly from {0, ..., T-1}."""
        gen_device = generator.device if generator is not None else device
        return torch.randint(0, self.num_levels, (batch,), generator=generator, device=gen_device).to(device)

    def lookup(
        self, t: torch.Tensor, dtype: torch.dtype = torch.float32, check: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gamma_t, sigma_t, lambda_t), each shaped like ``t``, on ``t``'s device.

        ``check`` validates t (a host sync); levels from :meth:`sample_t` need no check.
        """
        t = torch.as_tensor(t)
        if check:
            self.check_t(t)
        key = (t.device, dtype)
        if key not in self._device_tables:  # cached so the training step never copies tables
            self._device_tables[key] = torch.stack([self.gammas, self.sigmas, self.weights]).to(t.device, dtype)
        tab = self._device_tables[key][:, t.long()]
        return tab[0], tab[1], tab[2]

    def check_t(self, t: torch.Tensor) -> None:
        """Raise ``ValueError`` unless every t is an integer level in [0, T-1]."""
        if t.is_floating_point() or (t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_levels)):
            shown = t.tolist() if t.numel() < 9 else f"values in [{t.min().item()}, {t.max().item()}]"
            raise ValueError(f"noise level t must be integers in [0, {self.num_levels - 1}], got {shown}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(T={self.num_levels}, sigma_max={float(self.sigmas.max()):.4f})"


class LinearSigmaSchedule(NoiseSchedule):
    """l-DAE's schedule: gamma_t = 1, sigma_t = sigma_max * t / (T - 1), lambda_t = 1 / (1 + sigma_t^2).

    t / (T - 1) (not t / T) makes both endpoints exact: sigma_0 = 0 and sigma_{T-1} = sqrt(2).
    """

    name = "linear_sigma"

    def __init__(self, num_levels: int = 1000, sigma_max: float = math.sqrt(2.0)) -> None:
        if num_levels < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        sigmas = torch.linspace(0.0, sigma_max, num_levels, dtype=torch.float64)
        super().__init__(torch.ones_like(sigmas), sigmas, 1.0 / (1.0 + sigmas**2))


class SingleLevelSchedule(NoiseSchedule):
    """One noise level sigma (default sqrt(1/3), Sec. 4.3), gamma = 1, lambda = 1 / (1 + sigma^2).

    The network is still conditioned on a level: the one whose sigma on the linear schedule is
    nearest (t = 408 of 1000 for sqrt(1/3)), so a single-level model exports and probes at that t.
    Every table entry holds the same sigma, so any t gives the single level.
    """

    name = "single"

    def __init__(self, sigma: float = math.sqrt(1.0 / 3.0), num_levels: int = 1000, sigma_max: float = math.sqrt(2.0)) -> None:
        self.level = int(round(sigma / sigma_max * (num_levels - 1)))
        sigmas = torch.full((num_levels,), float(sigma), dtype=torch.float64)
        super().__init__(torch.ones_like(sigmas), sigmas, 1.0 / (1.0 + sigmas**2))

    @property
    def eval_t(self) -> int:
        return self.level

    def sample_t(self, batch: int, device=None, generator=None) -> torch.Tensor:
        return torch.full((batch,), self.level, dtype=torch.long, device=device)


class DDPMSchedule(NoiseSchedule):
    """DDPM's schedule as in DiT (Tab. 1 rows 1-4, Fig. 3): beta_s linear from 1e-4 to 0.02,
    gamma_t^2 = prod_{s<=t} (1 - beta_s), sigma_t^2 = 1 - gamma_t^2, lambda_t = gamma_t^2.

    For T != 1000 both beta ends are multiplied by 1000 / T, as DiT's ``get_named_beta_schedule``
    does, so the schedule spans the same range of noise.
    """

    name = "ddpm"

    def __init__(self, num_levels: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        if num_levels < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        scale = 1000.0 / num_levels
        betas = torch.linspace(scale * beta_start, scale * beta_end, num_levels, dtype=torch.float64)
        if not 0.0 < float(betas.max()) < 1.0:
            raise ValueError(f"DDPM betas must lie in (0, 1); T={num_levels} gives beta_max={float(betas.max()):.4g}")
        gamma_sq = torch.cumprod(1.0 - betas, dim=0)
        super().__init__(gamma_sq.sqrt(), (1.0 - gamma_sq).sqrt(), gamma_sq)


class LinearGammaSqSchedule(NoiseSchedule):
    """The schedule linear in gamma^2 (Tab. 1 last row, Fig. 3): gamma_t^2 = 1 - (t + 1) / T,
    sigma_t^2 = 1 - gamma_t^2, lambda_t = gamma_t^2.

    (t + 1) / T gives exactly the paper's range 1 > gamma^2 >= 0: gamma_0^2 = 1 - 1/T (never a clean
    input, as in DDPM) and gamma_{T-1}^2 = 0 (pure noise).
    """

    name = "linear_gamma2"

    def __init__(self, num_levels: int = 1000) -> None:
        if num_levels < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        t = torch.arange(num_levels, dtype=torch.float64)
        gamma_sq = 1.0 - (t + 1.0) / num_levels
        super().__init__(gamma_sq.sqrt(), (1.0 - gamma_sq).sqrt(), gamma_sq)


SCHEDULES: dict[str, type[NoiseSchedule]] = {
    LinearSigmaSchedule.name: LinearSigmaSchedule,
    SingleLevelSchedule.name: SingleLevelSchedule,
    DDPMSchedule.name: DDPMSchedule,
    LinearGammaSqSchedule.name: LinearGammaSqSchedule,
}


def build_schedule(name: str = "linear_sigma", **kwargs) -> NoiseSchedule:
    """Schedule by name (see ``SCHEDULES``)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; expected one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](**kwargs)
