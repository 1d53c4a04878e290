"""The one exception type for bad user input.

Library code raises :class:`UserError` with a message that names the file, row or value at fault;
scripts catch it (see :func:`rag.commands.cli.run`) and print that message on one line with exit status 2.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing


class UserError(Exception):
    """Bad input a user can fix (missing file, malformed row, bad argument)."""


def require(ok: bool, flag: str, value, what: str) -> None:
    """Raise ``UserError("--flag what, got value")`` unless ``ok``."""
    if not ok:
        raise UserError(f"--{flag} {what}, got {value!r}")


def is_number(value, finite: bool = True) -> bool:
    """An int or float, not a bool (and, with ``finite``, neither inf nor nan)."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and (not finite or math.isfinite(value)))


def positive(config, *flags: str) -> None:
    """Each of ``config``'s fields ``flags`` is a finite number > 0."""
    for flag in flags:
        value = getattr(config, flag)
        require(is_number(value) and value > 0, flag, value, "must be a positive number")


def non_negative(config, *flags: str) -> None:
    """Each of ``config``'s fields ``flags`` is a finite number >= 0."""
    for flag in flags:
        value = getattr(config, flag)
        require(is_number(value) and value >= 0, flag, value, "must be a finite number >= 0")


def fraction(config, *flags: str, below_one: bool = False) -> None:
    """Each of ``config``'s fields ``flags`` is in [0, 1] (or [0, 1) with ``below_one``)."""
    for flag in flags:
        value = getattr(config, flag)
        ok = is_number(value) and 0 <= value and (value < 1 if below_one else value <= 1)
        require(ok, flag, value, f"must be in [0, 1{')' if below_one else ']'}")


def one_of(config, flag: str, choices) -> None:
    """``config``'s field ``flag`` is one of ``choices``."""
    value = getattr(config, flag)
    require(value in choices, flag, value, f"must be one of {', '.join(map(repr, choices))}")


def check_choices(config) -> None:
    """Each field of the dataclass ``config`` typed ``Literal[...]`` (or ``Literal[...] | None``)
    holds one of its values: what the command-line parser checks, checked for Python callers."""
    for flag, choices in _choices(type(config)).items():
        one_of(config, flag, choices)


@functools.cache
def _choices(cls: type) -> dict[str, tuple]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        union = typing.get_origin(kind) in (typing.Union, types.UnionType)
        for part in typing.get_args(kind) if union else (kind,):
            if typing.get_origin(part) is typing.Literal:
                out[f.name] = typing.get_args(part) + ((None,) if union else ())
    return out

