"""The examples run (CPU, tiny inputs) and compute what they claim to."""
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from _tiny_release import TAG, make_release
from ldae.data.samples import load_images
from ldae.engine.checkpoint import load_checkpoint, model_from_checkpoint
from ldae.models.export import export_encoder_state_dict, export_to_timm
from ldae.tokenizers.pca import DIT_NORM

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _example(name: str):
    """The ``main`` of ``examples/<name>.py`` (loaded without running it as a script)."""
    return runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name=f"example_{name}")["main"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root, files = tmp_path_factory.mktemp("weights"), tmp_path_factory.mktemp("files")
    return root, files, make_release(root, files)


@pytest.fixture
def released(release, monkeypatch):
    monkeypatch.setenv("LDAE_WEIGHTS_DIR", str(release[0]))
    return release


def _colour_folder(root: Path, per_class: int = 12, splits: tuple[str, ...] = ()) -> Path:
    """Two trivially separable classes (noisy red vs noisy blue squares), optionally in split folders."""
    rng = np.random.default_rng(0)
    for split in splits or ("",):
        for cls, colour in (("blue", (30, 30, 200)), ("red", (200, 30, 30))):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                a = np.clip(np.array(colour) + rng.normal(0, 30, (36, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(d / f"{i}.png")
    return root


def test_examples_folder_is_complete():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == [
        "continue_pretraining.py", "extract_features.py", "linear_probe_folder.py", "torch_hub.py"]


def test_extract_features_pooled_tokens_and_intermediates_agree(released, capsys):
    _, _, model = released
    out = _example("extract_features")([])  # default: the first released tag, bundled samples
    assert f"model {TAG}: 8 images of (32, 32) px" in capsys.readouterr().out  # the bundled samples
    x, _ = load_images(None, 32, *DIT_NORM)  # the cfg's preprocessing: full-image center crop, [-1, 1]
    with torch.no_grad():
        torch.testing.assert_close(out["pooled"], export_to_timm(model, 10)(x), atol=1e-4, rtol=1e-4)
    assert out["tokens"].shape == (8, 64, 192)
    torch.testing.assert_close(out["pooled"], out["tokens"].mean(1))  # average pooling, no class token
    # No final norm: the last block's output (NCHW) is the token map, and features_only returns it too.
    last = out["last3"][-1]  # (B, D, 8, 8)
    torch.testing.assert_close(last.flatten(2).transpose(1, 2), out["tokens"])
    torch.testing.assert_close(out["fmap"], last)
    assert out["block3"].shape == out["block7"].shape == (8, 64, 192)
    assert not torch.allclose(out["block3"], out["block7"])


def test_torch_hub_local_entrypoint(released):
    feats = _example("torch_hub")(["--model", "ldae_vit_tiny_patch4_32", "--pretrained"])
    _, _, model = released
    with torch.no_grad():
        torch.testing.assert_close(feats, export_to_timm(model, 10)(torch.zeros(2, 3, 32, 32)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("splits", [(), ("train", "val")])
def test_linear_probe_separates_a_separable_folder(splits, tmp_path, capsys):
    data = _colour_folder(tmp_path / "colours", splits=splits)
    top1 = _example("linear_probe_folder")([str(data), "--model", "ldae_vit_tiny_patch4_32", "--no-pretrained"])
    assert top1 == 100.0  # red vs blue is linearly separable even in random-init features
    held_out = 12 * 2 if splits else 5  # the val split, or 20% of 24 images
    assert f"{held_out} held-out images" in capsys.readouterr().out


def test_continue_pretraining_from_a_released_encoder(released, tmp_path):
    root, files, _ = released
    data = _colour_folder(tmp_path / "imgs", per_class=2)
    main = _example("continue_pretraining")
    # Zero steps: the saved model's encoder is the release, exactly (the unfold inverts the export) ...
    start = main([str(data), "--steps", "0", "--out", str(tmp_path / "start.pth")])
    released_sd = load_file(str(root / "encoder.safetensors"))
    start_model = model_from_checkpoint(start)
    for k, v in export_encoder_state_dict(start_model, 10).items():
        torch.testing.assert_close(v, released_sd[k], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(export_encoder_state_dict(start_model, 700)["blocks.0.norm1.weight"],
                               released_sd["blocks.0.norm1.weight"])  # ... at every level t
    # ... and a few steps of the objective move encoder and decoder (adaLN-Zero: a fresh decoder's
    # zero output layer passes gradient upstream only from the second step on).
    end = main([str(data), "--steps", "2", "--batch-size", "2", "--out", str(tmp_path / "end.pth")])
    ckpt = load_checkpoint(end)
    assert ckpt["step"] == 2 and ckpt["args"]["init"] == TAG
    end_sd = model_from_checkpoint(ckpt).state_dict()
    for k in ("blocks.0.attn.qkv.weight", "blocks.23.adaLN_modulation.1.bias", "final_layer.linear.weight"):
        assert not torch.equal(end_sd[k], start_model.state_dict()[k]), k


def test_continue_pretraining_from_a_full_checkpoint(released, tmp_path):
    _, files, model = released
    data = _colour_folder(tmp_path / "imgs", per_class=2)
    out = _example("continue_pretraining")([str(data), "--init", str(files / "checkpoint.pth"), "--steps", "0",
                                            "--out", str(tmp_path / "c.pth")])
    loaded = model_from_checkpoint(out).state_dict()
    for k, v in model.state_dict().items():  # the whole model, decoder included, carries over
        torch.testing.assert_close(loaded[k], v, atol=0, rtol=0)


def test_init_encoder_from_vit_rejects_a_mismatched_backbone(released):
    import timm

    from ldae.models.ldae import LDAE
    from ldae.models.warm_start import init_encoder_from_vit

    _, _, model = released
    target = LDAE("tiny_patch4_32", model.tokenizer)
    wrong = timm.create_model("ldae_vit_tiny_patch2_32")
    with pytest.raises(ValueError, match=r"backbone does not match the encoder: it has 12 blocks and patch embedding "
                                         r"\(192, 3, 2, 2\), the model expects 12 blocks \(192 wide\) and \(192, 3, 4, 4\)"):
        init_encoder_from_vit(target, wrong)
