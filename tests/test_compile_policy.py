"""``--compile auto``: on where the eager steps ahead outlast the compile's pay-back, said in the log and run.json."""
from __future__ import annotations

import json

import pytest
import torch

from ldae.engine.compile_policy import AUTO_MIN_EAGER_S, decide_compile, time_eager_pass
from ldae.models.ldae import LDAE
from ldae.tokenizers.pca import PatchPCA

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _never() -> float:
    raise AssertionError("timed a pass although the answer did not need it")


def test_explicit_choices_and_old_bools_need_no_timing():
    assert decide_compile("on", CPU, 1, 10, _never) == (True, "--compile on")
    assert decide_compile("off", CPU, 1, 10**9, _never) == (False, "--compile off")
    assert decide_compile(True, CUDA, 4, 10, _never)[0] is True and decide_compile(False, CPU, 1, 10, _never)[0] is False
    assert decide_compile("auto", CUDA, 1, 10**9, _never)[0] is False
    assert decide_compile("auto", CPU, 2, 10**9, _never)[0] is False  # ranks must agree: no per-rank timing
    assert decide_compile("auto", CPU, 1, 0, _never) == (False, "auto: no steps left")
    with pytest.raises(ValueError, match=r"compile must be one of \('auto', 'on', 'off'\), got 'yes'"):
        decide_compile("yes", CPU, 1, 10, _never)


def test_auto_compiles_exactly_when_the_eager_steps_ahead_reach_the_threshold():
    per_pass = 2.0
    at = int(AUTO_MIN_EAGER_S / per_pass)
    on, why = decide_compile("auto", CPU, 1, at, lambda: per_pass)
    assert on and why == f"auto: about {AUTO_MIN_EAGER_S / 60:.0f} min of eager steps ahead (>= {AUTO_MIN_EAGER_S / 60:.0f})"
    off, why = decide_compile("auto", CPU, 1, at - 1, lambda: per_pass)
    assert not off and "(< 15)" in why


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
    assert rec["compile"] is False and rec["compile_reason"].startswith("auto: about 0 min of eager steps ahead (< 15)")
    assert rec["cpu_allocator"] in ("heap (mmap off)", "default")
    assert get_args_parser().parse_args(["--compile"]).compile == "on"  # a bare --compile still means on
