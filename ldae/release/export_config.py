"""The configuration of ``ldae export``: which checkpoint, where, at which t, and what the model card says.

Each field is the flag of the same name (``--device-info`` is ``device_info``); its help says what it does.
"""
from __future__ import annotations

import dataclasses

from ldae.utils.config import Config

__all__ = ["ExportConfig"]


@dataclasses.dataclass
class ExportConfig(Config):
    """A pretraining checkpoint folded at level ``t`` into a timm / Hugging Face folder ``out``.

    ``checkpoint`` and ``out`` are required; ``denoiser`` is the storage dtype of the full model's
    file (None: not written)."""

    REQUIRED = ("checkpoint", "out")

    checkpoint: str | None = None
    out: str | None = None
    t: int | None = None
    tag: str = "custom"
    ema: bool = True
    dtype: str = "float32"
    denoiser: str | None = None
    onnx: bool = False
    data: str | None = None
    recipe: str | None = None
    metric: list[str] = dataclasses.field(default_factory=list)
    device_info: str = ""
    minutes: float | None = None
    caveat: list[str] = dataclasses.field(default_factory=list)
    license: str = "apache-2.0"
    repo_id: str | None = None
    push: bool = False
    private: bool = False
    overwrite: bool = False
