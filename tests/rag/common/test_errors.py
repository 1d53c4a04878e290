"""The validators every config shares: a bad value names its option and what it must be."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from rag.common.errors import UserError, check_choices

Colour = Literal["red", "green"]


@dataclass(frozen=True)
class Paint:
    colour: Colour = "red"
    finish: Literal["matt", "gloss"] | None = None
    name: str = "any text"  # not enum-like: anything goes

    def __post_init__(self) -> None:
        check_choices(self)


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
