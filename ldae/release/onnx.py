"""ONNX export of a backbone (an exported l-DAE encoder is a plain timm ``VisionTransformer``).

    import ldae, timm
    vit = timm.create_model("local-dir:exports/cifar10", pretrained=True)
    ldae.release.onnx.export_onnx(vit, "encoder.onnx")        # input 'images' (N, C, H, W), output 'features'

The graph has a dynamic batch axis and a fixed image size (the model's ``img_size``). It is captured
with ``torch.export`` by PyTorch's current ONNX exporter (the TorchScript-based one is deprecated),
which needs the ``onnxscript`` package. ``ldae export --onnx`` writes ``model.onnx`` next to
``model.safetensors``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from ldae.utils.io import atomic_path

__all__ = ["export_onnx", "ONNX_OPSET"]

ONNX_OPSET = 18  # onnxruntime >= 1.14 and every current ONNX toolchain read it


@torch.no_grad()
def export_onnx(model: nn.Module, path: str | os.PathLike, opset: int = ONNX_OPSET) -> Path:
    """Write ``model`` (images (N, C, H, W) float32 -> its output, e.g. pooled features (N, D)) as ONNX.

    The batch axis is dynamic, the image size is the model's (timm ``pretrained_cfg['input_size']``).
    The file is written atomically. Returns its path.
    """
    import importlib.util

    if importlib.util.find_spec("onnxscript") is None:
        raise ModuleNotFoundError("ONNX export needs the onnxscript package (PyTorch's ONNX exporter): pip install onnxscript")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    chans, height, width = cfg.get("input_size", (3, 224, 224))
    was_training = model.training
    model.eval()
    dummy = torch.zeros(2, chans, height, width, dtype=next(model.parameters()).dtype)
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.onnx.export(
                model, (dummy,), str(tmp), input_names=["images"], output_names=["features"], opset_version=opset,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), dynamo=True, external_data=False, verbose=False,
            )
    finally:
        model.train(was_training)
    return path
