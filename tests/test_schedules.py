"""Every noise schedule of the trajectory against its closed form at t = 0, T/2 and T-1."""
import math

import pytest
import torch

from ldae.diffusion.schedules import (
    SCHEDULES, DDPMSchedule, LinearGammaSqSchedule, LinearSigmaSchedule, SingleLevelSchedule, build_schedule,
)

T = 1000
LEVELS = (0, T // 2, T - 1)


def _ddpm_gamma_sq(t: int, num_levels: int = T) -> float:
    """prod_{s=0}^{t} (1 - beta_s), beta_s = linspace(1e-4, 0.02) scaled by 1000 / T (DiT), in plain floats."""
    scale = 1000 / num_levels
    lo, hi = 1e-4 * scale, 0.02 * scale
    return math.prod(1 - (lo + (hi - lo) * s / (num_levels - 1)) for s in range(t + 1))


def _table(schedule, t):
    g, s, w = schedule.lookup(torch.tensor([t]), dtype=torch.float64)
    return float(g), float(s), float(w)


@pytest.mark.parametrize("t", LEVELS)
def test_ddpm_is_dits_linear_beta_schedule(t):
    g, s, w = _table(DDPMSchedule(), t)
    gamma_sq = _ddpm_gamma_sq(t)
    assert g == pytest.approx(math.sqrt(gamma_sq), rel=1e-12)
    assert s == pytest.approx(math.sqrt(1 - gamma_sq), rel=1e-12)
    assert w == pytest.approx(gamma_sq, rel=1e-12)  # lambda_t = gamma_t^2 (Sec. 4.3)


def test_ddpm_known_values_and_other_lengths():
    s = DDPMSchedule()
    assert float(s.gammas[0] ** 2) == pytest.approx(1 - 1e-4, abs=1e-15)  # one beta step from clean
    assert float(s.gammas[-1] ** 2) == pytest.approx(4.0358297653756754e-05, rel=1e-10)  # DiT's alphas_cumprod[-1]
    half = DDPMSchedule(num_levels=500)  # DiT rescales both beta ends by 1000 / T
    assert _table(half, 0)[2] == pytest.approx(1 - 2e-4, abs=1e-15)
    assert _table(half, 499)[2] == pytest.approx(_ddpm_gamma_sq(499, 500), rel=1e-12)
    with pytest.raises(ValueError, match=r"DDPM betas must lie in \(0, 1\); T=10 gives beta_max=2"):
        DDPMSchedule(num_levels=10)


@pytest.mark.parametrize("t", LEVELS)
def test_linear_gamma_sq(t):
    g, s, w = _table(LinearGammaSqSchedule(), t)
    gamma_sq = 1 - (t + 1) / T
    assert g == pytest.approx(math.sqrt(gamma_sq), abs=1e-15)
    assert s == pytest.approx(math.sqrt(1 - gamma_sq), abs=1e-15)
    assert w == pytest.approx(gamma_sq, abs=1e-15)


def test_linear_gamma_sq_spans_the_papers_range_and_is_linear():
    gamma_sq = LinearGammaSqSchedule().gammas ** 2
    assert float(gamma_sq.max()) < 1 and float(gamma_sq[0]) == pytest.approx(0.999) and float(gamma_sq[-1]) == 0.0
    steps = gamma_sq[1:] - gamma_sq[:-1]
    torch.testing.assert_close(steps, torch.full_like(steps, -1 / T), atol=1e-14, rtol=0)


def test_linear_gamma_sq_spends_fewer_levels_on_very_noisy_inputs_than_ddpm():
    """Fig. 3: DDPM keeps gamma^2 < 0.05 for 458 of 1000 levels, the linear schedule for 50."""
    assert int((DDPMSchedule().gammas ** 2 < 0.05).sum()) == 458
    assert int((LinearGammaSqSchedule().gammas ** 2 < 0.05).sum()) == 50


@pytest.mark.parametrize("name", ["ddpm", "linear_gamma2"])
def test_variance_preserving(name):
    s = build_schedule(name)
    torch.testing.assert_close(s.gammas ** 2 + s.sigmas ** 2, torch.ones(T, dtype=torch.float64), atol=1e-15, rtol=0)
    assert torch.all(s.sigmas[1:] >= s.sigmas[:-1])  # noise only grows with t
    assert s.eval_t == 10


@pytest.mark.parametrize("t", LEVELS)
def test_linear_sigma_is_ldae(t):
    g, s, w = _table(LinearSigmaSchedule(), t)
    sigma = math.sqrt(2) * t / (T - 1)
    assert g == 1.0
    assert s == pytest.approx(sigma, abs=1e-15)
    assert w == pytest.approx(1 / (1 + sigma**2), abs=1e-15)
    assert _table(LinearSigmaSchedule(), T - 1)[1] == math.sqrt(2)


@pytest.mark.parametrize("t", LEVELS)
def test_single_level(t):
    s = SingleLevelSchedule()
    g, sigma, w = _table(s, t)
    assert (g, sigma) == (1.0, pytest.approx(math.sqrt(1 / 3), abs=1e-15))
    assert w == pytest.approx(0.75, abs=1e-15)  # 1 / (1 + 1/3)
    assert s.eval_t == 408 and torch.all(s.sample_t(5) == 408)  # the linear schedule's level nearest sqrt(1/3)


def test_registry_and_errors():
    assert set(SCHEDULES) == {"linear_sigma", "single", "ddpm", "linear_gamma2"}
    for name, cls in SCHEDULES.items():
        assert cls.name == name and isinstance(build_schedule(name, num_levels=100), cls)
        assert build_schedule(name, num_levels=100).num_levels == 100
    with pytest.raises(ValueError, match=r"unknown noise schedule 'cosine'; expected one of \['ddpm', 'linear_gamma2', 'linear_sigma', 'single'\]"):
        build_schedule("cosine")
    with pytest.raises(ValueError, match="num_levels must be >= 2, got 1"):
        LinearGammaSqSchedule(num_levels=1)
