"""Prediction targets and their losses, on cases checkable by hand."""
import math

import pytest
import torch

from ldae.diffusion.loss import pca_weighted_loss
from ldae.diffusion.noise import LatentNoise, NoisyBatch
from ldae.diffusion.schedules import LinearGammaSqSchedule, LinearSigmaSchedule
from ldae.diffusion.targets import (
    TARGETS, check_target, decoded_image_loss, eps_loss, latent_mse, prediction_target, target_loss, target_space,
    z0_loss,
)
from ldae.models.ldae import LDAE
from ldae.tokenizers.pca import PatchPCA, patchify

TINY = "custom:img=16,patch=4,dim=32,enc=1,dec=1,heads=2"


@pytest.fixture(scope="module")
def pca() -> PatchPCA:
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(64, 3, 4, 4, generator=g), size=16, mode="bilinear")
    return PatchPCA.fit([smooth * 2 - 1 + 0.05 * torch.randn(64, 3, 16, 16, generator=g)], 4)


def _images(n=3, seed=1):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------------- the loss functions
def test_latent_losses_by_hand():
    pred, target = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    assert latent_mse(pred, target).item() == 4.0  # ||1||^2 = 4 per token
    assert latent_mse(pred, target, torch.tensor([1.0, 0.5])).item() == 3.0  # (4 * 1 + 4 * 0.5) / 2
    eps = torch.full((2, 3, 4), 2.0)
    assert eps_loss(pred, eps).item() == 16.0  # Eq. 2: unweighted
    assert z0_loss(torch.ones(2, 3, 4), 3 * torch.ones(2, 3, 4), torch.tensor([0.25, 0.75])).item() == 8.0  # 16 * mean(w)
    with pytest.raises(ValueError, match=r"prediction \(2, 3, 4\) and target \(2, 3, 5\) differ in shape"):
        latent_mse(pred, torch.zeros(2, 3, 5))


def test_decoded_image_loss_by_hand():
    pred, decoded = torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)
    # 4x4x3 patches: ||1||^2 = 48 per patch, every dimension weighted 1, then lambda averaged.
    assert decoded_image_loss(pred, decoded, torch.tensor([1.0, 0.5]), 4).item() == 36.0


def test_image_target_is_eq4(pca):
    x, pred = _images(), _images(seed=2)
    w = torch.tensor([1.0, 0.5, 0.25])
    e = patchify(x - pred, 4)  # (B, N, 48)
    r = e @ pca.components.T  # residue in the full PCA basis
    weights = torch.cat([torch.ones(8), torch.full((40,), 0.1)])
    expected = (w[:, None] * (r.square() * weights).sum(-1)).mean()
    got = target_loss("image", pred, x, w, pca, 8, 0.1, 4)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.equal(got, pca_weighted_loss(pred, x, w, pca, 8, 0.1, patch_size=4))


def test_target_spaces_and_checks(pca):
    assert [target_space(t) for t in TARGETS] == ["image", "image", "latent", "latent"]
    check_target("eps", "latent", pca, 0.1)
    with pytest.raises(ValueError, match=r"target 'decoded' is defined on a tokenizer's latents: .* tokenizer=None\)"):
        check_target("decoded", "latent", None, 0.1)
    with pytest.raises(ValueError, match=r"prediction target must be one of \('image', 'decoded', 'z0', 'eps'\), got 'noise'"):
        target_space("noise")


# ---------------------------------------------------------------------------------------------- the noise coordinates
def test_latent_path_is_the_image_path_in_other_coordinates(pca):
    """z_t = gamma z0 + sigma eps in whitened PCA coordinates, and decoding it gives l-DAE's noisy image."""
    x, t = _images(), torch.tensor([0, 400, 999])
    sched = LinearGammaSqSchedule()
    image_noise = LatentNoise(pca, 8, schedule=sched)
    latent_noise = LatentNoise(pca, 8, schedule=sched, input_space="latent")
    a = image_noise(x, t, generator=torch.Generator().manual_seed(0))
    b = latent_noise(x, t, generator=torch.Generator().manual_seed(0))
    z0 = pca.encode(x, 8, whiten=True)
    torch.testing.assert_close(b.z0, z0)
    torch.testing.assert_close(b.x_t, b.gamma[:, None, None] * z0 + b.sigma[:, None, None] * b.eps, atol=0, rtol=0)
    torch.testing.assert_close(a.eps, b.eps, atol=0, rtol=0)  # the same draw of eps
    torch.testing.assert_close(pca.decode(b.x_t, (16, 16), whiten=True), a.x_t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pca.encode(a.x_t, 8, whiten=True), b.x_t, atol=1e-4, rtol=1e-4)  # V V^T = I
    assert a.z0 is None
    kept = LatentNoise(pca, 8, schedule=sched, keep_latent=True)(x, t, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(kept.x_t, a.x_t, atol=1e-5, rtol=1e-5)  # image input with z0 kept for the target


def test_prediction_target_needs_kept_latents(pca):
    noise = LatentNoise(pca, 8)
    batch = noise(_images(), 3)
    assert isinstance(batch, NoisyBatch) and torch.equal(prediction_target("eps", _images(), batch, noise), batch.eps)
    with pytest.raises(ValueError, match=r"target 'z0' needs the clean latents: build the noise with keep_latent=True"):
        prediction_target("z0", _images(), batch, noise)


# ---------------------------------------------------------------------------------------------- the model's loss
# At initialisation the output layer is zero (adaLN-Zero), so net(.) = 0 and each loss is its target's
# weighted squared norm: that pins down which target, which weight and which normalisation is used.
@pytest.mark.parametrize(
    "target,input_space,schedule",
    [("eps", "latent", "linear_gamma2"), ("z0", "latent", "linear_gamma2"), ("z0", "latent", "linear_sigma"),
     ("z0", "image", "linear_sigma"), ("decoded", "image", "linear_sigma"), ("image", "image", "linear_sigma")],
)
def test_model_loss_at_init_is_the_weighted_norm_of_its_target(pca, target, input_space, schedule):
    torch.manual_seed(0)
    model = LDAE(TINY, pca, d=8, schedule=schedule, input_space=input_space, target=target)
    x, t = _images(), 500
    loss = model(x, t=t, generator=torch.Generator().manual_seed(5))
    noisy = model.corrupt(x, t, generator=torch.Generator().manual_seed(5))
    sched = LinearGammaSqSchedule() if schedule == "linear_gamma2" else LinearSigmaSchedule()
    gamma, sigma = float(sched.gammas[t]), float(sched.sigmas[t])
    lam = gamma**2 if schedule == "linear_gamma2" else 1 / (1 + sigma**2)
    assert float(noisy.weight[0]) == pytest.approx(lam, rel=1e-6)
    if target == "eps":
        expected = noisy.eps.square().sum(-1).mean()  # Eq. 2, unweighted
    elif target == "z0":
        expected = lam * pca.encode(x, 8, whiten=True).square().sum(-1).mean()  # Eq. 3
    elif target == "decoded":
        expected = lam * patchify(pca.project(x, 8), 4).square().sum(-1).mean()  # inverse-PCA image
    else:
        r = patchify(x, 4) @ pca.components.T  # Eq. 4 with w = 1 for i <= d, 0.1 beyond
        expected = lam * (r[..., :8].square().sum(-1) + 0.1 * r[..., 8:].square().sum(-1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    out = model(x, t=t, generator=torch.Generator().manual_seed(5), return_dict=True)
    expected_shape = (3, 16, 8) if target in ("eps", "z0") else (3, 3, 16, 16)  # (B, N, d) or (B, C, H, W)
    assert out.pred.shape == expected_shape


def test_eps_loss_is_unweighted_even_where_gamma_vanishes(pca):
    """At t = T-1 of linear_gamma2, gamma = 0: Eq. 3 weighs the level by 0, Eq. 2 does not."""
    x = _images()
    eps_model = LDAE(TINY, pca, d=8, schedule="linear_gamma2", input_space="latent", target="eps")
    z0_model = LDAE(TINY, pca, d=8, schedule="linear_gamma2", input_space="latent", target="z0")
    assert z0_model(x, t=999).item() == 0.0
    assert eps_model(x, t=999, generator=torch.Generator().manual_seed(0)).item() == pytest.approx(8.0, rel=0.3)  # E||eps||^2 = d
    assert math.isfinite(eps_model(x, t=0).item())
