"""The training step on patches computes the same function as the image-space composition it replaces.

``LDAE.forward`` (image input, Eq. 4 target) patchifies the batch once and keeps noise, patch
embedding, prediction and loss per patch. These tests hold it against ``corrupt`` -> ``_denoise`` ->
``target_loss`` on images (the path every other target still takes), in float32 and under bf16 autocast.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldae.diffusion.noise import LatentNoise
from ldae.diffusion.targets import prediction_target, target_loss
from ldae.models.ldae import LDAE
from ldae.tokenizers.base import patchify, unpatchify
from ldae.tokenizers.pca import PatchPCA
from ldae.utils import malloc

SIZE = "custom:img=16,patch=4,dim=32,enc=1,dec=1,heads=2,d=8"


@pytest.mark.parametrize("shape, p", [((3, 3, 32, 32), 4), ((2, 3, 64, 64), 16), ((2, 1, 30, 34), 4), ((2, 3, 8, 8), 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_patchify_equals_unfold_and_unpatchify_equals_fold(shape, p, dtype):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    patches = patchify(x, p)
    assert torch.equal(patches, F.unfold(x.float(), p, stride=p).transpose(1, 2).to(dtype))
    folded = F.fold(patches.float().transpose(1, 2), shape[-2:], p, stride=p).to(dtype)
    assert torch.equal(unpatchify(patches, p, shape[-2:]), folded)  # uncovered border rows/cols are zero, as fold's


def test_unpatchify_refuses_patches_that_do_not_tile_the_image():
    with pytest.raises(ValueError, match="cannot fold 15 patches of 48 values with patch size 4 into a 16x16 image"):
        unpatchify(torch.zeros(1, 15, 48), 4, (16, 16))


def _model(noise_space: str = "latent", seed: int = 0) -> LDAE:
    g = torch.Generator().manual_seed(seed)
    tok = PatchPCA.fit([torch.rand(64, 3, 16, 16, generator=g) * 2 - 1], 4)
    torch.manual_seed(seed)
    model = LDAE(SIZE, tok, noise_space=noise_space)
    with torch.no_grad():  # non-zero adaLN and output layers, so every path carries gradient
        for name, p in model.named_parameters():
            if "adaLN" in name or "final_layer" in name:
                p.normal_(0, 0.05, generator=g)
    return model


def _image_space_loss(model: LDAE, x: torch.Tensor, seed: int) -> torch.Tensor:
    """The composition the patch step replaces: noisy image -> conv patch embedding -> image -> Eq. 4."""
    noisy = model.corrupt(x, None, torch.Generator().manual_seed(seed))
    pred = model._denoise(noisy.x_t, noisy.t)
    target = prediction_target(model.target, x, noisy, model.noise)
    return target_loss(model.target, pred, target, noisy.weight, model.tokenizer, model.d, model.tail_weight, model.size.patch_size)


@pytest.mark.parametrize("noise_space", ["latent", "pixel"])
def test_patch_step_equals_the_image_space_step_in_fp32(noise_space):
    """Same draws of t and eps, same loss and gradients up to float32 rounding (rtol 1e-5 / 1e-4)."""
    model = _model(noise_space)
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    params = list(model.parameters())
    fast = model(x, generator=torch.Generator().manual_seed(2))
    g_fast = torch.autograd.grad(fast, params)
    ref = _image_space_loss(model, x, 2)
    g_ref = torch.autograd.grad(ref, params)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-7)
    for (name, _), a, b in zip(model.named_parameters(), g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_patch_step_return_dict_gives_the_images_of_the_image_space_step():
    model = _model()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        out = model(x, generator=torch.Generator().manual_seed(5), return_dict=True)
        noisy = model.corrupt(x, None, torch.Generator().manual_seed(5))
        pred = model._denoise(noisy.x_t, noisy.t)
    assert torch.equal(out.t, noisy.t) and out.x_t.shape == out.pred.shape == x.shape
    torch.testing.assert_close(out.x_t, noisy.x_t, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.pred, pred, rtol=1e-5, atol=1e-6)


def test_bf16_patch_step_stays_close_to_fp32():
    """bf16 autocast (what CPUs with AVX512-BF16 / AMX train with): loss within 2%, every gradient within
    cosine 0.99 of the float32 step's, and the loss itself computed in float32."""
    model = _model()
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    params = list(model.parameters())
    ref = model(x, generator=torch.Generator().manual_seed(4))
    g_ref = torch.autograd.grad(ref, params)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, generator=torch.Generator().manual_seed(4))
    g_low = torch.autograd.grad(low, params)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), rel=0.02)
    for (name, _), a, b in zip(model.named_parameters(), g_low, g_ref):
        if b.norm() > 0:
            assert F.cosine_similarity(a.flatten().float(), b.flatten(), dim=0) > 0.99, name


@pytest.mark.parametrize("space", ["latent", "pixel"])
def test_forward_patches_is_the_patchified_forward(space):
    tok = PatchPCA.fit([torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1], 4)
    noise = LatentNoise(tok if space == "latent" else None, 8, space=space)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    img = noise(x, torch.tensor([0, 10, 500, 999]), generator=torch.Generator().manual_seed(2))
    pat = noise.forward_patches(patchify(x, 4), (16, 16), torch.tensor([0, 10, 500, 999]), generator=torch.Generator().manual_seed(2))
    assert torch.equal(img.eps, pat.eps) and torch.equal(img.t, pat.t)
    torch.testing.assert_close(pat.x_t, patchify(img.x_t, 4), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="forward_patches is the image-input, image-target transform"):
        LatentNoise(tok, 8, keep_latent=True).forward_patches(patchify(x, 4), (16, 16))


def test_keep_freed_memory_is_applied_on_glibc_and_allocation_still_works():
    try:
        applied = malloc.keep_freed_memory()
        if malloc._libc() is not None:
            assert applied
        a = torch.ones(3 * 2**24)  # 192 MiB: far above glibc's largest mmap threshold
        assert float(a.sum()) == 3 * 2**24
        del a
    finally:
        malloc.restore_default_malloc()
