"""The tokenizers of Tab. 2 and Fig. 5 behind one interface: fitting, algebra, artifacts, the CLI."""
import pytest
import torch
import torch.nn.functional as F

from ldae.cli import fit_tokenizer as fit_tokenizer_cli
from ldae.cli.configs import to_config
from ldae.models.ldae import LDAE
from ldae.tokenizers import fit_tokenizer
from ldae.tokenizers.fit_config import FitTokenizerConfig
from ldae.tokenizers.linear_ae import PatchAE, PatchVAE, gaussian_kl, sample_patches
from ldae.tokenizers.pca import DIT_NORM, IMAGENET_NORM, PatchPCA, patchify
from ldae.tokenizers.pixel import PixelTokenizer
from ldae.tokenizers.registry import (
    TOKENIZER_FORMATS, Tokenizer, fixed_latent_dim, load_tokenizer, patch_affine, tokenizer_from_state_dict,
    tokenizer_kind,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def cifar(cifar_root):
    """(train, test) normalised CIFAR-10 images (200 each, 20 per class) in [-1, 1]."""
    from ldae.data.folders import build_dataset
    from ldae.data.transforms import build_transform

    transform = build_transform(32, train=False, mean=DIT_NORM[0], std=DIT_NORM[1])
    return tuple(torch.stack([img for img, _ in build_dataset(cifar_root, split, transform)]) for split in ("train", "test"))


@pytest.fixture(scope="module")
def fitted(cifar):
    """PCA, AE and VAEs (KL weight 1 and 0.01) with 4x4 patches and d = 16, fitted on the same training images."""
    train = cifar[0]
    batches = [train[i : i + 50] for i in range(0, len(train), 50)]
    return {
        "pca": PatchPCA.fit(batches, 4),
        "ae": PatchAE.fit(batches, 4, 16, steps=1500),
        "vae": PatchVAE.fit(batches, 4, 16, steps=1500, kl_weight=1.0),
        "vae_light": PatchVAE.fit(batches, 4, 16, steps=1500, kl_weight=0.01),
    }


def _recon_error(tok, x, d=16):
    """Mean per-patch squared reconstruction error of images x."""
    rec = tok.project(x, d) if isinstance(tok, PatchPCA) else tok.reconstruct(x)
    return float(patchify(x - rec, 4).square().sum(-1).mean())


# ---------------------------------------------------------------------------------------------- patch AE / VAE on real patches
def test_ae_learns_to_reconstruct_real_patches_nearly_as_well_as_pca(cifar, fitted):
    train, test = cifar
    ae, pca = fitted["ae"], fitted["pca"]
    info = ae.fit_info
    init = PatchAE(*PatchAE._make_init(16, 48, torch.Generator().manual_seed(0)).values(), mean=ae.mean, patch_size=4)
    assert _recon_error(ae, train) < 0.02 * _recon_error(init, train)  # gradient descent did the work
    # Eckart-Young: no rank-16 linear map beats PCA; the trained AE gets within 15% of it, on unseen images too.
    assert info["pca_reconstruction_mse"] <= info["reconstruction_mse"] <= 1.15 * info["pca_reconstruction_mse"]
    assert _recon_error(pca, test) <= _recon_error(ae, test) <= 1.2 * _recon_error(pca, test)
    assert info["reconstruction_mse"] < 0.01 * info["total_variance"]  # 16 of 48 dims keep > 99% of the variance


def test_vae_kl_term_trades_reconstruction_for_closeness_to_the_prior(cifar, fitted):
    train = cifar[0]
    heavy, light, ae = fitted["vae"], fitted["vae_light"], fitted["ae"]
    kl_heavy, kl_light = heavy.kl(train).mean().item(), light.kl(train).mean().item()
    assert heavy.fit_info["kl"] == pytest.approx(kl_heavy, rel=1e-3)
    assert kl_heavy < 0.25 * kl_light  # a larger KL weight pulls q(z|x) to N(0, I) ...
    assert _recon_error(heavy, train) > 2 * _recon_error(light, train)  # ... at reconstruction's expense
    assert _recon_error(light, train) > _recon_error(ae, train)  # even a light KL costs some
    # With weight 1 against a per-patch sum of squares (decoder variance 1/2), low-variance latent
    # directions collapse onto the prior; with weight 0.01 all 16 stay in use.
    assert heavy.fit_info["active_dims"] < 16 == light.fit_info["active_dims"]
    assert (heavy.logvar.exp() <= 1.0 + 1e-2).all()  # posterior never wider than the prior


def test_gaussian_kl_closed_form():
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    ).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), ref)
    assert torch.equal(gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)), torch.zeros(3))  # q = prior
    assert gaussian_kl(torch.tensor([[2.0]]), torch.zeros(1, 1)).item() == 2.0  # mu^2 / 2


def test_fit_is_reproducible_and_checks_its_arguments():
    x = [torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1]
    a, b = PatchVAE.fit(x, 4, 4, steps=20, seed=3), PatchVAE.fit(x, 4, 4, steps=20, seed=3)
    assert torch.equal(a.encoder, b.encoder) and torch.equal(a.logvar, b.logvar)
    with pytest.raises(ValueError, match=r"latent dimension d must be in \[1, 48\] for 4x4x3 patches, got 49"):
        PatchAE.fit(x, 4, 49)
    with pytest.raises(ValueError, match="kl_weight must be >= 0, got -1"):
        PatchVAE.fit(x, 4, 4, kl_weight=-1)
    with pytest.raises(ValueError, match="fit: no images were given"):
        PatchAE.fit([], 4, 4)
    patches, n = sample_patches(x, 4, max_patches=10)
    assert patches.shape == (10, 48) and n == 3  # stops once the bank is full


# ---------------------------------------------------------------------------------------------- the pixel tokenizer
@pytest.mark.parametrize("size,q", [(256, 16), (128, 8), (64, 4), (32, 2)])
def test_pixel_tokenizer_keeps_the_sequence_length(size, q):
    """Fig. 5: at 256 px with the model's 16x16 patches, tokens are q x q patches of the image resized to 16q px."""
    tok = PixelTokenizer(16, q)
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    z = tok.encode(x, 3 * q * q)
    assert z.shape == (2, 256, 3 * q * q)  # (256 / 16)^2 tokens whatever the resize
    small = F.interpolate(x, size=size, mode="area")  # an independent resize to `size` px
    torch.testing.assert_close(z, patchify(small, q), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(tok.encode(tok.decode(z, (256, 256)), 3 * q * q), z, atol=1e-6, rtol=0)  # a right inverse
    proj = tok.decode(z, (256, 256))
    torch.testing.assert_close(tok.decode(tok.encode(proj, 3 * q * q), (256, 256)), proj)  # a projection
    if q == 16:
        assert torch.equal(proj, x)  # plain pixel patches: the identity
    with pytest.raises(ValueError, match=rf"the pixel tokenizer with {q}x{q}x3 tokens has latent dimension d={3 * q * q}, got d=5"):
        tok.encode(x, 5)


def test_pixel_tokenizer_checks():
    with pytest.raises(ValueError, match="token_patch must divide the patch size 16, got 5"):
        PixelTokenizer(16, 5)
    tok = PixelTokenizer(16, 4)
    assert torch.equal(tok.latent_std(48), torch.ones(48))
    with pytest.raises(ValueError, match=r"tokenizer does not match the model: it was fitted with patch size 16 \(model expects 8\)"):
        tok.check_compatible(8, 3)


# ---------------------------------------------------------------------------------------------- one interface
def _all_tokenizers():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 8, 8, generator=g) * 2 - 1
    return {
        "pca": PatchPCA.fit([x], 4, norm_mean=IMAGENET_NORM[0], norm_std=IMAGENET_NORM[1]),
        "ae": PatchAE.fit([x], 4, 6, steps=30),
        "vae": PatchVAE.fit([x], 4, 6, steps=30, kl_weight=0.5),
        "pixel": PixelTokenizer(4, 2),
    }


@pytest.mark.parametrize("kind", ["pca", "ae", "vae", "pixel"])
def test_every_tokenizer_is_affine_per_patch(kind):
    tok = _all_tokenizers()[kind]
    d = fixed_latent_dim(tok) or 6
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for whiten in (False, True):
        a, c = patch_affine(tok, d, whiten)
        assert a.dtype == torch.float64 and a.shape == (d, 48) and c.shape == (d,)
        torch.testing.assert_close(patchify(x, 4) @ a.T + c, tok.encode(x.float(), d, whiten=whiten).double(), atol=1e-5, rtol=1e-5)
    assert isinstance(tok, Tokenizer) and tokenizer_kind(tok) == kind


@pytest.mark.parametrize("kind", ["pca", "ae", "vae", "pixel"])
def test_artifacts_round_trip_through_load_tokenizer(kind, tmp_path):
    tok = _all_tokenizers()[kind]
    path = tmp_path / f"{kind}.safetensors"
    tok.save(path, extra_metadata={"command": "ldae fit-tokenizer ..."})
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tok) and loaded.metadata() == tok.metadata()
    assert type(tok).__name__ == TOKENIZER_FORMATS[tok.metadata()["format"]].__name__
    for name, buf in tok.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], buf)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    d = fixed_latent_dim(tok) or 6
    assert torch.equal(loaded.encode(x, d, whiten=True), tok.encode(x, d, whiten=True))
    if kind == "vae":
        assert loaded.kl_weight == 0.5 and loaded.fit_info == tok.fit_info


@pytest.mark.parametrize("kind", ["pca", "ae", "vae", "pixel"])
def test_tokenizer_rebuilds_from_a_model_state_dict(kind):
    tok = _all_tokenizers()[kind]
    model = LDAE("custom:img=8,patch=4,dim=16,enc=1,dec=1,heads=2", tok, tail_weight=0.1 if kind == "pca" else 1.0)
    rebuilt = tokenizer_from_state_dict(model.state_dict(), tok.metadata())
    assert type(rebuilt) is type(tok) and rebuilt.metadata() == tok.metadata()
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert torch.equal(rebuilt.decode(rebuilt.encode(x, model.d), (8, 8)), tok.decode(tok.encode(x, model.d), (8, 8)))
    assert tokenizer_from_state_dict(model.state_dict(), None) is None


def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer artifact not found: .*nope.safetensors"):
        load_tokenizer(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    for load in (load_tokenizer, PatchPCA.load, PatchAE.load, PixelTokenizer.load):  # one error path for every loader
        with pytest.raises(ValueError, match=r"bad.safetensors: not a tokenizer artifact \(safetensors could not read it"):
            load(bad)
    from ldae.utils.io import save_safetensors

    save_safetensors({"x": torch.zeros(1)}, tmp_path / "other.safetensors", {"format": "something.else"})
    with pytest.raises(ValueError, match=r"unknown tokenizer format 'something.else'; expected one of \['ldae.patch_ae.v1'"):
        load_tokenizer(tmp_path / "other.safetensors")
    PixelTokenizer(4, 2).save(tmp_path / "pixel.safetensors")
    with pytest.raises(ValueError, match=r"not a patch-ae artifact \(expected format 'ldae.patch_ae.v1', got 'ldae.pixel.v1'\)"):
        PatchAE.load(tmp_path / "pixel.safetensors")


def test_ae_checks():
    ae = _all_tokenizers()["ae"]
    with pytest.raises(ValueError, match=r"this patch AE was trained for latent dimension d=6, got d=5 \(fit another with `ldae fit-tokenizer --kind ae --d 5`\)"):
        ae.encode(torch.zeros(1, 3, 8, 8), 5)
    with pytest.raises(ValueError, match=r"fitted with normalisation mean \[0.5, 0.5, 0.5\] \(model expects \[0.485, 0.456, 0.406\]\)"):
        ae.check_compatible(4, 3, IMAGENET_NORM[0], IMAGENET_NORM[1])
    filters = ae.basis_images()
    assert filters.shape == (6, 3, 4, 4) and float(filters.min()) == 0.0 and float(filters.max()) == 1.0


# ---------------------------------------------------------------------------------------------- the command
def test_fit_tokenizer_command(cifar_root, tmp_path, capsys):
    parser = fit_tokenizer_cli.get_args_parser()
    out = tmp_path / "ae.safetensors"
    args = parser.parse_args([str(cifar_root), "--split", "train", "--kind", "ae", "--d", "8", "--patch-size", "4",
                              "--img-size", "32", "--steps", "200", "--max-images", "50", "--workers", "0",
                              "--out", str(out), "--quiet"])
    assert fit_tokenizer_cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "fitted patch AE: 50 images, 3200 patches of 4x4x3 (D = 48), d = 8, 200 steps" in printed
    assert "(PCA optimum at d = 8:" in printed and f"saved {out}" in printed
    tok = load_tokenizer(out)
    assert isinstance(tok, PatchAE) and tok.fixed_d == 8 and tok.num_images == 50
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert f.metadata()["command"] == fit_tokenizer.fit_command(to_config(FitTokenizerConfig, args))

    pix = tmp_path / "pixel.safetensors"
    assert fit_tokenizer_cli.main(parser.parse_args(["--kind", "pixel", "--patch-size", "16", "--token-patch", "4", "--out", str(pix)])) == 0
    assert "4x4x3 tokens (d = 48), one per 16x16 patch of the model's input (e.g. 256 px -> 64 px)" in capsys.readouterr().out
    assert load_tokenizer(pix).token_patch == 4


@pytest.mark.parametrize(
    "argv,error",
    [
        (["--kind", "pixel", "--patch-size", "16", "--out", "p.safetensors"], r"--kind pixel needs --token-patch q dividing --patch-size 16, got None"),
        (["data", "--kind", "pixel", "--patch-size", "16", "--token-patch", "4", "--out", "p.safetensors"], "--kind pixel learns nothing"),
        (["--kind", "ae", "--patch-size", "4", "--out", "a.safetensors"], "--kind ae is fitted on images: pass the data path"),
        (["--kind", "vae", "--patch-size", "4", "--out", "a.pt"], "--out must name a .safetensors file, got a.pt"),
    ],
)
def test_fit_tokenizer_argument_errors(argv, error):
    with pytest.raises(ValueError, match=error):
        fit_tokenizer.fit_from_config(to_config(FitTokenizerConfig, fit_tokenizer_cli.get_args_parser().parse_args(argv)))


def test_fit_tokenizer_config_built_in_code_is_checked_like_the_flags():
    with pytest.raises(ValueError, match=r"FitTokenizerConfig needs kind, patch_size \(None given\)"):
        FitTokenizerConfig(out="a.safetensors")
    with pytest.raises(ValueError, match="--kind must be one of ae, vae, pixel, got 'bogus'"):
        fit_tokenizer.fit_from_config(FitTokenizerConfig(kind="bogus", out="a.safetensors", patch_size=4))
    with pytest.raises(ValueError, match="--norm must be one of dit, imagenet, got 'bogus'"):
        fit_tokenizer.fit_from_config(FitTokenizerConfig(kind="pixel", out="a.safetensors", patch_size=4, token_patch=2, norm="bogus"))


def test_fit_tokenizer_missing_data(tmp_path):
    args = fit_tokenizer_cli.get_args_parser().parse_args(
        [str(tmp_path / "missing"), "--kind", "ae", "--d", "8", "--patch-size", "4", "--img-size", "32", "--out", "a.safetensors"])
    with pytest.raises(FileNotFoundError, match="data not found: .*missing"):
        fit_tokenizer.fit_from_config(to_config(FitTokenizerConfig, args))
