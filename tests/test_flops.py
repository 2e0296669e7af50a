"""Analytic FLOPs of the l-DAE and timm-ViT steps, checked against torch's FLOP counter, and MFU."""
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch.utils.flop_counter import FlopCounterMode

from ldae.models.flops import (
    TRAIN_FACTOR, ldae_forward_flops, ldae_train_flops, measure_matmul_peak, mfu, model_train_flops, vit_block_flops,
    vit_forward_flops, vit_mse_train_flops,
)
from ldae.models.ldae import LDAE
from ldae.models.sizes import SIZES, ModelSize
from ldae.tokenizers.pca import PatchPCA

SIZE = ModelSize(32, 4, 64, 1, 1, 2, default_d=16)


def _unfused(model: torch.nn.Module) -> torch.nn.Module:
    # The counter sees the attention matmuls only on the explicit (non-SDPA) path; the FLOPs are the same.
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    return model


def test_block_flops_by_hand():
    n, d = 10, 8
    qkv, scores, mix, proj, mlp = 2 * n * d * 3 * d, 2 * n * n * d, 2 * n * n * d, 2 * n * d * d, 2 * (2 * n * d * 4 * d)
    assert vit_block_flops(n, d) == qkv + scores + mix + proj + mlp == 24 * n * d * d + 4 * n * n * d


def test_vit_forward_matches_torch_flop_counter():
    vit = _unfused(VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, class_token=False,
                                     global_pool="", num_classes=0))
    with FlopCounterMode(display=False) as fc:
        vit.forward_features(torch.randn(3, 3, 32, 32))
    assert fc.get_total_flops() == 3 * vit_forward_flops(32, 4, 64, 2)


def test_ldae_forward_matches_torch_flop_counter():
    """Every matmul of the network: patch embedding, adaLN modulation, timestep MLP, blocks, pixel head."""
    model = _unfused(LDAE(SIZE, PatchPCA.fit([torch.randn(4, 3, 32, 32)], 4)))
    with FlopCounterMode(display=False) as fc:
        model.denoise(torch.randn(3, 3, 32, 32), torch.tensor([0, 500, 999]))
    assert fc.get_total_flops() == 3 * ldae_forward_flops(SIZE, model.cond_dim)


def test_latent_input_and_latent_target_count_d_numbers_per_token():
    """A model that embeds d-dim tokens and predicts z0 (the DDM end of the trajectory)."""
    model = _unfused(LDAE(SIZE, PatchPCA.fit([torch.randn(4, 3, 32, 32)], 4), input_space="latent", target="z0"))
    with FlopCounterMode(display=False) as fc:
        model.denoise(torch.randn(3, 64, 16), torch.tensor([0, 5, 9]))  # tokens in; denoise decodes z0 to an image
    decode = 2 * 64 * 16 * 48
    assert fc.get_total_flops() == 3 * (ldae_forward_flops(SIZE, model.cond_dim, in_dim=16, out_dim=16) + decode)
    assert model_train_flops(model) == 3 * ldae_forward_flops(SIZE, model.cond_dim, in_dim=16, out_dim=16) + 8 * 64 * 48 * 16


def test_train_step_is_three_forwards_up_to_the_input_gradient_of_the_level_embedding():
    model = _unfused(LDAE(SIZE, PatchPCA.fit([torch.randn(4, 3, 32, 32)], 4)))
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        model.denoise(x, torch.tensor([3, 7])).sum().backward()
    fwd = ldae_forward_flops(SIZE, model.cond_dim)
    no_grad_wrt_t_features = 2 * 256 * model.cond_dim  # the sinusoidal features of t need no gradient
    assert fc.get_total_flops() == 2 * (TRAIN_FACTOR * fwd - no_grad_wrt_t_features)


def test_model_train_flops_adds_the_latent_noise_and_loss_projections():
    model = LDAE(SIZE, PatchPCA.fit([torch.randn(4, 3, 32, 32)], 4))
    tokens, dp, d = 64, 48, 16
    assert model_train_flops(model) == 3 * ldae_forward_flops(SIZE, model.cond_dim) + 8 * tokens * dp * d
    assert ldae_train_flops(SIZE, model.cond_dim, d, latent=False) == 3 * ldae_forward_flops(SIZE, model.cond_dim)


def test_the_quoted_h200_anchor_is_reproduced():
    """timm 24 x 768 at 256 px, 1317 img/s on a 777 TFLOP/s card: 46.7% MFU counting the blocks' matmuls;
    counting the patch embedding and the pixel head as well (as ldae.models.flops does) gives 47.0%."""
    blocks = TRAIN_FACTOR * 24 * vit_block_flops(256, 768)
    assert mfu(blocks, 1317, 777e12) == pytest.approx(0.467, abs=5e-4)
    flops = vit_mse_train_flops(256, 16, 768, 24)
    assert flops == blocks + TRAIN_FACTOR * 2 * (2 * 256 * 768 * 768)  # + patch embedding + head, 0.65%
    assert mfu(flops, 1317, 777e12) == pytest.approx(0.470, abs=5e-4)
    # l-DAE-B costs the same up to its adaLN and timestep MLPs (under 0.2% more)
    b = SIZES["base"]
    assert 1 < ldae_train_flops(b, b.embed_dim // 4, 32) / flops < 1.002


def test_mfu_without_a_peak_is_none():
    assert mfu(1e9, 100.0, None) is None
    assert mfu(1e9, 100.0, 1e12) == pytest.approx(0.1)


def test_measured_peak_is_the_matmul_rate():
    peak = measure_matmul_peak("cpu", n=128, iters=2, repeats=1)
    assert 1e7 < peak < 1e14  # FLOP/s of a CPU, whatever its speed
