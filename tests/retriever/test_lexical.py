"""The question tower's lexical head: BM25 weights against bm25s, the least-squares fit, the bag of
distinct content tokens, save/load, the build guard, pseudo-questions and a training run."""

from __future__ import annotations

import bm25s
import numpy as np
import pytest
import torch

from rag.common.errors import UserError
from rag.common.options import updated
from rag.common.questions import Question
from retriever.batch_encode import EncodeConfig, encode_texts
from retriever.build import build_index
from retriever.corpus import open_shards, write_arrow
from retriever.encoder import Encoder
from retriever.examples import pseudo_questions
from retriever.index import DenseIndex
from retriever.lexical import LexicalHead, bm25_weights, content_tokens, fit_head
from retriever.train import TrainConfig, train_dpr

QUIET = EncodeConfig(progress=False)


@pytest.fixture(scope="module")
def encoder(tiny_encoder_dir):
    return Encoder.from_pretrained(str(tiny_encoder_dir), pooling="mean", normalize=True)


@pytest.fixture(scope="module")
def index(encoder, passages, tmp_path_factory):
    path = tmp_path_factory.mktemp("lexical") / "p.arrow"
    write_arrow(iter(passages), path)
    table = open_shards([path])
    vectors = encode_texts(encoder, list(table["text"]), list(table["title"]), QUIET)
    return DenseIndex.build(vectors, table, encoder.identity())


def content_ids(tokenizer, text: str) -> list[int]:
    keep = content_tokens(tokenizer)
    return [i for i in tokenizer(text, add_special_tokens=False)["input_ids"] if keep[i]]


def test_bm25_weights_match_bm25s(encoder, passages):
    tok = encoder.tokenizer
    titles, texts = [p["title"] for p in passages], [p["text"] for p in passages]
    weights = bm25_weights(tok, titles, texts).to_dense()  # (R, V)
    docs = [[str(i) for i in content_ids(tok, f"{t} {x}")] for t, x in zip(titles, texts, strict=True)]
    oracle = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    oracle.index(docs, show_progress=False)
    for question in ("where is the eiffel tower", "amazon river forest", "tower tower paris"):
        ids = sorted(set(content_ids(tok, question)))
        ours = weights[:, ids].sum(1).numpy()
        # Lucene leaves out Robertson's (k1 + 1) numerator factor, a constant
        np.testing.assert_allclose(ours, 2.5 * oracle.get_scores([str(i) for i in ids]),
                                   rtol=1e-5, atol=1e-6)


def test_head_sums_distinct_content_tokens(encoder):
    tok = encoder.tokenizer
    head = LexicalHead(tok, 8)
    torch.nn.init.normal_(head.weight)
    texts = ["paris tower , tower ?", "the amazon"]
    batch = tok(texts, padding=True, return_tensors="pt")
    out = head(batch["input_ids"], batch["attention_mask"])
    for row, text in zip(out, texts, strict=True):
        ids = sorted(set(content_ids(tok, text)))
        assert ids and all(i not in tok.all_special_ids for i in ids)
        torch.testing.assert_close(row, head.weight[ids].sum(0))


def test_fit_recovers_bm25_when_the_passage_space_spans_it(encoder, passages):
    # R passages <= D dimensions with independent vectors: least squares reproduces BM25 exactly
    tok = encoder.tokenizer
    titles, texts = [p["title"] for p in passages], [p["text"] for p in passages]
    bm25 = bm25_weights(tok, titles, texts)
    vectors = torch.randn(len(passages), len(passages) + 4, generator=torch.Generator().manual_seed(0))
    head = LexicalHead(tok, vectors.shape[1])
    fit_head(head, bm25, vectors, weight=0.5, ridge=1e-9)
    batch = tok(["where is the eiffel tower", "river forest"], padding=True, return_tensors="pt")
    scores = head(batch["input_ids"], batch["attention_mask"]) @ vectors.T  # (2, R)
    for row, question in zip(scores, ["where is the eiffel tower", "river forest"], strict=True):
        ids = sorted(set(content_ids(tok, question)))
        torch.testing.assert_close(row, 0.5 * bm25.to_dense()[:, ids].sum(1), rtol=1e-3, atol=1e-3)


def test_head_round_trip_and_identity(tiny_encoder_dir, tmp_path):
    plain = Encoder.from_pretrained(str(tiny_encoder_dir), pooling="mean", normalize=True)
    enc = Encoder.from_pretrained(str(tiny_encoder_dir), pooling="mean", normalize=True)
    before = enc.fingerprint
    head = enc.add_lexical_head()
    zero_head = enc.fingerprint
    assert zero_head != before  # a head, even all zeros, is a new identity ...
    torch.nn.init.normal_(head.weight, std=0.1)
    enc.refresh_fingerprint()
    assert enc.fingerprint not in (before, zero_head)  # ... and its weights are part of it
    batch = enc.tokenize(["where is the eiffel tower"])
    with torch.no_grad():
        out = enc(batch["input_ids"], batch["attention_mask"])
        base = plain(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(out - base, head(batch["input_ids"], batch["attention_mask"]).detach())
    enc.save_pretrained(tmp_path / "q")
    loaded = Encoder.from_pretrained(str(tmp_path / "q"))
    assert loaded.config.lexical_head and loaded.fingerprint == enc.fingerprint
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch["input_ids"], batch["attention_mask"]), out)
    (tmp_path / "q" / "lexical_head.safetensors").unlink()
    with pytest.raises(UserError, match="lexical_head.safetensors is missing"):
        Encoder.from_pretrained(str(tmp_path / "q"))


def test_build_index_refuses_a_lexical_encoder(tiny_encoder_dir, corpus_tsv, tmp_path):
    enc = Encoder.from_pretrained(str(tiny_encoder_dir), pooling="mean")
    enc.add_lexical_head()
    with pytest.raises(UserError, match="question side only"):
        build_index(corpus_tsv, enc, tmp_path / "idx")
    assert not (tmp_path / "idx").exists()


def test_pseudo_questions_are_windows_of_their_passage(index):
    questions, rows = pseudo_questions(index, 3, seed=0)
    assert len(questions) == 3 * len(index) and rows == sorted(rows)
    for q, row in zip(questions, rows, strict=True):
        words = index.passages[row]["text"].split()
        got = q.question.split()
        assert 1 <= len(got) <= 16 and q.answers == ()
        it = iter(words)  # the kept words appear in the passage, in order
        assert all(any(w == x for x in it) for w in got)


def test_train_with_lexical_head(encoder, index, questions, tiny_encoder_dir):
    train = [Question(q, tuple(a), id=gold, positive_ids=(gold,)) for q, a, gold in questions]
    q_enc = Encoder.from_pretrained(str(tiny_encoder_dir), pooling="mean", normalize=True)
    config = updated(TrainConfig(), epochs=2, batch_size=4, lr=1e-3, lexical_head=True,
                     lexical_lr=1e-2, negatives="corpus", pseudo_queries=1, warmup_ratio=0.0)
    logs = train_dpr(q_enc, encoder, index, train, config, evaluate=lambda model: {"ok": True})
    assert [e["epoch"] for e in logs] == [0, 1, 2] and logs[0]["loss"] is None
    assert q_enc.config.lexical_head and q_enc.lexical.weight.abs().sum() > 0
    with pytest.raises(UserError, match="--lexical_head needs the frozen context encoder"):
        TrainConfig(lexical_head=True, train_context_encoder=True)  # refused before any work
