"""The package's layering (docs/architecture.md): parts import only parts below them, flags end at the CLI."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
from pathlib import Path

import pytest

from ldae.cli import command
from ldae.cli.configs import bind_config, to_config
from ldae.utils.config import Config

PKG = Path(__file__).resolve().parents[1] / "ldae"
# Lowest first: a part may import itself and the parts before it.
ORDER = ("utils", "data", "tokenizers", "diffusion", "models", "engine", "eval", "release", "viz", "cli")
# The published weights' index is read below `release`: timm registration gives the registered models
# their released weights, and a zoo name's backbone its pretraining noise.
UPWARD = {
    ("ldae.models.registry", "ldae.release.manifest"), ("ldae.models.registry", "ldae.release.checksums"),
    ("ldae.eval.backbones", "ldae.release.manifest"),
}
MAX_LINES = 450


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _name(path: Path) -> str:
    return ".".join(("ldae", *path.relative_to(PKG).with_suffix("").parts)).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, lazily inside functions too (``from ldae.x import y`` gives ldae.x.y
    when that is a module, else ldae.x)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.add(full if (PKG.parent / (full.replace(".", "/") + ".py")).is_file() else node.module)
    return out


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "ldae" and parts[1] in ORDER else None


def test_parts_import_only_parts_below_them():
    wrong = []
    for path in _modules():
        me = _name(path)
        mine = _part(me)
        if mine is None:
            continue
        for target in _imports(path):
            theirs = _part(target)
            if theirs is not None and ORDER.index(theirs) > ORDER.index(mine) and (me, target) not in UPWARD:
                wrong.append(f"{me} -> {target}")
    assert not wrong, "imports of a higher part (see docs/architecture.md): " + ", ".join(wrong)


def test_the_upward_edges_read_a_module_that_stays_low():
    for _, target in UPWARD:
        path = PKG.parent / (target.replace(".", "/") + ".py")
        above = [t for t in _imports(path) if _part(t) in ORDER[ORDER.index("models"):] and t != "ldae.models.sizes"
                 and _part(t) != "release"]
        assert not above, f"{target} is read from below `release`, so it may not import {above}"


def test_only_the_cli_knows_argparse_and_the_cli():
    entry_points = {f"{m}" for m in command.ENTRY_POINTS.values()}
    for path in _modules():
        me = _name(path)
        if _part(me) == "cli":
            continue
        imported = _imports(path)
        assert "argparse" not in imported, f"{me} imports argparse: flags belong in ldae.cli"
        if me not in entry_points:
            assert not any(_part(t) == "cli" for t in imported), f"{me} imports the CLI"


def test_entry_points_only_run_their_command():
    for name, module in command.ENTRY_POINTS.items():
        path = PKG.parent / (module.replace(".", "/") + ".py")
        assert _imports(path) <= {"sys", "ldae.cli.command"}, module
        assert f'run("{name}"' in path.read_text()


def test_no_module_is_too_long():
    long = {_name(p): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


# `ldae figures` has no config: each figure kind is one library call with typed arguments.
@pytest.mark.parametrize("name", [n for n in command.SUBCOMMANDS if n != "figures"])
def test_a_commands_required_flags_are_its_configs_required_fields(name):
    """What the command insists on is what its config refuses to leave None, so a library user who builds
    the config directly gets the same one-line refusal instead of a failure deep inside the run."""
    mod = importlib.import_module(command.SUBCOMMANDS[name][0])
    parser = mod.get_args_parser(add_help=False)
    required = {a.dest for a in parser._actions if a.required and a.nargs != "*"}  # an empty '*' list is allowed
    assert required == set(mod.CONFIG.REQUIRED)
    if required:
        with pytest.raises(ValueError, match=rf"^{mod.CONFIG.__name__} needs {', '.join(n for n in mod.CONFIG.REQUIRED)} "):
            mod.CONFIG()


@dataclasses.dataclass
class _Cfg(Config):
    size: int = 3
    names: tuple[str, ...] = ("a",)


def test_bind_config_gives_the_configs_defaults_and_refuses_flags_and_fields_that_differ():
    parser = argparse.ArgumentParser("demo")
    parser.add_argument("--size", type=int, default=99)  # the config's default wins: one source of defaults
    parser.add_argument("--names", nargs="+")
    args = bind_config(parser, _Cfg).parse_args([])
    assert to_config(_Cfg, args) == _Cfg() and args.size == 3
    assert to_config(_Cfg, parser.parse_args(["--size", "5", "--names", "x", "y"])) == _Cfg(5, ["x", "y"])
    extra = argparse.ArgumentParser("extra")
    for flag in ("--size", "--names", "--colour"):
        extra.add_argument(flag)
    with pytest.raises(TypeError, match=r"flags without a field of _Cfg: \['colour'\]; fields without a flag: \[\]"):
        bind_config(extra, _Cfg)
    short = argparse.ArgumentParser("short")
    short.add_argument("--size")
    with pytest.raises(TypeError, match=r"flags without a field of _Cfg: \[\]; fields without a flag: \['names'\]"):
        bind_config(short, _Cfg)
