"""Config fields that carry their own ``--help`` text.

Every setting a command line exposes is a field of a frozen dataclass; ``rag.commands.cli.parse``
turns those into options, and the help it shows is the field's ``metadata["help"]``::

    @dataclass(frozen=True)
    class SearchConfig:
        k: int = option(5, "passages per question")
        mode: Literal["dense", "sparse"] = option("dense", "how passages are found")

Enum-like settings are ``Literal`` types, so the parser checks them before any work starts; list
settings are lists (``--ks 1 5 20``). A number setting says which values it takes with ``within``
(``option(8, "questions per batch", within=POSITIVE)``); ``--help`` shows it, and
:func:`check_fields`, called from each config's ``__post_init__``, checks it and the ``Literal``
choices for command lines and Python callers alike.

A setting is declared once. What a run changes of a saved config (a model's, an index's) is a
mapping ``{field: value}`` of the settings it gives, applied with :func:`updated`; the command
line's are the flags the user gave (:class:`Changes` declares them), never a copy of the config
with "unset" markers.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rag.common.errors import is_number, require


@dataclass(frozen=True)
class Range:
    """The values a number setting takes: finite, above ``low`` (or equal to it, unless
    ``low_open``) and below ``high`` (or equal to it, unless ``high_open``); with ``integer``,
    whole numbers (ints) only."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def __contains__(self, value: Any) -> bool:
        if not is_number(value) or (self.integer and not isinstance(value, int)):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        """As ``--help`` shows it: ``> 0``, ``>= 2``, ``in [0, 1)``."""
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.high_open else ']'}")

    def words(self) -> str:
        """What a value must be, for an error message."""
        if self == POSITIVE:
            return "a positive number"
        return f"{'a whole' if self.integer else 'a finite'} number {self}"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)


def option(default: Any, help: str, *, within: Range | None = None, **metadata: Any) -> Any:
    """A dataclass field with ``default`` (a list, dict or set is copied for each instance),
    ``help`` and, for a number (or a list of numbers), the :class:`Range` its values lie
    ``within``; other ``metadata`` goes to the parser as well (e.g. ``aliases=["--old_name"]``)."""
    metadata = {"help": help, **metadata}
    if within is not None:
        metadata["within"] = within
    if isinstance(default, list | dict | set):
        return field(default_factory=lambda: copy.copy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Changes:
    """Options that change a saved config: ``rag.commands.cli.parse`` gives ``{field: value}`` for
    the flags given and nothing for those left out, so that a flag equal to its default still
    changes the saved value and a flag left out keeps it.

    The fields are ``config``'s (a field of a config it holds by its own name, as :func:`updated`
    takes it): those ``help`` names, with the help ``--help`` gives them, or every option of
    ``config`` with its field's help. ``--help`` says ``default: {over}`` after each, or without
    ``over`` the field's default. ``types`` gives a field the wider type a run takes it with (a
    run's ``decoding`` also names beam widths). A dict field declared ``option({}, ...,
    changes=Changes(...))`` holds such changes: its options are those of the ``Changes``.
    """

    config: type
    help: dict[str, str] | None = None
    over: str = ""
    types: dict[str, Any] = field(default_factory=dict)


def updated(config: Any, **changes: Any) -> Any:
    """``dataclasses.replace(config, **changes)``, where a field of a config that ``config`` holds
    (``RagConfig.decode``'s ``num_beams``) may be named as if it were ``config``'s own, or by one of
    its ``aliases`` (``max_answer_length``); its holder is then replaced with it changed. So may a
    field of the config whose changes a dict field holds (``RetrievalConfig.fusion_changes``'s
    ``fusion_weight``), merged into them. Unknown names raise ``TypeError``, as ``replace`` does."""
    nested: dict[str, dict] = {}
    for name, (holder, field_name) in _inner_names(type(config)).items():
        if name in changes and holder not in changes:
            nested.setdefault(holder, {})[field_name] = changes.pop(name)
    for holder, inner in nested.items():
        value = getattr(config, holder)
        changes[holder] = ({**value, **inner} if isinstance(value, dict)
                           else dataclasses.replace(value, **inner))
    return dataclasses.replace(config, **changes)


def settable(config: Any) -> set[str]:
    """The names :func:`updated` takes for ``config``."""
    return {f.name for f in dataclasses.fields(config)} | set(_inner_names(type(config)))


def held(cls: type) -> dict[str, type]:
    """``{field: config class}`` for the fields of ``cls`` that hold a config (a dataclass) or the
    changes of one (a dict declared with ``changes=Changes(...)``)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if "changes" in f.metadata:
            out[f.name] = f.metadata["changes"].config
        elif dataclasses.is_dataclass(hints[f.name]):
            out[f.name] = hints[f.name]
    return out


@functools.cache
def _inner_names(cls: type) -> dict[str, tuple[str, str]]:
    """``{name or alias: (holder, field)}`` for the fields of the configs ``cls`` holds, less
    names of ``cls``'s own fields."""
    own = {f.name for f in dataclasses.fields(cls)}
    names = {}
    for holder, inner in held(cls).items():
        for g in dataclasses.fields(inner):
            for name in (g.name, *(a.lstrip("-") for a in g.metadata.get("aliases", []))):
                if name.isidentifier() and name not in own:
                    names[name] = (holder, g.name)
    return names


def check_fields(config: Any) -> None:
    """Raise ``UserError`` naming the option unless each field of the dataclass ``config`` typed
    ``Literal[...]`` holds one of its values and each field declared ``within`` a :class:`Range`
    holds a number in it (each number, for a list). ``None`` passes where the type allows it
    (the setting left unset). Configs call this first in ``__post_init__``."""
    for name, check in _checks(type(config)).items():
        _check(name, getattr(config, name), *check)


def check_changes(cls: type, changes: Mapping[str, Any]) -> None:
    """:func:`check_fields` for ``changes`` of a ``cls`` config (the names :func:`updated` takes):
    each value one its field takes. An unknown name raises ``TypeError``, as ``updated`` does."""
    own, inner, holders = {f.name for f in dataclasses.fields(cls)}, _inner_names(cls), held(cls)
    for name, value in changes.items():
        if name in own:
            owner, field_name = cls, name
        elif name in inner:
            holder, field_name = inner[name]
            owner = holders[holder]
        else:
            raise TypeError(f"{cls.__name__} has no setting {name!r}")
        if field_name in _checks(owner):
            _check(field_name, value, *_checks(owner)[field_name])


def _check(name: str, value: Any, choices: tuple | None, within: Range | None,
           optional: bool) -> None:
    if value is None and optional:
        return
    if choices is not None:
        require(value in choices, name, value, f"must be one of {', '.join(map(repr, choices))}")
    if within is not None:
        values = value if isinstance(value, list | tuple) else [value]
        require(all(v in within for v in values), name, value, f"must be {within.words()}")


@functools.cache
def _checks(cls: type) -> dict[str, tuple[tuple | None, Range | None, bool]]:
    """``{field: (Literal choices or None, Range or None, None allowed)}`` for the fields of
    ``cls`` that have either."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        union = typing.get_origin(kind) in (typing.Union, types.UnionType)
        parts = typing.get_args(kind) if union else (kind,)
        literals = [p for p in parts if typing.get_origin(p) is typing.Literal]
        choices = typing.get_args(literals[0]) if literals else None
        within = f.metadata.get("within")
        if choices is not None or within is not None:
            out[f.name] = choices, within, type(None) in parts
    return out
