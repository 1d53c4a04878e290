"""The one exception type for bad user input.

Library code raises :class:`UserError` with a message that names the file, row or value at fault;
scripts catch it (see :func:`rag.commands.cli.run`) and print that message on one line with exit status 2.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager


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


# what reading a file someone else may have made can raise, beyond a clean UserError: torch and
# transformers' OSError/ValueError/RuntimeError, a refused pickle, a truncated safetensors file
_LOADING = (OSError, ValueError, RuntimeError, KeyError, TypeError, EOFError, AttributeError,
            pickle.UnpicklingError)


@contextmanager
def loading(path: str | os.PathLike) -> Iterator[None]:
    """The loading boundary: any error deserialising ``path`` (weights, a pickle refused by
    ``weights_only``, a config transformers rejects, tokenizer files) becomes one
    :class:`UserError` naming it. ``UserError`` passes through unchanged."""
    try:
        yield
    except UserError:
        raise
    except (*_LOADING, *_library_errors()) as err:
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise UserError(f"{path}: cannot be loaded ({type(err).__name__}: {first})") from None


def _library_errors() -> tuple[type[BaseException], ...]:
    """Errors of the libraries under transformers that are no built-in kind: a truncated
    safetensors file, a config field huggingface_hub's strict dataclasses reject."""
    found: list[type[BaseException]] = []
    try:
        from safetensors import SafetensorError  # lazy: every command imports errors, --help too

        found.append(SafetensorError)
    except ImportError:
        pass
    try:
        from huggingface_hub.errors import StrictDataclassError  # lazy: as safetensors above

        found.append(StrictDataclassError)
    except ImportError:
        pass
    return tuple(found)
