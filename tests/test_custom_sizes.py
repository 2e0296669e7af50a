"""Every size ``ldae pretrain`` accepts goes the whole way: an inline ``custom:`` size pretrains on real
CIFAR images, exports, reloads through ``local-dir:`` as the same function, and every consumer of
checkpoints and exports (probe, k-NN, denoising figure, demo, continued pretraining) takes it."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import timm
import torch

import ldae
from ldae.cli import command as cli
from ldae.cli.pretrain import get_args_parser as pretrain_parser
from ldae.cli.pretrain import main as pretrain_main
from ldae.engine.checkpoint import load_checkpoint, model_from_checkpoint
from ldae.engine.pretrain import LAST
from ldae.models.export import export_to_timm, timm_arch
from ldae.models.registry import CUSTOM_ARCH
from ldae.models.size_spec import format_model_spec, parse_model_spec
from ldae.utils import amp

REPO = Path(__file__).resolve().parent.parent
# Width 48, 3 heads and the exact GELU: a shape no registered size has, so the export must record all of it.
CUSTOM = "custom:img=32,patch=4,dim=48,enc=2,dec=1,heads=3,d=8,act=gelu"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def run(cifar_root, tmp_path_factory):
    """12 steps of a custom size on 200 CIFAR images, then the export folder of its last checkpoint."""
    out = tmp_path_factory.mktemp("custom_run")
    argv = ["--data", str(cifar_root), "--model", CUSTOM, "--fit-tokenizer", "--fit-images", "200", "--global-batch", "16",
            "--epochs", "1", "--warmup-epochs", "0.2", "--blr", "1e-3", "--stop-at-step", "12", "--num-workers", "0",
            "--device", "cpu", "--quiet", "--output-dir", str(out / "run")]
    assert pretrain_main(pretrain_parser().parse_args(argv)) == 0
    ckpt = out / "run" / LAST
    assert cli.main(["export", str(ckpt), "--out", str(out / "export"), "--tag", "cifar10", "--denoiser"]) == 0
    return ckpt, out / "export"


def test_run_record_says_what_ran(run):
    ckpt, _ = run
    rec = json.loads((ckpt.parent / "run.json").read_text())
    # --precision auto: bf16 where the CPU computes it natively (AMX / AVX512-BF16), else fp32.
    assert rec["precision"] == amp.resolve_precision("auto", torch.device("cpu"))
    assert rec["attention"] == "math" and rec["threads"] == 1 and rec["device"] == amp.device_name(torch.device("cpu"))


def test_spec_round_trip():
    size = parse_model_spec(CUSTOM)
    assert parse_model_spec(format_model_spec(size)) == size
    assert format_model_spec(parse_model_spec("micro_patch4_32")) == "micro_patch4_32"  # registered sizes keep their name
    assert size.act == "gelu" and parse_model_spec(CUSTOM.replace(",act=gelu", "")).act == "gelu_tanh"  # the default
    with pytest.raises(ValueError, match=r"bad value in 'act=relu' .* expected one of \('gelu_tanh', 'gelu'\)"):
        parse_model_spec(CUSTOM.replace("act=gelu", "act=relu"))


def test_export_records_the_shape_and_reloads_through_local_dir(run):
    ckpt, folder = run
    model = model_from_checkpoint(load_checkpoint(ckpt)).eval()
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == CUSTOM_ARCH
    assert {k: cfg["model_args"][k] for k in ("embed_dim", "depth", "num_heads", "patch_size")} == \
        {"embed_dim": 48, "depth": 2, "num_heads": 3, "patch_size": 4}
    assert cfg["model_args"]["img_size"] in (32, [32, 32])
    vit = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert (len(vit.blocks), vit.num_features, vit.blocks[0].attn.num_heads) == (2, 48, 3)
    assert cfg["model_args"]["act_layer"] == "gelu" and type(vit.blocks[0].mlp.act).__name__ == "GELU"  # not GELUTanh
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    with torch.no_grad():
        ref = model.forward_features(x, t=model.schedule.eval_t)  # the checkpoint's own encoder at t = 10
        torch.testing.assert_close(vit(x), ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(export_to_timm(model)(x), ref, rtol=0, atol=1e-5)
    data_cfg = timm.data.resolve_model_data_config(vit)
    assert data_cfg["input_size"] == (3, 32, 32) and tuple(data_cfg["mean"]) == tuple(model.tokenizer.norm_mean)


def test_registered_encoder_shapes_keep_their_name():
    assert timm_arch(parse_model_spec("custom:img=32,patch=4,dim=192,enc=4,dec=2,heads=3")) == ("ldae_vit_micro_patch4_32", {})
    arch, shape = timm_arch(parse_model_spec(CUSTOM))
    assert arch == CUSTOM_ARCH and timm.create_model(arch, **shape).num_features == 48


def test_custom_arch_without_weights_says_where_weights_come_from():
    with pytest.raises(RuntimeError, match=r"(?s)No pretrained weights ship for ldae_vit_custom\..*local-dir:/path/to/export"):
        timm.create_model(CUSTOM_ARCH, pretrained=True)


@pytest.mark.parametrize("source", ["checkpoint", "export"])
def test_probe_and_knn_take_it(run, cifar_root, tmp_path, source):
    ckpt, folder = run
    model = str(ckpt if source == "checkpoint" else folder)
    common = ["--model", model, "--data", str(cifar_root), "--num-workers", "0", "--device", "cpu", "--quiet",
              "--cache-dir", str(tmp_path / "cache")]
    assert cli.main(["probe", *common, "--mode", "cached", "--epochs", "2", "--warmup-epochs", "0", "--batch-size", "64",
                     "--output-dir", str(tmp_path / "probe")]) == 0
    res = json.loads((tmp_path / "probe" / "probe_results.json").read_text())
    assert res["feature_dim"] == 48 and 0 <= res["top1"] <= 100
    assert cli.main(["knn", *common, "--k", "5", "--output-dir", str(tmp_path / "knn")]) == 0
    assert json.loads((tmp_path / "knn" / "knn_results.json").read_text())["feature_dim"] == 48


def test_denoising_figure_and_demo_take_it(run, cifar_root, tmp_path):
    ckpt, folder = run
    img = next((cifar_root / "cifar10-jpeg" / "test" / "cat").iterdir())
    for model in (ckpt, folder / "denoiser.safetensors"):
        out = tmp_path / f"{Path(model).stem}.png"
        assert cli.main(["figures", "denoise", str(img), "--model", str(model), "--out", str(out), "--quiet"]) == 0
        assert out.stat().st_size > 0
    assert cli.main(["demo", str(img), "--model", str(ckpt), "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    assert (tmp_path / "demo" / "denoise.png").is_file()


def test_continue_pretraining_takes_it(run, cifar_root, tmp_path):
    ckpt, _ = run
    spec = importlib.util.spec_from_file_location("continue_pretraining", REPO / "examples" / "continue_pretraining.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main([str(cifar_root / "cifar10-jpeg" / "train" / "cat"), "--init", str(ckpt), "--steps", "2",
                    "--batch-size", "4", "--out", str(tmp_path / "cont.pth")])
    cont = load_checkpoint(out)
    assert parse_model_spec(cont["args"]["model"]) == parse_model_spec(CUSTOM)
    model = model_from_checkpoint(cont)  # rebuilds from the saved args
    assert model.size.embed_dim == 48 and model.enc_depth == 2
    assert ldae.LDAE  # the package's public model class stays importable
