"""Results files written as questions are retrieved (retriever.results.ResultsWriter): the same
bytes as writing them whole, whatever the batches, and nothing left behind on an error."""

from __future__ import annotations

import json

import pytest

from retriever.questions import Question
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
