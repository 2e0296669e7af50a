"""The CPU speed choices change speed only: the precision ``auto`` picks, the explicit attention path
(same function as SDPA), the bf16 step's fp32 regions, and the CPU benchmark's JSON record."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import Attention

from ldae.models.ldae import LDAE
from ldae.tokenizers.pca import PatchPCA
from ldae.utils import amp

REPO = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
TINY = "custom:img=16,patch=4,dim=32,enc=1,dec=1,heads=2,d=8"


def test_auto_precision_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(amp, "cpu_flags", lambda: ["amx_tile", "avx512_bf16", "avx512"])
    assert amp.resolve_precision("auto", CPU) == "bf16"
    monkeypatch.setattr(amp, "cpu_flags", lambda: ["avx512_bf16"])
    assert amp.resolve_precision("auto", CPU) == "bf16"
    monkeypatch.setattr(amp, "cpu_flags", lambda: ["avx512"])  # bf16 emulated: slower than fp32
    assert amp.resolve_precision("auto", CPU) == "fp32"
    assert amp.resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert amp.resolve_precision("fp32", CPU) == "fp32" and amp.resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp16, fp32; got 'fp8'"):
        amp.resolve_precision("fp8", CPU)


def test_auto_attention_and_device_name():
    assert amp.resolve_attention("auto", CPU) == "math" and amp.resolve_attention("auto", torch.device("cuda")) == "sdpa"
    with pytest.raises(ValueError, match="attention must be one of auto, sdpa, math; got 'flash'"):
        amp.resolve_attention("flash", CPU)
    name = amp.device_name(CPU)
    assert name and all(flag in name for flag in amp.cpu_flags())


def _model(seed: int = 0) -> LDAE:
    g = torch.Generator().manual_seed(seed)
    tok = PatchPCA.fit([torch.rand(32, 3, 16, 16, generator=g) * 2 - 1], 4)
    torch.manual_seed(seed)
    model = LDAE(TINY, tok)
    with torch.no_grad():  # non-zero adaLN and output layers, so every branch of the block matters
        for name, p in model.named_parameters():
            if "adaLN" in name or "final_layer" in name:
                p.normal_(0, 0.05, generator=g)
    return model


def test_math_attention_is_the_same_function_as_sdpa():
    model = _model()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert amp.set_fused_attention([model], "sdpa") == 2
    assert all(m.fused_attn for m in model.modules() if isinstance(m, Attention))
    loss_sdpa = model(x, generator=torch.Generator().manual_seed(2))
    grads_sdpa = torch.autograd.grad(loss_sdpa, list(model.parameters()))
    amp.set_fused_attention([model], "math")
    assert not any(m.fused_attn for m in model.modules() if isinstance(m, Attention))
    loss_math = model(x, generator=torch.Generator().manual_seed(2))
    grads_math = torch.autograd.grad(loss_math, list(model.parameters()))
    torch.testing.assert_close(loss_math, loss_sdpa, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_math, grads_sdpa):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_step_keeps_the_loss_in_fp32_and_close_to_fp32():
    model = _model()
    amp.set_fused_attention([model], "math")
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    ref = model(x, generator=torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, generator=torch.Generator().manual_seed(4), return_dict=True)
    assert out.loss.dtype == torch.float32  # Eq. 4 runs in a float32 region
    assert out.loss.item() == pytest.approx(ref.item(), rel=0.03)  # bf16 network, same noise


def test_cpu_benchmark_smoke_writes_well_formed_json(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_cpu", REPO / "bench" / "bench_cpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "cpu.json"
    assert bench.main(["--smoke", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["smoke"] is True and rep["threads"] == torch.get_num_threads() and rep["cpu_flags"] == amp.cpu_flags()
    assert {"device", "command", "commit", "date", "matmul_gflops", "results"} <= rep.keys()
    (row,) = rep["results"]
    assert set(row["img_per_s"]) == set(bench.VARIANTS)
    ips, r = row["img_per_s"], row["ratios"]
    assert r["bf16_over_fp32"] == pytest.approx(ips["ldae_bf16"] / ips["ldae_fp32"], rel=1e-2)
    assert r["ldae_over_timm"] == pytest.approx(ips["ldae_bf16"] / ips["timm_bf16"], rel=1e-2)
    gflops = row["train_gflops_per_image"]["ldae_bf16"] * ips["ldae_bf16"]
    assert r["peak_fraction"] == pytest.approx(gflops / rep["matmul_gflops"]["bf16_2048"], rel=2e-2, abs=2e-3)
