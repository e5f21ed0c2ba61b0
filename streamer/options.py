"""Options declared once: a config dataclass's field, with its default, help and unit, is
also its command-line option and the argv that hands it to a child process.

A field declared with :func:`option` carries its help text (and, where the flag is not
simply ``--`` + the field name with hyphens, its flag). :func:`add_options` puts the
options of a config class on an argparse parser, :func:`from_args` builds the config back
from the parsed arguments, and :func:`to_argv` turns a config into the arguments that set
it again (what ``demo`` and ``bench latency`` pass to the ``serve`` they start)::

    @dataclass(frozen=True)
    class BudgetConfig:
        frame_ms: float | None = option(None, "latency budget per frame, ms",
                                        flag="--budget-ms", metavar="MS")

    add_options(parser, BudgetConfig)          # --budget-ms MS
    config = from_args(BudgetConfig, args)     # BudgetConfig(frame_ms=...)
    to_argv(config)                            # ["--budget-ms", "25.0"]

Units are in the field names (``_ms``, ``_s``, ``_mm``), so they are in the flags too.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

_KEY = "cardiostream.option"


@dataclass(frozen=True)
class Option:
    """How one config field appears on the command line."""

    help: str
    flag: str | None = None
    #: further spellings of the same option
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    choices: Sequence[str] | None = None
    #: text -> value (for a repeated option: one item); raises ValueError on bad text
    parse: Callable[[str], Any] | None = None
    #: value (or one item) -> text, the inverse of ``parse``
    format: Callable[[Any], str] = str


def parse_pair(text: str, kind: Callable[[str], Any], names: str = "A:B") -> tuple[Any, Any]:
    """"30:59" -> (kind("30"), kind("59")); ValueError naming the form ``names`` else."""
    first, sep, second = text.partition(":")
    try:
        if sep:
            return kind(first), kind(second)
    except ValueError:
        pass
    raise ValueError(f"expected {names}")


def option(default: Any, help: str, **how: Any) -> Any:
    """A dataclass field that is also a command-line option (see the module docstring).

    A ``tuple`` field whose default is ``()`` is a repeatable option (each use adds one
    item, read by ``parse``);
    a ``bool`` field is a switch: ``--name`` when its default is False, and when its default
    is True the flag must be given (e.g. ``flag="--no-degrade"``) and clears it."""
    return dataclasses.field(default=default, metadata={_KEY: Option(help, **how)})


_REPEAT = "repeat"


def _declared(cls: type) -> list[tuple[dataclasses.Field, Option, Any]]:
    """(field, option, kind) of each declared option; kind is bool, "repeat" or the type."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        how = f.metadata.get(_KEY)
        if how is not None:
            kind = _base_type(hints[f.name])
            out.append((f, how, _REPEAT if kind is tuple and f.default == () else kind))
    return out


def _base_type(hint: Any) -> type:
    """``float | None`` -> float; ``tuple[...]`` -> tuple."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0])
    return origin or hint


def flag_of(f: dataclasses.Field, how: Option) -> str:
    return how.flag or "--" + f.name.replace("_", "-")


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _parsed(how: Option, flag: str, text: str) -> Any:
    try:
        return how.parse(text)
    except ValueError as exc:
        raise ValueError(f"{flag} {text!r}: {exc}") from None


def _nested(cls: type) -> list[dataclasses.Field]:
    """Fields of ``cls`` that hold a config of their own (a dataclass default)."""
    return [f for f in dataclasses.fields(cls) if _KEY not in f.metadata
            and dataclasses.is_dataclass(f.default)]


def add_options(parser: argparse.ArgumentParser | Any, cls: type,
                skip: Sequence[str] = ()) -> None:
    """Add the declared options of config class ``cls`` and of the configs nested in it to
    ``parser`` (or an argument group), with their defaults in the help text; ``skip``
    names fields (options or nested configs) left out."""
    if not dataclasses.is_dataclass(cls):
        return
    for f in _nested(cls):
        if f.name not in skip:
            add_options(parser, type(f.default))
    for f, how, kind in _declared(cls):
        if f.name in skip:
            continue
        flag = flag_of(f, how)
        kw: dict[str, Any] = {"dest": _dest(flag), "help": how.help}
        if kind is bool:  # a switch: given, it sets the field to the opposite of its default
            kw["action"] = "store_true"
        else:
            kw["type"] = str if how.parse else kind  # parsed by from_args: one-line errors
            kw["metavar"] = how.metavar
            if how.choices is not None:
                kw["choices"] = how.choices
            if kind == _REPEAT:
                kw["action"], kw["default"] = "append", []
                kw["help"] += " (repeatable)"
            else:
                kw["default"] = f.default
                if f.default is not None:
                    kw["help"] += f" (default {how.format(f.default)})"
        parser.add_argument(flag, *how.aliases, **kw)


def from_args(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """The config ``cls`` (and the configs nested in it) with its declared options read
    from parsed ``args`` (options not on the parser keep their defaults); ``values`` set
    further fields. A value its option's ``parse`` refuses raises ValueError naming the
    option (the CLI prints it as one line)."""
    for f in _nested(cls):
        if f.name not in values:
            values[f.name] = from_args(type(f.default), args)
    for f, how, kind in _declared(cls):
        dest = _dest(flag_of(f, how))
        if f.name in values or not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if kind is bool:
            value = (not f.default) if value else f.default
        elif how.parse is not None and kind == _REPEAT:
            value = [_parsed(how, flag_of(f, how), text) for text in value]
        elif how.parse is not None and isinstance(value, str):
            value = _parsed(how, flag_of(f, how), value)
        values[f.name] = tuple(value) if kind == _REPEAT else value
    return cls(**values)


def to_argv(config: Any) -> list[str]:
    """The arguments that set ``config``'s declared options (and those of the configs
    nested in it) where they differ from their defaults: what a child process needs to
    build the same config."""
    if not dataclasses.is_dataclass(config):
        return []
    argv: list[str] = []
    for f in _nested(type(config)):
        argv += to_argv(getattr(config, f.name))
    for f, how, kind in _declared(type(config)):
        value = getattr(config, f.name)
        if value == f.default:
            continue
        flag = flag_of(f, how)
        if kind is bool:
            argv.append(flag)
        elif kind == _REPEAT:
            for item in value:
                argv += _flag_value(flag, how.format(item))
        else:
            argv += _flag_value(flag, how.format(value))
    return argv


def _flag_value(flag: str, text: str) -> list[str]:
    """``[flag, text]``, or ``[flag=text]`` where text starts with '-' (which argparse would
    take for an option)."""
    return [f"{flag}={text}"] if text.startswith("-") else [flag, text]
