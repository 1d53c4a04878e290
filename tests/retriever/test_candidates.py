"""The passages a DPR batch is scored against (retriever.candidates), against oracles: the frozen
vectors equal the context encoder's own embeddings (read from a flat or HNSW index, re-encoded for
IVF-PQ, whose stored codes are lossy); a lookup returns the rows asked for, in their order; the
sparse term is the weighted BM25 score over the question's best in the whole corpus; the lexical
head is the least-squares fit over exactly the frozen rows; training-time encodings are fresh."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retriever.batch_encode import EncodeConfig, encode_texts
from retriever.candidates import (
    FrozenContexts,
    context_vectors,
    fit_lexical_head,
    frozen_contexts,
    passage_encoding,
    sparse_term,
)
from retriever.corpus import open_shards, write_arrow
from retriever.encoder import Encoder
from retriever.examples import Example
from retriever.index import DenseIndex
from retriever.index_factory import IndexConfig
from retriever.lexical import bm25_weights, fit_head
from retriever.sparse import SparseConfig

QUIET = EncodeConfig(progress=False)


@pytest.fixture(scope="module")
def encoder(tiny_encoder_dir):
    return Encoder.from_pretrained(str(tiny_encoder_dir)).eval()  # no dropout: comparable runs


@pytest.fixture(scope="module")
def table(passages, tmp_path_factory):
    path = tmp_path_factory.mktemp("candidates") / "p.arrow"
    write_arrow(iter(passages), path)
    return open_shards([path])


def make_index(encoder, table, index_type: str = "flat") -> DenseIndex:
    vectors = encode_texts(encoder, list(table["text"]), list(table["title"]), QUIET)
    return DenseIndex.build(vectors, table, encoder.identity(), IndexConfig(index_type=index_type))


@pytest.fixture(scope="module")
def index(encoder, table):
    """A flat index of the fixture passages with a BM25 side."""
    built = make_index(encoder, table)
    built.add_sparse(SparseConfig())
    return built


def embeddings(encoder, passages, ids) -> torch.Tensor:
    """The oracle: the encoder (in eval mode) run on the fixture passages named by ``ids``, in one
    batch."""
    by_id = {p["id"]: p for p in passages}
    with torch.no_grad():
        return encoder.embed([by_id[i]["text"] for i in ids], [by_id[i]["title"] for i in ids])


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivfpq"])
def test_context_vectors_are_the_encoders_embeddings(encoder, table, passages, index_type):
    index = make_index(encoder, table, index_type)
    ids = ["jupiter", "paris", "apollo"]
    rows = np.array([index.row_of(i) for i in ids])
    got = context_vectors(index, encoder, rows)
    assert got.shape == (3, encoder.dim) and got.dtype == torch.float32
    torch.testing.assert_close(got, embeddings(encoder, passages, ids), atol=1e-5, rtol=1e-5)


def test_lookup_returns_the_rows_asked_for_in_their_order(encoder, index):
    rows = np.array([6, 1, 3, 0])
    ctx = FrozenContexts(index, encoder, rows)
    asked = [3, 6, 3, 0]
    np.testing.assert_array_equal(ctx(asked).numpy(), index.vectors(np.array(asked)))
    assert ctx.to(torch.device("cpu")) is ctx
    np.testing.assert_array_equal(ctx.rows_t.numpy(), rows)
    with pytest.raises(KeyError):
        ctx([2])  # not among the frozen rows


def test_frozen_rows_are_those_training_meets(tiny_encoder_dir, encoder, table):
    index = make_index(encoder, table)
    ctx_enc = Encoder.from_pretrained(str(tiny_encoder_dir))
    examples = [Example("q1", 5, (2, 7)), Example("q2", 2, (5, 0))]
    met = frozen_contexts(index, ctx_enc, examples, whole_corpus=False)
    np.testing.assert_array_equal(met.rows, [0, 2, 5, 7])
    assert not any(p.requires_grad for p in ctx_enc.parameters())  # frozen
    index.remove(["nile", "apollo"])  # rows 1 and 7: corpus negatives never meet them
    whole = frozen_contexts(index, ctx_enc, examples, whole_corpus=True)
    np.testing.assert_array_equal(whole.rows, [0, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(whole.vectors.numpy(), index.vectors(whole.rows))


def test_sparse_term_is_weighted_bm25_over_the_corpus_best(index, questions):
    asked = [q for q, _, _ in questions[:3]]
    raw = index.sparse.scores(asked)  # (B, R) BM25
    best = raw.max(axis=1)
    assert (best > 0).all()
    gold = [index.row_of(g) for _, _, g in questions[:3]]
    assert list(raw.argmax(axis=1)) == gold  # these questions' words pick their passages out
    every = sparse_term(index, asked, torch.arange(len(index)), 0.3)  # (B, R)
    np.testing.assert_allclose(every.numpy(), 0.3 * raw / best[:, None], rtol=1e-6)
    np.testing.assert_allclose(every[np.arange(3), gold].numpy(), 0.3, rtol=1e-6)
    # without the best row the term is still relative to the corpus's best, not the candidates'
    rows = torch.tensor([r for r in range(len(index)) if r not in gold][::-1])
    some = sparse_term(index, asked, rows, 0.3)  # (B, C)
    torch.testing.assert_close(some, every[:, rows])
    assert (some < 0.3).all()


@pytest.mark.parametrize("rows", [[6, 0, 3], [0, 1, 2, 3, 4, 5, 6, 7]])
def test_lexical_head_is_the_fit_over_the_frozen_rows(tiny_encoder_dir, encoder, index, passages,
                                                      rows):
    ctx = FrozenContexts(index, encoder, np.array(rows))
    q_enc = Encoder.from_pretrained(str(tiny_encoder_dir))
    assert q_enc.lexical is None
    fit_lexical_head(q_enc, ctx, index, 0.5)
    # the oracle: the fit on the fixture passages of those rows, in the same order as the vectors
    chosen = [passages[r] for r in rows]
    head = Encoder.from_pretrained(str(tiny_encoder_dir)).add_lexical_head()  # a blank head
    bm25 = bm25_weights(q_enc.tokenizer, [p["title"] for p in chosen], [p["text"] for p in chosen])
    fit_head(head, bm25, embeddings(encoder, passages, [p["id"] for p in chosen]), 0.5)
    torch.testing.assert_close(q_enc.lexical.weight, head.weight, atol=1e-4, rtol=1e-4)
    assert q_enc.lexical.weight.abs().sum() > 0


def test_passage_encoding_is_fresh_and_goes_through_forward(tiny_encoder_dir, index, passages):
    # the context encoder trains: a copy of the index's, without dropout to compare its outputs
    ctx_enc = Encoder.from_pretrained(str(tiny_encoder_dir)).eval()
    calls = []

    def forward(input_ids, attention_mask):  # stands in for the DDP-wrapped module
        calls.append(input_ids.shape[0])
        return ctx_enc(input_ids, attention_mask)

    lookup = passage_encoding(index, ctx_enc, forward)
    rows = [4, 2]
    got = lookup(rows)  # (C, D)
    assert calls == [2] and got.requires_grad
    np.testing.assert_allclose(got.detach().numpy(), index.vectors(np.array(rows)), atol=1e-5)
    with torch.no_grad():  # a training step moves the encoder: the next lookup sees the new weights
        for p in ctx_enc.parameters():
            p.mul_(1.5)
    moved = lookup(rows)
    torch.testing.assert_close(moved.detach(), embeddings(ctx_enc, passages, ["python", "einstein"]))
    assert not torch.allclose(moved.detach(), got.detach(), atol=1e-3)
