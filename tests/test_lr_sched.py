"""The pretraining learning-rate schedule: linear warmup then half-cycle cosine, per iteration."""
import math

import pytest
import torch
from timm.scheduler import CosineLRScheduler

from ldae.engine.lr_schedule import lr_at, scaled_lr, set_lr


def test_linear_scaling_rule():
    assert scaled_lr(1e-4, 2048) == pytest.approx(8e-4, rel=1e-15)  # the paper's lr at batch 2048
    assert scaled_lr(1e-4, 256) == 1e-4


def test_exact_values_at_the_landmarks():
    kw = dict(base_lr=8e-4, total_steps=1000, warmup_steps=250, min_lr=1e-6)
    assert lr_at(0, **kw) == 0.0  # MAE: the first update happens at lr 0
    assert lr_at(125, **kw) == pytest.approx(4e-4, rel=1e-15)
    assert lr_at(250, **kw) == pytest.approx(8e-4, rel=1e-15)
    assert lr_at(625, **kw) == pytest.approx((8e-4 + 1e-6) / 2, rel=1e-12)  # half-way down the cosine
    assert lr_at(1000, **kw) == pytest.approx(1e-6, rel=1e-12)
    assert lr_at(5000, **kw) == pytest.approx(1e-6, rel=1e-12)  # clamped past the end


def test_shape_rises_then_falls_monotonically():
    lrs = [lr_at(s, base_lr=1.0, total_steps=400, warmup_steps=100) for s in range(401)]
    assert all(a < b for a, b in zip(lrs[:100], lrs[1:101]))
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:]))


def test_equals_timm_cosine_scheduler_with_warmup_prefix():
    """The same curve as timm's CosineLRScheduler stepped per update (warmup_prefix=True)."""
    base, total, warm, lo = 1e-3, 300, 60, 1e-5
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    sched = CosineLRScheduler(opt, t_initial=total - warm, lr_min=lo, warmup_t=warm, warmup_lr_init=0.0,
                              warmup_prefix=True, t_in_epochs=False)
    for step in range(total + 1):
        sched.step_update(step)
        assert lr_at(step, base_lr=base, total_steps=total, warmup_steps=warm, min_lr=lo) == pytest.approx(
            opt.param_groups[0]["lr"], rel=1e-12, abs=1e-18), step


def test_no_warmup_starts_at_the_base_rate():
    assert lr_at(0, base_lr=0.1, total_steps=10, warmup_steps=0) == 0.1
    assert lr_at(5, base_lr=0.1, total_steps=10, warmup_steps=0) == pytest.approx(0.05)
    assert lr_at(3, base_lr=0.1, total_steps=10, warmup_steps=10) == pytest.approx(0.03)


def test_set_lr_honours_layer_decay_scales():
    p1, p2 = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.AdamW([{"params": [p1], "lr_scale": 0.5}, {"params": [p2]}], lr=1.0)
    set_lr(opt, 0.02)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.02]


@pytest.mark.parametrize("kw, msg", [
    (dict(total_steps=0, warmup_steps=0), "total_steps must be positive, got 0"),
    (dict(total_steps=10, warmup_steps=11), "warmup_steps must be in [0, total_steps=10], got 11"),
])
def test_bad_schedules_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        lr_at(0, base_lr=1.0, **kw)


def test_fractional_steps_interpolate():
    assert lr_at(0.5, base_lr=1.0, total_steps=10, warmup_steps=1) == 0.5
    assert math.isclose(lr_at(5.5, base_lr=1.0, total_steps=11, warmup_steps=1), 0.5 * (1 + math.cos(math.pi * 0.45)))
