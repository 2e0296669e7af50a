"""Every numeric flag of every subcommand has a range, checked before any work; user errors are one line."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ldae.cli import command as cli
from ldae.cli.flag_domains import DOMAINS, Domain, check_flags, numeric_actions

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", list(cli.SUBCOMMANDS))
def test_every_numeric_flag_has_a_domain(command):
    parser = importlib.import_module(cli.SUBCOMMANDS[command][0]).get_args_parser(add_help=False)
    missing = sorted({a.dest for _, a in numeric_actions(parser)} - set(DOMAINS))
    assert not missing, f"ldae {command}: numeric flags without a domain in ldae.cli.flag_domains: {missing}"


def test_domain_bounds_and_descriptions():
    assert 0 not in Domain(0, lo_open=True) and 1e-9 in Domain(0, lo_open=True)
    assert 1 not in Domain(0, 1, hi_open=True) and 0 in Domain(0, 1, hi_open=True)
    assert float("nan") not in Domain() and float("inf") not in Domain(0)
    assert [Domain(0, lo_open=True).describe(), Domain(1).describe(), Domain(0, 1, hi_open=True).describe()] == \
        ["> 0", ">= 1", "in [0, 1)"]


@pytest.mark.parametrize("command, flags, message", [
    ("pretrain", ["--clip-grad", "-1"], "--clip-grad must be > 0, got -1"),
    ("pretrain", ["--min-lr", "-1"], "--min-lr must be >= 0, got -1"),
    ("pretrain", ["--weight-decay", "-1"], "--weight-decay must be >= 0, got -1"),
    ("pretrain", ["--tail-weight", "-1"], "--tail-weight must be >= 0, got -1"),
    ("pretrain", ["--cond-ratio", "0"], "--cond-ratio must be > 0, got 0"),
    ("pretrain", ["--lr", "0"], "--lr must be > 0, got 0"),
    ("pretrain", ["--crop-scale", "0", "0"], "--crop-scale must be in (0, 1], got 0 0"),
    ("pretrain", ["--crop-scale", "0.9", "0.2"], "--crop-scale takes MIN MAX with MIN <= MAX, got 0.9 0.2"),
    ("pretrain", ["--stop-at-step", "0"], "--stop-at-step must be >= 1, got 0"),
    ("pretrain", ["--betas", "0.9", "1.0"], "--betas must be in [0, 1), got 0.9 1"),
    ("probe", ["--model", "m", "--epochs", "0"], "--epochs must be >= 1, got 0"),
    ("probe", ["--model", "m", "--epochs", "2"], "--warmup-epochs 10 must not exceed --epochs 2"),
    ("finetune", ["--model", "m", "--mixup-prob", "1.5"], "--mixup-prob must be in [0, 1], got 1.5"),
    ("knn", ["--model", "m", "--k", "20", "0"], "--k must be >= 1, got 20 0"),
    ("figures", ["curves", "log.jsonl", "--size", "0", "10"], "--size must be >= 1, got 0 10"),
])
def test_out_of_range_flags_stop_before_any_work_with_one_line(command, flags, message, tmp_path, capsys):
    out = tmp_path / "out"
    extra = ["--data", str(tmp_path / "none")] if command in ("pretrain", "probe", "knn", "finetune") else []
    extra += ["--output-dir", str(out)] if command != "figures" else []
    assert cli.main([command, *flags, *extra]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err == f"ldae {command}: error: {message}\n"  # one line, no traceback
    assert not out.exists()  # nothing was started


def test_user_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    argv = ["pretrain", "--data", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o")]
    assert cli.main(argv) == cli.EXIT_USER_ERROR
    assert capsys.readouterr().err == f"ldae pretrain: error: --data {tmp_path / 'missing'} does not exist " \
                                      "(expected an image folder, .tar or .tar.gz)\n"
    monkeypatch.setenv("LDAE_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        cli.main(argv)


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    import ldae.cli.knn

    def boom(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(ldae.cli.knn, "main", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["knn", "--model", "m", "--data", "d"])


def test_python_dash_m_takes_the_same_path(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("LDAE_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "ldae.pretrain", "--data", str(tmp_path), "--ema-decay", "1"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stderr == "ldae pretrain: error: --ema-decay must be in [0, 1), got 1\n"


def test_check_flags_ignores_flags_not_given():
    parser = importlib.import_module("ldae.cli.pretrain").get_args_parser(add_help=False)
    check_flags(parser, parser.parse_args([]))  # defaults are in range
