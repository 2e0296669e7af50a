"""``ldae export``: checkpoint -> timm / HF folder, loaded back via local-dir:, an offline hf-hub cache and weights/."""
from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import pytest
import timm
import torch

import ldae
from ldae.cli.export import get_args_parser, main
from ldae.cli.model_flags import add_model_args
from ldae.engine.checkpoint import save_checkpoint
from ldae.models.export import export_to_timm
from ldae.models.model_config import build_model
from ldae.release import manifest as W
from ldae.release.export_folder import _shipped_tokenizer_name
from ldae.tokenizers.pca import PatchPCA

ARCH = "ldae_vit_tiny_patch4_32"


def make_checkpoint(path: Path, *flags: str, seed: int = 0):
    """A tiny_patch4_32 pretraining checkpoint with random (non-zero) adaLN and output layers."""
    args = add_model_args(argparse.ArgumentParser()).parse_args(["--model", "tiny_patch4_32", *flags])
    g = torch.Generator().manual_seed(seed)
    tok = PatchPCA.fit([torch.rand(16, 3, 32, 32, generator=g) * 2 - 1], 4)
    torch.manual_seed(seed)
    model = build_model(args, tok).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or "final_layer" in name:
                p.normal_(0, 0.02, generator=g)
    save_checkpoint({"model": model.state_dict(), "ema": None, "optimizer": {}, "step": 7, "epoch": 1,
                     "args": {**vars(args), "data": "cifar10-jpeg.tar.gz"}, "tokenizer": tok.metadata()}, path)
    return model


def export(tmp_path: Path, ckpt: Path, *flags: str) -> Path:
    out = tmp_path / "export"
    assert main(get_args_parser().parse_args([str(ckpt), "--out", str(out), *flags])) == 0
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("publish")
    model = make_checkpoint(tmp / "checkpoint.pth")
    out = export(tmp, tmp / "checkpoint.pth", "--tag", "demo", "--metric", "knn_top1=12.5", "--repo-id", "ldae-test/tiny",
                 "--recipe", "ldae pretrain --model tiny_patch4_32", "--device-info", "1x H100", "--minutes", "3")
    return model, out


def test_export_has_normal_permissions(exported):
    import os

    _, out = exported
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    assert all(f.stat().st_mode & 0o777 == 0o666 & ~umask for f in out.iterdir())


def test_folder_contents_and_model_card(exported):
    model, out = exported
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "SHA256SUMS", "config.json", "manifest_entry.json",
                                                     "model.safetensors", "tokenizer.safetensors"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".export.")]  # no temporary folder left behind
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == ARCH and config["num_classes"] == 0
    assert config["pretrained_cfg"]["tag"] == "demo" and config["pretrained_cfg"]["mean"] == [0.5] * 3
    assert config["ldae"]["noise"] == {"t": 10, "d": 16, "whiten": True, "latent_scale": "whiten", "noise_space": "latent", "schedule": "linear_sigma", "num_levels": 1000}
    card = (out / "README.md").read_text()
    for text in ("library_name: timm", "| knn_top1 | 12.5 |", "ldae pretrain --model tiny_patch4_32", "1x H100, 3 min",
                 "timm.create_model('hf-hub:ldae-test/tiny', pretrained=True)", "## Caveats", "cifar10-jpeg.tar.gz", "arXiv:2401.14404"):
        assert text in card


def test_local_dir_load_is_the_fixed_t_encoder(exported):
    model, out = exported
    x = torch.randn(3, 3, 32, 32)
    m = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(m(x), export_to_timm(model, 10)(x))
        torch.testing.assert_close(m(x), model.forward_features(x, 10), rtol=0, atol=1e-5)
    assert torch.equal(ldae.get_tokenizer(f"local-dir:{out}").components, model.tokenizer.components)
    assert ldae.get_noise_config(f"local-dir:{out}") == W.NoiseConfig(t=10, d=16, latent_scale="whiten")


def test_checksums_list_every_file_and_a_flipped_bit_is_refused(exported, tmp_path):
    from ldae.release.checksums import read_checksums
    from ldae.utils.io import sha256_file

    _, out = exported
    sums = read_checksums(out / "SHA256SUMS")
    assert sorted(sums) == sorted(p.name for p in out.iterdir() if p.name != "SHA256SUMS")
    assert all(sums[name] == sha256_file(out / name) for name in sums)
    bad = tmp_path / "tampered"
    shutil.copytree(out, bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-3] ^= 0x01  # one bit of one weight
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(W.WeightsIntegrityError, match=rf"local-dir:{bad}: model.safetensors does not match its sha256 in SHA256SUMS"):
        timm.create_model(f"local-dir:{bad}", pretrained=True)
    timm.create_model(f"local-dir:{bad}", pretrained=False)  # the architecture alone reads no weights
    (bad / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    (bad / "SHA256SUMS").write_text((out / "SHA256SUMS").read_text().replace(sums["README.md"], "0" * 64))
    with pytest.raises(W.WeightsIntegrityError, match="README.md does not match"):
        timm.create_model(f"local-dir:{bad}", pretrained=True)
    (bad / "SHA256SUMS").unlink()  # an export from before checksums: loads, with a warning
    with pytest.warns(UserWarning, match="no SHA256SUMS"):
        timm.create_model(f"local-dir:{bad}", pretrained=True)


def test_hf_hub_cache_round_trip_offline(exported, tmp_path, monkeypatch):
    import huggingface_hub.constants as C

    model, out = exported
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--ldae-test--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(out, repo / "snapshots" / commit)
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    m = timm.create_model("hf-hub:ldae-test/tiny", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    snap = repo / "snapshots" / commit
    good = (snap / "model.safetensors").read_bytes()
    (snap / "model.safetensors").write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(W.WeightsIntegrityError, match="hf-hub:ldae-test/tiny: model.safetensors does not match"):
        timm.create_model("hf-hub:ldae-test/tiny", pretrained=True)
    (snap / "model.safetensors").write_bytes(good)
    with torch.no_grad():
        assert torch.equal(m(x), export_to_timm(model, 10)(x))
    assert m.pretrained_cfg["hf_hub_id"] == "ldae-test/tiny"
    assert torch.equal(ldae.get_tokenizer("hf-hub:ldae-test/tiny").mean, model.tokenizer.mean)
    add_noise = ldae.get_noise_transform("hf-hub:ldae-test/tiny", t=0)
    torch.testing.assert_close(add_noise(x[0]), model.tokenizer.project(x[:1], 16)[0], rtol=0, atol=1e-5)


def test_manifest_entry_releases_the_export(exported, tmp_path, monkeypatch):
    """The printed release step: copy model.safetensors (and the new tokenizer) to weights/, merge the entry."""
    model, out = exported
    fragment = json.loads((out / "manifest_entry.json").read_text())
    name = f"{ARCH}.demo"
    entry = fragment["weights"][name]
    assert entry["params"] == sum(p.numel() for p in export_to_timm(model).parameters()) and entry["metrics"] == {"knn_top1": 12.5}
    (tok_name, tok_entry), = fragment["tokenizers"].items()  # a tokenizer of its own: released with it
    shutil.copy(out / "model.safetensors", tmp_path / entry["file"])
    shutil.copy(out / "tokenizer.safetensors", tmp_path / tok_entry["file"])
    manifest = json.loads((W.weights_dir() / "manifest.json").read_text())
    manifest["weights"].update(fragment["weights"])
    manifest["tokenizers"].update(fragment["tokenizers"])
    for t in manifest["tokenizers"].values():
        if not (tmp_path / t["file"]).exists():
            shutil.copy(W.weights_dir() / t["file"], tmp_path / t["file"])
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv(W.WEIGHTS_DIR_ENV, str(tmp_path))
    m = timm.create_model(ARCH, pretrained=True).eval()  # the new tag is the default
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), export_to_timm(model, 10)(x))
    assert ldae.get_tokenizer(name).num_patches == model.tokenizer.num_patches
    assert ldae.get_noise_config(name) == W.NoiseConfig(t=10, d=16, latent_scale="whiten")


def test_reuses_a_shipped_tokenizer():
    assert _shipped_tokenizer_name(ldae.get_tokenizer(ARCH)) == "pca_p4_cifar10"
    assert _shipped_tokenizer_name(PatchPCA.fit([torch.rand(4, 3, 8, 8)], 4)) is None


def test_custom_depth_bf16_export(tmp_path):
    model = make_checkpoint(tmp_path / "c.pth", "--enc-depth", "3", "--schedule", "single")
    out = export(tmp_path, tmp_path / "c.pth", "--dtype", "bfloat16", "--tag", "d3")
    config = json.loads((out / "config.json").read_text())
    assert config["model_args"]["depth"] == 3 and config["ldae"]["noise"]["t"] == 408  # the single level
    assert not (out / "manifest_entry.json").exists()  # weights/ releases registered sizes only
    m = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert len(m.blocks) == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), model.forward_features(x, 408), rtol=0, atol=5e-2)
    assert (out / "model.safetensors").stat().st_size < 0.6 * 4 * sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("flags, error, message", [
    (["--t", "1000"], ValueError, "noise level t must be integers in [0, 999], got [1000]"),
    (["--metric", "top1"], ValueError, "--metric expects NAME=VALUE with a number, got 'top1'"),
    (["--push"], ValueError, "--push needs --repo-id <org>/<name>"),
    (["--tag", "a.b"], ValueError, "--tag must be a non-empty name without '.' or '/', got 'a.b'"),
])
def test_bad_flags_fail_before_writing(exported, tmp_path, flags, error, message):
    ckpt = tmp_path / "missing.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(f"checkpoint not found: {ckpt}")):
        export(tmp_path, ckpt)
    shutil.copy(exported[1].parent / "checkpoint.pth", tmp_path / "c.pth")
    with pytest.raises(error, match=re.escape(message)):
        export(tmp_path, tmp_path / "c.pth", *flags)
    assert not (tmp_path / "export").exists()


def test_existing_folder_needs_overwrite(exported, tmp_path):
    (tmp_path / "export").mkdir()
    with pytest.raises(FileExistsError, match="exists; pass --overwrite to replace it"):
        export(tmp_path, exported[1].parent / "checkpoint.pth")


def test_push_uploads_the_whole_folder_once(exported, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, **kw):
            calls.append(("init", kw))

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create_repo", repo_id, private))
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    export(tmp_path, exported[1].parent / "checkpoint.pth", "--tag", "demo", "--repo-id", "org/name", "--push", "--private")
    assert calls[1:] == [("create_repo", "org/name", True),
                         ("upload_folder", "org/name", ["README.md", "SHA256SUMS", "config.json", "manifest_entry.json", "model.safetensors", "tokenizer.safetensors"])]


def test_denoiser_export_rebuilds_the_whole_model(tmp_path):
    from ldae.release.denoiser import load_denoiser_file

    model = make_checkpoint(tmp_path / "checkpoint.pth", seed=3)
    out = export(tmp_path, tmp_path / "checkpoint.pth", "--tag", "dn", "--denoiser")
    entry = json.loads((out / "manifest_entry.json").read_text())["weights"][f"{ARCH}.dn"]
    assert entry["denoiser"]["file"] == f"{ARCH}.dn.denoiser.safetensors"
    assert entry["denoiser"]["sha256"] == ldae.utils.io.sha256_file(out / "denoiser.safetensors")
    back = load_denoiser_file(out / "denoiser.safetensors")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():  # float16 storage of the parameters; buffers (PCA basis, pos_embed) stay exact
        torch.testing.assert_close(back.denoise(x, 300), model.denoise(x, 300), atol=2e-3, rtol=0)
    assert torch.equal(back.tokenizer.components, model.tokenizer.components)


# ---------------------------------------------------------------------------------------------- nothing a user saved is lost
def _run_folder(tmp_path: Path, exported) -> Path:
    run = tmp_path / "run"
    (run / "notes").mkdir(parents=True)
    shutil.copy(exported[1].parent / "checkpoint.pth", run / "checkpoint-last.pth")
    (run / "log.jsonl").write_text("{}\n")
    (run / "thesis.txt").write_text("three years of work\n")
    (run / "notes" / "a.txt").write_text("x\n")
    return run


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_never_replaces_the_run_folder_of_the_checkpoint(exported, tmp_path):
    run = _run_folder(tmp_path, exported)
    before = _files(run)
    for out in (run, tmp_path):  # the checkpoint's folder, and a folder above it
        with pytest.raises(ValueError, match=re.escape(f"--out {out} holds the checkpoint {run / 'checkpoint-last.pth'}")):
            main(get_args_parser().parse_args([str(run / "checkpoint-last.pth"), "--out", str(out), "--overwrite"]))
    assert _files(run) == before


def test_overwrite_replaces_only_an_export_folder(exported, tmp_path):
    ckpt = exported[1].parent / "checkpoint.pth"
    other = tmp_path / "other"
    (other / "sub").mkdir(parents=True)
    (other / "thesis.txt").write_text("mine\n")
    (other / "sub" / "b.txt").write_text("mine\n")
    with pytest.raises(FileExistsError, match="has no SHA256SUMS, so it is not an export this command wrote"):
        main(get_args_parser().parse_args([str(ckpt), "--out", str(other), "--overwrite"]))
    out = export(tmp_path, ckpt, "--tag", "first")
    first = _files(out)
    assert export(tmp_path, ckpt, "--tag", "second", "--overwrite") == out  # an earlier export is replaced
    assert _files(out) != first and "second" in (out / "README.md").read_text()
    (out / "thesis.txt").write_text("mine\n")
    kept = _files(out)
    with pytest.raises(FileExistsError, match=re.escape("holds files an export did not write (thesis.txt)")):
        export(tmp_path, ckpt, "--overwrite")
    assert _files(out) == kept and (other / "thesis.txt").read_text() == "mine\n"


def test_empty_weights_with_huge_args_are_refused_before_any_allocation(exported, monkeypatch):
    from ldae.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from ldae.models import ldae as ldae_module

    ckpt = load_checkpoint(exported[1].parent / "checkpoint.pth")
    ckpt.update(model={}, ema=None, tokenizer=None)
    ckpt["args"] = {**ckpt["args"], "model": "custom:img=4096,patch=2,dim=4096,enc=24,dec=24,heads=32,d=8", "noise_space": "pixel"}

    def no_table(*a, **k):  # the float64 position table of these args alone is 32 GiB
        raise AssertionError("built a position table for a shape check")
    monkeypatch.setattr(ldae_module, "sincos_pos_embed_2d", no_table)
    with pytest.raises(ValueError, match=r"do not describe its weights \(missing \["):
        model_from_checkpoint(ckpt)


def test_weights_that_are_not_finite_are_refused_at_load_and_at_export(exported, tmp_path):
    import timm
    from safetensors.torch import load_file, save_file

    from ldae.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from ldae.release.denoiser import save_denoiser

    ckpt = load_checkpoint(exported[1].parent / "checkpoint.pth")
    bad = {**ckpt, "model": {k: v.clone() for k, v in ckpt["model"].items()}, "ema": None}
    bad["model"]["blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^checkpoint: blocks.0.mlp.fc1.weight holds 1 NaN or infinite values"):
        model_from_checkpoint(bad)
    torch.save(bad, tmp_path / "nan.pth")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'nan.pth'}: blocks.0.mlp.fc1.weight holds 1 NaN")):
        main(get_args_parser().parse_args([str(tmp_path / "nan.pth"), "--out", str(tmp_path / "x")]))
    assert not (tmp_path / "x").exists()

    model = model_from_checkpoint(ckpt)
    with torch.no_grad():
        model.blocks[0].mlp.fc2.weight[0, 0] = 1e6  # finite in float32, inf in float16
    with pytest.raises(ValueError, match=r"blocks.0.mlp.fc2.weight has values up to 1e\+06, beyond torch.float16's range"):
        save_denoiser(model, ckpt["args"], tmp_path / "d.safetensors", dtype=torch.float16)
    assert not (tmp_path / "d.safetensors").exists()

    folder = tmp_path / "nan_export"
    shutil.copytree(exported[1], folder)
    weights = load_file(folder / "model.safetensors")
    weights["blocks.0.attn.qkv.weight"][0, 0] = float("inf")
    save_file(weights, folder / "model.safetensors")
    (folder / "SHA256SUMS").unlink()  # no checksum to catch it: the finite check must
    with pytest.warns(UserWarning, match="no SHA256SUMS"), pytest.raises(ValueError, match=r"blocks.0.attn.qkv.weight holds 1 NaN or infinite"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
