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
from dataclasses import field
from typing import Any


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with ``default`` (a list, dict or set is copied for each instance) and
    ``help``; other ``metadata`` goes to the parser as well (e.g. ``aliases=["--old_name"]``)."""
    metadata = {"help": help, **metadata}
    if isinstance(default, list | dict | set):
        return field(default_factory=lambda: copy.copy(default), metadata=metadata)
    return field(default=default, metadata=metadata)
