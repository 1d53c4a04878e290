"""Retriever (question side) and evaluate_retrieval against a brute-force recomputation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rag.common.errors import UserError
from rag.common.questions import read_questions
from retriever.batch_encode import EncodeConfig, encode_texts
from retriever.build import BuildConfig, build_index
from retriever.encoder import Encoder
from retriever.evaluation import evaluate_retrieval
from retriever.index import DenseIndex
from retriever.metrics import has_answer
from retriever.search import Retriever, check_questions

QUIET = EncodeConfig(progress=False)


@pytest.fixture(scope="module")
def encoder(tiny_encoder_dir) -> Encoder:
    return Encoder.from_pretrained(str(tiny_encoder_dir), pooling="mean")


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("search") / "idx"


@pytest.fixture(scope="module")
def index(encoder, corpus_tsv, index_dir):
    return build_index(corpus_tsv, encoder, index_dir, BuildConfig(encode=QUIET))


def test_build_index_writes_a_loadable_directory(index, index_dir, encoder, passages):
    assert len(index) == len(passages)
    assert list(index.passages["id"]) == [p["id"] for p in passages]
    assert index.manifest["encoder"] == encoder.identity()
    expected = encode_texts(encoder, [p["text"] for p in passages], [p["title"] for p in passages], QUIET)
    got = np.stack([index.index.reconstruct(i) for i in range(len(passages))])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not index_dir.with_name("idx.encoding").exists()  # work folder removed on success
    assert DenseIndex.load(index_dir).manifest == index.manifest


def test_build_index_refuses_existing_and_leaves_nothing_on_bad_corpus(index, index_dir, encoder,
                                                                       tmp_path):
    with pytest.raises(UserError, match="already exists"):
        build_index(tmp_path / "whatever.tsv", encoder, index_dir)
    bad = tmp_path / "bad.tsv"
    bad.write_text("id\ttext\ttitle\n1\tx\tT\n1\ty\tT\n")
    with pytest.raises(UserError, match="duplicate"):
        build_index(bad, encoder, tmp_path / "idx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tsv"]


def test_retrieve_equals_brute_force(index, encoder, questions):
    texts = [q for q, _, _ in questions]
    result = Retriever(encoder, index).retrieve(texts, k=3)
    q = encode_texts(encoder, texts, config=QUIET)
    vectors = np.stack([index.index.reconstruct(i) for i in range(len(index))])
    scores = q @ vectors.T
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(result.rows, expected)
    np.testing.assert_allclose(result.scores, np.take_along_axis(scores, expected, 1), atol=1e-5)


def test_retriever_refuses_bad_questions_and_k(index, encoder):
    retriever = Retriever(encoder, index)
    with pytest.raises(UserError, match="question 1 is empty"):
        retriever.retrieve(["fine", "  "], k=1)
    for k in (0, 9):
        with pytest.raises(UserError, match="k"):
            retriever.retrieve(["fine"], k=k)


def test_check_questions_truncates_long_ones():
    assert check_questions(["  a  ", "b" * 50], max_chars=10) == ["a", "b" * 10]


def test_retriever_refuses_foreign_question_encoders(index, tiny_encoder_dir, tiny_encoder_dir_16):
    with pytest.raises(UserError, match="dim"):
        Retriever(Encoder.from_pretrained(str(tiny_encoder_dir_16), pooling="mean"), index)
    with pytest.raises(UserError, match="fingerprint"):
        Retriever(Encoder.from_pretrained(str(tiny_encoder_dir), pooling="cls"), index)
    paired = Encoder.from_pretrained(str(tiny_encoder_dir), pooling="cls")
    paired.paired_context_fingerprint = index.manifest["encoder"]["fingerprint"]
    Retriever(paired, index).retrieve(["paris"], k=1)


def test_dpr_pair_builds_an_index_and_searches_it(dpr_pair_dirs, corpus_tsv, questions,
                                                  tmp_path, caplog):
    """DPR's twins: passages through the context encoder, questions through the question encoder,
    paired explicitly (the pairing rule); the search equals the brute-force inner products."""
    ctx_dir, q_dir = dpr_pair_dirs
    ctx = Encoder.from_pretrained(str(ctx_dir))
    index = build_index(corpus_tsv, ctx, tmp_path / "dpr-idx", BuildConfig(encode=QUIET))
    q_enc = Encoder.from_pretrained(str(q_dir))
    assert (ctx.config.pooling, q_enc.config.pooling) == ("pooler", "pooler")
    with pytest.raises(UserError, match="--question_encoder"):  # not paired: refused, with the way out
        Retriever(q_enc, index)
    with caplog.at_level("WARNING", logger="retriever.index_protocol"):
        retriever = Retriever(q_enc, index, pair=True)
    notices = [r.getMessage() for r in caplog.records if "pairing" in r.getMessage()]
    assert len(notices) == 1 and q_enc.fingerprint in notices[0] and ctx.fingerprint in notices[0]
    texts = [q for q, _, _ in questions]
    result = retriever.retrieve(texts, k=3)
    q = encode_texts(q_enc, texts, config=QUIET)
    vectors = encode_texts(ctx, list(index.passages["text"]), list(index.passages["title"]), QUIET)
    scores = q @ vectors.T
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(result.rows, expected)
    np.testing.assert_allclose(result.scores, np.take_along_axis(scores, expected, 1), atol=1e-5)


def test_explicit_pairing_never_bridges_dimensions(index, tiny_encoder_dir_16):
    with pytest.raises(UserError, match="dim"):
        Retriever(Encoder.from_pretrained(str(tiny_encoder_dir_16), pooling="mean"), index, pair=True)


def test_evaluate_retrieval_equals_recomputation(index, encoder, squad_questions):
    questions = read_questions(squad_questions)
    ks = [1, 2, 5]
    got = evaluate_retrieval(Retriever(encoder, index), questions, ks, batch_size=3, progress=False)

    result = Retriever(encoder, index).retrieve([q.question for q in questions], k=5)
    acc, recall, rr = {k: 0 for k in ks}, {k: 0 for k in ks}, 0.0
    for i, (q, passages) in enumerate(zip(questions, result.passages, strict=True)):
        answer_ranks = [r for r, p in enumerate(passages) if has_answer(p["text"], q.answers)]
        gold_rank = [r for r, p in enumerate(passages) if p["id"] == index.passages[i]["id"]]
        for k in ks:
            acc[k] += bool(answer_ranks) and answer_ranks[0] < k
            recall[k] += bool(gold_rank) and gold_rank[0] < k
        rr += 1 / (answer_ranks[0] + 1) if answer_ranks else 0
    n = len(questions)
    assert got["n"] == n
    assert got["top_k_accuracy"] == pytest.approx({str(k): acc[k] / n for k in ks})
    assert got["gold_recall"] == pytest.approx({str(k): recall[k] / n for k in ks})
    assert got["mrr"] == pytest.approx(rr / n)
    assert got["top_k_accuracy"]["5"] > 0


def test_evaluate_retrieval_bad_ks(index, encoder, squad_questions):
    questions = read_questions(squad_questions)
    with pytest.raises(UserError, match="positive"):
        evaluate_retrieval(Retriever(encoder, index), questions, [0, 1], progress=False)
    with pytest.raises(UserError, match="larger than the index"):
        evaluate_retrieval(Retriever(encoder, index), questions, [1, 1000], progress=False)


def test_the_prepared_passage_cache_is_bounded_and_recomputes_what_it_dropped():
    """eval-retrieval's cache of passages as the has-answer test reads them keeps at most
    ``size`` rows (the most recently used), so its memory does not grow with the questions."""
    from retriever.evaluation import _Prepared

    calls = []
    seen = _Prepared(lambda text: calls.append(text) or text.upper(), size=2)
    assert [seen.get(r, t) for r, t in ((1, "a"), (2, "b"), (1, "a"), (3, "c"))] == list("ABAC")
    assert len(seen.rows) == 2 and calls == ["a", "b", "c"]  # row 1 was a hit
    assert seen.get(2, "b") == "B" and calls[-1] == "b"  # row 2 (least recent) was dropped
    assert list(seen.rows) == [3, 2]
