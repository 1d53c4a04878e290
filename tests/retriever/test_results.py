"""Per-question results (retriever.results): DPR's records and TREC run lines against answers
worked out by hand; files written as questions are retrieved (ResultsWriter) hold the same bytes
as writing them whole, whatever the batches, and nothing is left behind on an error."""

from __future__ import annotations

import json

import pytest

from rag.common.questions import Question
from retriever.results import ResultsWriter, dpr_results, trec_lines

QUESTIONS = [Question(question=f"q{i}?", answers=(f"a{i}",), id="" if i % 2 else f"id {i}")
             for i in range(5)]
PASSAGES = [[{"id": f"p{i}{j}", "title": "T", "text": f"text a{i} é" if j == 0 else "other",
              "score": 1.0 / (j + 1)} for j in range(3)] for i in range(5)]


@pytest.mark.parametrize("batches", [[5], [1, 1, 3], [2, 3], [0, 5]])
def test_streamed_files_equal_whole_ones(tmp_path, batches):
    with ResultsWriter(tmp_path / "r.json", tmp_path / "run.trec") as out:
        start = 0
        for size in batches:
            out.add(QUESTIONS[start : start + size], PASSAGES[start : start + size])
            start += size
    whole = json.dumps(dpr_results(QUESTIONS, PASSAGES), ensure_ascii=False, indent=1) + "\n"
    assert (tmp_path / "r.json").read_text(encoding="utf-8") == whole
    assert (tmp_path / "run.trec").read_text() == "\n".join(trec_lines(QUESTIONS, PASSAGES)) + "\n"
    assert "id_0 Q0 p00 1 1.000000 ragqa" in (tmp_path / "run.trec").read_text()
    assert "2 Q0 p10 1" in (tmp_path / "run.trec").read_text()  # numbered by position


def test_no_questions_is_an_empty_list(tmp_path):
    with ResultsWriter(tmp_path / "r.json") as out:
        out.add([], [])
    assert json.loads((tmp_path / "r.json").read_text()) == []


def test_an_error_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), ResultsWriter(tmp_path / "r.json", tmp_path / "t") as out:
        out.add(QUESTIONS[:2], PASSAGES[:2])
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


HAMLET = Question(question="Who wrote Hamlet?", answers=("Shakespeare", "The Bard"), id="q 7")
MOON = Question(question="When did Apollo 11 land?", answers=(), patterns=(r"19\d\d",))
HITS = [[{"id": "h1", "title": "Hamlet", "text": "A tragedy by William Shakespeare.", "score": 9.5},
         {"id": "h2", "title": "Plays", "text": "Shakespearean drama by a Bard of Avon.", "score": 7.25},
         {"id": "h3", "title": "Elsinore", "text": "A castle in Denmark.", "score": -1.0}],
        [{"id": "m1", "title": "Apollo 11", "text": "It landed in July 1969.", "score": 3.0},
         {"id": "m2", "title": "Moon", "text": "The Moon orbits Earth.", "score": 2.0}]]


@pytest.mark.parametrize("match, second", [("dpr", False), ("substring", True)])
def test_dpr_records(match, second):
    """``has_answer`` by hand: "Shakespearean" holds no word "Shakespeare" for either test; "The
    Bard" is the tokens "the bard" to DPR's, which "by a Bard of" lacks, but "bard" (articles
    dropped) to the substring test's; a regex answer is tested on the passage text either way."""
    records = dpr_results([HAMLET, MOON], HITS, match)
    assert records == [
        {"question": "Who wrote Hamlet?", "answers": ["Shakespeare", "The Bard"],
         "ctxs": [{**HITS[0][0], "has_answer": True}, {**HITS[0][1], "has_answer": second},
                  {**HITS[0][2], "has_answer": False}]},
        {"question": "When did Apollo 11 land?", "answers": [],
         "ctxs": [{**HITS[1][0], "has_answer": True}, {**HITS[1][1], "has_answer": False}]}]
    assert [list(c) for c in records[0]["ctxs"]] == [["id", "title", "text", "score", "has_answer"]] * 3
    with pytest.raises(ValueError):  # one list of passages per question
        dpr_results([HAMLET], HITS)


def test_trec_lines():
    """``qid Q0 docid rank score run``: ranks from 1 in the given order, scores to 6 decimals, a
    qid's spaces replaced, a question without an id numbered by its position from ``first``."""
    assert trec_lines([HAMLET, MOON], HITS, first=41, run="mine") == [
        "q_7 Q0 h1 1 9.500000 mine", "q_7 Q0 h2 2 7.250000 mine", "q_7 Q0 h3 3 -1.000000 mine",
        "42 Q0 m1 1 3.000000 mine", "42 Q0 m2 2 2.000000 mine"]
    assert trec_lines([MOON], [[]]) == []
