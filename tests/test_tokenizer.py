"""Patch-wise PCA: exact algebraic properties on the data it was fitted to."""
import math

import pytest
import torch

from ldae.tokenizers.pca import IMAGENET_NORM, PatchCovariance, PatchPCA, patchify, unpatchify


def _smooth_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Correlated (B, 3, H, W) images so the PCA spectrum decays like natural patches."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size // 2, size // 2, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x + 0.1 * torch.randn(n, 3, size, size, generator=g)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return _smooth_images(64)


@pytest.fixture(scope="module")
def pca(images) -> PatchPCA:
    # two batches: the streaming accumulator must combine them exactly
    return PatchPCA.fit([images[:40], (images[40:], torch.zeros(24))], patch_size=4)


def _fit_patches(images: torch.Tensor) -> torch.Tensor:
    return patchify(images, 4).reshape(-1, 48).double()


def test_patchify_round_trip_and_order(images):
    p = patchify(images, 4)
    assert p.shape == (64, 16, 48)
    assert torch.equal(unpatchify(p, 4, (16, 16)), images)
    # channel-major order within a patch, like a conv weight (C, p, p)
    assert torch.equal(p[0, 0].reshape(3, 4, 4), images[0, :, :4, :4])
    assert torch.equal(p[0, 1].reshape(3, 4, 4), images[0, :, :4, 4:8])


def test_fit_matches_direct_eigendecomposition(images, pca):
    x = _fit_patches(images)
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / x.shape[0]
    evals = torch.linalg.eigvalsh(cov).flip(0)
    torch.testing.assert_close(pca.mean.double(), mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(pca.eigenvalues.double(), evals.clamp_min(0), atol=1e-5, rtol=1e-5)
    assert pca.num_images == 64 and pca.num_patches == 64 * 16
    assert torch.all(pca.eigenvalues[:-1] >= pca.eigenvalues[1:])
    # orthonormal rows
    torch.testing.assert_close(pca.components @ pca.components.T, torch.eye(48), atol=1e-5, rtol=0)


def test_streaming_covariance_is_stable_with_large_offset():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5000, 6, generator=g, dtype=torch.float64) + 1e4  # naive E[xx]-E[x]^2 loses digits
    acc = PatchCovariance(6)
    for chunk in x.split(777):
        acc.update(chunk)
    mean, cov = acc.mean_cov()
    ref = torch.cov(x.T, correction=0)
    torch.testing.assert_close(cov, ref, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(mean, x.mean(0))


def test_full_d_reconstructs_exactly(images, pca):
    torch.testing.assert_close(pca.project(images, 48), images, atol=2e-5, rtol=0)
    z = pca.encode(images, 48, whiten=True)
    torch.testing.assert_close(pca.decode(z, (16, 16), whiten=True), images, atol=2e-5, rtol=0)


def test_whitened_latents_have_unit_variance(images, pca):
    z = pca.encode(images, 10, whiten=True).reshape(-1, 10).double()
    torch.testing.assert_close(z.mean(0), torch.zeros(10, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.var(0, unbiased=False), torch.ones(10, dtype=torch.float64), atol=1e-4, rtol=0)
    # and the raw latents have variance = eigenvalue
    zr = pca.encode(images, 10).reshape(-1, 10).double()
    torch.testing.assert_close(zr.var(0, unbiased=False), pca.eigenvalues[:10].double(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("d", [1, 5, 20, 47])
def test_reconstruction_error_equals_dropped_eigenvalues(images, pca, d):
    err = (patchify(images - pca.project(images, d), 4)).double().square().sum(-1).mean()
    assert math.isclose(float(err), float(pca.eigenvalues[d:].double().sum()), rel_tol=1e-4, abs_tol=1e-5)


def test_any_dtype_in_float32_math_out_in_input_dtype(images, pca):
    z16 = pca.encode(images.to(torch.bfloat16), 8)
    assert z16.dtype == torch.bfloat16
    z32 = pca.encode(images.to(torch.bfloat16).float(), 8)
    torch.testing.assert_close(z16.float(), z32, atol=0.05, rtol=0.02)


def test_save_load_bit_exact(tmp_path, pca):
    path = tmp_path / "pca.safetensors"
    pca.save(path, extra_metadata={"command": "test"})
    back = PatchPCA.load(path)
    for name in ("components", "eigenvalues", "mean"):
        assert torch.equal(getattr(back, name), getattr(pca, name))
    assert (back.patch_size, back.in_chans, back.norm_mean, back.norm_std) == (4, 3, pca.norm_mean, pca.norm_std)
    assert (back.num_images, back.num_patches) == (64, 1024)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


def test_mismatched_artifact_refused(pca):
    with pytest.raises(ValueError, match=r"patch size 4 \(model expects 16\)"):
        pca.check_compatible(16, 3)
    with pytest.raises(ValueError, match=r"3 channels \(model expects 1\)"):
        pca.check_compatible(4, 1)
    with pytest.raises(ValueError, match=r"normalisation mean \[0.5, 0.5, 0.5\] \(model expects \[0.485"):
        pca.check_compatible(4, 3, IMAGENET_NORM[0], IMAGENET_NORM[1])
    pca.check_compatible(4, 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_load_refuses_foreign_safetensors(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a patch-PCA artifact"):
        PatchPCA.load(tmp_path / "x.safetensors")


def test_bad_inputs(pca):
    with pytest.raises(ValueError, match="divisible by the patch size 4"):
        pca.encode(torch.zeros(1, 3, 10, 16), 4)
    with pytest.raises(ValueError, match="expected 3 channels, got 1"):
        pca.encode(torch.zeros(1, 1, 16, 16), 4)
    with pytest.raises(ValueError, match="floating-point"):
        pca.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), 4)
    with pytest.raises(ValueError, match=r"d must be in \[1, 48\]"):
        pca.encode(torch.zeros(1, 3, 16, 16), 49)
    with pytest.raises(ValueError, match="smaller than the patch size"):
        PatchPCA.fit([torch.zeros(2, 3, 3, 3)], patch_size=4)
    with pytest.raises(ValueError, match="finite"):
        PatchPCA.fit([torch.full((2, 3, 8, 8), float("nan"))], patch_size=4)


def test_fit_random_offsets_and_subsampling_are_seeded():
    x = _smooth_images(8, size=18)  # 18 = 4 * 4 + 2: the grid can shift by 0..2
    a = PatchPCA.fit([x], 4, patches_per_image=5, seed=3)
    b = PatchPCA.fit([x], 4, patches_per_image=5, seed=3)
    c = PatchPCA.fit([x], 4, patches_per_image=5, seed=4)
    assert a.num_patches == 40
    assert torch.equal(a.components, b.components)
    assert not torch.equal(a.mean, c.mean)


def test_basis_images(pca):
    b = pca.basis_images(16)
    assert b.shape == (16, 3, 4, 4)
    assert float(b.min()) == 0.0 and float(b.max()) == 1.0
