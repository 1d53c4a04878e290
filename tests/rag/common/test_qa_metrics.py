"""Answer normalisation and EM/F1 of answers (rag.common.qa_metrics) on hand-worked cases, and the
same figures through evaluate.load."""

from __future__ import annotations

import pytest

from rag.common.errors import UserError
from rag.common.qa_metrics import (
    QA_METRIC_DIR,
    exact_match,
    f1_score,
    normalize_answer,
    qa_metrics,
    qa_scores,
    regex_match,
)

ROOT = QA_METRIC_DIR.parents[2]


@pytest.mark.parametrize("text,expected", [
    ("The Eiffel Tower", "eiffel tower"),
    ("  an   apple,  a day!  ", "apple day"),
    ("U.S.A.", "usa"),
    ("Theatre and another", "theatre and another"),  # articles only as whole words
    ("A", ""),
    ("rock 'n' roll", "rock n roll"),
    ("Café", "café"),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("prediction,golds,expected", [
    ("Paris", ["Paris"], 1.0),
    ("the Eiffel Tower", ["Eiffel Tower"], 1.0),  # article dropped
    ("An apple.", ["apple"], 1.0),  # article and punctuation
    ("PARIS!", ["paris"], 1.0),  # case and punctuation
    ("  Guido   van\tRossum ", ["guido van rossum"], 1.0),  # whitespace collapsed
    ("U.S.A.", ["USA"], 1.0),
    ("Paris France", ["Paris"], 0.0),
    ("Nile", ["the Amazon", "the Nile"], 1.0),  # any of several golds
    ("1969", ["July 1969"], 0.0),
    ("the", ["a"], 1.0),  # both normalise to nothing
    ("Paris", [], 0.0),
])
def test_exact_match(prediction, golds, expected):
    assert exact_match(prediction, golds) == expected


@pytest.mark.parametrize("prediction,golds,expected", [
    # pred {quick, brown, fox}, gold {quick, red, fox, jumps}: 2 common; P = 2/3, R = 1/2
    ("The quick brown fox", ["quick red fox jumps"], 2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2)),
    # best of two golds: "fox" gives P = 1/3, R = 1, F1 = 1/2 < 4/7
    ("quick brown fox", ["fox", "quick red fox jumps"], 4 / 7),
    ("quick brown fox", ["fox"], 0.5),
    # tokens counted with multiplicity: {x: 2, y: 1} vs {x: 1, y: 2} share 2 of 3
    ("x x y", ["x y y"], 2 / 3),
    ("July 1969", ["1969"], 2 * 0.5 * 1 / 1.5),
    ("Paris.", ["paris"], 1.0),
    ("Berlin", ["Paris"], 0.0),
    ("the", ["an"], 1.0),  # both empty after normalisation
    ("", ["Paris"], 0.0),
    ("Paris", ["the"], 0.0),
    ("Paris", [], 0.0),
])
def test_f1(prediction, golds, expected):
    assert f1_score(prediction, golds) == pytest.approx(expected)


@pytest.mark.parametrize("prediction,patterns,expected", [
    ("Lambe", ["lamb(e)?"], 1.0),  # case-insensitive
    ("the Lamb.", ["lamb(e)?"], 1.0),  # matched after normalisation
    ("Lambert", ["lamb(e)?"], 0.0),  # the whole prediction must match
    ("a lamb chop", ["lamb"], 0.0),
    ("1,000 miles", ["1,?000 miles"], 1.0),  # normalised "1000 miles"
    ("$5.5 million", [r"\$5\.5 million"], 1.0),  # the raw (stripped) prediction
    ("Wright brothers", ["orville", "wright (brothers)?"], 1.0),  # any pattern
    ("anything", [], 0.0),
])
def test_regex_match(prediction, patterns, expected):
    assert regex_match(prediction, patterns) == expected


def test_regex_answers_score_f1_as_em_and_ignore_strings():
    assert qa_scores("Lambe", ["something else"], ["lamb(e)?"]) == (1.0, 1.0)
    assert qa_scores("lamb chop", ["lamb chop"], ["lamb"]) == (0.0, 0.0)  # patterns win
    assert qa_scores("quick brown fox", ["fox"], ()) == (0.0, 0.5)


def test_invalid_pattern_is_a_user_error():
    with pytest.raises(UserError, match=r"'\(unclosed'"):
        regex_match("x", ["(unclosed"])


PREDICTIONS = ["the Paris!", "quick brown fox", "Lambe", "1969", "nothing"]
REFERENCES = [["Paris"], ["fox", "quick red fox jumps"], [], ["July 1969", "1969"], ["x"]]
PATTERNS = [None, [], ["lamb(e)?"], None, None]
# EM: 1, 0, 1, 1, 0; F1: 1, 4/7, 1, 1, 0
EXPECTED = {"exact_match": 100 * 3 / 5, "f1": 100 * (3 + 4 / 7) / 5}


def test_qa_metrics_in_percent():
    assert qa_metrics(PREDICTIONS, REFERENCES, PATTERNS) == pytest.approx(EXPECTED)
    assert qa_metrics(["Paris"], [["Paris"]]) == {"exact_match": 100.0, "f1": 100.0}
    with pytest.raises(ValueError, match="no predictions"):
        qa_metrics([], [])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        qa_metrics(["a", "b"], [["a"]])


@pytest.fixture(scope="module")
def qa_module():
    evaluate = pytest.importorskip("evaluate")
    return evaluate.load(str(QA_METRIC_DIR), keep_in_memory=True)


def test_evaluate_module_equals_the_functions(qa_module):
    got = qa_module.compute(predictions=PREDICTIONS, references=REFERENCES, patterns=PATTERNS)
    assert got == pytest.approx(qa_metrics(PREDICTIONS, REFERENCES, PATTERNS))
    assert got == pytest.approx(EXPECTED)
    plain = qa_module.compute(predictions=PREDICTIONS[:2], references=REFERENCES[:2])
    assert plain == pytest.approx(qa_metrics(PREDICTIONS[:2], REFERENCES[:2]))
    for start in range(0, 5, 2):  # batches accumulate; patterns come with compute()
        qa_module.add_batch(predictions=PREDICTIONS[start : start + 2],
                            references=REFERENCES[start : start + 2])
    assert qa_module.compute(patterns=PATTERNS) == pytest.approx(EXPECTED)


def test_evaluate_loads_the_module_by_relative_path(qa_module, monkeypatch):
    import evaluate

    monkeypatch.chdir(ROOT)
    module = evaluate.load("rag/common/qa_metric", keep_in_memory=True)
    assert module.name == qa_module.name == "qa_metric"
    assert module.compute(predictions=["Paris"], references=[["the Paris"]]) == {
        "exact_match": 100.0, "f1": 100.0}
