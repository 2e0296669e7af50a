"""The paper's figures as PNG images: denoising (Fig. 8), pixel vs latent noise (Fig. 7), the PCA
bases (Fig. 4) and training curves from the pretraining log.

Each figure is two steps, so the tensors can be tested and reused and the pictures stay dumb:

    cmp = pixel_vs_latent_noise(images, tokenizer)        # tensors (B, C, H, W)
    save_png(noise_figure(cmp, tokenizer), "noise.png")   # a PIL image, written atomically

Image grids are drawn with Pillow, so their pixel size is exact and known in advance
(:func:`grid_size`); curves use matplotlib's Agg canvas directly (no pyplot global state).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ldae.diffusion.noise import LatentNoise
from ldae.models.ldae import LDAE
from ldae.models.sizes import SIZES
from ldae.tokenizers.pca import PatchPCA
from ldae.utils.io import atomic_path

__all__ = [
    "PAD", "LINE", "MIN_PANEL",
    "to_pil", "image_grid", "grid_size", "save_png",
    "DenoisingExamples", "denoise_examples", "level_for_sigma", "denoising_figure",
    "NoiseComparison", "pixel_vs_latent_noise", "noise_figure", "default_d",
    "bases_figure", "curves_figure",
]

PAD = 4  # pixels between and around panels
LINE = 16  # height of one line of text (title, column titles)
MIN_PANEL = 128  # small images (32 px) are enlarged by an integer factor to at least this size
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


# ---------------------------------------------------------------------------------------- grids
def to_pil(images: torch.Tensor, norm_mean: Sequence[float], norm_std: Sequence[float]) -> list[Image.Image]:
    """Normalised images (B, C, H, W) -> RGB PIL images; values outside the pixel range are clipped."""
    x = images.detach().float().cpu()
    mean = torch.tensor(norm_mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(norm_std, dtype=torch.float32)[:, None, None]
    x = (x * std + mean).clamp(0, 1)  # (B, C, H, W) in [0, 1]
    arr = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (B, H, W, C)
    mode = "L" if arr.shape[-1] == 1 else "RGB"
    return [Image.fromarray(a[..., 0] if mode == "L" else a, mode).convert("RGB") for a in arr]


def _panel_scale(size: int, min_panel: int) -> int:
    return max(1, math.ceil(min_panel / size))


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=11)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """``text``, cut with '...' to fit ``width`` pixels (the figure's size never depends on its text)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text.rstrip() + "..."


def grid_size(rows: int, cols: int, panel: tuple[int, int], col_titles: bool = True, title_lines: int = 0, pad: int = PAD) -> tuple[int, int]:
    """(width, height) in pixels of :func:`image_grid` for ``rows`` x ``cols`` panels of ``panel`` = (w, h)."""
    width = pad + cols * (panel[0] + pad)
    height = pad + title_lines * LINE + (LINE if col_titles else 0) + rows * (panel[1] + pad)
    return width, height


def image_grid(
    panels: Sequence[Sequence[Image.Image]],
    col_titles: Sequence[str] | None = None,
    title: str | Sequence[str] | None = None,
    pad: int = PAD,
    min_panel: int = MIN_PANEL,
) -> Image.Image:
    """Rows of equally sized panels on a white sheet, with optional column titles and title lines.

    Panels smaller than ``min_panel`` are enlarged by an integer factor with nearest-neighbour
    sampling, so pixels stay visible as pixels (no invented detail).
    """
    if not panels or not panels[0]:
        raise ValueError("image_grid: expected at least one row with at least one panel")
    cols = len(panels[0])
    if any(len(r) != cols for r in panels):
        raise ValueError(f"image_grid: every row must have {cols} panels, got {[len(r) for r in panels]}")
    if col_titles is not None and len(col_titles) != cols:
        raise ValueError(f"image_grid: expected {cols} column titles, got {len(col_titles)}")
    w0, h0 = panels[0][0].size
    if any(p.size != (w0, h0) for r in panels for p in r):
        raise ValueError("image_grid: all panels must have the same size")
    k = _panel_scale(min(w0, h0), min_panel)
    pw, ph = w0 * k, h0 * k
    lines = [title] if isinstance(title, str) else list(title or [])
    sheet = Image.new("RGB", grid_size(len(panels), cols, (pw, ph), col_titles is not None, len(lines), pad), BACKGROUND)
    draw, font = ImageDraw.Draw(sheet), _font()
    y = pad
    for line in lines:
        draw.text((pad, y + 1), _fit(draw, line, font, sheet.width - 2 * pad), fill=TEXT, font=font)
        y += LINE
    if col_titles is not None:
        for j, text in enumerate(col_titles):
            draw.text((pad + j * (pw + pad), y + 1), _fit(draw, text, font, pw), fill=TEXT, font=font)
        y += LINE
    for row in panels:
        for j, p in enumerate(row):
            sheet.paste(p.convert("RGB").resize((pw, ph), Image.NEAREST), (pad + j * (pw + pad), y))
        y += ph + pad
    return sheet


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` as PNG atomically (temporary file, fsync, rename); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


# ---------------------------------------------------------------------------------------- Fig. 8
@dataclass
class DenoisingExamples:
    """clean, noisy, denoised: (B, C, H, W) normalised images; t: the level; sigma: its noise scale."""

    clean: torch.Tensor
    noisy: torch.Tensor
    denoised: torch.Tensor
    t: int
    sigma: float


def level_for_sigma(model: LDAE, sigma: float) -> int:
    """The level t whose sigma_t is nearest ``sigma`` on the model's schedule."""
    return int((model.schedule.sigmas - sigma).abs().argmin())


@torch.no_grad()
def denoise_examples(model: LDAE, images: torch.Tensor, t: int | None = None, seed: int = 0) -> DenoisingExamples:
    """Corrupt clean images (B, C, H, W) at level t with the model's own noise, then denoise them.

    ``t`` defaults to the level nearest sigma = sqrt(1/3), the noise of the paper's Fig. 7.
    The noise is drawn from a seeded CPU generator, so a figure reproduces on any device.
    """
    t = level_for_sigma(model, math.sqrt(1 / 3)) if t is None else int(t)
    model.schedule.check_t(torch.tensor([t]))
    noisy = model.corrupt(images, t, generator=torch.Generator().manual_seed(seed))
    denoised = model.denoise(noisy.x_t, t)  # (B, C, H, W)
    return DenoisingExamples(images, noisy.x_t, denoised, t, float(noisy.sigma[0]))


def denoising_figure(
    examples: DenoisingExamples | Sequence[DenoisingExamples],
    norm_mean: Sequence[float],
    norm_std: Sequence[float],
    title: str | Sequence[str] | None = None,
    min_panel: int = MIN_PANEL,
) -> Image.Image:
    """Fig. 8: one row per image, columns clean | noisy | denoised (one noisy/denoised pair per level)."""
    runs = [examples] if isinstance(examples, DenoisingExamples) else list(examples)
    if not runs:
        raise ValueError("denoising_figure: expected at least one DenoisingExamples")
    clean = to_pil(runs[0].clean, norm_mean, norm_std)
    columns = [clean]
    titles = ["clean"]
    for r in runs:
        columns += [to_pil(r.noisy, norm_mean, norm_std), to_pil(r.denoised, norm_mean, norm_std)]
        titles += [f"noisy t={r.t}, sigma={r.sigma:.3g}", "denoised"]
    rows = [list(p) for p in zip(*columns)]
    return image_grid(rows, titles, title, min_panel=min_panel)


# ---------------------------------------------------------------------------------------- Fig. 7
@dataclass
class NoiseComparison:
    """The same Gaussian noise scale added in pixel space and in the top-d PCA latent (Fig. 7).

    clean: input images; pixel: clean + sigma * eps; latent: the l-DAE corruption (projection onto
    the top-d bases, noise there, inverse PCA); projected: clean projected onto the top-d bases (the
    latent panel at sigma = 0). All (B, C, H, W), normalised. ``latent - projected`` lies in the span
    of the top-d bases, patch by patch.
    """

    clean: torch.Tensor
    pixel: torch.Tensor
    latent: torch.Tensor
    projected: torch.Tensor
    sigma: float
    d: int
    whiten: bool


def default_d(tokenizer: PatchPCA) -> int:
    """The latent dimension of the model sizes with the tokenizer's patch size (32 for 16x16x3)."""
    for size in SIZES.values():
        if size.patch_size == tokenizer.patch_size and size.in_chans == tokenizer.in_chans:
            return size.default_d
    return min(32, tokenizer.dim)


@torch.no_grad()
def pixel_vs_latent_noise(
    images: torch.Tensor,
    tokenizer: PatchPCA,
    sigma: float = math.sqrt(1 / 3),
    d: int | None = None,
    whiten: bool = True,
    seed: int = 0,
) -> NoiseComparison:
    """Add noise of scale ``sigma`` (Fig. 7: sqrt(1/3)) to normalised images (B, C, H, W) both ways."""
    d = default_d(tokenizer) if d is None else d
    b = images.shape[0]
    gamma = torch.ones(b, device=images.device)
    sig = torch.full((b,), float(sigma), device=images.device)
    gen = torch.Generator().manual_seed(seed)
    pixel, _ = LatentNoise(None, d, space="pixel").corrupt(images, gamma, sig, gen)
    latent, _ = LatentNoise(tokenizer, d, whiten=whiten).corrupt(images, gamma, sig, gen)
    return NoiseComparison(images, pixel, latent, tokenizer.project(images, d), float(sigma), d, whiten)


def noise_figure(cmp: NoiseComparison, tokenizer: PatchPCA, title: str | Sequence[str] | None = None, min_panel: int = MIN_PANEL) -> Image.Image:
    """Fig. 7: one row per image, columns clean | pixel noise | latent noise (same sigma)."""
    cols = [to_pil(x, tokenizer.norm_mean, tokenizer.norm_std) for x in (cmp.clean, cmp.pixel, cmp.latent)]
    titles = ["clean", f"pixel noise sigma={cmp.sigma:.3g}", f"latent noise d={cmp.d}"]
    return image_grid([list(r) for r in zip(*cols)], titles, title, min_panel=min_panel)


# ---------------------------------------------------------------------------------------- Fig. 4
def bases_figure(tokenizer: PatchPCA, k: int = 16, cols: int = 8, cell: int = 64, title: str | Sequence[str] | None = None) -> Image.Image:
    """Fig. 4: the top-k PCA bases as p x p x C images, each min-max scaled, enlarged to >= ``cell`` px."""
    b = tokenizer.basis_images(k)  # (k, C, p, p) in [0, 1]
    tiles = to_pil(b, (0.0,) * b.shape[1], (1.0,) * b.shape[1])
    cols = min(cols, k)
    blank = Image.new("RGB", tiles[0].size, BACKGROUND)
    tiles += [blank] * (-k % cols)
    rows = [tiles[i : i + cols] for i in range(0, len(tiles), cols)]
    return image_grid(rows, None, title, min_panel=cell)


# ---------------------------------------------------------------------------------------- curves
def _series(records: Iterable[dict], key: str, x: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [
        (r.get(x, i), r[key])
        for i, r in enumerate(records)
        if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) and math.isfinite(r[key])
    ]
    arr = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def curves_figure(
    records: Sequence[dict],
    keys: Sequence[str] = ("loss", "lr", "img_per_s"),
    x: str = "step",
    size: tuple[int, int] = (1200, 360),
    title: str | None = None,
    dpi: int = 100,
) -> Image.Image:
    """Training curves: one panel per key present in the records, against ``x``; exactly ``size`` pixels.

    ``records`` are the lines of a pretraining log (:func:`ldae.engine.metrics_log.read_jsonl`); records
    without a numeric value for a key (e.g. ``"nan"``, or evaluation records) are skipped for that key.

    The loss panel also shows a moving average (the per-step loss of a denoiser is noisy because
    each step draws new levels t).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    present = [k for k in keys if len(_series(records, k, x)[0])]
    if not present:
        found = sorted({k for r in records for k, v in r.items() if isinstance(v, (int, float))})
        raise ValueError(f"curves_figure: none of the keys {list(keys)} has numeric values; the log has {found}")
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(present), squeeze=False)[0]
    for ax, key in zip(axes, present):
        xs, ys = _series(records, key, x)
        ax.plot(xs, ys, lw=0.8, alpha=0.5 if key == "loss" and len(ys) > 20 else 1.0, color="C0")
        if key == "loss" and len(ys) > 20:
            w = max(2, len(ys) // 50)
            ax.plot(xs[w - 1 :], np.convolve(ys, np.ones(w) / w, mode="valid"), lw=1.5, color="C1", label=f"mean of {w}")
            ax.legend(loc="upper right", fontsize=8)
        if key == "loss" and ys.min() > 0 and ys.max() / ys.min() > 20:
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        ax.set_xlabel(x)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())  # (H, W, 4)
    return Image.fromarray(rgba[..., :3].copy(), "RGB")
