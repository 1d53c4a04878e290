"""Gold passages: SQuAD paragraphs matched by text, DPR's named ids, every match kept."""

from __future__ import annotations

from types import SimpleNamespace

from rag.common.questions import Question, read_questions
from retriever.gold import gold_passage_ids, gold_rows

TEXTS = ["The Nile  flows north.", "Paris is a city.", "The Nile flows north.", "Other."]
INDEX = SimpleNamespace(passages={"id": ["n1", "p", "n2", "o"], "text": TEXTS})


def question(context: str | None) -> Question:
    return Question("q", ("a",), gold_context=context)


def test_gold_rows_match_collapsed_text():
    got = gold_rows([question("The Nile flows  north. "), question("Paris is a city."),
                     question("Not a passage."), question(None)], TEXTS)
    assert got == [[0, 2], [1], [], []]


def test_gold_passage_ids():
    assert gold_passage_ids(INDEX, [question("Paris is a city."), question("The Nile flows north.")]
                            ) == [{"p"}, {"n1", "n2"}]
    dpr = [Question("q", ("a",), positive_ids=("n1", "x"))]
    assert gold_passage_ids(INDEX, dpr) == [{"n1", "x"}]
    assert gold_passage_ids(INDEX, [question("Paris is a city."), question(None)]) is None
    assert gold_passage_ids(INDEX, [question("Not a passage.")]) is None  # none found


def test_squad_questions_find_their_paragraphs(squad_questions, passages):
    squad = read_questions(squad_questions)
    index = SimpleNamespace(passages={"id": [p["id"] for p in passages],
                                      "text": [p["text"] for p in passages]})
    assert gold_passage_ids(index, squad) == [{p["id"]} for p in passages]
