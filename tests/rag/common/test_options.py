"""Config fields with help, and configs that hold configs: ``updated`` reaches inside them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from rag.common.options import option, settable, updated


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


def test_a_list_default_is_a_fresh_copy_for_each_instance():
    first, second = Model(), Model()
    first.tags.append("b")
    assert second.tags == ["a"]
