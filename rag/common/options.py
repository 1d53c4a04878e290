"""Config fields that carry their own ``--help`` text.

Every setting a command line exposes is a field of a frozen dataclass; ``rag.commands.cli.parse``
turns those into options (transformers' ``HfArgumentParser``), and the help it shows is the
field's ``metadata["help"]``::

    @dataclass(frozen=True)
    class SearchConfig:
        k: int = option(5, "passages per question")
        mode: Literal["dense", "sparse"] = option("dense", "how passages are found")

Enum-like settings are ``Literal`` types, so the parser checks them before any work starts; list
settings are lists (``--ks 1 5 20``).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import field
from typing import Any


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with ``default`` (a list, dict or set is copied for each instance) and
    ``help``; other ``metadata`` goes to the parser as well (e.g. ``aliases=["--old_name"]``)."""
    metadata = {"help": help, **metadata}
    if isinstance(default, list | dict | set):
        return field(default_factory=lambda: copy.copy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def updated(config: Any, **changes: Any) -> Any:
    """``dataclasses.replace(config, **changes)``, where a field of a config that ``config`` holds
    (``RagConfig.decode``'s ``num_beams``) may be named as if it were ``config``'s own, or by one of
    its ``aliases`` (``max_answer_length``); its holder is then replaced with it changed. Unknown
    names raise ``TypeError``, as ``replace`` does."""
    nested: dict[str, dict] = {}
    for name, (holder, field_name) in _inner_names(config).items():
        if name in changes and holder not in changes:
            nested.setdefault(holder, {})[field_name] = changes.pop(name)
    for holder, inner in nested.items():
        changes[holder] = dataclasses.replace(getattr(config, holder), **inner)
    return dataclasses.replace(config, **changes)


def settable(config: Any) -> set[str]:
    """The names :func:`updated` takes for ``config``."""
    return {f.name for f in dataclasses.fields(config)} | set(_inner_names(config))


def _inner_names(config: Any) -> dict[str, tuple[str, str]]:
    """``{name or alias: (holder, field)}`` for the fields of the configs ``config`` holds, less
    names of ``config``'s own fields."""
    own = {f.name for f in dataclasses.fields(config)}
    names = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            for g in dataclasses.fields(value):
                for name in (g.name, *(a.lstrip("-") for a in g.metadata.get("aliases", []))):
                    if name.isidentifier() and name not in own:
                        names[name] = (f.name, g.name)
    return names
