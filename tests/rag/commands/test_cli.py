"""The dataclass-generated command lines: help from the fields' metadata, enum-like options
checked by the parser, list options space- or comma-separated, switches, one error line for bad
input, and changes of a saved config that are exactly the flags given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from rag.commands.cli import flags, parse
from rag.common.errors import UserError
from rag.common.options import NON_NEGATIVE, POSITIVE, Changes, check_fields, option, updated


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


def help_text(capsys, specs) -> str:
    with pytest.raises(SystemExit) as exit:
        parse(specs, ["--help"])
    assert exit.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_the_parser_is_built_from_the_fields_types(capsys):
    text = help_text(capsys, [Options])
    assert "--kind {dense,sparse} how passages are found (default: dense)" in text
    assert "--ks KS [KS ...] cut-offs (default: [1, 5])" in text
    assert "--shuffle [SHUFFLE] shuffle the questions (default: True)" in text
    assert "--no_shuffle, --no-shuffle turn --shuffle off" in text
    assert "--depth DEPTH (default: 0)" in text  # no help of its own: the default still shows
    assert parse([Options], ["--shuffle", "false"])[0].shuffle is False
    assert parse([Options], ["--no_shuffle"])[0].shuffle is False
    assert parse([Options], ["--shuffle"])[0].shuffle is True


@pytest.mark.parametrize("argv, fragment", [
    (["--width", "two"], "argument --width: invalid int value: 'two'"),
    (["--shuffle", "maybe"], "argument --shuffle: Truthy value expected"),
    (["--ks"], "argument --ks: expected at least one argument"),
    (["--sideways"], "unrecognized arguments: --sideways"),
])
def test_a_bad_argument_is_one_error_line_and_exit_status_2(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit:
        parse([Options], argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("usage: ") and [line for line in err if "error" in line] == [err[-1]]
    assert err[-1].startswith("error: ") and fragment in err[-1]


@dataclass(frozen=True)
class Fused:
    weight: float = option(0.5, "w", within=NON_NEGATIVE)
    pool: int = option(100, "k'", within=POSITIVE, aliases=["--candidates"])

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class Saved:
    k: int = option(5, "passages", within=POSITIVE)
    mode: Literal["a", "b"] = option("a", "how")
    search: Search = option(Search(beams=4), "how answers are searched for")
    fused: dict = option({}, "changes of the index's Fused", changes=Changes(Fused, over="the index's"))

    def __post_init__(self) -> None:
        check_fields(self)
        Fused(**self.fused)


RUN = Changes(Saved, over="the saved one", types={"mode": Literal["a", "b", "c"]},
              help={"k": "passages per question", "mode": "", "beams": "beam width"})


def test_changes_are_exactly_the_flags_given():
    assert parse([RUN], []) == ({},)
    assert parse([RUN], ["--k", "5"]) == ({"k": 5},)  # equal to the default: still a change
    assert parse([RUN], ["--beams", "2", "--mode", "c"]) == ({"beams": 2, "mode": "c"},)
    saved = Saved(k=3, mode="b", search=Search(beams=8, max_length=9))
    changed = updated(saved, **parse([RUN], ["--k", "5"])[0])
    assert changed == Saved(k=5, mode="b", search=Search(beams=8, max_length=9))  # the rest kept
    with pytest.raises(UserError, match="^--k must be a positive number"):
        parse([RUN], ["--k", "0"])


def test_changes_say_what_leaving_them_out_means(capsys):
    text = help_text(capsys, [RUN])
    assert "--k K passages per question; default: the saved one (> 0)" in text
    assert "--mode {a,b,c} default: the saved one" in text
    assert "--beams BEAMS beam width; default: the saved one" in text
    assert "--max_length" not in text and "--notes" not in text  # only the fields offered


def test_a_dict_of_changes_is_filled_from_its_config_s_flags(capsys):
    (saved,) = parse([Saved], ["--candidates", "30", "--max_answer_length", "9"])
    assert saved.fused == {"pool": 30} and saved.search == Search(beams=4, max_length=9)
    assert parse([Saved], [])[0] == Saved()
    with pytest.raises(UserError, match="^--pool must be a positive number"):
        parse([Saved], ["--pool", "0"])
    (changes,) = parse([Changes(Saved)], ["--weight", "0", "--k", "2"])
    assert changes == {"weight": 0.0, "k": 2}
    assert updated(Saved(fused={"pool": 8}), **changes) == Saved(k=2, fused={"pool": 8, "weight": 0.0})
    text = help_text(capsys, [Saved])
    assert "--pool POOL, --candidates POOL k'; default: the index's (> 0)" in text
    assert "--beams BEAMS beam width (default: 4)" in text


def test_flags_lists_what_the_command_line_takes():
    assert flags([Options]) >= {"--width", "--kind", "--ks", "--shuffle", "--no_shuffle", "--limit",
                                "--help", "--quiet", "--verbose"}
    assert "--no_k" not in flags([RUN]) and "--beams" in flags([RUN])


@dataclass(frozen=True)
class Other:
    fused: bool = option(False, "an option named as Saved's dict of changes")


def test_a_held_config_is_not_filled_by_another_config_s_option_of_its_name():
    other, saved = parse([Other, Saved], ["--fused", "--weight", "0.1"])
    assert other.fused is True and saved == Saved(fused={"weight": 0.1})
