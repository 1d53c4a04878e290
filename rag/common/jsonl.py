"""Reading JSON and line-oriented text files so that a bad byte or record is reported in one line
naming the file and the line: :func:`utf8_lines` (any line format: TSV, JSON lines),
:func:`json_lines` (one JSON object a line) and :func:`load_json` (a whole JSON document)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import UserError


def utf8_lines(path: Path) -> Iterator[str]:
    """Yield decoded lines, naming the line of the first non-UTF-8 byte."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(
                    f"{path}: line {lineno}: byte {raw[err.start]:#04x} is not valid UTF-8"
                ) from None


def at_line(row: int, line: int) -> str:
    """Where a JSON-lines record is, as most readers name it: its line."""
    return f"line {line}"


def json_lines(path: Path, place: Callable[[int, int], str] = at_line
               ) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line of a JSON-lines file, checked: a line
    that is not a JSON object raises :class:`UserError` naming the file and ``place(row, line)``
    (row: the record's number among the non-blank lines, from 1)."""
    row = 0
    for lineno, line in enumerate(utf8_lines(path), start=1):
        if not line.strip():
            continue
        row += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: {place(row, lineno)}: invalid JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}: {place(row, lineno)}: expected a JSON object, got "
                            f"{type(obj).__name__}")
        yield lineno, obj


def load_json(path: Path) -> object:
    """Parse a whole JSON file, turning decode errors into one-line :class:`UserError`s."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: byte offset {err.start}: not valid UTF-8") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from None
