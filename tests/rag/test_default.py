"""The README's main job: the shipped starter answers from the embedded corpus, offline."""

from __future__ import annotations

import json

import pytest

from rag import default
from rag.model import RagModel


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
    model, index = starter
    rows = [json.loads(line) for line in default.CORPUS.read_text().splitlines() if line.strip()]
    assert len(index) == len(rows)
    assert len(index.sparse) == len(rows) and model.retriever.mode == "hybrid"  # BM25 side too
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


def test_starter_reads(starter):
    """The shipped starter answers most embedded questions exactly (33 of 40 when it shipped, see
    docs/benchmarks.md), and every answer is a stretch of one of its passages (span reader)."""
    from rag.common.qa_metrics import exact_match, normalize_answer

    model, _ = starter
    questions = [json.loads(line) for line in default.QUESTIONS.read_text().splitlines()]
    answers = []
    for start in range(0, len(questions), 8):
        answers += model.answer([q["question"] for q in questions[start : start + 8]])
    right = sum(exact_match(a.answer, q["answer"]) for a, q in zip(answers, questions, strict=True))
    assert right >= 28, f"{right} of {len(questions)} right"
    for a in answers:
        sources = " ".join(normalize_answer(f"{p['title']} {p['text']}") for p in a.passages)
        assert normalize_answer(a.answer) in sources, a


def test_the_first_use_index_is_encoded_on_the_commands_device(tmp_path, monkeypatch):
    """``ask --device cuda`` with the starter: the embedded corpus is encoded on that device (a
    fake: the encoder records where it was moved before the index is built), and the device
    reaches the first-use build from ``load_model``."""
    from rag import loading
    from retriever.encoder import Encoder

    monkeypatch.setenv("RAGQA_CACHE", str(tmp_path))
    events = []
    monkeypatch.setattr(Encoder, "to", lambda self, device: events.append(("to", device)) or self)
    monkeypatch.setattr(default, "build_index", lambda *a, **k: events.append(("build",)) or "idx")
    assert default.default_index(device="cuda:1") == "idx"
    assert events == [("to", "cuda:1"), ("build",)]

    seen = []
    monkeypatch.setattr(default, "default_index",
                        lambda device=None, fingerprint=None: seen.append(device) or 0 / 0)
    with pytest.raises(ZeroDivisionError):  # stops right after the index is asked for
        loading.load_model(None, device="cuda:1")
    assert seen == ["cuda:1"]


def test_a_cached_index_is_found_without_loading_the_context_encoder(tmp_path, monkeypatch):
    """The starter's question encoder names the context encoder it is paired with: a cached
    index of that fingerprint is loaded without loading the encoder (a cold-start saving), and
    an unknown fingerprint falls back to the encoder's own."""
    from retriever.encoder import Encoder
    from retriever.encoder_checkpoint import read_meta

    monkeypatch.setenv("RAGQA_CACHE", str(tmp_path))
    built = default.default_index()  # the real first use: encoder loaded, index cached
    paired = read_meta(str(default.MODEL / "question_encoder"))["paired_context_fingerprint"]
    assert (tmp_path / f"default-index-{paired}" / "manifest.json").is_file()
    loads = []
    real = Encoder.from_pretrained.__func__
    monkeypatch.setattr(Encoder, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loads.append(a) or real(cls, *a, **k)))
    again = default.default_index(fingerprint=paired)
    assert loads == [] and len(again) == len(built)
    default.default_index(fingerprint="0" * 16)  # not cached under that name: the encoder says
    assert len(loads) == 1


def test_the_cold_start_path_answers_byte_for_byte_as_before(starter):
    """``load_model(None)``, as ``ragqa ask`` loads the starter (its cached index found by the
    fingerprint its question encoder records, the context encoder not loaded), gives the 40
    embedded questions the same JSON, byte for byte, as the starter built the long way (the
    context encoder loaded to name and build its index)."""
    from dataclasses import asdict

    from rag.loading import load_model

    reference, _ = starter
    model, _ = load_model(None)
    questions = [json.loads(line)["question"] for line in default.QUESTIONS.read_text().splitlines()]
    assert len(questions) == 40

    def as_json(m):
        return [json.dumps(asdict(a)) for start in range(0, 40, 8)
                for a in m.answer(questions[start : start + 8])]

    assert as_json(model) == as_json(reference)
