"""The one JSON-lines reader: objects with their line numbers, and one-line errors naming the place."""

from __future__ import annotations

import pytest

from rag.common.errors import UserError
from rag.common.jsonl import json_lines, load_json, utf8_lines


def test_objects_with_line_numbers_blank_lines_skipped(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"b": "x"}\n')
    assert list(json_lines(path)) == [(1, {"a": 1}), (4, {"b": "x"})]


@pytest.mark.parametrize("line, what", [("{nope", "invalid JSON"), ("[1, 2]", "got list")])
def test_errors_name_the_line_or_the_callers_place(tmp_path, line, what):
    path = tmp_path / "rows.jsonl"
    path.write_text(f'{{"a": 1}}\n\n{line}\n')
    with pytest.raises(UserError, match=f"rows.jsonl: line 3: .*{what}"):
        list(json_lines(path))
    with pytest.raises(UserError, match=f"rows.jsonl: record 2 at 3: .*{what}"):
        list(json_lines(path, lambda row, line: f"record {row} at {line}"))


def test_non_utf8_bytes_name_their_line(tmp_path):
    path = tmp_path / "rows.tsv"
    path.write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(UserError, match=r"line 2: byte 0xe9 is not valid UTF-8"):
        list(utf8_lines(path))
    path.write_bytes(b'{"text": "caf\xe9"}')
    with pytest.raises(UserError, match="byte offset 13: not valid UTF-8"):
        load_json(path)
    path.write_text('{"a":\n  }')
    with pytest.raises(UserError, match="line 2: invalid JSON"):
        load_json(path)
