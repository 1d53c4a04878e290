"""The sparse side and hybrid retrieval: bm25s as the oracle for sparse scores, brute-force fusion
over the whole corpus, save/load, hot-swap on both sides, the gradient path, bad settings."""

from __future__ import annotations

import json
import math
import shutil

import bm25s
import numpy as np
import pytest
import Stemmer
import torch

from rag.common.errors import UserError
from rag.common.options import updated
from rag.common.questions import read_questions
from retriever.batch_encode import EncodeConfig, encode_texts
from retriever.corpus import open_shards, write_arrow
from retriever.encoder import Encoder
from retriever.evaluation import evaluate_retrieval
from retriever.fusion import DEFAULT_CANDIDATES, DEFAULT_WEIGHT, RRF_K, FusionConfig, RetrievalConfig
from retriever.index import DenseIndex
from retriever.search import Retriever
from retriever.sparse import SparseConfig, SparseIndex, top_k

QUIET = EncodeConfig(progress=False)
QUERIES = ["What is the capital of France?", "largest planet moons", "river sea Africa flows",
           "zzz unknown words only", "Amazon Amazon basin"]


@pytest.fixture(scope="module")
def encoder(tiny_encoder_dir):
    return Encoder.from_pretrained(str(tiny_encoder_dir), pooling="mean", normalize=True)


def make_index(encoder, passages, tmp_path_factory, **sparse) -> DenseIndex:
    path = tmp_path_factory.mktemp("hybrid") / "p.arrow"
    write_arrow(iter(passages), path)
    table = open_shards([path])
    vectors = encode_texts(encoder, list(table["text"]), list(table["title"]), QUIET)
    index = DenseIndex.build(vectors, table, encoder.identity())
    index.add_sparse(SparseConfig(**sparse), FusionConfig(), encoder.tokenizer)
    return index


@pytest.fixture(scope="module")
def index(encoder, passages, tmp_path_factory):
    return make_index(encoder, passages, tmp_path_factory)


def oracle_terms(kind: str, tokenizer, texts: list[str]) -> list[list[str]]:
    if kind == "words":
        return bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"),
                              return_ids=False, show_progress=False)
    return [[t for t in tokenizer.tokenize(x) if t.strip("#") and t.strip("#").isalnum()]
            for x in texts]


@pytest.mark.parametrize("kind", ["words", "wordpiece"])
def test_sparse_scores_equal_bm25s(kind, encoder, passages):
    docs = [f"{p['title']} {p['text']}" for p in passages]
    ours = SparseIndex.build([p["title"] for p in passages], [p["text"] for p in passages],
                             SparseConfig(sparse_tokenizer=kind, bm25_k1=1.2, bm25_b=0.6),
                             encoder.tokenizer)
    oracle = bm25s.BM25(k1=1.2, b=0.6, method="lucene")
    oracle.index(oracle_terms(kind, encoder.tokenizer, docs), show_progress=False)
    got = ours.scores(QUERIES)  # (B, R)
    assert got.shape == (len(QUERIES), len(passages))
    for q, row in zip(oracle_terms(kind, encoder.tokenizer, QUERIES), got, strict=True):
        known = [t for t in q if t in oracle.vocab_dict]
        want = oracle.get_scores(known) if known else np.zeros(len(docs))
        np.testing.assert_allclose(row, want, rtol=1e-6, atol=1e-6)
    assert got[0].max() > 0
    assert kind == "wordpiece" or not got[3].any()  # "zzz unknown words only": no known word


def brute_force(index: DenseIndex, encoder, questions, fusion: FusionConfig):
    """Fused scores of every row (B, R) from first principles: all vectors, bm25s' own scores."""
    q = encode_texts(encoder, questions, config=QUIET)
    vecs = np.stack([index.index.reconstruct(i) for i in range(len(index))])
    dense = q @ vecs.T
    docs = [f"{t} {x}" for t, x in zip(index.passages["title"], index.passages["text"], strict=True)]
    config = index.sparse.config
    oracle = bm25s.BM25(k1=config.bm25_k1, b=config.bm25_b, method="lucene")
    oracle.index(oracle_terms("words", None, docs), show_progress=False)
    sparse = np.stack([oracle.get_scores(t) if t else np.zeros(len(docs))
                       for t in ([x for x in terms if x in oracle.vocab_dict]
                                 for terms in oracle_terms("words", None, questions))])
    if fusion.fusion == "linear":
        best = sparse.max(1, keepdims=True)
        return dense + fusion.fusion_weight * np.where(best > 0, sparse / np.where(best > 0, best, 1), 0)
    ranks = [np.argsort(np.argsort(-s, axis=1, kind="stable"), axis=1) + 1 for s in (dense, sparse)]
    return sum(1.0 / (RRF_K + r) for r in ranks)


@pytest.mark.parametrize("fusion", [FusionConfig(fusion_weight=0.7, candidates=8),
                                    FusionConfig(fusion="rrf", candidates=8)])
def test_fused_ranking_equals_brute_force_when_candidates_cover_the_corpus(index, encoder, fusion):
    questions = QUERIES[:3] + ["Who developed relativity?", "python language"]
    config = RetrievalConfig("hybrid", {"fusion": fusion.fusion, "fusion_weight": fusion.fusion_weight,
                                         "candidates": len(index)})
    scores, result = Retriever(encoder, index, config).search(questions, k=len(index))
    want = brute_force(index, encoder, questions, fusion)  # (B, R)
    order = np.argsort(-want, axis=1, kind="stable")
    np.testing.assert_array_equal(result.rows, order)
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(want, order, 1), atol=1e-5)
    assert [p["score"] for p in result.passages[0]] == pytest.approx(scores[0].tolist())


def test_hybrid_differs_from_either_side_and_top_k_is_a_prefix(index, encoder):
    full = Retriever(encoder, index, RetrievalConfig("hybrid", {"candidates": 8})).retrieve(QUERIES, 8)
    top3 = Retriever(encoder, index, RetrievalConfig("hybrid", {"candidates": 8})).retrieve(QUERIES, 3)
    np.testing.assert_array_equal(top3.rows, full.rows[:, :3])
    dense = Retriever(encoder, index, RetrievalConfig("dense")).retrieve(QUERIES, 8)
    sparse = Retriever(encoder, index, RetrievalConfig("sparse")).retrieve(QUERIES, 8)
    assert sparse.ids[0][0] == "paris" and sparse.scores[0, 0] == pytest.approx(1.0)
    assert not np.array_equal(full.rows, dense.rows) or not np.array_equal(full.rows, sparse.rows)


def test_sparse_side_survives_save_and_load(index, encoder, tmp_path):
    index.save(tmp_path / "idx")
    files = {p.name for p in (tmp_path / "idx" / "sparse").iterdir()}
    assert {"params.index.json", "vocab.index.json", "data.csc.index.npy"} <= files
    loaded = DenseIndex.load(tmp_path / "idx")
    assert isinstance(loaded.sparse.bm25.scores["data"], np.memmap)  # memory-mapped
    assert loaded.manifest["sparse"] == index.manifest["sparse"]
    assert loaded.manifest["fusion"] == {"fusion": "linear", "fusion_weight": DEFAULT_WEIGHT,
                                        "candidates": DEFAULT_CANDIDATES}
    np.testing.assert_array_equal(loaded.sparse.scores(QUERIES), index.sparse.scores(QUERIES))
    config = RetrievalConfig(fusion_changes={"candidates": 8})  # "" = hybrid: the index has a sparse side
    before = Retriever(encoder, index, config).retrieve(QUERIES, 4)
    after = Retriever(encoder, loaded, config).retrieve(QUERIES, 4)
    assert Retriever(encoder, loaded, config).mode == "hybrid"
    assert before.ids == after.ids
    np.testing.assert_allclose(before.scores, after.scores, atol=1e-6)


def test_wordpiece_sparse_side_round_trip(encoder, passages, tmp_path_factory, tmp_path):
    index = make_index(encoder, passages, tmp_path_factory, sparse_tokenizer="wordpiece")
    index.save(tmp_path / "idx")
    loaded = DenseIndex.load(tmp_path / "idx")
    assert loaded.manifest["sparse"]["sparse_tokenizer"] == "wordpiece"
    np.testing.assert_array_equal(loaded.sparse.scores(QUERIES), index.sparse.scores(QUERIES))


def test_missing_or_corrupt_sparse_files_are_refused(index, tmp_path):
    index.save(tmp_path / "idx")
    for name, damage in [("vocab.index.json", "delete"), ("data.csc.index.npy", "truncate"),
                         ("params.index.json", "garble")]:
        copy = tmp_path / f"copy-{name}"
        shutil.copytree(tmp_path / "idx", copy)
        target = copy / "sparse" / name
        if damage == "delete":
            target.unlink()
        elif damage == "truncate":
            target.write_bytes(target.read_bytes()[:40])
        else:
            target.write_text("{not json")
        with pytest.raises(UserError, match="sparse"):
            DenseIndex.load(copy)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    manifest["sparse"]["rows"] += 1
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="does not match"):
        DenseIndex.load(tmp_path / "idx")


def test_hot_swap_is_consistent_on_both_sides(encoder, passages, tmp_path_factory, tmp_path):
    index = make_index(encoder, passages, tmp_path_factory)
    new = {"id": "kilimanjaro", "title": "Kilimanjaro",
           "text": "Kilimanjaro is a dormant volcano in Tanzania, the highest in Africa."}
    index.add(encode_texts(encoder, [new["text"]], [new["title"]], QUIET), [new])
    index.remove(["paris"])
    question = ["Kilimanjaro volcano Tanzania", "capital of France Paris Seine"]
    for loaded in (index, (index.save(tmp_path / "idx"), DenseIndex.load(tmp_path / "idx"))[1]):
        sparse = Retriever(encoder, loaded, RetrievalConfig("sparse")).retrieve(question, 8)
        assert sparse.ids[0][0] == "kilimanjaro"  # the added passage is found by BM25 ...
        assert loaded.sparse.scores(question[:1])[0, -1] > 0
        dense_vecs = encode_texts(encoder, question[:1], config=QUIET)
        assert "kilimanjaro" in loaded.search(dense_vecs, 8).ids[0]  # ... and by the dense side
        for mode in ("dense", "sparse", "hybrid"):  # the removed one by neither
            got = Retriever(encoder, loaded, RetrievalConfig(mode, {"candidates": 8})).retrieve(question, 8)
            assert all("paris" not in ids for ids in got.ids), mode
            assert len(got.ids[1]) == 8 and "kilimanjaro" in got.ids[0]


def test_hybrid_gradient_reaches_the_question_encoder_through_the_dense_score_only(index, encoder):
    retriever = Retriever(encoder, index, RetrievalConfig("hybrid", {"fusion_weight": 5.0, "candidates": 8}))
    encoder.eval()  # no dropout: both passes see the same network
    encoder.zero_grad()
    scores, result = retriever.search(QUERIES, k=4, grad=True)
    assert scores.requires_grad
    scores.sum().backward()
    hybrid = [p.grad.clone() for p in encoder.parameters() if p.grad is not None]
    encoder.zero_grad()
    tok = encoder.tokenize(QUERIES)
    q = encoder(tok["input_ids"], tok["attention_mask"])
    docs = torch.from_numpy(index.vectors(result.rows)).view(len(QUERIES), 4, -1)
    torch.einsum("bd,bkd->bk", q, docs).sum().backward()  # the dense term of the same passages
    dense = [p.grad.clone() for p in encoder.parameters() if p.grad is not None]
    encoder.zero_grad()
    assert len(hybrid) == len(dense) > 0
    for a, b in zip(hybrid, dense, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    sparse_scores, _ = Retriever(encoder, index, RetrievalConfig("sparse")).search(QUERIES, 4, grad=True)
    assert not sparse_scores.requires_grad


def test_evaluation_returns_what_the_retriever_returns(index, encoder, squad_questions):
    questions = read_questions(squad_questions)
    retriever = Retriever(encoder, index, RetrievalConfig(fusion_changes={"candidates": 8}))
    kept: list = []
    evaluate_retrieval(retriever, questions, [1, 3], batch_size=3, progress=False, results=kept)
    direct = retriever.retrieve([q.question for q in questions], 3)
    assert [[p["id"] for p in row] for row in kept] == direct.ids
    np.testing.assert_allclose([[p["score"] for p in row] for row in kept], direct.scores, atol=1e-5)


def test_bad_settings_get_one_clear_error(index, encoder, passages, tmp_path_factory):
    for bad, match in [(dict(fusion_weight=-0.1), "fusion_weight"),
                       (dict(fusion_weight=math.nan), "fusion_weight"),
                       (dict(fusion_weight=math.inf), "fusion_weight"),
                       (dict(candidates=-3), "candidates"), (dict(fusion="max"), "fusion"),
                       (dict(retrieval="bm25"), "retrieval")]:
        with pytest.raises(UserError, match=match):
            updated(RetrievalConfig(), **bad)
    with pytest.raises(UserError, match="smaller than k"):
        Retriever(encoder, index, RetrievalConfig(fusion_changes={"candidates": 2})).retrieve(QUERIES, 3)
    path = tmp_path_factory.mktemp("dense") / "p.arrow"
    write_arrow(iter(passages), path)
    table = open_shards([path])
    dense_only = DenseIndex.build(encode_texts(encoder, list(table["text"]), config=QUIET), table,
                                  encoder.identity())
    assert Retriever(encoder, dense_only).mode == "dense"
    for mode in ("hybrid", "sparse"):
        with pytest.raises(UserError, match="sparse side"):
            Retriever(encoder, dense_only, RetrievalConfig(mode))
    with pytest.raises(UserError, match="bm25_b"):
        SparseConfig(bm25_b=2.0)
    with pytest.raises(UserError, match="sparse_tokenizer"):
        SparseConfig(sparse_tokenizer="chars")


def test_top_k_breaks_ties_by_row():
    scores = np.array([[1.0, 3.0, 3.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0, 5.0]], dtype=np.float32)
    np.testing.assert_array_equal(top_k(scores, 5), [[1, 2, 4, 0, 3], [4, 0, 1, 2, 3]])
    np.testing.assert_array_equal(top_k(scores, 2), [[1, 2], [4, 0]])
