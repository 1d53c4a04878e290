"""Answer matching and DPR's retrieval figures on hand-worked cases (answer normalisation:
tests/rag/common/test_qa_metrics.py)."""

from __future__ import annotations

import pytest

from rag.common.errors import UserError
from retriever.metrics import has_answer, retrieval_metrics


@pytest.mark.parametrize("passage,answers,expected", [
    ("Paris is the capital of France.", ["paris"], True),
    ("Paris is the capital of France.", ["The Capital"], True),  # article and case ignored
    ("Paris is the capital of France.", ["capital of france!"], True),  # punctuation ignored
    ("The Parisian capital.", ["Paris"], False),  # not on a word boundary
    ("It cost 1969 dollars.", ["969"], False),
    ("Landed in July, 1969.", ["July 1969"], True),  # punctuation between words dropped
    ("nothing here", ["x", "nothing"], True),  # any of several answers
    ("nothing here", ["", "the"], False),  # answers that normalise to nothing never match
    ("the end", [], False),
])
def test_has_answer(passage, answers, expected):
    assert has_answer(passage, answers) is expected


def test_retrieval_metrics_hand_case():
    hits = [
        [False, True, False],  # first answer at rank 2
        [True, True, False],  # rank 1
        [False, False, False],  # none
    ]
    gold = [
        [False, False, True],  # gold at rank 3
        [True, False, False],  # rank 1
        [False, False, False],
    ]
    got = retrieval_metrics(hits, [1, 2, 3], gold)
    assert got["n"] == 3
    assert got["top_k_accuracy"] == pytest.approx({"1": 1 / 3, "2": 2 / 3, "3": 2 / 3})
    assert got["gold_recall"] == pytest.approx({"1": 1 / 3, "2": 1 / 3, "3": 2 / 3})
    assert got["mrr"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_retrieval_metrics_without_gold():
    got = retrieval_metrics([[False, False, True, True]], [1, 5])
    assert got == {"n": 1, "top_k_accuracy": {"1": 0.0, "5": 1.0}, "gold_recall": None,
                   "mrr": pytest.approx(1 / 3)}


@pytest.mark.parametrize("passage,answers,want", [
    ("The Eiffel Tower is in Paris.", ["Paris"], True),
    ("The Eiffel Tower is in Paris.", ["paris"], True),  # uncased
    ("It was built in 1889 by Gustave Eiffel.", ["Gustave Eiffel"], True),
    ("It was built in 1889 by Gustave Eiffel.", ["Eiffel Gustave"], False),  # order matters
    ("Parisian cafés line the streets.", ["Paris"], False),  # a sub-token match does not count
    ("The café opened.", ["cafe"], False),  # NFD keeps the accent as its own mark: café != cafe
    ("The café opened.", ["café"], True),  # composed vs decomposed forms meet after NFD
    ("The cafe\u0301 opened.", ["caf\u00e9"], True),
    ("Levi's Stadium hosted it.", ["Levi's Stadium"], True),  # punctuation is its own token
    ("Levi's Stadium hosted it.", ["Levis Stadium"], False),
    ("the U.S. team", ["U.S."], True),
    ("the U.S. team", ["US"], False),
    ("Founded 1,000 years ago", ["1,000"], True),
    ("Founded 1,000 years ago", ["1000"], False),
    ("anything", [""], False),  # an empty answer has no tokens: never a match
    ("Paris", [], False),
])
def test_dpr_has_answer_on_hand_made_cases(passage, answers, want):
    from retriever.metrics import dpr_tokens, token_has_answer

    assert token_has_answer(dpr_tokens(passage), answers) is want


@pytest.mark.parametrize("passage,patterns,want", [
    ("Apollo 11 landed in July, 1969.", [r"ju(ne|ly),? 19\d\d"], True),  # searched anywhere
    ("Apollo 11 landed in July, 1969.", [r"^ju(ne|ly)"], False),  # anchored at a line start
    ("Apollo 11 landed\nJuly 1969.", [r"^ju(ne|ly)"], True),  # multi-line: ^ starts each line
    ("APOLLO ELEVEN", [r"apollo\s+eleven"], True),  # case-insensitive
    ("The cafe\u0301 opened.", ["caf\u00e9"], True),  # NFD on both sides: composed meets decomposed
    ("The café opened.", ["cafe"], True),  # a regex is a plain search: the accent is a later mark
    ("The café opened.", [r"cafe\b"], True),  # ... not a word character for re's \b either
    ("Parisian cafés", ["paris"], True),  # unlike token matching, a pattern may match inside a word
    ("Paris", ["lyon", "par"], True),  # any pattern
    ("Paris", [], False),
])
def test_dpr_regex_has_answer_on_hand_made_cases(passage, patterns, want):
    from retriever.metrics import answer_test, regex_has_answer

    assert regex_has_answer(passage, patterns) is want
    for match in ("dpr", "substring"):  # regex answers are tested the same under both
        prepare, test = answer_test(match)
        assert test(prepare(passage), [], patterns) is want


def test_answer_test_takes_string_or_regex_answers():
    from retriever.metrics import answer_test

    text = "Apollo 11 landed on the Moon in July, 1969."
    for match in ("dpr", "substring"):
        prepare, test = answer_test(match)
        prepared = prepare(text)
        assert test(prepared, ["July, 1969"]) and not test(prepared, ["June 1969"])
        assert test(prepared, ["June 1969"], ["moon"])  # either kind of answer counts
        assert not test(prepared, ["June 1969"], ["mars"])
    prepare, test = answer_test("dpr")
    assert not test(prepare(text), ["July 1969"])  # DPR's tokens keep the comma
    prepare, test = answer_test("substring")
    assert test(prepare(text), ["July 1969"])  # SQuAD normalisation drops it


def test_invalid_pattern_is_one_clear_error():
    from retriever.metrics import regex_has_answer

    with pytest.raises(UserError, match="not a valid regular expression"):
        regex_has_answer("x", ["(unclosed"])


def test_dpr_tokens_split_like_dpr_simple_tokenizer():
    from retriever.metrics import dpr_tokens

    assert dpr_tokens("Levi's Stadium, 1,000!") == ["levi", "'", "s", "stadium", ",", "1", ",", "000", "!"]
    assert dpr_tokens("Café") == ["cafe\u0301"]  # NFD: the accent is a combining mark in the token
