"""Answers: the passage text an answer's tokens were copied from."""

from __future__ import annotations

import pytest

from rag.answers import copy_span


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from rag.common.model_path import packaged_model_path

    return AutoTokenizer.from_pretrained(packaged_model_path("all-MiniLM-L6-v2"))


def test_copy_span_returns_the_passage_text_the_tokens_came_from(minilm_tokenizer):
    tok = minilm_tokenizer
    passages = [{"title": "Weather", "text": "It rained."},
                {"title": "Super Bowl 50", "text": "Played at Levi's Stadium; the score: 24–10, "
                 "before 9.6% of TV homes."},
                {"title": "Copy", "text": "levis stadium, Levi's Stadium again"}]

    def ids(s: str) -> list[int]:
        return tok(s, add_special_tokens=False)["input_ids"]

    assert tok.decode(ids("Levi's Stadium")) == "levi ' s stadium"  # what decoding alone gives
    assert copy_span(tok, ids("levi ' s stadium"), passages) == "Levi's Stadium"  # first passage
    assert copy_span(tok, ids("24 – 10"), passages) == "24–10"
    assert copy_span(tok, ids("9. 6 %"), passages) == "9.6%"
    assert copy_span(tok, ids("super bowl"), passages) == "Super Bowl"  # from a title
    assert copy_span(tok, ids("levi stadium"), passages) is None  # not a contiguous run
    assert copy_span(tok, [], passages) is None
