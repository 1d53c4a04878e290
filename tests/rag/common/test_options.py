"""Config fields with help and checks (``Literal`` choices, number ranges), and configs that hold
configs: ``updated`` reaches inside them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pytest

from rag.common.errors import UserError
from rag.common.options import (
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    Changes,
    Range,
    check_changes,
    check_fields,
    option,
    settable,
    updated,
)


@dataclass(frozen=True)
class Search:
    beams: int = option(1, "beam width")
    max_length: int = option(20, "longest output", aliases=["--max_answer_length"])


@dataclass(frozen=True)
class Model:
    k: int = option(5, "passages")
    search: Search = option(Search(beams=4), "how answers are searched for")
    tags: list[str] = option(["a"], "labels")


def test_updated_reaches_a_held_config_by_field_name_or_alias():
    model = updated(Model(), k=2, beams=8, max_answer_length=30)
    assert model == Model(k=2, search=Search(beams=8, max_length=30))
    assert updated(Model(), max_length=9).search == Search(beams=4, max_length=9)  # beams kept


def test_a_held_config_given_whole_replaces_it():
    assert updated(Model(), search=Search()).search == Search()


def test_updated_refuses_unknown_names_as_replace_does():
    with pytest.raises(TypeError):
        updated(Model(), width=3)


def test_settable_names_fields_held_fields_and_aliases():
    assert settable(Model()) == {"k", "search", "tags", "beams", "max_length", "max_answer_length"}


@dataclass(frozen=True)
class Run:
    """Changes of an index's Search (its own are elsewhere), held as a dict."""

    k: int = option(5, "passages", within=POSITIVE)
    search: dict = option({}, "Search fields changed", changes=Changes(Search))


def test_updated_merges_into_a_held_dict_of_changes_by_field_name_or_alias():
    run = updated(Run(search={"beams": 2}), max_answer_length=30, k=3)
    assert run == Run(k=3, search={"beams": 2, "max_length": 30})
    assert updated(run, search={}).search == {}  # given whole, it replaces them
    assert settable(Run()) == {"k", "search", "beams", "max_length", "max_answer_length"}


def test_check_changes_checks_each_value_as_its_field_would():
    check_changes(Model, {"k": 2, "beams": 3})
    check_changes(Run, {"beams": 3, "max_answer_length": 9})
    with pytest.raises(UserError, match="^--k must be a positive number, got 0"):
        check_changes(Run, {"k": 0})
    with pytest.raises(UserError, match="^--colour must be one of 'red', 'green', got 'blue'"):
        check_changes(Paint, {"colour": "blue"})
    with pytest.raises(TypeError, match="width"):
        check_changes(Model, {"width": 3})


def test_a_list_default_is_a_fresh_copy_for_each_instance():
    first, second = Model(), Model()
    first.tags.append("b")
    assert second.tags == ["a"]


Colour = Literal["red", "green"]


@dataclass(frozen=True)
class Paint:
    colour: Colour = "red"
    finish: Literal["matt", "gloss"] | None = None
    name: str = "any text"  # not enum-like: anything goes
    coats: int = option(1, "layers", within=POSITIVE)
    gloss: float = option(0.5, "sheen", within=FRACTION)
    thinner: float | None = option(None, "solvent share; default: none", within=Range(0, 1, high_open=True))
    widths: list[int] = option([2, 4], "brush widths", within=POSITIVE)

    def __post_init__(self) -> None:
        check_fields(self)


@pytest.mark.parametrize("colour", ["red", "green"])
@pytest.mark.parametrize("finish", ["matt", "gloss", None])
def test_every_listed_value_is_accepted(colour, finish):
    assert Paint(colour, finish, "blue").colour == colour


@pytest.mark.parametrize("fields, flag", [({"colour": "blue"}, "--colour"),
                                          ({"colour": None}, "--colour"),
                                          ({"finish": "satin"}, "--finish")])
def test_a_value_not_listed_names_its_option_and_the_choices(fields, flag):
    with pytest.raises(UserError) as err:
        Paint(**fields)
    assert str(err.value).startswith(f"{flag} must be one of ")
    assert repr(next(iter(fields.values()))) in str(err.value)


VALUES = [-1, -1e-9, 0, 0.0, 1e-9, 0.5, 1, 1 + 1e-9, 2, 3.5, math.inf, -math.inf, math.nan, True, "1", None]
# which of VALUES each range holds, written out by hand from the interval's definition
HOLDS = {
    POSITIVE: [1e-9, 0.5, 1, 1 + 1e-9, 2, 3.5],
    NON_NEGATIVE: [0, 0.0, 1e-9, 0.5, 1, 1 + 1e-9, 2, 3.5],
    FRACTION: [0, 0.0, 1e-9, 0.5, 1],
    Range(0, 1, high_open=True): [0, 0.0, 1e-9, 0.5],
    Range(0, 1, low_open=True): [1e-9, 0.5, 1],
    Range(2): [2, 3.5],
    Range(0, 1, integer=True): [0, 1],
    Range(2, integer=True): [2],
}


@pytest.mark.parametrize("within", list(HOLDS))
def test_a_range_holds_the_finite_numbers_of_its_interval_and_nothing_else(within):
    got = [v for v in VALUES if v in within]
    assert got == HOLDS[within]  # not inf, nan, a bool, a string or None


@pytest.mark.parametrize("within, shown", [(POSITIVE, "> 0"), (NON_NEGATIVE, ">= 0"),
                                           (FRACTION, "in [0, 1]"),
                                           (Range(0, 1, high_open=True), "in [0, 1)"),
                                           (Range(0, 1, low_open=True), "in (0, 1]"), (Range(2), ">= 2"),
                                           (Range(1, 16, integer=True), "in [1, 16]")])
def test_a_range_reads_as_its_interval(within, shown):
    assert str(within) == shown


@pytest.mark.parametrize("fields", [{"coats": 0}, {"coats": -2}, {"coats": math.nan}, {"gloss": 1.5},
                                    {"gloss": None}, {"thinner": 1.0}, {"widths": [2, 0]}])
def test_a_number_out_of_its_range_names_its_option_and_value(fields):
    (name, value), = fields.items()
    with pytest.raises(UserError, match=f"^--{name} must be a (positive|finite) number") as err:
        Paint(**fields)
    assert str(err.value).endswith(f"got {value!r}")


def test_none_passes_only_where_the_type_allows_it_and_lists_are_checked_by_element():
    assert Paint(thinner=None, widths=[1, 7]).thinner is None
    assert Paint(thinner=0.0, gloss=0, coats=3).coats == 3
