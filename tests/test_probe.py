"""Linear probe: the head, the frozen backbone, LARS and the lr conventions, feature extraction at a fixed t,
separable vs random features, and ``ldae probe`` in both modes (resume, errors)."""
import argparse
import json
import math

import pytest
import timm
import torch
from _recipe_helpers import tiny_checkpoint, tiny_ldae
from PIL import Image

from ldae.cli.probe import get_args_parser, main
from ldae.diffusion.noise import LatentNoise
from ldae.engine.lr_schedule import cosine_schedule, resolve_lr
from ldae.eval.backbones import create_backbone
from ldae.eval.feature_cache import cached_features, load_features
from ldae.eval.features import FeatureExtractor
from ldae.eval.probe import FeatureBatches, LinearHead, ProbeModel, build_lars, train_probe_on_features
from ldae.eval.configs import EvalDataConfig
from ldae.eval.run import build_splits


def _tiny_vit(**kw) -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             num_classes=0, global_pool="avg", class_token=False, **kw)


# ---------------------------------------------------------------------------- head and optimizer
def test_head_is_parameter_free_batchnorm_then_linear():
    head = LinearHead(384, 10)
    assert head.bn.affine is False and head.bn.weight is None and head.bn.bias is None
    assert head.bn.eps == 1e-6
    assert [n for n, _ in head.named_parameters()] == ["fc.weight", "fc.bias"]
    w = head.fc.weight
    assert torch.all(head.fc.bias == 0) and 0.009 < float(w.detach().std()) < 0.011  # MAE: trunc_normal_(std=0.01)
    # The BatchNorm standardises each feature over the batch (train mode): scaling the features changes nothing.
    x = torch.randn(64, 384)
    torch.testing.assert_close(head(x * 100 + 5), head(x), rtol=1e-4, atol=1e-4)


def test_lars_trust_ratio_on_weights_plain_sgd_on_bias():
    head = LinearHead(4, 3)
    opt = build_lars(head, lr=2.0, momentum=0.9, trust_coeff=1e-3)
    assert [g["always_adapt"] for g in opt.param_groups] == [True, False]
    assert opt.param_groups[1]["weight_decay"] == 0.0
    w0, b0 = head.fc.weight.detach().clone(), head.fc.bias.detach().clone()
    gw, gb = torch.randn(3, 4), torch.randn(3)
    head.fc.weight.grad, head.fc.bias.grad = gw.clone(), gb.clone()
    opt.step()
    # First step: momentum buffer = the (trust-scaled) gradient. MAE's LARS: q = trust * ||w|| / ||g||.
    q = 1e-3 * w0.norm() / gw.norm()
    torch.testing.assert_close(head.fc.weight.detach(), w0 - 2.0 * q * gw)
    torch.testing.assert_close(head.fc.bias.detach(), b0 - 2.0 * gb)


def test_lr_conventions_and_schedule():
    assert resolve_lr(None, 0.1, 16384) == pytest.approx(6.4)  # MAE: blr * batch / 256
    assert resolve_lr(6.4e-3, 0.1, 16384) == 6.4e-3  # the paper's number, literally
    with pytest.raises(ValueError, match="--blr must be positive"):
        resolve_lr(None, 0.0, 256)
    f = cosine_schedule(1.0, epochs=10, warmup_epochs=2, steps_per_epoch=5, min_lr=0.1)
    assert f(0) == 0.0 and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(1.0)
    assert f(30) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert f(50) == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"--warmup-epochs 10 must be in \[0, --epochs 5\]"):
        cosine_schedule(1.0, 5, 10, 5)


# ---------------------------------------------------------------------------- frozen backbone
def test_backbone_stays_in_eval_mode_and_gets_no_gradient():
    vit = _tiny_vit(drop_path_rate=0.5, proj_drop_rate=0.5)  # train mode would make features random
    probe = ProbeModel(FeatureExtractor(vit), LinearHead(vit.num_features, 4))
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    opt = build_lars(probe.head, lr=1.0)
    probe.train()
    assert probe.head.training and not vit.training
    assert not any(p.requires_grad for p in vit.parameters())
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))
    torch.testing.assert_close(probe.extractor(x), probe.extractor(x))  # deterministic: no drop path
    torch.nn.functional.cross_entropy(probe(x), y).backward()
    opt.step()
    assert all(p.grad is None for p in vit.parameters())
    assert all(torch.equal(v, before[k]) for k, v in vit.state_dict().items())
    assert probe.head.fc.weight.grad is not None


def test_micro_batches_equal_one_forward_pass():
    vit = _tiny_vit()
    ext = FeatureExtractor(vit)
    data = [(torch.randn(4, 3, 32, 32), torch.arange(4)) for _ in range(6)]
    batches = list(FeatureBatches(data, ext, accum=3, device=torch.device("cpu"), amp_dtype=None))
    assert len(batches) == 2 and batches[0][0].shape == (12, vit.num_features)
    torch.testing.assert_close(batches[1][0], ext(torch.cat([x for x, _ in data[3:]])), rtol=1e-5, atol=1e-5)
    assert batches[1][1].tolist() == list(range(4)) * 3


def test_checkpoint_backbone_is_the_encoder_at_t(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth")
    model, _ = tiny_ldae()
    x = torch.randn(3, 3, 32, 32).clamp(-1, 1)
    for t in (None, 50):
        bb = create_backbone(str(ckpt), t=t)
        assert bb.t == (10 if t is None else 50) and bb.source == "ldae-checkpoint"
        with torch.no_grad():
            want = model.forward_features(x, bb.t)  # (B, D)
        torch.testing.assert_close(FeatureExtractor.from_backbone(bb)(x), want, rtol=1e-4, atol=1e-5)
    cfg = bb.data_config
    assert cfg["input_size"] == (3, 32, 32) and cfg["crop_pct"] == 1.0
    assert tuple(cfg["mean"]) == model.tokenizer.norm_mean and tuple(cfg["std"]) == model.tokenizer.norm_std
    # Noisy input: the checkpoint's own latent noise at the same t, then the encoder.
    noisy = FeatureExtractor.from_backbone(bb, noisy_input=True)
    got = noisy(x, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        x_t = model.noise(x, 50, generator=torch.Generator().manual_seed(3)).x_t
        torch.testing.assert_close(got, model.forward_features(x_t, 50), rtol=1e-4, atol=1e-5)
    # Projected input: the image's top-d PCA projection (the training inputs' span), then the encoder.
    projected = FeatureExtractor.from_backbone(bb, view="projected")
    with torch.no_grad():
        want = model.forward_features(model.tokenizer.project(x, model.d), 50)
    torch.testing.assert_close(projected(x), want, rtol=1e-4, atol=1e-5)
    assert projected.view == "projected" and FeatureExtractor.from_backbone(bb).view == "clean"
    with pytest.raises(ValueError, match=r"input view must be one of \('clean', 'projected', 'noisy'\), got 'blurred'"):
        FeatureExtractor.from_backbone(bb, view="blurred")


def test_zoo_name_carries_its_level_and_noise():
    import ldae

    bb = create_backbone("ldae_vit_tiny_patch4_32", pretrained=False)
    assert bb.t == ldae.get_noise_config("ldae_vit_tiny_patch4_32").t == 10 and bb.num_features == 192
    ext = FeatureExtractor.from_backbone(bb, noisy_input=True)
    x = torch.randn(2, 3, 32, 32).clamp(-1, 1)
    noise = ldae.get_noise_transform("ldae_vit_tiny_patch4_32", batched=True)
    with torch.no_grad():
        want = bb.model(noise(x, 10, generator=torch.Generator().manual_seed(0)).x_t)
    torch.testing.assert_close(ext(x, generator=torch.Generator().manual_seed(0)), want)


def test_backbone_errors():
    with pytest.raises(ValueError, match="--t applies to l-DAE pretraining checkpoints only"):
        create_backbone("vit_tiny_patch16_224", pretrained=False, t=10)
    bb = create_backbone("vit_tiny_patch16_224", pretrained=False, img_size=32)
    assert bb.data_config["input_size"] == (3, 32, 32)  # the model's own size, not its cfg's 224
    with pytest.raises(ValueError, match="noisy input needs an l-DAE model"):
        FeatureExtractor.from_backbone(bb, noisy_input=True)
    with pytest.raises(ValueError, match="projected input needs an l-DAE model"):
        FeatureExtractor.from_backbone(bb, view="projected")
    # a pixel-noise DAE has no tokenizer span to project onto
    with pytest.raises(ValueError, match="'projected' input view needs a model pretrained with latent noise"):
        FeatureExtractor(bb.model, LatentNoise(None, d=48, space="pixel"), t=10, view="projected")
    with pytest.raises(ValueError, match="unknown model 'no_such_model_xyz'"):
        create_backbone("no_such_model_xyz", pretrained=False)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        create_backbone("missing/ckpt.pth")


def test_no_pretrained_with_trained_weights_is_an_error(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth")
    (tmp_path / "folder").mkdir()
    for spec in (str(ckpt), str(tmp_path / "folder")):  # a file or folder is trained weights: no silent wrong control
        with pytest.raises(ValueError, match="--no-pretrained asks for a random initialisation, but .* is trained weights"):
            create_backbone(spec, pretrained=False)


def test_feature_cache_round_trip_and_identity(tmp_path):
    ds = [(torch.randn(3, 32, 32), i % 3) for i in range(10)]
    ext = FeatureExtractor(_tiny_vit())
    fs, path = cached_features(ext, ds, {"backbone": "a"}, tmp_path, name="x", batch_size=4, num_workers=0)
    again, path2 = cached_features(ext, ds, {"backbone": "a"}, tmp_path, name="x", batch_size=4, num_workers=0)
    assert path == path2 and torch.equal(again.features, fs.features) and fs.labels.tolist() == [i % 3 for i in range(10)]
    _, path3 = cached_features(ext, ds, {"backbone": "b"}, tmp_path, name="x", batch_size=4, num_workers=0)
    assert path3 != path  # another identity, another file
    loaded, identity = load_features(path)
    assert torch.equal(loaded.features, fs.features) and identity["backbone"] == "a" and identity["num_images"] == 10



def test_damaged_feature_cache_is_refused_and_recomputed(tmp_path):
    from safetensors.torch import load_file, save_file

    ds = [(torch.randn(3, 32, 32), i % 3) for i in range(6)]
    ext = FeatureExtractor(_tiny_vit())
    fs, path = cached_features(ext, ds, {"backbone": "a"}, tmp_path, name="x", batch_size=3, num_workers=0)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["features"][2, 5] = float("nan")  # a damaged file, its metadata intact
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match=rf"{path}: the features do not match the sha256 they were saved with"):
        load_features(path)
    with pytest.warns(UserWarning, match="not reusing the feature cache"):
        again, _ = cached_features(ext, ds, {"backbone": "a"}, tmp_path, name="x", batch_size=3, num_workers=0)
    assert torch.equal(again.features, fs.features) and torch.isfinite(load_features(path)[0].features).all()


# ---------------------------------------------------------------------------- the probe on features
def test_planted_linearly_separable_features_reach_100():
    g = torch.Generator().manual_seed(0)
    n, d, c = 2000, 64, 10
    means = torch.randn(c, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    x = (means[y] + 0.5 * torch.randn(n, d, generator=g)) * 3 + 1  # any scale and offset: the BatchNorm removes them
    # lr 6.4: the LARS rate of MAE's setting (blr 0.1 at batch 16384), here on 15 updates per epoch.
    res = train_probe_on_features(x[:1500], y[:1500], x[1500:], y[1500:], num_classes=c, epochs=30, batch_size=100,
                                  warmup_epochs=3, lr=6.4)
    assert res.top1 == 100.0 and res.top5 == 100.0 and res.lr == 6.4
    assert len(res.history) == 30 and res.history[-1]["train_loss"] < 0.1 < 2.0 < res.history[0]["train_loss"]


def test_random_features_are_near_chance():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8000, 32, generator=g), torch.randint(0, 10, (8000,), generator=g)
    res = train_probe_on_features(x[:4000], y[:4000], x[4000:], y[4000:], num_classes=10, epochs=10, batch_size=256,
                                  warmup_epochs=1, lr=6.4)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]  # it does fit the training noise...
    assert 7.0 < res.top1 < 13.0  # ...but chance is 10%; the std of a 4000-sample estimate is 0.5%


def test_paper_lr_taken_literally_barely_moves_the_head():
    # LARS moves a weight matrix by about lr * trust_coeff * ||w|| per update: MAE's lr at batch 16384 (6.4)
    # moves the head by a third of its norm in 20 updates, the paper's 6.4e-3 about 1000x less.
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1024, 16, generator=g)
    y = (x[:, 0] > 0).long()
    mae = train_probe_on_features(x, y, x, y, epochs=5, batch_size=256, warmup_epochs=1, lr=6.4)
    literal = train_probe_on_features(x, y, x, y, epochs=5, batch_size=256, warmup_epochs=1, lr=6.4e-3)
    torch.manual_seed(0)  # the seed train_probe_on_features initialises the head with
    w0 = LinearHead(16, 2).fc.weight.detach()
    moved = {k: float((r.head.fc.weight.detach() - w0).norm() / w0.norm()) for k, r in (("mae", mae), ("literal", literal))}
    assert moved["literal"] < 1e-3 < 0.2 < moved["mae"]


# ---------------------------------------------------------------------------- ldae probe
def _args(*argv: str) -> argparse.Namespace:
    return get_args_parser().parse_args(list(argv))


def test_cli_paper_mode_resumes_and_cached_mode(cifar_root, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth")
    common = ["--model", str(ckpt), "--data", str(cifar_root), "--batch-size", "64", "--warmup-epochs", "1",
              "--num-workers", "0", "--quiet"]
    out = tmp_path / "paper"
    assert main(_args(*common, "--micro-batch-size", "32", "--epochs", "1", "--output-dir", str(out))) == 0
    assert main(_args(*common, "--micro-batch-size", "32", "--epochs", "2", "--output-dir", str(out))) == 0  # resumes
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and log[1]["train_step"] == 2 * 3  # 200 images // 64 = 3 updates
    res = json.loads((out / "probe_results.json").read_text())
    assert res["mode"] == "paper" and res["num_train"] == 200 and res["num_val"] == 200 and res["num_classes"] == 10
    assert res["top1"] == log[1]["top1"] and 0 <= res["top1"] <= res["top5"] <= 100 and res["lr"] == 0.1 * 64 / 256
    assert res["t"] == 10 and res["model"] == str(ckpt) and res["epochs"] == 2 and res["command"]
    assert (out / "head.safetensors").is_file() and (out / "checkpoint-last.pth").is_file()

    cached = tmp_path / "cached"
    argv = [*common, "--mode", "cached", "--epochs", "3", "--output-dir", str(cached), "--cache-dir", str(tmp_path / "c")]
    assert main(_args(*argv)) == 0
    res = json.loads((cached / "probe_results.json").read_text())
    assert res["mode"] == "cached" and res["feature_dim"] == 192 and len((cached / "log.txt").read_text().splitlines()) == 3
    assert len(list((tmp_path / "c").iterdir())) == 2  # train and test features


def _folder(root, split, classes, n=2):
    for c in classes:
        (root / split / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / split / c / f"{i}.png")


def test_bad_inputs_give_clear_errors(tmp_path):
    data = tmp_path / "d"
    _folder(data, "train", ["cat", "dog"])
    _folder(data, "val", ["cat", "emu"])
    ns = EvalDataConfig(data=str(data), train_split="train")
    with pytest.raises(ValueError, match=r"unknown classes \['emu'\] \(not in 'train'\), missing classes \['dog'\]"):
        build_splits(ns)
    data2 = tmp_path / "d2"
    _folder(data2, "train", ["cat", "dog"])
    ns = EvalDataConfig(data=str(data2), train_split="train")
    with pytest.raises(ValueError, match="no evaluation split in .*: expected a 'val' or 'test' folder"):
        build_splits(ns)
    (data2 / "val" / "cat").mkdir(parents=True)  # an empty split
    ns.val_split = "val"
    with pytest.raises(ValueError, match="split 'val' not found"):
        build_splits(ns)
    _folder(data2, "test", ["cat", "dog"])
    ns = EvalDataConfig(data=str(data2), train_split="train", val_split="test", num_classes=5)
    with pytest.raises(ValueError, match=r"--num-classes 5 does not match the 2 class folders"):
        build_splits(ns)
    with pytest.raises(ValueError, match=r"--batch-size 16384 exceeds the 4 training samples"):
        train_probe_on_features(torch.randn(4, 3), torch.arange(4), torch.randn(2, 3), torch.arange(2))


def test_help_documents_both_lr_conventions():
    text = get_args_parser().format_help()
    assert "6.4e-3" in " ".join(text.split()) and "blr * batch-size / 256" in text and "example" in text
    assert math.isclose(get_args_parser().get_default("blr"), 0.1)


@pytest.mark.parametrize("argv, want", [
    (["/usr/bin/ldae", "probe", "--data", "a b"], "ldae probe --data 'a b'"),
    (["/src/ldae/cli/__main__.py", "knn"], "ldae knn"),
    (["/src/ldae/probe.py", "--mode", "cached"], "python -m ldae.probe --mode cached"),
])
def test_results_record_the_command_as_typed(monkeypatch, argv, want):
    from ldae.utils.provenance import command_line

    monkeypatch.setattr("sys.argv", argv)
    assert command_line() == want
