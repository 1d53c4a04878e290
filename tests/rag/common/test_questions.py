"""Question readers: each supported format, and the errors for empty questions or missing answers."""

from __future__ import annotations

import json

import pytest

from rag.common.errors import UserError
from rag.common.questions import Question, dev_subset, read_questions


def test_squad_json(squad_questions, questions, passages):
    got = read_questions(squad_questions)
    assert [q.question for q in got] == [q for q, _, _ in questions]
    assert [list(q.answers) for q in got] == [a for _, a, _ in questions]
    assert [q.id for q in got] == [f"q-{gold}" for _, _, gold in questions]
    # gold_context is the paragraph with whitespace collapsed (amazon's has a double space)
    assert [q.gold_context for q in got] == [p["text"] for p in passages]


def test_nq_open_jsonl(tmp_path):
    path = tmp_path / "nq.jsonl"
    path.write_text('{"question": "when was the last moon landing", "answer": ["1972", "Dec 1972"]}\n'
                    "\n"
                    '{"question": "who wrote hamlet", "answer": ["Shakespeare"]}\n')
    got = read_questions(path)
    assert got == [
        Question("when was the last moon landing", ("1972", "Dec 1972"), id="1"),
        Question("who wrote hamlet", ("Shakespeare",), id="3"),
    ]


def test_webquestions_json(tmp_path):
    path = tmp_path / "wq.json"
    path.write_text(json.dumps([
        {"qId": "wqs000000", "answers": ["Jamaican Creole English Language", "Jamaican English"],
         "qText": "what does jamaican people speak?"},
        {"qId": "wqs000001", "answers": ["Lawyer"], "qText": "what did james k polk do?"},
    ]))
    got = read_questions(path)
    assert [(q.id, q.question, q.answers) for q in got] == [
        ("wqs000000", "what does jamaican people speak?",
         ("Jamaican Creole English Language", "Jamaican English")),
        ("wqs000001", "what did james k polk do?", ("Lawyer",)),
    ]


def test_dpr_tsv_json_and_python_literal_lists(tmp_path):
    path = tmp_path / "qs.tsv"
    path.write_text('who wrote hamlet\t["Shakespeare", "William Shakespeare"]\n'
                    "what is o'hare\t['an airport', \"chicago's airport\"]\r\n"
                    "\n"
                    "capital of peru?\t['Lima']\n")
    got = read_questions(path)
    assert [(q.question, q.answers, q.id) for q in got] == [
        ("who wrote hamlet", ("Shakespeare", "William Shakespeare"), "1"),
        ("what is o'hare", ("an airport", "chicago's airport"), "2"),
        ("capital of peru?", ("Lima",), "4"),
    ]


def test_dpr_tsv_bad_answer_list(tmp_path):
    path = tmp_path / "qs.tsv"
    path.write_text("q one\t['a']\nq two\t[not a list\n")
    with pytest.raises(UserError, match="line 2"):
        read_questions(path)
    path.write_text("only a question\n")
    with pytest.raises(UserError, match="line 1"):
        read_questions(path)


def test_dpr_train_json(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([
        {"question": "who wrote hamlet", "answers": ["Shakespeare"],
         "positive_ctxs": [{"title": "Hamlet", "text": "...", "passage_id": "11"},
                           {"title": "Hamlet", "text": "...", "passage_id": 12}],
         "negative_ctxs": [{"passage_id": "99"}],
         "hard_negative_ctxs": [{"title": "Macbeth", "text": "...", "passage_id": "21"},
                                {"title": "no id", "text": "..."}]},
        {"question": "capital of peru", "answers": ["Lima"], "positive_ctxs": [],
         "hard_negative_ctxs": []},
    ]))
    got = read_questions(path)
    assert got[0].positive_ids == ("11", "12")
    assert got[0].hard_negative_ids == ("21",)
    assert got[0].answers == ("Shakespeare",)
    assert got[1].positive_ids == () and got[1].hard_negative_ids == ()


@pytest.mark.parametrize("name,content", [
    ("q.jsonl", '{"question": "fine", "answer": ["x"]}\n{"question": "   ", "answer": ["y"]}\n'),
    ("q.json", json.dumps([{"question": "", "answers": ["y"]}])),
    ("q.tsv", "\t['y']\n"),
    ("q.json", json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [
        {"id": "a", "question": " \t ", "answers": [{"text": "y"}]}]}]}]})),
])
def test_empty_question(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError, match="is empty") as info:
        read_questions(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name,content", [
    ("q.jsonl", '{"question": "who?"}\n'),
    ("q.json", json.dumps([{"question": "who?", "answers": []}])),
    ("q.tsv", "who?\t[]\n"),
    ("q.json", json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [
        {"id": "a", "question": "who?", "answers": []}]}]}]})),
])
def test_missing_answers(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError, match="no gold answers") as info:
        read_questions(path)
    assert str(path) in str(info.value)
    assert read_questions(path, require_answers=False)[0].answers == ()


@pytest.mark.parametrize("name,content,fragment", [
    ("missing.json", None, "no such file"),
    ("q.json", "[]", "no questions"),
    ("q.json", '{"version": 1}', "unknown question format"),
    ("q.xml", "<q/>", "unknown question format"),
    ("q.json", "[1, 2]", "item 0"),
    ("q.json", '[{"answers": ["x"]}]', "missing field 'question'"),
    ("q.json", '[{"question": "q", "answers": [1]}]', "answers must be"),
    ("q.jsonl", '{"question": "q", "answer": ["a"]}\n{"question": \n', "line 2"),
    ("q.json", '{"data": [', "invalid JSON"),
])
def test_malformed_files(tmp_path, name, content, fragment):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError) as info:
        read_questions(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_non_utf8_jsonl_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(b'{"question": "a", "answer": ["b"]}\n{"question": "caf\xe9", "answer": ["b"]}\n')
    with pytest.raises(UserError, match="line 2.*UTF-8"):
        read_questions(path)


def test_dev_subset_of_positions_is_seeded_and_sorted():
    drawn = dev_subset(range(50), 5, "random", seed=1)
    assert drawn == dev_subset(range(50), 5, "random", seed=1) == sorted(drawn)
    assert drawn != dev_subset(range(50), 5, "random", seed=2)
    assert dev_subset(range(50), 5, "first") == [0, 1, 2, 3, 4]
    assert dev_subset(range(3), 5) == dev_subset(range(3), 0) == [0, 1, 2]
