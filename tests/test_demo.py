"""``ldae demo``: offline, with the real weights manifest and with a temporary release of a tiny model."""
import json
import socket

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from _tiny_release import ARGS, TAG, make_release, with_denoiser
from ldae.cli import command as cli
from ldae.cli.configs import to_config
from ldae.cli.demo import get_args_parser
from ldae.data.samples import load_images
from ldae.models.export import export_to_timm
from ldae.release.denoiser import load_denoiser, load_denoiser_file, released_tags, resolve_tokenizer, save_denoiser
from ldae.release.manifest import WeightsIntegrityError
from ldae.tokenizers.pca import DIT_NORM, PatchPCA
from ldae.viz import figures as viz
from ldae.viz.demo import run_demo
from ldae.viz.demo_config import DemoConfig


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root, files = tmp_path_factory.mktemp("weights"), tmp_path_factory.mktemp("files")
    return root, files, make_release(root, files)


def _demo(argv):
    return run_demo(to_config(DemoConfig, get_args_parser().parse_args(argv)))


def _png(path):
    img = Image.open(path)
    assert np.std(np.asarray(img)) > 0
    return img.size


# ------------------------------------------------------------------------------------ the real manifest
def test_demo_runs_offline_on_the_real_manifest(tmp_path, monkeypatch, offline, capsys):
    monkeypatch.delenv("LDAE_WEIGHTS_DIR", raising=False)
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--limit", "2"]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "demo.json").read_text())
    assert record["images"] == ["astronaut", "cat"]  # the first two bundled samples
    for name in record["files"]:
        assert f"wrote {out / name}" in printed
    tags = released_tags()
    assert record["trained"] == bool(tags)
    if not tags:  # this release: no trained weights yet, so the demo says so and shows what it can
        assert set(record["files"]) == {"bases.png", "noise.png", "features.safetensors"}
        assert record["model"] == "ldae_vit_base, RANDOMLY INITIALISED (no trained weights released yet)"
        assert "RANDOMLY INITIALISED" in printed and "no trained l-DAE weights are released" in printed
        assert record["features_shape"] == [2, 768]
        assert _png(out / "noise.png") == viz.grid_size(2, 3, (256, 256), title_lines=2)
        assert _png(out / "bases.png") == viz.grid_size(2, 8, (64, 64), col_titles=False, title_lines=1)
    else:
        assert record["model"] == tags[0]
    with safe_open(str(out / "features.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["names"]) == record["images"]
        assert list(f.get_tensor("features").shape) == record["features_shape"]


# ------------------------------------------------------------------------------------ a release with weights
def test_demo_uses_the_first_released_tag(release, tmp_path, monkeypatch, offline):
    root, _, model = release
    monkeypatch.setenv("LDAE_WEIGHTS_DIR", str(root))
    res = _demo(["--out", str(tmp_path), "--quiet", "--limit", "2"])
    assert res.trained and res.model == TAG and res.denoiser is None
    assert any("ships its encoder only" in n for n in res.notes)
    assert "denoise.png" not in res.files and not (tmp_path / "denoise.png").exists()
    # The features are the released encoder's: the l-DAE encoder folded at t=10, on the 32 px samples.
    x, _ = load_images(None, 32, *DIT_NORM, limit=2)
    with torch.no_grad():
        expected = export_to_timm(model, 10)(x)
    torch.testing.assert_close(res.features, expected, atol=1e-4, rtol=1e-4)
    # Figures use the release's own tokenizer (4x4 patches, 32 px images).
    assert _png(tmp_path / "noise.png") == viz.grid_size(2, 3, (128, 128), title_lines=2)
    assert _png(tmp_path / "bases.png") == viz.grid_size(2, 8, (64, 64), col_titles=False, title_lines=1)


@pytest.mark.parametrize("kind", ["denoiser.safetensors", "checkpoint.pth"])
def test_demo_with_a_full_model_adds_the_denoising_figure(release, kind, tmp_path, monkeypatch, offline):
    root, files, model = release
    monkeypatch.setenv("LDAE_WEIGHTS_DIR", str(root))
    res = _demo(["--model", str(files / kind), "--out", str(tmp_path), "--quiet", "--limit", "2"])
    assert res.denoiser == kind and res.trained
    assert _png(tmp_path / "denoise.png") == viz.grid_size(2, 5, (128, 128), title_lines=1)
    x, _ = load_images(None, 32, *DIT_NORM, limit=2)
    ex = viz.denoise_examples(model, x, seed=0)
    expected = viz.denoising_figure([ex, viz.denoise_examples(model, x, 999, 0)], *DIT_NORM, f"Fig. 8: l-DAE denoising, {kind}")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "denoise.png")), np.asarray(expected))
    with torch.no_grad():
        torch.testing.assert_close(res.features, export_to_timm(model)(x), atol=1e-4, rtol=1e-4)


def test_denoiser_file_round_trip(release, tmp_path):
    _, files, model = release
    loaded = load_denoiser_file(files / "denoiser.safetensors")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, atol=0, rtol=0)
    half = save_denoiser(model, ARGS, tmp_path / "half.safetensors", dtype=torch.float16)
    with safe_open(str(half), "pt") as f:
        assert f.get_tensor("blocks.0.attn.qkv.weight").dtype == torch.float16
        assert f.get_tensor("noise.tokenizer.components").dtype == torch.float32  # buffers stay exact
        assert f.get_tensor("pos_embed").dtype == torch.float32
    with pytest.raises(ValueError, match=r"args lack the model flags \['num_levels'\]"):
        save_denoiser(model, {k: v for k, v in ARGS.items() if k != "num_levels"}, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="not an l-DAE denoiser file"):
        load_denoiser_file(_tok_file(tmp_path))


def _tok_file(tmp_path):
    path = tmp_path / "tok.safetensors"
    PatchPCA(torch.eye(12), torch.ones(12), torch.zeros(12), patch_size=2).save(path)
    return path


def test_demo_with_a_released_denoiser(release, tmp_path, monkeypatch, offline):
    root = with_denoiser(release[0], release[1], tmp_path / "weights")
    model = release[2]
    monkeypatch.setenv("LDAE_WEIGHTS_DIR", str(root))
    assert load_denoiser(None)[1] == TAG  # the default denoiser: the first tag that ships one
    out = tmp_path / "demo"
    res = _demo(["--out", str(out), "--quiet", "--limit", "2"])
    assert res.model == TAG and res.denoiser == TAG and not res.notes
    x, _ = load_images(None, 32, *DIT_NORM, limit=2)
    runs = [viz.denoise_examples(model, x, t, 0) for t in (None, 999)]
    expected = viz.denoising_figure(runs, *DIT_NORM, f"Fig. 8: l-DAE denoising, {TAG}")
    np.testing.assert_array_equal(np.asarray(Image.open(out / "denoise.png")), np.asarray(expected))
    # A damaged release is refused before anything reads it.
    path = root / "denoiser.safetensors"
    damaged = path.read_bytes()[:-4] + b"\0\0\0\1"
    path.unlink()  # a hard link: leave the shared file intact
    path.write_bytes(damaged)
    with pytest.raises(WeightsIntegrityError, match="denoiser: .* has sha256 .* the manifest expects"):
        load_denoiser(TAG)


def test_load_denoiser_errors(release, monkeypatch, tmp_path):
    root, _, _ = release
    monkeypatch.setenv("LDAE_WEIGHTS_DIR", str(root))
    with pytest.raises(ValueError, match=f"{TAG} ships only its encoder"):
        load_denoiser(TAG)
    with pytest.raises(ValueError, match="no released model ships its denoiser yet"):
        load_denoiser(None)
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_denoiser(str(tmp_path / "missing.pth"))


# ------------------------------------------------------------------------------------ the user's images
def test_demo_on_the_users_images(release, tmp_path, monkeypatch, offline):
    root, _, _ = release
    monkeypatch.setenv("LDAE_WEIGHTS_DIR", str(root))
    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("b.png", "a.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    res = _demo([str(tmp_path / "photos"), "--out", str(tmp_path / "out"), "--quiet"])
    assert res.images == ["a.jpg", "b.png"]
    assert res.features.shape == (2, 192)
    with pytest.raises(FileNotFoundError, match="no such image file or folder: .*nope"):
        _demo([str(tmp_path / "nope"), "--out", str(tmp_path / "out"), "--quiet"])
    with pytest.raises(ValueError, match="notes.txt: not an image file"):
        _demo([str(folder / "notes.txt"), "--out", str(tmp_path / "out"), "--quiet"])
    (folder / "broken.jpg").write_bytes(b"not a jpeg")  # decoded as the datasets decode: one named error
    with pytest.raises(ValueError, match=r"broken.jpg: not a readable image"):
        _demo([str(folder / "broken.jpg"), "--out", str(tmp_path / "out"), "--quiet"])
    with pytest.raises(ValueError, match=r"junk.safetensors: not a tokenizer artifact"):
        (tmp_path / "junk.safetensors").write_bytes(b"junk")
        resolve_tokenizer(str(tmp_path / "junk.safetensors"))


def test_bundled_samples_are_varied_and_licensed():
    from ldae.data.samples import BUNDLED, SAMPLES_DIR, sample_images

    names = [n for n, _ in sample_images()]
    assert names[: len(BUNDLED)] == list(BUNDLED) and names[-1] == "shapes"
    licences = (SAMPLES_DIR / "LICENSES.md").read_text()
    for name in BUNDLED:
        assert f"`{name}.jpg`" in licences  # every bundled file has its source and licence stated
    arrays = [np.asarray(im.resize((32, 32)), dtype=np.float32) for _, im in sample_images()]
    # Different scenes, not crops of one photo: no two samples are close at the demo's 32 px.
    dists = [np.abs(a - b).mean() for i, a in enumerate(arrays) for b in arrays[i + 1:]]
    assert min(dists) > 10
