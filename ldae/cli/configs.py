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
    """The destinations of every flag and positional of ``parser`` (``--help`` aside)."""
    return {a.dest for a in parser._actions if not isinstance(a, argparse._HelpAction)}


def bind_config(parser: argparse.ArgumentParser, cls: type[Config]) -> argparse.ArgumentParser:
    """Give ``parser`` the defaults of ``cls``; ``TypeError`` when its flags and the fields differ."""
    fields = dataclasses.fields(cls)
    dests = flag_dests(parser)
    missing = sorted(dests - {f.name for f in fields})
    extra = sorted({f.name for f in fields} - dests)
    if missing or extra:
        raise TypeError(f"{parser.prog}: flags without a field of {cls.__name__}: {missing}; fields without a flag: {extra}")
    parser.set_defaults(**{f.name: _default(f) for f in fields})
    return parser


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def to_config(cls: type[C], args: argparse.Namespace) -> C:
    """The config holding the parsed flags ``args`` of a parser bound to ``cls`` (:func:`bind_config`)."""
    return cls(**vars(args))
