"""Where the flags end: a parser's defaults come from a config class, and parsed flags become that config.

A command's parser declares the flags (names, types, help, choices); its config class
(:class:`ldae.utils.config.Config`) declares the fields and their defaults. :func:`bind_config`
makes the config the one source of defaults and checks that every flag has a field and every field a
flag, so the two cannot drift apart; :func:`to_config` is the last step of parsing.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

from ldae.utils.config import Config

__all__ = ["bind_config", "to_config", "flag_dests"]

C = TypeVar("C", bound=Config)


def flag_dests(parser: argparse.ArgumentParser) -> set[str]:
    """The destinations of every flag and positional of ``parser`` (its sub-commands' included)."""
    dests: set[str] = set()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                dests |= flag_dests(sub)
        dests.add(action.dest)
    return dests


def bind_config(parser: argparse.ArgumentParser, cls: type[Config]) -> argparse.ArgumentParser:
    """Give ``parser`` the defaults of ``cls`` (sub-parsers too); ``TypeError`` when flags and fields differ."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    dests = flag_dests(parser)
    missing = sorted(dests - set(fields))
    extra = sorted(set(fields) - dests)
    if missing or extra:
        raise TypeError(f"{parser.prog}: flags without a field of {cls.__name__}: {missing}; fields without a flag: {extra}")
    defaults = {name: _default(f) for name, f in fields.items() if name in dests}
    _set_defaults(parser, defaults)
    return parser


def _set_defaults(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    own = {a.dest for a in parser._actions}
    parser.set_defaults(**{k: v for k, v in defaults.items() if k in own})
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _set_defaults(sub, defaults)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def to_config(cls: type[C], args: argparse.Namespace) -> C:
    """The config holding the parsed flags ``args`` (every destination is a field, see :func:`bind_config`)."""
    values = vars(args)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no fields {unknown}")
    return cls(**values)
