"""Measurement rows (retriever.scaling.measurements): what is written is read back, in JSON lines
and CSV alike; the columns come out as the arrays the fits read; each bound on a number holds at
its edge; a bad row is named by its data row and its line, blank lines counted."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from rag.common.errors import UserError
from retriever.scaling.measurements import Measurement, as_arrays, parse_row, read_measurements

ROWS = [
    {"name": "l2-d100", "n_params": 1.5e6, "n_train_pairs": 100, "contrastive_entropy": 2.25,
     "ce_std": 0.125, "layers": 2, "note": "first"},
    {"name": "l4-d400", "n_params": 3e6, "n_train_pairs": 400, "contrastive_entropy": 1.5,
     "ce_std": None, "layers": 4, "note": "no std"},
    {"name": "l12-d800", "n_params": 9e6, "n_train_pairs": 800, "contrastive_entropy": 0.0,
     "ce_std": 0.0, "layers": 12, "note": "a perfect one"},
]
WANT = [Measurement("l2-d100", 1.5e6, 100.0, 2.25, 0.125),
        Measurement("l4-d400", 3e6, 400.0, 1.5, None),
        Measurement("l12-d800", 9e6, 800.0, 0.0, 0.0)]


def write(path, rows: list[dict]):
    if path.suffix.lower() == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def core(m: Measurement) -> tuple:
    return m.name, m.n_params, m.n_train_pairs, m.contrastive_entropy, m.ce_std


@pytest.mark.parametrize("name", ["runs.jsonl", "runs.json", "runs.ndjson", "runs.csv", "RUNS.CSV"])
def test_written_rows_read_back(tmp_path, name):
    got = read_measurements(write(tmp_path / name, ROWS))
    assert [core(m) for m in got] == [core(m) for m in WANT]
    text = name.lower().endswith(".csv")  # CSV keeps its other columns as the text it holds
    assert [m.extra for m in got] == [{"layers": str(r["layers"]) if text else r["layers"],
                                       "note": r["note"]} for r in ROWS]


def test_the_fits_columns(tmp_path):
    arrays = as_arrays(read_measurements(write(tmp_path / "runs.jsonl", ROWS)))
    assert set(arrays) == {"n", "d", "loss", "std"}
    assert all(a.dtype == np.float64 and a.shape == (3,) for a in arrays.values())
    np.testing.assert_array_equal(arrays["n"], [1.5e6, 3e6, 9e6])
    np.testing.assert_array_equal(arrays["d"], [100, 400, 800])
    np.testing.assert_array_equal(arrays["loss"], [2.25, 1.5, 0.0])
    np.testing.assert_array_equal(arrays["std"], [0.125, np.nan, 0.0])  # NaN: not measured


GOOD = {"name": "a", "n_params": 1e6, "n_train_pairs": 1e5, "contrastive_entropy": 0.3}


REFUSED = "refused"


@pytest.mark.parametrize("key, value, want", [
    ("n_params", "2.5e6", 2.5e6),  # CSV's text
    ("n_params", 1, 1.0),
    ("n_params", 0, REFUSED),  # N and D are sizes: positive
    ("n_train_pairs", 0.0, REFUSED),
    ("n_train_pairs", -1, REFUSED),
    ("contrastive_entropy", 0, 0.0),  # a loss may be zero, never below
    ("contrastive_entropy", -1e-9, REFUSED),
    ("contrastive_entropy", math.inf, REFUSED),
    ("contrastive_entropy", "nan", REFUSED),
    ("contrastive_entropy", True, REFUSED),  # JSON's true is not a number here
    ("contrastive_entropy", [0.3], REFUSED),
    ("ce_std", 0, 0.0),
    ("ce_std", "", None),  # blank: not measured
    ("ce_std", -0.1, REFUSED),
])
def test_each_bound_at_its_edge(key, value, want):
    row = {**GOOD, key: value}
    if want == REFUSED:
        with pytest.raises(UserError, match=f"here: {key} must be a"):
            parse_row(row, "here")
    else:
        assert getattr(parse_row(row, "here"), key) == want


def test_missing_columns_are_named_together():
    with pytest.raises(UserError, match="here: missing n_train_pairs, contrastive_entropy"):
        parse_row({"name": "a", "n_params": 1e6, "n_train_pairs": "", "extra": 1}, "here")


def test_a_bad_row_is_named_by_row_and_line(tmp_path):
    path = tmp_path / "runs.jsonl"  # blank lines are not rows, but they are lines
    path.write_text(f"\n{json.dumps(GOOD)}\n\n\n{json.dumps({**GOOD, 'n_params': -3})}\n")
    with pytest.raises(UserError, match=r"runs\.jsonl: row 2 \(line 5\): n_params must be"):
        read_measurements(path)
    path = tmp_path / "runs.csv"  # a quoted field over two lines: the row ends on line 4
    path.write_text('name,n_params,n_train_pairs,contrastive_entropy\na,1e6,1e5,0.3\n'
                    '"two\nlines",1e6,1e5,x\n')
    with pytest.raises(UserError, match=r"runs\.csv: row 2 \(line 4\): contrastive_entropy must be"):
        read_measurements(path)


def test_bad_files(tmp_path):
    (tmp_path / "wide.csv").write_text("name,n_params,n_train_pairs,contrastive_entropy\n"
                                       "a,1e6,1e5,0.3,7\n")
    with pytest.raises(UserError, match=r"wide\.csv: row 1 \(line 2\): more fields than the header"):
        read_measurements(tmp_path / "wide.csv")
    (tmp_path / "narrow.csv").write_text("name,n_params,contrastive_entropy\na,1e6,0.3\n")
    with pytest.raises(UserError, match="narrow.csv: header lacks column.s. n_train_pairs"):
        read_measurements(tmp_path / "narrow.csv")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="blank.jsonl: no measurement rows"):
        read_measurements(tmp_path / "blank.jsonl")
    (tmp_path / "header.csv").write_text("name,n_params,n_train_pairs,contrastive_entropy\n")
    with pytest.raises(UserError, match="header.csv: no measurement rows"):
        read_measurements(tmp_path / "header.csv")
    (tmp_path / "runs.tsv").write_text("x")
    with pytest.raises(UserError, match="unknown extension '.tsv'"):
        read_measurements(tmp_path / "runs.tsv")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(UserError, match="not found"):
        read_measurements(tmp_path / "dir.csv")
