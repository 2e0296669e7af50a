"""The ldae_vit_* timm models: registry, the timm ViT API, pretrained loading (and its refusals), shipped files."""
from __future__ import annotations

import json
import re
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import ldae
import timm
import timm.data
import timm.optim
from ldae.models.sizes import SIZES
from ldae.release import manifest as W
from ldae.tokenizers.pca import DIT_NORM, PatchPCA, patchify
from ldae.utils.io import save_safetensors, sha256_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

ARCHS = timm.list_models("ldae*")
REPO = Path(__file__).resolve().parent.parent
# Encoder shapes of the paper's Tab. 4 (ViT-B, ViT-1/2L, ViT-L; patch 16 at 256 px), written out independently.
PAPER_ENCODERS = {"ldae_vit_base": (12, 768, 12), "ldae_vit_half_large": (12, 1024, 16), "ldae_vit_large": (24, 1024, 16)}


def size_of(arch: str):
    return ldae.models.registry.arch_size(arch)  # ldae_vit_custom: its default shape


def small(arch: str, depth: int = 2, **kw):
    """The architecture at depth 2 on a 4 x 4 patch grid: every code path, a fraction of the cost."""
    p = size_of(arch).patch_size
    return timm.create_model(arch, depth=depth, img_size=4 * p, **kw).eval()


def images(arch: str, b: int = 2, grid: int = 4, seed: int = 0) -> torch.Tensor:
    p = size_of(arch).patch_size
    return torch.randn(b, 3, grid * p, grid * p, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- registry
def test_registered_names_are_the_sizes():
    assert sorted(ARCHS) == sorted(["ldae_vit_custom", *("ldae_vit_" + s for s in SIZES)])
    assert set(ARCHS) >= {"ldae_vit_base", "ldae_vit_large", "ldae_vit_half_large", "ldae_vit_small_patch4_32"}
    assert all(timm.models.get_pretrained_cfg(a) is not None for a in ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
def test_full_size_architecture(arch):
    size = size_of(arch)
    with torch.device("meta"):  # full size without allocating ViT-L
        m = timm.create_model(arch)
    assert isinstance(m, VisionTransformer) and m.num_classes == 0 and m.global_pool == "avg"
    assert m.cls_token is None and m.patch_embed.img_size == (size.img_size, size.img_size)
    depth, dim, heads = PAPER_ENCODERS.get(arch, (size.enc_depth, size.embed_dim, size.num_heads))
    assert (len(m.blocks), m.num_features, m.blocks[0].attn.num_heads) == (depth, dim, heads)
    # patch embed + pos embed + per block (2 LayerNorms, qkv, proj, fc1, fc2); no final norm, no head.
    n = (size.img_size // size.patch_size) ** 2
    expected = dim * 3 * size.patch_size**2 + dim + n * dim + depth * (12 * dim * dim + 13 * dim)
    assert sum(p.numel() for p in m.parameters()) == expected


@pytest.mark.parametrize("arch", ARCHS)
def test_pretrained_cfg_is_complete(arch):
    cfg = timm.models.get_pretrained_cfg(arch).to_dict()
    s = size_of(arch)
    assert cfg["tag"] == (W.load_manifest().tags(arch) or ["untrained"])[0]  # the first released tag is the default
    assert cfg["input_size"] == (3, s.img_size, s.img_size) and cfg["num_classes"] == 0
    if arch == "ldae_vit_custom":  # any shape: its tokenizer comes with an export folder
        with pytest.raises(ValueError, match="has no tokenizer of its own: an export folder of a custom size carries it"):
            ldae.get_tokenizer(arch)
        tok = ldae.get_tokenizer("ldae_vit_micro_patch4_32")  # the default shape's
    else:
        tok = ldae.get_tokenizer(f"{arch}.{cfg['tag']}")
    assert (cfg["mean"], cfg["std"]) == (tok.norm_mean, tok.norm_std)
    assert (cfg["crop_pct"], cfg["interpolation"], cfg["first_conv"], cfg["classifier"]) == (1.0, "bicubic", "patch_embed.proj", "head")
    assert cfg["paper_ids"] == "arXiv:2401.14404" and cfg["license"] and cfg["description"]
    with torch.device("meta"):
        keys = timm.create_model(arch, num_classes=3).state_dict().keys()
    assert {cfg["classifier"] + ".weight", cfg["first_conv"] + ".weight"} <= set(keys)


# ---------------------------------------------------------------------------------------------- timm ViT API
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_paths_agree(arch):
    m, x = small(arch), images(arch)
    with torch.no_grad():
        tokens = m.forward_features(x)
        pooled = m(x)
    assert tokens.shape == (2, 16, m.num_features) and pooled.shape == (2, m.num_features)
    torch.testing.assert_close(pooled, tokens.mean(1), rtol=0, atol=1e-6)
    torch.testing.assert_close(m.forward_head(tokens, pre_logits=True), pooled, rtol=0, atol=0)
    m.reset_classifier(0, global_pool="")  # tokens instead of pooled features
    with torch.no_grad():
        torch.testing.assert_close(m(x), tokens, rtol=0, atol=0)
    m.reset_classifier(5, global_pool="avg")
    assert m.get_classifier().out_features == 5 and m(x).shape == (2, 5)


@pytest.mark.parametrize("arch", ARCHS)
def test_intermediates_and_features_only(arch):
    m, x = small(arch), images(arch)
    p, d = size_of(arch).patch_size, m.num_features
    with torch.no_grad():
        h = m.patch_embed(x) + m.pos_embed
        blocks = []
        for blk in m.blocks:
            h = blk(h)
            blocks.append(h)  # (B, 16, D)
        final, nchw = m.forward_intermediates(x)
        nlc = m.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
        layers = m.get_intermediate_layers(x, n=2)
    torch.testing.assert_close(final, blocks[-1], rtol=0, atol=1e-5)
    for i in range(2):
        torch.testing.assert_close(nlc[i], blocks[i], rtol=0, atol=1e-5)
        torch.testing.assert_close(nchw[i], blocks[i].transpose(1, 2).reshape(2, d, 4, 4), rtol=0, atol=1e-5)
        torch.testing.assert_close(layers[i], blocks[i], rtol=0, atol=1e-5)
    torch.manual_seed(0)
    f = small(arch, features_only=True, out_indices=(0, 1))
    assert not f.model.load_state_dict(m.state_dict(), strict=False).missing_keys
    with torch.no_grad():
        feats = f(x)
    assert [t.shape for t in feats] == [(2, d, 4, 4)] * 2
    assert f.feature_info.channels() == [d, d] and f.feature_info.reduction() == [p, p]
    torch.testing.assert_close(feats[0], nchw[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_backward_and_grad_checkpointing_is_exact(arch):
    m, x = small(arch, depth=1, num_classes=42).train(), images(arch)
    out = m(x).square().sum()
    out.backward()
    assert all(p.grad is not None for p in m.parameters())  # every parameter, the new head included
    grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.set_grad_checkpointing(True)
    out2 = m(x).square().sum()
    out2.backward()
    assert torch.equal(out, out2)
    assert all(torch.allclose(a, p.grad, rtol=1e-5, atol=1e-7) for a, p in zip(grads, m.parameters()))


@pytest.mark.parametrize("arch", ARCHS)
def test_image_size_dynamic_and_resampled(arch):
    p = size_of(arch).patch_size
    m = small(arch, dynamic_img_size=True)
    x = torch.randn(1, 3, 6 * p, 2 * p)
    with torch.no_grad():
        assert m.forward_features(x).shape == (1, 12, m.num_features)
    m2 = timm.create_model(arch, depth=1, img_size=2 * p)
    m2.set_input_size(img_size=(6 * p, 6 * p))
    assert m2.pos_embed.shape == (1, 36, m2.num_features)


@pytest.mark.parametrize("arch", ARCHS)
def test_weight_decay_and_layer_decay_groups(arch):
    m = small(arch, num_classes=10)  # fine-tuning: a head on top of the backbone
    assert "pos_embed" in m.no_weight_decay()
    opt = timm.optim.create_optimizer_v2(m, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    # depth 2: embeddings get 0.75^3, block i 0.75^(2-i), the head 1.
    assert scale[id(m.patch_embed.proj.weight)] == pytest.approx(0.75**3)
    assert scale[id(m.blocks[0].attn.qkv.weight)] == pytest.approx(0.75**2)
    assert scale[id(m.blocks[1].mlp.fc2.weight)] == pytest.approx(0.75)
    assert scale[id(m.head.weight)] == 1.0
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(m.pos_embed)] == 0 and decay[id(m.blocks[0].norm1.weight)] == 0 and decay[id(m.blocks[0].attn.qkv.weight)] == 0.05


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("arch", ARCHS)
def test_torchscript(arch):
    m, x = small(arch, scriptable=True), images(arch)
    scripted = torch.jit.script(m)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), m(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["ldae_vit_base", "ldae_vit_small_patch4_32"])
def test_data_config_is_the_pretraining_preprocessing(arch):
    from torchvision import transforms as T

    m = small(arch)
    cfg = timm.data.resolve_model_data_config(m)
    s = size_of(arch).img_size
    assert cfg == {"input_size": (3, s, s), "interpolation": "bicubic", "mean": DIT_NORM[0], "std": DIT_NORM[1],
                   "crop_pct": 1.0, "crop_mode": "center"}
    img = Image.fromarray((torch.rand(s + 17, s + 5, 3) * 255).byte().numpy())
    expected = T.Compose([T.Resize(s, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(s), T.ToTensor(),
                          T.Normalize(DIT_NORM[0], DIT_NORM[1])])(img)
    torch.testing.assert_close(timm.data.create_transform(**cfg)(img), expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- no weights
def _no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def expected_no_weights(arch: str, manifest_path: Path, have: str | None = None) -> str:
    second = f"Tags with weights: {have}." if have else f"No l-DAE tag has weights yet in this release (manifest: {manifest_path})."
    return "\n".join([
        f"No pretrained weights ship for {arch}.",
        second,
        "Load weights you have with:",
        f"  timm.create_model('{arch}', pretrained=True, pretrained_cfg_overlay=dict(file='/path/model.safetensors'))",
        "  timm.create_model('hf-hub:<org>/<name>', pretrained=True)  # an `ldae export` upload; `import ldae` first",
        "  timm.create_model('local-dir:/path/to/export', pretrained=True)",
        "Make them from a pretraining checkpoint with: ldae export <checkpoint.pth> --out /path/to/export",
        "Use pretrained=False for a random initialisation.",
    ])


@pytest.mark.parametrize("arch", [a for a in ARCHS if not W.load_manifest().tags(a)])
def test_no_weights_fails_fast_and_offline(arch, monkeypatch):
    _no_network(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as e:
        timm.create_model(arch, pretrained=True)
    assert time.perf_counter() - start < 5
    have = ", ".join(sorted(W.load_manifest().weights)) or None
    assert str(e.value) == expected_no_weights(arch, W.weights_dir() / "manifest.json", have)
    with pytest.raises(RuntimeError, match=f"^No pretrained weights ship for {arch}\\."):
        timm.create_model(f"{arch}.untrained", pretrained=True)


def test_unknown_tag_is_named():
    with pytest.raises(ValueError, match=re.escape("unknown pretrained tag 'ldae_vit_base.in22k'; tags of ldae_vit_base: ['untrained']")):
        timm.create_model("ldae_vit_base.in22k")


# ---------------------------------------------------------------------------------------------- shipped-file path
ARCH = "ldae_vit_tiny_patch4_32"


@pytest.fixture(scope="module")
def release_files(tmp_path_factory):
    """A weights folder holding one released tag of ``ARCH`` (written here) and the model it holds."""
    root = tmp_path_factory.mktemp("release")
    torch.manual_seed(1)
    src = timm.create_model(ARCH).eval()
    for p in src.parameters():  # non-trivial everywhere, LayerNorms included
        p.data.add_(0.02 * torch.randn_like(p))
    path = root / f"{ARCH}.demo.safetensors"
    save_safetensors(src.state_dict(), path)
    tok = PatchPCA.fit([torch.rand(8, 3, 32, 32) * 2 - 1], 4)
    tok.save(root / "tok.safetensors")
    manifest = {
        "format": "ldae.weights.v1",
        "tokenizers": {"tok": {"file": "tok.safetensors", "sha256": sha256_file(root / "tok.safetensors"),
                               "bytes": (root / "tok.safetensors").stat().st_size, "patch_size": 4, "in_chans": 3,
                               "norm_mean": [0.5] * 3, "norm_std": [0.5] * 3, "models": [ARCH]}},
        "weights": {f"{ARCH}.demo": {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
                                     "params": sum(p.numel() for p in src.parameters()), "tokenizer": "tok",
                                     "noise": {"t": 20, "d": 12}, "data": "random", "metrics": {"knn": 1.0}}},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root, src, tok


@pytest.fixture
def release(release_files, tmp_path, monkeypatch):
    """A private copy of the release folder, selected with $LDAE_WEIGHTS_DIR: (model, weights file, tokenizer)."""
    root, src, tok = release_files
    for f in root.iterdir():
        shutil.copy(f, tmp_path / f.name)
    monkeypatch.setenv(W.WEIGHTS_DIR_ENV, str(tmp_path))
    return src, tmp_path / f"{ARCH}.demo.safetensors", tok


def test_shipped_file_loads_strict_and_verified(release, monkeypatch):
    src, path, tok = release
    _no_network(monkeypatch)
    x = images(ARCH, grid=8)
    for name in (ARCH, f"{ARCH}.demo"):  # the first tag with weights is the default
        m = timm.create_model(name, pretrained=True).eval()
        assert m.pretrained_cfg["tag"] == "demo" and m.pretrained_cfg["file"] == str(path)
        with torch.no_grad():
            assert torch.equal(m(x), src(x))
    assert W.load_manifest().weights[f"{ARCH}.demo"].params == sum(p.numel() for p in m.parameters())
    assert torch.equal(ldae.get_tokenizer(f"{ARCH}.demo").components, tok.components)
    assert ldae.get_noise_config(f"{ARCH}.demo") == W.NoiseConfig(t=20, d=12)
    assert ldae.get_noise_config(ARCH) == W.NoiseConfig(t=10, d=16)  # the architecture without a tag: defaults


def test_corrupted_file_is_refused_before_building(release, monkeypatch):
    _, path, _ = release
    data = bytearray(path.read_bytes())
    want = sha256_file(path)
    monkeypatch.setattr("ldae.models.registry.build_model_with_cfg", lambda *a, **k: pytest.fail("a model was built"))
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    path.write_bytes(bytes(data))
    with pytest.raises(W.WeightsIntegrityError) as e:
        timm.create_model(ARCH, pretrained=True)
    assert str(e.value) == (f"{ARCH}.demo: {path} has sha256 {sha256_file(path)}, the manifest expects {want} "
                            "(corrupted or replaced file); nothing was loaded")
    path.write_bytes(bytes(data[:1000]))  # truncated
    with pytest.raises(W.WeightsIntegrityError) as e:
        timm.create_model(ARCH, pretrained=True)
    assert str(e.value) == (f"{ARCH}.demo: {path} has 1000 bytes, the manifest expects {len(data)} "
                            "(truncated or incomplete copy); nothing was loaded")
    path.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{ARCH}.demo: file not found: {path}")):
        timm.create_model(ARCH, pretrained=True)


def test_no_weights_message_names_the_tags_that_have_weights(release):
    with pytest.raises(RuntimeError) as e:
        timm.create_model("ldae_vit_base", pretrained=True)
    assert str(e.value) == expected_no_weights("ldae_vit_base", W.weights_dir() / "manifest.json", have=f"{ARCH}.demo")


def test_adaptation_num_classes_in_chans_img_size(release):
    src, path, _ = release
    sd = src.state_dict()
    m = timm.create_model(f"{ARCH}.demo", pretrained=True, num_classes=7, in_chans=1, img_size=64)
    assert m.head.out_features == 7
    torch.testing.assert_close(m.patch_embed.proj.weight, sd["patch_embed.proj.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(m.pos_embed, resample_abs_pos_embed(sd["pos_embed"], (16, 16), num_prefix_tokens=0))
    assert torch.equal(m.blocks[3].mlp.fc1.weight, sd["blocks.3.mlp.fc1.weight"])


def test_overlay_file_loads_into_an_untrained_arch(release, tmp_path, monkeypatch):
    src, path, _ = release
    monkeypatch.delenv(W.WEIGHTS_DIR_ENV)  # the packaged manifest: nothing released
    m = timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), src.state_dict().values()))


def _one_entry_manifest(tmp_path, monkeypatch, edit=lambda e: None) -> dict:
    entry = {"file": "w.safetensors", "sha256": "0" * 64, "bytes": 10, "params": 1, "tokenizer": "tok"}
    tok = {"file": "t.safetensors", "sha256": "1" * 64, "bytes": 10, "patch_size": 4, "in_chans": 3,
           "norm_mean": [0.5] * 3, "norm_std": [0.5] * 3}
    edit(entry)
    raw = {"format": "ldae.weights.v1", "tokenizers": {"tok": tok}, "weights": {f"{ARCH}.x": entry}}
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    monkeypatch.setenv(W.WEIGHTS_DIR_ENV, str(tmp_path))
    return raw


@pytest.mark.parametrize("edit, message", [
    (lambda e: e.update(sha256="abc"), "'sha256' must be 64 lower-case hex digits, got 'abc'"),
    (lambda e: e.update(file="../x.safetensors"), "'file' must be a plain .safetensors file name in the weights folder, got '../x.safetensors'"),
    (lambda e: e.update(file="x.pth"), "'file' must be a plain .safetensors file name in the weights folder, got 'x.pth'"),
    (lambda e: e.update(bytes=30 * 2**20), "'bytes' must be an int in (0, 26214400] (the per-file cap), got 31457280"),
    (lambda e: e.update(tokenizer="nope"), "tokenizer 'nope' is not in the manifest's tokenizers ['tok']"),
    (lambda e: e.update(noise={"sigma": 1}), "unknown noise keys ['sigma']"),
    (lambda e: e.pop("params"), "missing keys ['params']"),
    (lambda e: e.update(denoiser={"file": "d.safetensors", "sha256": "2" * 64}), ".denoiser: missing keys ['bytes']"),
])
def test_manifest_validation(tmp_path, monkeypatch, edit, message):
    _one_entry_manifest(tmp_path, monkeypatch)
    assert list(W.load_manifest().weights) == [f"{ARCH}.x"]  # the unedited manifest is valid
    _one_entry_manifest(tmp_path, monkeypatch, edit)
    with pytest.raises(ValueError, match=re.escape(message)):
        W.load_manifest()


@pytest.mark.parametrize("key", ["vit_base_patch16_224.x", "ldae_vit_base", "ldae_vit_base.untrained"])
def test_manifest_rejects_bad_names(tmp_path, monkeypatch, key):
    raw = _one_entry_manifest(tmp_path, monkeypatch)
    raw["weights"] = {key: raw["weights"][f"{ARCH}.x"]}
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=re.escape(f"weights[{key!r}]")):
        W.load_manifest()


def test_weights_dir_without_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv(W.WEIGHTS_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(f"weights manifest not found: {tmp_path / 'manifest.json'} (set by $LDAE_WEIGHTS_DIR)")):
        timm.create_model(ARCH)


# ---------------------------------------------------------------------------------------------- shipped files
def test_shipped_weights_folder_is_consistent_and_small():
    manifest = W.load_manifest()
    assert manifest.root.resolve() == (REPO / "weights").resolve()
    entries = [vars(e) for e in manifest.tokenizers.values()] + [vars(e) for e in manifest.weights.values()]
    entries += [w.denoiser for w in manifest.weights.values() if w.denoiser]
    files = {p.name for p in manifest.root.iterdir() if p.name != "manifest.json" and not p.name.startswith(".")}
    cards = {f"{name}.md" for name in manifest.weights}  # each release's model card
    assert files == {e["file"] for e in entries} | cards  # nothing unlisted, nothing missing
    for card in cards:
        assert "## Metrics" in (manifest.root / card).read_text()
    for e in entries:
        W.verify_file(manifest.root / e["file"], e["sha256"], e["bytes"], e["file"])
        assert e["bytes"] <= W.MAX_FILE_BYTES
    assert sum(p.stat().st_size for p in manifest.root.iterdir()) <= W.MAX_DIR_BYTES
    assert all(manifest.default_tokenizer(a) is not None for a in ARCHS if a != "ldae_vit_custom")  # custom: from its export


def test_shipped_tokenizer_provenance_and_low_frequency_first():
    from safetensors import safe_open

    from ldae.cli.fit_pca import get_args_parser

    entry = W.load_manifest().tokenizers["pca_p16_imagenette224"]
    with safe_open(str(W.weights_dir() / entry.file), "pt") as f:
        meta = f.metadata()
    assert meta["command"] == entry.command and int(meta["num_images"]) == entry.images == 2500
    assert int(meta["num_patches"]) == entry.patches == 2500 * 14 * 14  # every patch of the native 224 px grid
    args = get_args_parser().parse_args(entry.command.split()[2:])
    assert (args.img_size, args.patch_size, args.norm, args.out) == (224, 16, "dit", "weights/" + entry.file)
    tok = ldae.get_tokenizer("ldae_vit_base")
    assert (tok.patch_size, tok.in_chans, tok.norm_mean, tok.num_images) == (16, 3, DIT_NORM[0], 2500)
    ev = tok.eigenvalues
    assert torch.all(ev[:-1] >= ev[1:]) and ev[32:].sum() / ev.sum() < 0.05  # top-32 hold > 95% of the variance
    # Fig. 4: the leading bases are smooth (DC first, then low frequencies); later ones oscillate.
    b = tok.components.reshape(768, 3, 16, 16)
    rough = (b.diff(dim=-1).square().sum((1, 2, 3)) + b.diff(dim=-2).square().sum((1, 2, 3)))  # (768,)
    assert rough[:8].max() < rough[200:208].min()
    dc = torch.full((768,), 768**-0.5)
    assert torch.dot(tok.components[0], dc).abs() > 0.9


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "ldae_vit_custom"])  # custom: tokenizer from its export
def test_tokenizer_and_noise_transform_from_a_name(arch):
    tok = ldae.get_tokenizer(arch)
    s = size_of(arch)
    assert (tok.patch_size, tok.in_chans) == (s.patch_size, s.in_chans)
    img = images(arch, b=1, grid=s.img_size // s.patch_size)[0].clamp(-1, 1)
    clean = ldae.get_noise_transform(arch, t=0)(img)  # sigma_0 = 0: the projection onto the top-d bases
    torch.testing.assert_close(clean, tok.project(img[None], s.default_d)[0], rtol=0, atol=1e-5)
    noisy = ldae.get_noise_transform(arch, t=999, generator=torch.Generator().manual_seed(0))(img)
    delta = patchify((noisy - clean)[None], s.patch_size)[0]  # (N, D): the noise alone
    d = s.default_d
    white = delta @ tok.components[:d].T / tok.latent_std(d)  # (N, d) whitened noise coordinates
    assert white.std().item() == pytest.approx(2**0.5, rel=0.1)  # sigma_999 = sqrt(2)
    assert (delta @ tok.components[d:].T).abs().max() < 1e-4  # nothing outside the top-d span
    assert isinstance(ldae.get_noise_transform(arch, batched=True), ldae.LatentNoise)


def test_bad_names_are_explained():
    with pytest.raises(ValueError, match=re.escape("unknown l-DAE model 'vit_base_patch16_224'")):
        ldae.get_tokenizer("vit_base_patch16_224")
    have = sorted(W.load_manifest().weights) or "none yet"
    with pytest.raises(ValueError, match=re.escape(f"unknown tag 'ldae_vit_base.in1k'; tags with weights: {have}")):
        ldae.get_tokenizer("ldae_vit_base.in1k")
    with pytest.raises(FileNotFoundError, match="no config.json in"):
        ldae.get_tokenizer("local-dir:/nonexistent")
