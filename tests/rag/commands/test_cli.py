"""The dataclass-generated command lines: help text comes from the fields' comments."""

from __future__ import annotations

from dataclasses import dataclass

from rag.commands.cli import field_comments, parse


@dataclass(frozen=True)
class Options:
    width: int = 3  # passages per question
    depth: int = 0  # a comment that goes on
    # over two more lines, which
    # belong to it

    # an unrelated comment after a blank line
    name: str = "x"


def test_field_comments_follow_continuation_lines():
    comments = field_comments(Options)
    assert comments["width"] == "passages per question"
    assert comments["depth"] == "a comment that goes on over two more lines, which belong to it"
    assert "name" not in comments


def test_parse_fills_the_dataclass():
    (opts,) = parse([Options], ["--width", "5", "--name", "y"])
    assert opts == Options(width=5, depth=0, name="y")
