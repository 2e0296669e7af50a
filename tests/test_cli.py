"""The ``ldae`` command: every subcommand has --help with an example, and every example parses."""
import importlib
import re
import runpy
import shlex
import sys
import warnings

import pytest

import ldae
from ldae.cli import command as cli

NAMES = list(cli.SUBCOMMANDS)


def _help(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0
    return capsys.readouterr().out


def _examples(text: str, name: str) -> list[list[str]]:
    """Argument lists of the command lines (``ldae <name> ...``, ``python|torchrun ... -m ldae.<module> ...``)
    of a help text; backslash-continued lines are joined first."""
    module = cli.ENTRY_POINTS[name]
    pattern = re.compile(rf"^\s*(?:ldae {re.escape(name)}|(?:python|torchrun)\b.*?-m {re.escape(module)})(?=\s|$)(.*)$")
    found = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        m = pattern.search(line)
        if m:
            found.append(shlex.split(m.group(1).split("#")[0]))
    return found


@pytest.mark.parametrize("name", NAMES)
def test_subcommand_help_shows_usage_and_an_example(name, capsys):
    out = _help(capsys, [name, "--help"])
    assert out.startswith(f"usage: ldae {name}")
    assert "example" in out.lower()
    examples = _examples(out, name)
    assert examples, f"`ldae {name} --help` shows no `ldae {name} ...` example line"
    parser = importlib.import_module(cli.SUBCOMMANDS[name][0]).get_args_parser(add_help=True)
    for argv in examples:  # an example that no longer parses is a broken promise in the docs
        parser.parse_args(argv)
    # a `-m` line must name an entry point: a library module imports and exits 0 without running anything
    for module in re.findall(r"-m (ldae[\w.]*)", out):
        assert module in cli.ENTRY_POINTS.values(), f"`ldae {name} --help` runs `-m {module}`, not an entry point"


@pytest.mark.parametrize("name", NAMES)
def test_module_runs_as_python_m(name, capsys, monkeypatch):
    mod = importlib.import_module(cli.SUBCOMMANDS[name][0])
    assert callable(mod.main) and callable(mod.get_args_parser)
    assert mod.get_args_parser(add_help=False).add_help is False  # reusable as a parent parser
    module = cli.ENTRY_POINTS[name]  # the python -m entry point runs the same command
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with warnings.catch_warnings(), pytest.raises(SystemExit) as e:
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is already imported
        runpy.run_module(module, run_name="__main__")
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_top_level_help_lists_every_command_with_a_parsing_example(capsys):
    out = _help(capsys, ["--help"])
    for name, (_, text) in cli.SUBCOMMANDS.items():
        assert re.search(rf"^\s+{re.escape(name)}\s+{re.escape(text[:30])}", out, re.M), name
    assert set(cli.EXAMPLES) == set(cli.SUBCOMMANDS)
    for name, line in cli.EXAMPLES.items():
        assert line in out
        examples = _examples(line, name)
        assert len(examples) == 1, line
        importlib.import_module(cli.SUBCOMMANDS[name][0]).get_args_parser().parse_args(examples[0])


def test_no_arguments_prints_help(capsys):
    assert cli.main([]) == 0
    assert capsys.readouterr().out.startswith("usage: ldae")


def test_version(capsys):
    assert _help(capsys, ["--version"]).strip() == f"ldae {ldae.__version__}"


def test_unknown_command_names_the_choices(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["pretrian"])
    assert e.value.code == 2
    assert f"unknown command 'pretrian'; choose from {', '.join(NAMES)}" in capsys.readouterr().err


def test_file_and_disk_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    import errno

    from ldae.cli import command
    from ldae.cli import knn as knn_cli
    from ldae.release.manifest import WeightsIntegrityError

    def raising(exc):
        def fake_main(args):
            raise exc
        return fake_main

    cases = [
        (OSError(errno.EROFS, "Read-only file system", "/ro/run"), "[Errno 30] Read-only file system: '/ro/run'"),
        (OSError(errno.ELOOP, "Too many levels of symbolic links", "data/loop"), "Too many levels of symbolic links: 'data/loop'"),
        (WeightsIntegrityError("export/model.safetensors: sha256 differs from SHA256SUMS"), "sha256 differs from SHA256SUMS"),
    ]
    for exc, said in cases:
        monkeypatch.setattr(knn_cli, "main", raising(exc))
        assert command.run("knn", ["--model", "m", "--data", "d"]) == command.EXIT_USER_ERROR
        err = capsys.readouterr().err.strip()
        assert err.startswith("ldae knn: error: ") and said in err and "\n" not in err
    monkeypatch.setattr(knn_cli, "main", raising(RuntimeError("an internal bug")))
    with pytest.raises(RuntimeError, match="an internal bug"):
        command.run("knn", ["--model", "m", "--data", "d"])
    monkeypatch.setattr(knn_cli, "main", raising(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(OSError):  # not something the user's flags or files can fix: the traceback stays
        command.run("knn", ["--model", "m", "--data", "d"])
