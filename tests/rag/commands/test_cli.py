"""The dataclass-generated command lines: help from the fields' metadata, enum-like options
checked by the parser, list options space- or comma-separated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from rag.commands.cli import parse
from rag.common.errors import UserError
from rag.common.options import NON_NEGATIVE, POSITIVE, check_fields, option


@dataclass(frozen=True)
class Options:
    width: int = option(3, "passages per question (100% of them)", within=POSITIVE)
    depth: int = 0
    name: str = "x"
    kind: Literal["dense", "sparse"] = option("dense", "how passages are found")
    ks: list[int] = option([1, 5], "cut-offs")
    shuffle: bool = option(True, "shuffle the questions")
    limit: int | None = option(None, "questions; default: all", within=NON_NEGATIVE)

    def __post_init__(self) -> None:
        check_fields(self)


def test_help_comes_from_the_fields_metadata(capsys):
    with pytest.raises(SystemExit) as exit:
        parse([Options], ["--help"])
    assert exit.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "passages per question (100% of them) (default: 3; > 0)" in text
    assert "questions; default: all (>= 0)" in text  # no default shown, its range still is
    assert "turn --shuffle off (it means: shuffle the questions)" in text
    assert "{dense,sparse}" in text


@pytest.mark.parametrize("argv, flag", [(["--width", "0"], "--width"), (["--limit", "-1"], "--limit")])
def test_a_number_out_of_its_range_is_refused_at_parse_time_by_name(argv, flag):
    with pytest.raises(UserError, match=f"^{flag} must be "):
        parse([Options], argv)
    assert parse([Options], ["--limit", "0"])[0].limit == 0


def test_an_enum_like_option_is_checked_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit:
        parse([Options], ["--kind", "sideways"])
    assert exit.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--kind" in errors[0] and "'sideways'" in errors[0]


@pytest.mark.parametrize("argv", [["--ks", "1", "3", "10"], ["--ks", "1,3,10"], ["--ks=1,3,10"],
                                  ["--ks", "1,3", "10"]])
def test_list_options_take_spaces_or_commas(argv):
    (opts,) = parse([Options], [*argv, "--width", "2"])
    assert opts.ks == [1, 3, 10] and opts.width == 2
    assert parse([Options], [])[0].ks == [1, 5]  # the default, a fresh list each time
    assert parse([Options], [])[0].ks is not parse([Options], [])[0].ks


def test_parse_fills_the_dataclass():
    (opts,) = parse([Options], ["--width", "5", "--name", "y"])
    assert opts == Options(width=5, depth=0, name="y")


@dataclass(frozen=True)
class Search:
    beams: int = option(1, "beam width")
    max_length: int = option(20, "longest output", aliases=["--max_answer_length"])
    returned: int = option(1, "hypotheses returned", cli=False)


@dataclass(frozen=True)
class Model:
    k: int = option(5, "passages")
    search: Search = option(Search(beams=4, returned=2), "how answers are searched for")


def test_a_nested_config_gives_its_fields_as_options_with_the_outer_defaults(capsys):
    (model,) = parse([Model], [])
    assert model == Model() and model.search == Search(beams=4, returned=2)
    (model,) = parse([Model], ["--beams", "8", "--max_answer_length", "30", "--k", "2"])
    assert model == Model(k=2, search=Search(beams=8, max_length=30, returned=2))
    with pytest.raises(SystemExit):
        parse([Model], ["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--beams BEAMS beam width (default: 4)" in text  # the outer default, not Search's 1
    assert "--returned" not in text and "--search" not in text  # cli=False; no option for the whole


def test_an_option_with_cli_false_is_not_on_the_command_line(capsys):
    with pytest.raises(SystemExit) as exit:
        parse([Search], ["--returned", "3"])
    assert exit.value.code == 2
    assert "unrecognized arguments: --returned 3" in capsys.readouterr().err
    assert parse([Search], ["--beams", "2"]) == (Search(beams=2),)
