"""Export folders outside timm: Hugging Face transformers (AutoModel, the feature-extraction pipeline)
and ONNX (onnxruntime), each giving timm's features. Both libraries are optional test dependencies."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import ldae  # noqa: F401  (registers the architectures before transformers asks timm for them)
from _recipe_helpers import tiny_checkpoint
from ldae.cli import command as cli


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("interop")
    ckpt = tiny_checkpoint(tmp / "tiny.pth")  # tiny_patch4_32 with a 2-block encoder: exported with model args
    assert cli.main(["export", str(ckpt), "--out", str(tmp / "export"), "--tag", "test", "--onnx"]) == 0
    return tmp / "export"


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # (n, 3, 32, 32) in [-1, 1]


def test_config_keeps_num_classes_at_the_top_level_only(folder):
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["num_classes"] == 0 and "num_classes" not in cfg.get("model_args", {})
    assert cfg["model_args"]["depth"] == 2  # the encoder split is still recorded
    assert len(timm.create_model(f"local-dir:{folder}", pretrained=True).blocks) == 2


def test_transformers_automodel_gives_timms_features(folder):
    transformers = pytest.importorskip("transformers", reason="optional test dependency transformers is not installed")
    vit = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    model = transformers.AutoModel.from_pretrained(str(folder)).eval()
    x = _images(3)
    with torch.no_grad():
        out = model(pixel_values=x)
        torch.testing.assert_close(out.pooler_output, vit(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(out.last_hidden_state, vit.forward_features(x), rtol=0, atol=1e-5)


def test_transformers_pipeline_preprocesses_like_timm(folder):
    transformers = pytest.importorskip("transformers", reason="optional test dependency transformers is not installed")
    vit = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(vit))
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))  # not square, not 32 px: resize + crop
    pipe = transformers.pipeline("image-feature-extraction", model=str(folder))
    tokens = pipe(img, return_tensors=True)  # (1, N, D)
    with torch.no_grad():
        ref = vit(transform(img)[None])  # (1, D)
    torch.testing.assert_close(tokens.mean(1), ref, rtol=0, atol=1e-5)


def test_onnx_file_has_a_dynamic_batch_and_timms_output(folder):
    ort = pytest.importorskip("onnxruntime", reason="optional test dependency onnxruntime is not installed")
    vit = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("images", "features") and inp.shape[1:] == [3, 32, 32] and isinstance(inp.shape[0], str)
    for n in (1, 5):  # batch sizes other than the traced one
        x = _images(n, seed=n)
        with torch.no_grad():
            ref = vit(x).numpy()
        got = session.run(None, {"images": x.numpy()})[0]
        assert got.shape == (n, 192)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
