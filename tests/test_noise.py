"""Noise schedules and the latent-noise transform."""
import math

import pytest
import torch

from ldae.diffusion.noise import AddLatentNoise, LatentNoise
from ldae.diffusion.schedules import LinearSigmaSchedule, SingleLevelSchedule, build_schedule
from ldae.tokenizers.pca import PatchPCA, patchify


@pytest.fixture(scope="module")
def pca() -> PatchPCA:
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.randn(64, 3, 8, 8, generator=g), size=16, mode="bilinear")
    return PatchPCA.fit([x + 0.05 * torch.randn(64, 3, 16, 16, generator=g)], patch_size=4)


def test_linear_sigma_schedule_endpoints_and_weights():
    s = LinearSigmaSchedule()
    g, sig, w = s.lookup(torch.tensor([0, 1, 500, 999]))
    assert s.num_levels == 1000
    assert torch.equal(g, torch.ones(4))
    assert float(sig[0]) == 0.0
    assert math.isclose(float(sig[-1]), math.sqrt(2), rel_tol=1e-7)
    assert math.isclose(float(sig[1]), math.sqrt(2) / 999, rel_tol=1e-6)
    assert math.isclose(float(sig[2]), math.sqrt(2) * 500 / 999, rel_tol=1e-6)
    torch.testing.assert_close(w, 1 / (1 + sig.double() ** 2).float())
    assert math.isclose(float(w[-1]), 1 / 3, rel_tol=1e-6)
    assert s.eval_t == 10


def test_single_level_schedule():
    s = SingleLevelSchedule()
    t = s.sample_t(5)
    assert torch.equal(t, torch.full((5,), 408))
    _, sig, w = s.lookup(t)
    torch.testing.assert_close(sig, torch.full((5,), math.sqrt(1 / 3)))
    torch.testing.assert_close(w, torch.full((5,), 0.75))
    assert s.eval_t == 408


def test_uniform_t_covers_all_levels():
    t = LinearSigmaSchedule(num_levels=10).sample_t(5000, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(t, minlength=10)
    assert counts.min() > 400 and t.min() == 0 and t.max() == 9


def test_bad_levels_and_names():
    with pytest.raises(ValueError, match=r"integers in \[0, 999\]"):
        LinearSigmaSchedule().lookup(torch.tensor([1000]))
    with pytest.raises(ValueError, match=r"integers in \[0, 999\]"):
        LinearSigmaSchedule().lookup(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="unknown noise schedule 'cosine'"):
        build_schedule("cosine")


def test_latent_noise_lies_in_top_d_span(pca):
    x0 = torch.randn(4, 3, 16, 16)
    out = LatentNoise(pca, d=6)(x0, t=700, generator=torch.Generator().manual_seed(0))
    centred = patchify(out.x_t, 4) - pca.mean  # (B, N, D)
    v = pca.components
    resid = centred - (centred @ v[:6].T) @ v[:6]
    assert resid.abs().max() < 1e-4
    assert (centred @ v[6:].T).abs().max() < 1e-4
    # at sigma = 0 the input is exactly the top-d projection of x0
    clean = LatentNoise(pca, d=6)(x0, t=0)
    torch.testing.assert_close(clean.x_t, pca.project(x0, 6), atol=1e-5, rtol=0)


@pytest.mark.parametrize("whiten", [True, False])
def test_latent_noise_variance(pca, whiten):
    x0 = torch.randn(256, 3, 16, 16)
    noise = LatentNoise(pca, d=5, whiten=whiten)
    t = 999
    out = noise(x0, t=t, generator=torch.Generator().manual_seed(1))
    delta = pca.encode(out.x_t, 5, whiten=True) - pca.encode(x0, 5, whiten=True)  # (B, N, 5)
    var = delta.reshape(-1, 5).double().var(0)
    sigma2 = 2.0  # sigma_999 = sqrt(2)
    expected = torch.full((5,), sigma2, dtype=torch.float64) if whiten else sigma2 / pca.eigenvalues[:5].double()
    torch.testing.assert_close(var, expected, rtol=0.08, atol=0)
    # eps is returned and is what was added
    torch.testing.assert_close(delta, out.eps * (math.sqrt(2) if whiten else math.sqrt(2) / pca.latent_std(5)), atol=1e-3, rtol=1e-3)


def test_pixel_noise_is_classical_dae():
    x0 = torch.randn(2, 3, 16, 16)
    n = LatentNoise(None, d=48, space="pixel")
    out = n(x0, t=torch.tensor([0, 999]), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.x_t[0], x0[0])
    torch.testing.assert_close(out.x_t[1], x0[1] + math.sqrt(2) * out.eps[1])
    with pytest.raises(ValueError, match="latent noise needs a fitted PatchPCA"):
        LatentNoise(None, d=4)


def test_per_sample_transform_matches_batched(pca):
    img = torch.randn(3, 16, 16)
    tr = AddLatentNoise(LatentNoise(pca, d=8), t=300, return_t=True, generator=torch.Generator().manual_seed(5))
    noisy, t = tr(img)
    ref = LatentNoise(pca, d=8)(img[None], t=300, generator=torch.Generator().manual_seed(5)).x_t[0]
    assert t == 300 and noisy.shape == (3, 16, 16)
    assert torch.equal(noisy, ref)
    with pytest.raises(ValueError, match=r"one image tensor \(C, H, W\)"):
        tr(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"integers in \[0, 999\]"):
        AddLatentNoise(LatentNoise(pca, d=8), t=1000)
