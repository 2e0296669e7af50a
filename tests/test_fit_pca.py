"""``ldae fit-pca``: the artifact equals a direct PatchPCA.fit, records how to reproduce it, and reproduces."""
from __future__ import annotations

import re
import shlex

import pytest
import torch
from safetensors import safe_open

from ldae.cli.command import main as cli_main
from ldae.cli.fit_pca import get_args_parser, main
from ldae.data.folders import build_dataset
from ldae.data.transforms import build_transform
from ldae.tokenizers.pca import DIT_NORM, IMAGENET_NORM, PatchPCA


def run(*argv: str) -> int:
    return main(get_args_parser().parse_args(list(argv)))


def tensors(pca: PatchPCA) -> tuple[torch.Tensor, ...]:
    return pca.components, pca.eigenvalues, pca.mean


def test_fit_equals_direct_fit_and_records_its_command(cifar_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run(str(cifar_root), "--split", "train", "--img-size", "32", "--patch-size", "4", "--out", "a.safetensors", "--workers", "0") == 0
    pca = PatchPCA.load("a.safetensors")
    ds = build_dataset(cifar_root, "train", build_transform(32, False, *DIT_NORM, crop_pct=1.0))
    x = torch.stack([ds[i][0] for i in range(len(ds))])  # (200, 3, 32, 32)
    direct = PatchPCA.fit([x], 4)
    for a, b in zip(tensors(pca), tensors(direct)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (pca.num_images, pca.num_patches, pca.norm_mean, pca.dim) == (200, 200 * 64, DIT_NORM[0], 48)
    with safe_open("a.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["command"] == (f"ldae fit-pca {shlex.quote(str(cifar_root))} --split train --img-size 32 --patch-size 4 "
                               "--norm dit --seed 0 --out a.safetensors")
    assert (meta["img_size"], meta["norm"], meta["data"]) == ("32", "dit", f"{cifar_root.name} (split train)")
    out = capsys.readouterr().out
    assert "200 images, 12800 patches of 4x4x3 (D = 48), norm dit" in out and "d=16:" in out

    # The recorded command, run through the `ldae` entry point, reproduces the artifact exactly.
    argv = shlex.split(meta["command"])[1:]
    argv[argv.index("--out") + 1] = "b.safetensors"
    assert cli_main(argv + ["--workers", "0", "--quiet"]) == 0
    assert all(torch.equal(a, b) for a, b in zip(tensors(pca), tensors(PatchPCA.load("b.safetensors"))))


def test_imagenet_norm_subset_and_patch_sampling(cifar_root, tmp_path):
    out = tmp_path / "c.safetensors"
    run(str(cifar_root), "--split", "test", "--img-size", "16", "--patch-size", "8", "--norm", "imagenet",
        "--max-images", "30", "--patches-per-image", "2", "--seed", "3", "--out", str(out), "--workers", "0")
    pca = PatchPCA.load(out)
    assert (pca.norm_mean, pca.norm_std) == IMAGENET_NORM
    assert (pca.num_images, pca.num_patches, pca.patch_size) == (30, 60, 8)
    with safe_open(str(out), "pt") as f:
        assert "--patches-per-image 2 --max-images 30 --seed 3" in f.metadata()["command"]


def test_real_imagenette_subset(imagenette_tar, tmp_path):
    out = tmp_path / "p16.safetensors"
    run(str(imagenette_tar), "--img-size", "224", "--patch-size", "16", "--max-images", "12", "--out", str(out), "--workers", "0")
    pca = PatchPCA.load(out)
    assert (pca.dim, pca.num_images, pca.num_patches) == (768, 12, 12 * 196)
    with safe_open(str(out), "pt") as f:
        from ldae.utils.io import sha256_file

        assert f.metadata()["data_sha256"] == sha256_file(imagenette_tar)


@pytest.mark.parametrize("argv, error, message", [
    (["{data}", "--img-size", "8", "--patch-size", "16"], ValueError, "--img-size 8 is smaller than --patch-size 16"),
    (["{data}", "--img-size", "32", "--patch-size", "0"], ValueError, "--patch-size must be >= 1, got 0"),
    (["{data}", "--img-size", "32", "--patch-size", "4", "--max-images", "0"], ValueError, "--max-images must be >= 1, got 0"),
    (["{tmp}/nope", "--img-size", "32", "--patch-size", "4"], FileNotFoundError, "data not found: {tmp}/nope"),
])
def test_bad_arguments_fail_before_any_work(cifar_root, tmp_path, argv, error, message):
    argv = [a.format(data=cifar_root, tmp=tmp_path) for a in argv]
    with pytest.raises(error, match=re.escape(message.format(tmp=tmp_path))):
        run(*argv, "--out", str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match=re.escape("--out must name a .safetensors file, got x.pt")):
        run(str(cifar_root), "--img-size", "32", "--patch-size", "4", "--out", "x.pt")
    assert not list(tmp_path.glob("*.safetensors"))
