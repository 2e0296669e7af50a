"""Fine-tuning: layer-decay groups and their lr, the loss going down, Mixup/criterion wiring, the RandAugment
posterize guard, and ``ldae finetune`` end to end (checkpoint, resume, eval-only, errors)."""
import argparse
import json

import pytest
import timm
import torch
from _recipe_helpers import tiny_checkpoint
from PIL import Image
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from ldae.cli.finetune import get_args_parser, main
from ldae.engine.checkpoint import load_state
from ldae.engine.finetune_loop import train_one_epoch
from ldae.engine.lr_schedule import cosine_schedule, set_lr
from ldae.eval.finetune import (CKPT_FORMAT, _posterize, build_criterion, build_mixup, build_optimizer, build_train_transform,
                                default_layer_decay)


def _vit(depth: int = 3, **kw) -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=depth,
                             num_classes=5, global_pool="avg", class_token=False, **kw)


def _args(*argv: str) -> argparse.Namespace:
    return get_args_parser().parse_args(list(argv))


def test_layer_decay_groups_carry_the_expected_lr_scales():
    model = _vit(depth=3)
    opt = build_optimizer(model, lr=4e-3, weight_decay=0.05, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    decay = {names[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    # MAE's rule: the head 1, block i 0.5 ** (depth - i), the patch embedding 0.5 ** (depth + 1).
    assert scale["head.weight"] == 1.0 and scale["fc_norm.weight"] == 1.0
    for i in range(3):
        assert scale[f"blocks.{i}.attn.qkv.weight"] == 0.5 ** (3 - i) == scale[f"blocks.{i}.norm1.bias"]
    assert scale["patch_embed.proj.weight"] == 0.5 ** 4 == scale["pos_embed"]
    # No weight decay on biases, norms and the position embedding.
    assert decay["blocks.0.attn.qkv.weight"] == 0.05 and decay["head.weight"] == 0.05
    assert decay["blocks.0.attn.qkv.bias"] == decay["blocks.0.norm1.weight"] == decay["pos_embed"] == 0.0
    # The schedule's lr reaches every group times its scale.
    set_lr(opt, 4e-3)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(4e-3 * g["lr_scale"])
    assert len(list(model.parameters())) == sum(len(g["params"]) for g in opt.param_groups)


def test_default_layer_decay_follows_app_b():
    assert default_layer_decay(_vit(depth=12)) == 0.85  # ViT-B
    assert default_layer_decay(_vit(depth=24)) == 0.65  # ViT-L
    with pytest.raises(ValueError, match=r"--layer-decay must be in \(0, 1\]"):
        build_optimizer(_vit(), 1e-3, layer_decay=1.5)


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = _vit(depth=2, drop_path_rate=0.1)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 5
    batches = [(x, y)] * 4
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.85)
    crit = build_criterion(None, smoothing=0.1)
    assert isinstance(crit, LabelSmoothingCrossEntropy)
    sched = cosine_schedule(1e-3, epochs=5, warmup_epochs=1, steps_per_epoch=2)
    losses, step = [], 0
    for epoch in range(5):
        stats = train_one_epoch(model, crit, batches, opt, device=torch.device("cpu"), epoch=epoch, step=step,
                                lr_schedule=sched, accum_iter=2, quiet=True)
        step = stats["step"]
        losses.append(stats["loss"])
    assert step == 10  # 4 batches per epoch, 2 per update
    assert losses[-1] < 0.5 * losses[0]


def test_mixup_and_criterion_wiring():
    args = _args("--model", "x", "--data", "y")
    assert (args.mixup, args.cutmix, args.smoothing, args.model_ema_decay, args.drop_path) == (0.8, 1.0, 0.1, 0.9999, 0.1)
    mix = build_mixup(args, 10)
    assert mix.mixup_alpha == 0.8 and mix.cutmix_alpha == 1.0 and mix.label_smoothing == 0.1
    assert isinstance(build_criterion(mix, 0.1), SoftTargetCrossEntropy)
    x, y = mix(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
    torch.testing.assert_close(y.sum(1), torch.ones(4))  # soft targets
    assert build_mixup(_args("--model", "x", "--data", "y", "--mixup", "0", "--cutmix", "0"), 10) is None


def test_randaugment_posterize_zero_bits_is_a_black_image():
    tf = build_train_transform({"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3},
                               _args("--model", "x", "--data", "y"))
    ops = [op for t in tf.transforms for op in getattr(t, "ops", [])]
    assert [op.aug_fn for op in ops if op.name == "PosterizeIncreasing"] == [_posterize]
    img = Image.new("RGB", (4, 4), (200, 100, 50))
    assert _posterize(img, 0).getextrema() == ((0, 0),) * 3  # what Pillow < 10 returned for 0 bits
    assert _posterize(img, 1).getpixel((0, 0)) == (128, 0, 0)
    assert _posterize(img, 8) is img


def test_cli_train_resume_and_eval_only(cifar_root, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth")
    out = tmp_path / "ft"
    common = ["--data", str(cifar_root), "--batch-size", "40", "--warmup-epochs", "1", "--num-workers", "0", "--quiet",
              "--output-dir", str(out)]
    assert main(_args("--model", str(ckpt), *common, "--epochs", "1")) == 0
    assert main(_args("--model", str(ckpt), *common, "--epochs", "2")) == 0  # resumes at epoch 1
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and log[1]["train_step"] == 2 * 5  # 200 images / 40
    res = json.loads((out / "finetune_results.json").read_text())
    assert res["top1"] == log[1]["top1"] and res["top1_ema"] == log[1]["top1_ema"]
    assert res["layer_decay"] == 0.85 and res["lr"] == pytest.approx(1e-3 * 40 / 256) and res["num_val"] == 200
    state = load_state(out / "checkpoint-last.pth", CKPT_FORMAT)
    assert state["epoch"] == 2 and state["step"] == 10 and state["num_classes"] == 10 and state["arch"]["kind"] == "vit"
    assert state["model"]["head.weight"].shape == (10, 192) and state["ema"] is not None

    # Eval-only from the checkpoint alone (the pretrained weights are not needed): the same numbers.
    ckpt.unlink()
    ev = tmp_path / "ev"
    assert main(_args("--eval", "--resume", str(out / "checkpoint-last.pth"), "--data", str(cifar_root),
                      "--num-workers", "0", "--quiet", "--output-dir", str(ev))) == 0
    res_ev = json.loads((ev / "finetune_results.json").read_text())
    assert res_ev["eval_only"] and res_ev["top1"] == res["top1"] and res_ev["top5"] == res["top5"]
    assert res_ev["top1_ema"] == res["top1_ema"]


def test_bad_inputs_give_clear_errors(cifar_root, tmp_path):
    with pytest.raises(ValueError, match="--model is required"):
        main(_args("--data", str(cifar_root), "--output-dir", str(tmp_path / "a"), "--quiet"))
    with pytest.raises(ValueError, match=r"--num-classes 100 does not match the 10 class folders"):
        main(_args("--model", "x", "--data", str(cifar_root), "--num-classes", "100", "--output-dir", str(tmp_path / "b")))
    with pytest.raises(ValueError, match=r"own classifier of 1000 classes, but the data has 10 classes"):
        main(_args("--model", "vit_tiny_patch16_224", "--no-pretrained", "--eval", "--data", str(cifar_root),
                   "--output-dir", str(tmp_path / "c"), "--quiet", "--num-workers", "0"))
