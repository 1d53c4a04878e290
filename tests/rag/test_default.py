"""The README's main job: the shipped starter answers from the embedded corpus, offline."""

from __future__ import annotations

import json

import pytest

from rag import default
from rag.pipeline import RagModel


@pytest.fixture(scope="module")
def starter(tmp_path_factory):
    if not (default.MODEL / "rag_config.json").is_file():
        pytest.skip("no starter model in rag/default/model")
    mp = pytest.MonkeyPatch()
    mp.setenv("RAGQA_CACHE", str(tmp_path_factory.mktemp("cache")))
    index = default.default_index()
    yield RagModel.from_pretrained(default.MODEL, index).eval(), index
    mp.undo()


def test_embedded_corpus_is_indexed_and_cached(starter):
    _, index = starter
    rows = [json.loads(line) for line in default.CORPUS.read_text().splitlines() if line.strip()]
    assert len(index) == len(rows)
    again = default.default_index()  # second use reads the cache instead of re-encoding
    assert again.manifest["created"] == index.manifest["created"]


def test_starter_answers_with_the_right_provenance(starter):
    model, _ = starter
    questions = [json.loads(line) for line in default.QUESTIONS.read_text().splitlines()][:6]
    answers = model.answer([q["question"] for q in questions])
    corpus = {json.loads(line)["id"]: json.loads(line)["text"]
              for line in default.CORPUS.read_text().splitlines() if line.strip()}
    for q, a in zip(questions, answers, strict=True):
        assert isinstance(a.answer, str) and len(a.passages) == model.config.k
        # the packaged MiniLM retrieves the passage holding the gold answer first
        assert any(g.lower() in corpus[a.passages[0]["id"]].lower() for g in q["answer"]), (q, a)
