"""The one exception type for bad user input.

Library code raises :class:`UserError` with a message that names the file, row or value at fault;
scripts catch it (see :func:`rag.commands.cli.run`) and print that message on one line with exit status 2.
"""

from __future__ import annotations

import math


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
