"""The pretraining model, its loss (Eq. 4) and the exact fixed-t export."""
import math

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from ldae.diffusion.loss import pca_weighted_loss
from ldae.models.export import export_encoder_state_dict, export_to_timm
from ldae.models.layers import AdaLNBlock
from ldae.models.ldae import LDAE
from ldae.models.sizes import SIZES, ModelSize, vit_kwargs
from ldae.tokenizers.pca import PatchPCA

TINY = ModelSize(img_size=16, patch_size=4, embed_dim=32, enc_depth=2, dec_depth=2, num_heads=2, default_d=6)


def _pca(patch: int = 4, seed: int = 0) -> PatchPCA:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.randn(32, 3, 8, 8, generator=g), size=16, mode="bilinear")
    return PatchPCA.fit([x + 0.05 * torch.randn(32, 3, 16, 16, generator=g)], patch_size=patch)


def _randomize_adaln(model: LDAE, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "adaLN" in name or name.startswith("final_layer.linear"):
            with torch.no_grad():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------------------- loss
def test_loss_hand_checkable_case():
    # D = 1*1*2 = 2 per patch, d = 1: P_d keeps the first component.
    theta = 0.3
    v = torch.tensor([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
    tok = PatchPCA(v, torch.tensor([2.0, 1.0]), torch.zeros(2), patch_size=1, in_chans=2, norm_mean=(0, 0), norm_std=(1, 1))
    target = torch.zeros(1, 2, 1, 2)  # one image, two patches
    pred = torch.tensor([[[[1.0, 0.0]], [[2.0, -1.0]]]])  # patch0 e = -(1, 2); patch1 e = -(0, -1)
    lam = torch.tensor([0.5])
    loss = pca_weighted_loss(pred, target, lam, tok, d=1, tail_weight=0.1)
    expected = 0.0
    for e in (torch.tensor([-1.0, -2.0]), torch.tensor([0.0, 1.0])):
        r = v @ e  # r = V e over the full basis
        expected += float(r[0] ** 2 + 0.1 * r[1] ** 2)
    expected = 0.5 * expected / 2  # lambda * mean over the two patches
    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    # equivalently lambda * (||P_d e||^2 + 0.1 ||(I - P_d) e||^2)
    e = (target - pred).permute(0, 2, 3, 1).reshape(2, 2)
    pd = torch.outer(v[0], v[0])
    alt = 0.5 * ((e @ pd).square().sum(1) + 0.1 * (e @ (torch.eye(2) - pd)).square().sum(1)).mean()
    assert math.isclose(float(loss), float(alt), rel_tol=1e-6)


def test_loss_weights_per_sample_and_pixel_space():
    pred, target = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    loss = pca_weighted_loss(pred, target, torch.tensor([1.0, 0.0]), None, d=48, patch_size=4)
    assert math.isclose(float(loss), 48 / 2, rel_tol=1e-6)  # ||e||^2 = 48 per patch; second sample weighs 0
    with pytest.raises(ValueError, match="differ in shape"):
        pca_weighted_loss(pred, target[:, :2], torch.ones(2), None, 48, patch_size=4)


def test_model_loss_is_eq4_of_its_own_prediction():
    tok = _pca()
    model = LDAE(TINY, tok, d=6)
    _randomize_adaln(model)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        out = model(x, t=torch.tensor([0, 400, 999]), return_dict=True)
    sig = torch.tensor([0.0, math.sqrt(2) * 400 / 999, math.sqrt(2)])
    lam = 1 / (1 + sig**2)
    e = torch.nn.functional.unfold(x - out.pred, 4, stride=4).transpose(1, 2).double()  # (B, N, D)
    r = e @ tok.components.double().T
    w = torch.cat([torch.ones(6), torch.full((42,), 0.1)]).double()
    expected = (lam.double()[:, None] * (r.square() * w).sum(-1)).mean()
    assert math.isclose(float(out.loss), float(expected), rel_tol=1e-5)
    assert out.x_t.shape == out.pred.shape == x.shape


# ---------------------------------------------------------------------------- model
def test_adaln_zero_block_is_identity_at_init():
    model = LDAE(TINY, _pca())
    block = model.blocks[0]
    x, c = torch.randn(2, 16, 32), torch.randn(2, model.cond_dim)
    assert torch.equal(block(x, c), x)
    # and the whole network predicts zeros at init (zeroed output layer)
    assert torch.equal(model.denoise(torch.randn(2, 3, 16, 16), 5), torch.zeros(2, 3, 16, 16))


def test_conditioning_width_is_a_quarter():
    model = LDAE(TINY, _pca())
    assert model.cond_dim == 8
    assert model.t_embedder.mlp[0].out_features == 8
    assert model.blocks[0].adaLN_modulation[-1].in_features == 8
    assert isinstance(model.blocks[0], AdaLNBlock)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_output_shapes_every_size(name):
    size = SIZES[name]
    with torch.device("meta"):
        tok = PatchPCA(torch.eye(size.patch_dim), torch.ones(size.patch_dim), torch.zeros(size.patch_dim), size.patch_size)
        model = LDAE(name, tok)
        x = torch.zeros(2, 3, size.img_size, size.img_size)
        model.check_inputs = False
        out = model(x, t=torch.tensor([1, 2]), return_dict=True)
        tokens = model.forward_encoder(x, 3)
    n = (size.img_size // size.patch_size) ** 2
    assert out.pred.shape == x.shape and out.loss.shape == ()
    assert tokens.shape == (2, n, size.embed_dim)
    assert len(model.blocks) == size.enc_depth + size.dec_depth


@pytest.mark.parametrize("name,expected", [("base", 86e6), ("large", 304e6)])
def test_encoder_parameter_counts_match_vit(name, expected):
    with torch.device("meta"):
        vit = VisionTransformer(**vit_kwargs(SIZES[name]))
    count = sum(p.numel() for p in vit.parameters())
    assert abs(count - expected) / expected < 0.01, count


def test_training_steps_reach_every_parameter():
    torch.manual_seed(0)
    model = LDAE(TINY, _pca())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(8, 3, 16, 16)
    changed_after = {}
    for step in range(1, 4):
        opt.zero_grad()
        model(x).backward()
        opt.step()
        for n, p in model.named_parameters():
            if n not in changed_after and not torch.equal(p, before[n]):
                changed_after[n] = step
    # adaLN-Zero: only the zeroed output layer receives gradient at the first step ...
    assert {n for n, s in changed_after.items() if s == 1} == {"final_layer.linear.weight", "final_layer.linear.bias"}
    # ... and within three steps the signal has reached every trainable parameter.
    assert set(changed_after) == {n for n, _ in model.named_parameters()}


def test_bad_inputs_name_what_was_expected():
    model = LDAE(TINY, _pca())
    with pytest.raises(ValueError, match="divisible by the patch size 4"):
        model(torch.zeros(1, 3, 18, 16))
    with pytest.raises(ValueError, match="expected 16x16 images for this model, got 8x8"):
        model(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="expected 3 channels, got 1"):
        model(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="floating-point tensor"):
        model(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="finite values, found NaN or inf"):
        model(torch.full((1, 3, 16, 16), float("inf")))
    with pytest.raises(ValueError, match=r"integers in \[0, 999\]"):
        model(torch.zeros(1, 3, 16, 16), t=1000)
    with pytest.raises(ValueError, match="patch size 4 \\(model expects 16\\)"):
        LDAE("base", _pca())
    with pytest.raises(ValueError, match="unknown l-DAE size 'huge'"):
        LDAE("huge")
    with pytest.raises(ValueError, match=r"enc_depth must be in \[1, 3\]"):
        LDAE(TINY, _pca(), enc_depth=4)


def test_encoder_split_is_configurable():
    model = LDAE(TINY, _pca(), enc_depth=3)
    assert model.enc_depth == 3 and model.size.dec_depth == 1
    assert export_to_timm(model, 10).blocks.__len__() == 3


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = LDAE(TINY, _pca())
    _randomize_adaln(model)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 600])
    g = torch.Generator().manual_seed(0)
    model(x, t, generator=g).backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x, t, generator=torch.Generator().manual_seed(0)).backward()
    for a, b in zip(ref, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------- export
@pytest.mark.parametrize("size", [TINY, ModelSize(32, 4, 48, 3, 1, 3, default_d=16), ModelSize(32, 4, 48, 2, 1, 3, default_d=16, act="gelu")])
@pytest.mark.parametrize("t", [10, 777])
def test_export_is_exact(size, t):
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, size.img_size, size.img_size, generator=g)
    tok = PatchPCA.fit([x], patch_size=size.patch_size)
    model = LDAE(size, tok).eval()
    _randomize_adaln(model, seed=t)
    vit = export_to_timm(model, t)
    assert isinstance(vit, VisionTransformer) and type(vit.blocks[0]).__name__ == "Block"
    with torch.no_grad():
        ours = model.forward_features(x, t)
        theirs = vit(x)
        tokens_ours = model.forward_encoder(x, t)
        tokens_theirs = vit.forward_features(x)
    assert theirs.shape == (8, size.embed_dim)
    assert (ours - theirs).abs().max() <= 1e-5
    assert (tokens_ours - tokens_theirs).abs().max() <= 1e-5
    # the modulation is not trivial: another level gives other features
    assert (model.forward_features(x, 0) - ours).abs().max() > 1e-3


def test_export_state_dict_is_a_plain_vit_and_leaves_model_untouched():
    model = LDAE(TINY, _pca())
    _randomize_adaln(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = export_encoder_state_dict(model, 10)
    vit = VisionTransformer(**vit_kwargs(model.size))
    assert set(sd) == set(vit.state_dict())
    assert all(v.dtype == torch.float32 for v in sd.values())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.t_embedder.mlp[0].weight.dtype == torch.float32
    with pytest.raises(ValueError, match=r"integers in \[0, 999\]"):
        export_encoder_state_dict(model, -1)


def test_export_of_a_registered_size_carries_its_preprocessing(tmp_path):
    import timm
    from timm.models import save_for_hf

    size = SIZES["tiny_patch4_32"]
    tok = PatchPCA(torch.eye(48), torch.ones(48), torch.zeros(48), 4, norm_mean=(0.4, 0.4, 0.4), norm_std=(0.2, 0.2, 0.2))
    model = LDAE("tiny_patch4_32", tok).eval()
    _randomize_adaln(model)
    vit = export_to_timm(model, 10)
    cfg = timm.data.resolve_model_data_config(vit)
    assert cfg["input_size"] == (3, size.img_size, size.img_size)
    assert cfg["mean"] == (0.4, 0.4, 0.4) and cfg["std"] == (0.2, 0.2, 0.2)
    save_for_hf(vit, tmp_path / "enc", safe_serialization=True)
    back = timm.create_model(f"local-dir:{tmp_path / 'enc'}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (back(x) - model.forward_features(x, 10)).abs().max() <= 1e-5


def test_inputs_of_other_dtypes_python_levels_and_empty_batches():
    """fp16 / bf16 / fp64 images are cast to the weights' dtype (as autocast would); t may be any whole
    Python or numpy number; an empty batch or a fractional level is refused in one line."""
    import numpy as np

    torch.manual_seed(0)
    tok = PatchPCA.fit([torch.rand(16, 3, 16, 16) * 2 - 1], 4)
    model = LDAE(TINY, tok).eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ref = model.forward_features(x, 10)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        got = model.forward_features(x.to(dtype), 10)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, model.forward_features(x.to(dtype).float(), 10), rtol=0, atol=0)
    torch.testing.assert_close(model.forward_features(x, t=10.0), ref, rtol=0, atol=0)
    torch.testing.assert_close(model.forward_features(x, t=np.int64(10)), ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"noise level t must be an integer in \[0, 999\], got 5.5"):
        model.forward_features(x, t=5.5)
    with pytest.raises(ValueError, match="expected at least one image, got an empty batch"):
        model(x[:0])
