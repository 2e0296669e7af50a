"""Figures: exact pixel sizes, real content, and the tensors behind Figs. 4, 7 and 8."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ldae.cli.figures import main as figures_main, get_args_parser as figures_parser
from ldae.engine.metrics_log import read_jsonl
from ldae.models.ldae import LDAE
from ldae.models.sizes import ModelSize
from ldae.tokenizers.pca import PatchPCA, patchify
from ldae.viz import figures as viz

P = 4  # patch size of the tiny tokenizer
TINY = ModelSize(32, P, 32, 1, 1, 2, default_d=8)


def _smooth_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) in [-1, 1]: upsampled noise, so patches have natural-image-like correlations."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1)


@pytest.fixture(scope="module")
def tok() -> PatchPCA:
    return PatchPCA.fit([_smooth_images(64, seed=1)], P)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return _smooth_images(3, seed=2)


def _panel(img: Image.Image, row: int, col: int, panel: int, top: int) -> np.ndarray:
    x0, y0 = viz.PAD + col * (panel + viz.PAD), top + row * (panel + viz.PAD)
    return np.asarray(img)[y0 : y0 + panel, x0 : x0 + panel]


# ------------------------------------------------------------------------------------ Fig. 7
def test_pixel_vs_latent_noise_tensors(tok, images):
    d = 8
    cmp = viz.pixel_vs_latent_noise(images, tok, sigma=math.sqrt(1 / 3), d=d)
    assert cmp.d == d and cmp.whiten
    # Pixel noise: i.i.d. Gaussian of std sigma on every pixel.
    assert abs(float((cmp.pixel - cmp.clean).std()) - math.sqrt(1 / 3)) < 0.03
    # Latent noise minus the projected clean image lies in span(V_d), patch by patch ...
    diff = patchify(cmp.latent - cmp.projected, P)  # (B, N, D)
    v = tok.components[:d]
    outside = diff - (diff @ v.T) @ v
    assert float(outside.abs().max()) < 1e-4 < float(diff.abs().max())
    # ... and has std sigma in whitened coordinates.
    z = tok.encode(cmp.latent, d, whiten=True) - tok.encode(cmp.clean, d, whiten=True)
    assert abs(float(z.std()) - math.sqrt(1 / 3)) < 0.05
    # The projected clean image is the latent panel at sigma = 0.
    zero = viz.pixel_vs_latent_noise(images, tok, sigma=0.0, d=d)
    torch.testing.assert_close(zero.latent, cmp.projected, atol=1e-5, rtol=0)
    torch.testing.assert_close(zero.pixel, images)


def test_noise_figure_size_and_panels(tok, images):
    cmp = viz.pixel_vs_latent_noise(images, tok, d=8)
    img = viz.noise_figure(cmp, tok, title="t")
    panel = 32 * math.ceil(viz.MIN_PANEL / 32)  # 128
    assert img.size == viz.grid_size(3, 3, (panel, panel), col_titles=True, title_lines=1)
    assert img.size == (viz.PAD + 3 * (panel + viz.PAD), viz.PAD + 2 * viz.LINE + 3 * (panel + viz.PAD))
    top = viz.PAD + 2 * viz.LINE
    clean = _panel(img, 0, 0, panel, top)
    expected = np.asarray(viz.to_pil(images[:1], tok.norm_mean, tok.norm_std)[0].resize((panel, panel), Image.NEAREST))
    np.testing.assert_array_equal(clean, expected)  # the clean panel is the input, enlarged 4x
    assert np.std(clean) > 0
    for col in (1, 2):
        assert np.abs(_panel(img, 0, col, panel, top).astype(int) - clean).mean() > 5


def test_default_d_follows_the_size_table(tok):
    assert viz.default_d(tok) == 16  # the 32 px patch-4 sizes use d = 16
    big = PatchPCA(torch.eye(768), torch.ones(768), torch.zeros(768), patch_size=16)
    assert viz.default_d(big) == 32


# ------------------------------------------------------------------------------------ Fig. 4
def test_bases_figure(tok):
    img = viz.bases_figure(tok, k=12, cols=8, cell=48)
    cell = P * math.ceil(48 / P)
    assert img.size == viz.grid_size(2, 8, (cell, cell), col_titles=False)
    tiles = [_panel(img, i // 8, i % 8, cell, viz.PAD) for i in range(16)]
    for tile in tiles[:12]:  # each basis is min-max scaled: it spans the full grey range
        assert tile.min() == 0 and tile.max() == 255
    for tile in tiles[12:]:  # padding of the last row
        assert (tile == 255).all()
    first = tok.basis_images(1)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(tiles[0][:: cell // P, :: cell // P], np.round(first * 255).astype(np.uint8))


# ------------------------------------------------------------------------------------ Fig. 8
def test_denoising_examples_and_figure(tok, images):
    torch.manual_seed(0)
    model = LDAE(TINY, tok).eval()
    ex = viz.denoise_examples(model, images, seed=3)
    assert ex.t == 408 and abs(ex.sigma - math.sqrt(1 / 3)) < 1e-3  # Fig. 7's noise level by default
    again = viz.denoise_examples(model, images, seed=3)
    torch.testing.assert_close(again.noisy, ex.noisy)  # seeded: a figure reproduces
    torch.testing.assert_close(ex.noisy, model.corrupt(images, 408, torch.Generator().manual_seed(3)).x_t)
    # adaLN-Zero: a freshly initialised model outputs exactly 0, i.e. mid-grey.
    assert float(ex.denoised.abs().max()) == 0.0
    high = viz.denoise_examples(model, images, t=999)
    img = viz.denoising_figure([ex, high], tok.norm_mean, tok.norm_std)
    assert img.size == viz.grid_size(3, 5, (128, 128))
    top = viz.PAD + viz.LINE
    assert (_panel(img, 0, 2, 128, top) == 128).all()  # denoised = 0 -> (0 * 0.5 + 0.5) * 255
    clean, noisy = _panel(img, 1, 0, 128, top), _panel(img, 1, 1, 128, top)
    assert np.std(clean) > 0 and np.abs(noisy.astype(int) - clean).mean() > 5


# ------------------------------------------------------------------------------------ curves
def _write_log(path, n=60, tail=""):
    lines = [json.dumps(dict(step=10 * i, epoch=i // 20, loss=1.0 / (i + 1), lr=1e-4 * min(i, 10) / 10, img_per_s=500.0)) for i in range(n)]
    path.write_text("\n".join(lines) + "\n" + tail)


def test_curves_skip_non_numbers_and_a_torn_last_line(tmp_path):
    log = tmp_path / "log.jsonl"
    _write_log(log, 30, tail='{"step": 300, "lo')
    with open(log, "a") as f:  # a non-finite loss is logged as the string "nan" (strict JSON)
        f.write('\n{"step": 310, "loss": "nan", "lr": 1e-4}\n')
    recs = read_jsonl(log)
    assert recs[-1] == {"step": 310, "loss": "nan", "lr": 1e-4}
    xs, ys = viz._series(recs, "loss", "step")
    assert xs.tolist() == [10.0 * i for i in range(30)] and ys[0] == 1.0
    xs, _ = viz._series(recs, "lr", "step")
    assert xs[-1] == 310.0


def test_curves_figure_size_and_content(tmp_path):
    log = tmp_path / "log.jsonl"
    _write_log(log)
    img = viz.curves_figure(read_jsonl(log), size=(900, 300))
    assert img.size == (900, 300) and img.mode == "RGB"
    assert np.std(np.asarray(img)) > 10
    with pytest.raises(ValueError, match=r"none of the keys \['acc'\] has numeric values; the log has \['epoch', 'img_per_s', 'loss', 'lr', 'step'\]"):
        viz.curves_figure(read_jsonl(log), keys=["acc"])


# ------------------------------------------------------------------------------------ grids, files
def test_image_grid_errors():
    a, b = Image.new("RGB", (8, 8)), Image.new("RGB", (8, 9))
    with pytest.raises(ValueError, match="every row must have 2 panels"):
        viz.image_grid([[a, a], [a]])
    with pytest.raises(ValueError, match="all panels must have the same size"):
        viz.image_grid([[a, b]])
    with pytest.raises(ValueError, match="expected 2 column titles, got 1"):
        viz.image_grid([[a, a]], ["x"])


def test_long_titles_are_cut_to_the_sheet():
    a = Image.new("RGB", (32, 32), (255, 0, 0))
    img = viz.image_grid([[a, a]], ["a very long column title that cannot fit", "b"], "x" * 300, min_panel=32)
    assert img.size == viz.grid_size(1, 2, (32, 32), title_lines=1)
    text_rows = np.asarray(img)[: viz.PAD + 2 * viz.LINE]
    assert (text_rows[:, -viz.PAD :] == 255).all()  # nothing drawn into the right margin
    assert (text_rows[viz.PAD + viz.LINE :, viz.PAD + 32 : viz.PAD + 36] == 255).all()  # nor into the next column


def test_save_png_is_atomic_and_readable(tmp_path):
    img = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    out = viz.save_png(img, tmp_path / "sub" / "x.png")
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.png"]  # no temporary file left behind
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(img))


# ------------------------------------------------------------------------------------ the subcommand
def test_figures_subcommand_writes_each_kind(tmp_path, tok):
    tok_path = tmp_path / "tok.safetensors"
    tok.save(tok_path)
    for i, x in enumerate(_smooth_images(2, seed=5)):
        arr = ((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"img{i}.png")
    log = tmp_path / "log.jsonl"
    _write_log(log)
    parser = figures_parser()
    runs = {
        "noise.png": ["noise", str(tmp_path), "--tokenizer", str(tok_path), "--img-size", "32"],
        "bases.png": ["bases", "--tokenizer", str(tok_path), "--k", "8"],
        "curves.png": ["curves", str(log), "--size", "640", "240"],
    }
    for name, argv in runs.items():
        assert figures_main(parser.parse_args(argv + ["--out", str(tmp_path / name), "--quiet"])) == 0
    sizes = {name: Image.open(tmp_path / name).size for name in runs}
    assert sizes["noise.png"] == viz.grid_size(2, 3, (128, 128), title_lines=2)
    assert sizes["bases.png"] == viz.grid_size(1, 8, (64, 64), col_titles=False, title_lines=1)
    assert sizes["curves.png"] == (640, 240)
    with pytest.raises(FileNotFoundError, match="training log not found: .*nope.jsonl"):
        figures_main(parser.parse_args(["curves", str(tmp_path / "nope.jsonl")]))


def test_figures_denoise_subcommand(tmp_path):
    from ldae.release.denoiser import save_denoiser

    model = LDAE("tiny_patch4_32", PatchPCA.fit([_smooth_images(16, seed=1)], P))
    args = dict(model="tiny_patch4_32", d=None, whiten=True, noise_space="latent", schedule="linear_sigma",
                tail_weight=0.1, enc_depth=None, cond_ratio=0.25, num_levels=1000)
    path = save_denoiser(model, args, tmp_path / "denoiser.safetensors")
    for i, x in enumerate(_smooth_images(2, seed=6)):
        arr = ((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"img{i}.png")
    out = tmp_path / "denoise.png"
    argv = ["denoise", str(tmp_path / "img0.png"), str(tmp_path / "img1.png"), "--model", str(path), "--t", "100", "500",
            "--out", str(out), "--quiet"]
    assert figures_main(figures_parser().parse_args(argv)) == 0
    img = Image.open(out)
    assert img.size == viz.grid_size(2, 5, (128, 128), title_lines=2)
    top = viz.PAD + 3 * viz.LINE
    for col in (2, 4):  # a fresh adaLN-Zero model denoises to exactly 0: mid-grey
        assert (_panel(img, 1, col, 128, top) == 128).all()
    noisy_lo, noisy_hi, clean = (_panel(img, 0, c, 128, top).astype(int) for c in (1, 3, 0))
    assert 0 < np.abs(noisy_lo - clean).mean() < np.abs(noisy_hi - clean).mean()  # t=500 is noisier than t=100
