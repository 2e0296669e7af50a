"""The latent scale of the noise: per-component whitening, raw PCA coordinates, one global scale."""
import argparse
import math

import pytest
import torch

from ldae.cli.model_flags import add_model_args
from ldae.diffusion.noise import LatentNoise
from ldae.models.export import export_to_timm
from ldae.models.ldae import LDAE
from ldae.models.model_config import build_model, saved_model_args
from ldae.models.size_spec import parse_model_spec
from ldae.tokenizers.pca import PatchPCA, patchify, unpatchify

SIZE = "custom:img=16,patch=4,dim=32,enc=1,dec=1,heads=2,d=6"


def _fit_images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.randn(64, 3, 8, 8, generator=g), size=16, mode="bilinear")
    return x + 0.05 * torch.randn(64, 3, 16, 16, generator=g)


@pytest.fixture(scope="module")
def pca() -> PatchPCA:
    return PatchPCA.fit([_fit_images()], patch_size=4)


def test_global_scale_is_the_root_mean_variance_of_the_top_d(pca):
    noise = LatentNoise(pca, d=6, latent_scale="global")
    eig = pca.eigenvalues[:6].double()
    assert math.isclose(float(noise.global_scale()), math.sqrt(float(eig.mean())), rel_tol=1e-6)
    torch.testing.assert_close(noise.latent_scales().double(), torch.full((6,), math.sqrt(float(eig.mean())), dtype=torch.float64))
    torch.testing.assert_close(LatentNoise(pca, d=6, latent_scale="raw").latent_scales(), torch.ones(6))
    torch.testing.assert_close(LatentNoise(pca, d=6).latent_scales(), pca.latent_std(6))
    # on the fit patches the scaled latents have unit *average* variance and keep PCA's ratios between components
    x = _fit_images()
    z = noise.encode_latent(x).reshape(-1, 6).double()
    raw = pca.encode(x, 6).reshape(-1, 6).double()
    torch.testing.assert_close(z * noise.global_scale().double(), raw, atol=1e-5, rtol=1e-5)
    var = z.var(0, correction=0)
    assert math.isclose(float(var.mean()), 1.0, rel_tol=1e-4)
    torch.testing.assert_close(var / var[0], eig / eig[0], rtol=1e-4, atol=0)


def test_global_noise_adds_one_scale_in_raw_coordinates(pca):
    """x_t = mean + V_d^T (z + sigma g eps) at gamma = 1: the same noise energy on every component."""
    x0 = torch.randn(3, 3, 16, 16)
    noise = LatentNoise(pca, d=6, latent_scale="global")
    out = noise(x0, t=999, generator=torch.Generator().manual_seed(1))  # sigma = sqrt(2), gamma = 1
    g = float(noise.global_scale())
    v = pca.components[:6]
    z = (patchify(x0, 4) - pca.mean) @ v.T
    expected = unpatchify((z + math.sqrt(2) * g * out.eps) @ v + pca.mean, 4, (16, 16))
    torch.testing.assert_close(out.x_t, expected, atol=1e-5, rtol=1e-5)
    # the latent path (encode, corrupt, decode) gives the same image as the direct PCA path
    z0, z_t, eps = noise.corrupt_latent(x0, torch.ones(3), torch.full((3,), math.sqrt(2)), torch.Generator().manual_seed(1))
    torch.testing.assert_close(noise.decode_latent(z_t, (16, 16)), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(noise.decode_latent(z0, (16, 16)), pca.project(x0, 6), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", ["whiten", "raw", "global"])
def test_patch_affine_is_encode_latent_exactly(pca, scale):
    noise = LatentNoise(pca, d=6, latent_scale=scale)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    a, c = noise.patch_affine()
    z = noise.encode_latent(x.float()).double()
    torch.testing.assert_close(patchify(x, 4) @ a.T + c, z, atol=1e-5, rtol=1e-5)


def test_latent_input_model_folds_the_global_scale_into_its_export(pca):
    torch.manual_seed(0)
    model = LDAE(parse_model_spec(SIZE), pca, latent_scale="global", input_space="latent", target="eps", schedule="linear_gamma2").eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(export_to_timm(model)(images), model.forward_features(images), atol=2e-5, rtol=1e-4)


def test_flag_and_older_spellings():
    parser = add_model_args(argparse.ArgumentParser())
    assert parser.parse_args([]).latent_scale == "whiten"
    assert parser.parse_args(["--latent-scale", "global"]).latent_scale == "global"
    assert parser.parse_args(["--no-whiten"]).latent_scale == "raw"
    assert parser.parse_args(["--whiten"]).latent_scale == "whiten"
    with pytest.raises(SystemExit):
        parser.parse_args(["--latent-scale", "unit"])
    with pytest.raises(ValueError, match=r"latent scale must be one of \('whiten', 'raw', 'global'\), got 'unit'"):
        LatentNoise(None, d=4, space="pixel", latent_scale="unit")


@pytest.mark.parametrize("whiten, scale", [(True, "whiten"), (False, "raw")])
def test_args_saved_with_whiten_rebuild_the_same_noise(pca, whiten, scale):
    saved = dict(model=SIZE, d=6, whiten=whiten, noise_space="latent", schedule="linear_sigma", tail_weight=0.1,
                 enc_depth=None, cond_ratio=0.25, num_levels=1000)
    assert saved_model_args(saved)["latent_scale"] == scale and "whiten" not in saved_model_args(saved)
    model = build_model(argparse.Namespace(**{**saved, "model": parse_model_spec(SIZE)}), pca)
    assert model.noise.latent_scale == scale and model.noise.whiten is whiten
