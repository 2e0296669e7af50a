"""The configuration of ``ldae demo`` (each field is the flag of the same name)."""
from __future__ import annotations

import dataclasses

from ldae.utils.config import Config

__all__ = ["DemoConfig"]


@dataclasses.dataclass
class DemoConfig(Config):
    """Images (empty: the bundled samples), the output folder, the model and tokenizer (None: the
    first released tag / the shipped 16x16 PCA), how many images, the noise seed, silence."""

    images: list[str] = dataclasses.field(default_factory=list)
    out: str = "ldae-demo"
    model: str | None = None
    tokenizer: str | None = None
    limit: int = 8
    seed: int = 0
    quiet: bool = False
