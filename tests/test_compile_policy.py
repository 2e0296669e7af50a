"""``--compile auto``: on where the eager steps ahead outlast the compile's pay-back, said in the log and run.json."""
from __future__ import annotations

import json

import pytest
import torch

from ldae.engine.compile_policy import AUTO_BLOCKS_MIN_S, AUTO_MODEL_MIN_S, apply_compile, decide_compile, time_eager_pass
from ldae.models.ldae import LDAE
from ldae.tokenizers.pca import PatchPCA

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _never() -> float:
    raise AssertionError("timed a pass although the answer did not need it")


def test_explicit_choices_and_old_bools_need_no_timing():
    assert decide_compile("on", CPU, 1, 10, _never) == ("on", "--compile on")
    assert decide_compile("blocks", CPU, 1, 10, _never) == ("blocks", "--compile blocks")
    assert decide_compile("off", CPU, 1, 10**9, _never) == ("off", "--compile off")
    assert decide_compile(True, CUDA, 4, 10, _never)[0] == "on" and decide_compile(False, CPU, 1, 10, _never)[0] == "off"
    assert decide_compile("auto", CUDA, 1, 10**9, _never)[0] == "off"
    assert decide_compile("auto", CPU, 2, 10**9, _never)[0] == "off"  # ranks must agree: no per-rank timing
    assert decide_compile("auto", CPU, 1, 0, _never) == ("off", "auto: no steps left")
    with pytest.raises(ValueError, match=r"compile must be one of \('auto', 'on', 'blocks', 'off'\), got 'yes'"):
        decide_compile("yes", CPU, 1, 10, _never)


def test_auto_compiles_by_the_eager_minutes_ahead():
    per_pass = 2.0
    model_at, blocks_at = int(AUTO_MODEL_MIN_S / per_pass), int(AUTO_BLOCKS_MIN_S / per_pass)
    assert decide_compile("auto", CPU, 1, model_at, lambda: per_pass) == ("on", "auto: about 30 min of eager steps ahead (>= 30: the whole model)")
    assert decide_compile("auto", CPU, 1, model_at - 1, lambda: per_pass)[0] == "blocks"
    assert decide_compile("auto", CPU, 1, blocks_at, lambda: per_pass) == ("blocks", "auto: about 5 min of eager steps ahead (>= 5: each block)")
    assert decide_compile("auto", CPU, 1, blocks_at - 1, lambda: per_pass) == ("off", "auto: about 5 min of eager steps ahead (< 5)")


def test_apply_compile_scopes():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    assert apply_compile("off", net, net) is net
    assert apply_compile("blocks", net, net) is net and all(m._compiled_call_impl is not None for m in net)
    assert apply_compile("on", torch.nn.Linear(2, 2), net).__class__.__name__ == "OptimizedModule"


def test_timing_pass_leaves_weights_grads_and_global_rng_untouched():
    tok = PatchPCA.fit([torch.rand(16, 3, 16, 16) * 2 - 1], 4)
    model = LDAE("custom:img=16,patch=4,dim=32,enc=1,dec=1,heads=2,d=8", tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    assert time_eager_pass(model, 4, None) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and torch.equal(torch.get_rng_state(), rng)


def test_pretrain_records_the_decision(cifar_root, tmp_path):
    from ldae.cli.pretrain import get_args_parser, main

    argv = ["--data", str(cifar_root), "--model", "custom:img=32,patch=4,dim=32,enc=1,dec=1,heads=2,d=8", "--fit-tokenizer",
            "--fit-images", "64", "--global-batch", "8", "--epochs", "1", "--warmup-epochs", "0", "--stop-at-step", "2", "--num-workers", "0",
            "--device", "cpu", "--quiet", "--output-dir", str(tmp_path)]
    assert main(get_args_parser().parse_args(argv)) == 0
    rec = json.loads((tmp_path / "run.json").read_text())
    assert rec["compile"] is None and rec["compile_reason"] == "auto: about 0 min of eager steps ahead (< 5)"
    assert rec["cpu_allocator"] in ("heap (mmap off)", "default")
    assert get_args_parser().parse_args(["--compile"]).compile == "on"  # a bare --compile still means on
