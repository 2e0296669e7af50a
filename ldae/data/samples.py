"""Input images for the demo and the figures: bundled samples, or the user's own files and folders.

The bundled samples need no download: six photographs of different scenes shipped in
``ldae/assets/samples`` (public domain or CC0; ``LICENSES.md`` there names each source), the Grace
Hopper portrait that matplotlib ships as sample data (a U.S. Navy photograph in the public domain),
and a scene rendered here with Pillow (hard edges, gradients, stripes: what a denoiser must restore).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ldae.data.image_decode import IMG_EXTENSIONS, decode_rgb
from ldae.data.transforms import build_transform

__all__ = ["sample_images", "render_shapes", "find_images", "load_images"]

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "samples"
# The bundled photographs, in the order the demo shows them (see assets/samples/LICENSES.md).
BUNDLED = ("astronaut", "cat", "coffee", "rocket", "galaxies", "retina")
_HOPPER_BOX = (0, 44, 512, 556)  # (left, upper, right, lower): the square portrait in the 512 x 600 photo


def render_shapes(size: int = 256) -> Image.Image:
    """A deterministic synthetic scene (size x size RGB): sky gradient, sun, houses, stripes, checkers."""
    c = np.linspace(0.0, 1.0, size)[:, None, None]  # (H, 1, 1): a vertical sky gradient
    sky = np.array([60, 120, 230]) + c * np.array([120, 90, -60])  # (H, 1, 3)
    img = Image.fromarray(np.broadcast_to(sky, (size, size, 3)).astype(np.uint8), "RGB")
    s = size / 256
    d = ImageDraw.Draw(img)
    d.ellipse([180 * s, 20 * s, 236 * s, 76 * s], fill=(255, 210, 40))
    d.rectangle([0, 170 * s, size, size], fill=(70, 140, 60))
    d.rectangle([30 * s, 110 * s, 110 * s, 190 * s], fill=(200, 60, 50))
    d.polygon([(20 * s, 112 * s), (70 * s, 70 * s), (120 * s, 112 * s)], fill=(120, 40, 30))
    d.rectangle([55 * s, 150 * s, 80 * s, 190 * s], fill=(60, 40, 20))
    for i in range(8):  # a striped awning: high frequencies
        d.rectangle([(140 + 12 * i) * s, 120 * s, (146 + 12 * i) * s, 200 * s], fill=(250, 250, 250) if i % 2 else (30, 30, 160))
    for i in range(6):  # a checkerboard path
        for j in range(3):
            if (i + j) % 2 == 0:
                d.rectangle([(20 + 36 * i) * s, (205 + 16 * j) * s, (56 + 36 * i) * s, (221 + 16 * j) * s], fill=(230, 230, 210))
    return img


def sample_images() -> list[tuple[str, Image.Image]]:
    """The bundled (name, RGB image) samples: the six photographs, the portrait (if matplotlib's sample
    data is installed) and the rendered scene."""
    out: list[tuple[str, Image.Image]] = []
    for name in BUNDLED:
        with Image.open(SAMPLES_DIR / f"{name}.jpg") as im:
            out.append((name, im.convert("RGB")))
    try:
        import matplotlib.cbook

        path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        with Image.open(path) as portrait:
            out.append(("grace_hopper", portrait.convert("RGB").crop(_HOPPER_BOX)))
    except (ImportError, OSError, ValueError):  # a stripped-down matplotlib: the other samples remain
        pass
    out.append(("shapes", render_shapes()))
    return out


def find_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files named directly, plus every image under named folders (recursive, sorted)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS and not f.name.startswith("."))
        elif p.is_file():
            if p.suffix.lower() not in IMG_EXTENSIONS:
                raise ValueError(f"{p}: not an image file (expected one of {', '.join(IMG_EXTENSIONS)})")
            found.append(p)
        else:
            raise FileNotFoundError(f"no such image file or folder: {p}")
    if not found:
        raise ValueError(f"no images ({', '.join(IMG_EXTENSIONS)}) found in {', '.join(map(str, paths))}")
    return found


def load_images(
    paths: Sequence[str | os.PathLike] | None,
    img_size: int,
    norm_mean: Sequence[float],
    norm_std: Sequence[float],
    limit: int | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """(images (B, 3, img_size, img_size) normalised, names): the user's files/folders, or the bundled
    samples when ``paths`` is empty. Images are resized (shorter side) and center-cropped."""
    if paths:
        files = find_images(paths)[:limit]
        # the datasets' decode: a file that is not an image is one named error, 16-bit greys are scaled
        items = [(f.name, decode_rgb(Path(f).read_bytes(), str(f))) for f in files]
    else:
        items = sample_images()[:limit]
    tf = build_transform(img_size, train=False, mean=norm_mean, std=norm_std)
    return torch.stack([tf(im) for _, im in items]), [n for n, _ in items]
