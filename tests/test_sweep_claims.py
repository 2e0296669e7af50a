"""bench/sweep_claims.py end to end on a tiny budget: equal-budget rows, claims against the seed spread, resume."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from ldae.engine.checkpoint import load_checkpoint
from ldae.models.model_config import MODEL_ARG_NAMES

ROOT = Path(__file__).resolve().parent.parent
TINY = "custom:img=32,patch=8,dim=32,enc=2,dec=2,heads=2,d=8"


def _sweep():
    spec = importlib.util.spec_from_file_location("sweep_claims", ROOT / "bench" / "sweep_claims.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["sweep_claims"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_sweep_runs_every_row_at_equal_budget_and_resumes(cifar_root, tmp_path):
    sweep = _sweep()
    work, out = tmp_path / "work", tmp_path / "claims.json"
    argv = ["--data", str(cifar_root / "cifar10-jpeg"), "--work", str(work), "--out", str(out), "--model", TINY,
            "--epochs", "1", "--global-batch", "32", "--probe-epochs", "2", "--probe-batch", "64",
            "--rows", "default,default_seed1,random_init"]
    summary = sweep.main(argv)
    rows = {r["name"]: r for r in summary["rows"]}
    assert list(rows) == ["default", "random_init", "default_seed1"]  # the sweep's own order
    assert rows["default"]["images_seen"] == rows["default_seed1"]["images_seen"] == 192  # 6 steps x 32: equal budget
    assert rows["random_init"]["images_seen"] == 0 and rows["random_init"]["train_minutes"] == 0
    # the control is the untrained model of the same flags: same model args as the trained rows
    init = load_checkpoint(work / "random_init" / "checkpoint-init.pth")
    trained = load_checkpoint(work / "default" / "checkpoint-0001.pth")
    assert {k: init["args"][k] for k in MODEL_ARG_NAMES} == {k: trained["args"][k] for k in MODEL_ARG_NAMES}
    assert init["step"] == 0 and trained["step"] == 6
    # each claim is a margin against the spread of the two seeds of the default row
    (control,) = [c for c in summary["claims"] if c["worse"] == ["random_init"]]
    for m in ("probe_top1", "knn_top1"):
        spread = abs(rows["default"][m] - rows["default_seed1"][m])
        margin = (rows["default"][m] + rows["default_seed1"][m]) / 2 - rows["random_init"][m]
        assert control[m]["spread"] == pytest.approx(spread, abs=0.01)
        assert control[m]["margin"] == pytest.approx(margin, abs=0.01)
        want = "reproduced" if margin > spread else "contradicted" if margin < -spread else "within the seed spread"
        assert control[m]["verdict"] == want
    saved = json.loads(out.read_text())
    assert saved["command"].startswith("python bench/sweep_claims.py --data ") and saved["commit"]
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert sweep.readme_table(saved).count("\n| ") >= len(rows) + 1

    # A second invocation trains and evaluates nothing again: every row's result is on disk.
    logs = {p: p.read_text() for p in work.glob("*/*.log")}
    again = sweep.main(argv)
    assert again["rows"] == summary["rows"]
    assert {p: p.read_text() for p in work.glob("*/*.log")} == logs


def test_unknown_row_is_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"--rows: expected names among \['default', .*got 'nope'"):
        _sweep().main(["--rows", "nope", "--work", str(tmp_path)])
