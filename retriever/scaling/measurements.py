"""Measurement rows for fitting the scaling laws, read from JSON lines or CSV.

One row per trained encoder: ``name``, ``n_params`` (non-embedding parameters N),
``n_train_pairs`` (D), ``contrastive_entropy`` (nats) and optionally ``ce_std`` (standard
deviation over negative-sampling repeats). Other columns are kept in ``extra``.
Bad rows raise :class:`rag.common.errors.UserError` naming the file, the row and the line.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag.common.errors import UserError
from rag.common.jsonl import json_lines

REQUIRED = ("name", "n_params", "n_train_pairs", "contrastive_entropy")


@dataclass(frozen=True)
class Measurement:
    """One trained encoder's size, training-set size and measured contrastive entropy."""

    name: str  # encoder / run name, e.g. "bert-base-d500k"
    n_params: float  # N, non-embedding parameters (see laws.count_non_embedding_params)
    n_train_pairs: float  # D, annotated (query, passage) training pairs
    contrastive_entropy: float  # L, nats
    ce_std: float | None = None  # std of L over negative-sampling repeats; None if unknown
    extra: dict[str, Any] = field(default_factory=dict)  # any other columns, as read


def _number(raw: Any, key: str, where: str, *, positive: bool) -> float:
    """``raw`` as a finite float (> 0 when ``positive``, else >= 0) or a UserError at ``where``."""
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = float(raw)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {key} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        sign = "positive" if positive else "non-negative"
        raise UserError(f"{where}: {key} must be a finite {sign} number, got {raw!r}")
    return value


def parse_row(row: dict[str, Any], where: str) -> Measurement:
    """Validate one raw row (dict of column -> value) into a :class:`Measurement`."""
    missing = [key for key in REQUIRED if row.get(key) in (None, "")]
    if missing:
        raise UserError(f"{where}: missing {', '.join(missing)}")
    std_raw = row.get("ce_std")
    return Measurement(
        name=str(row["name"]),
        n_params=_number(row["n_params"], "n_params", where, positive=True),
        n_train_pairs=_number(row["n_train_pairs"], "n_train_pairs", where, positive=True),
        contrastive_entropy=_number(row["contrastive_entropy"], "contrastive_entropy", where,
                                    positive=False),
        ce_std=None if std_raw in (None, "") else _number(std_raw, "ce_std", where,
                                                            positive=False),
        extra={k: v for k, v in row.items() if k not in (*REQUIRED, "ce_std")},
    )


def _at_row(row: int, line: int) -> str:
    return f"row {row} (line {line})"


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (where, row dict) for each non-blank line of a JSON-lines file."""
    for number, (lineno, row) in enumerate(json_lines(path, _at_row), start=1):
        yield f"{path}: {_at_row(number, lineno)}", row


def _csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (where, row dict) for each data row of a CSV file with a header line."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        absent = [key for key in REQUIRED if key not in (reader.fieldnames or [])]
        if absent:
            raise UserError(f"{path}: header lacks column(s) {', '.join(absent)}")
        for number, row in enumerate(reader, start=1):
            where = f"{path}: {_at_row(number, reader.line_num)}"
            if None in row:
                raise UserError(f"{where}: more fields than the header has columns")
            yield where, row


def read_measurements(path: str | Path) -> list[Measurement]:
    """Read measurement rows from ``.jsonl`` / ``.json`` (JSON lines) or ``.csv``.

    Raises :class:`UserError` for a missing file, an unknown extension, an empty file, or a
    bad row (the message names the file, the 1-based data row and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: measurements file not found")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        raw = _jsonl_rows(path)
    elif suffix == ".csv":
        raw = _csv_rows(path)
    else:
        raise UserError(f"{path}: unknown extension {suffix!r}; use .jsonl or .csv")
    rows = [parse_row(row, where) for where, row in raw]
    if not rows:
        raise UserError(f"{path}: no measurement rows")
    return rows


def as_arrays(rows: list[Measurement]) -> dict[str, np.ndarray]:
    """Columns ``n``, ``d``, ``loss`` and ``std`` (NaN where unknown) as float64 arrays."""
    return {
        "n": np.array([r.n_params for r in rows], dtype=np.float64),
        "d": np.array([r.n_train_pairs for r in rows], dtype=np.float64),
        "loss": np.array([r.contrastive_entropy for r in rows], dtype=np.float64),
        "std": np.array([np.nan if r.ce_std is None else r.ce_std for r in rows]),
    }
