"""Sharded indexes (retriever.shards) in one process, which then holds every shard. The oracle is
the unsharded index: dense, sparse and hybrid searches, scores with gradient and stored vectors
are equal to its, exactly, ties included (every passage twice, its copy in another shard), for
flat and IVF-PQ; ties are cut by row as a brute force over FAISS's own scores says. The layout
is checked on load: shards of other builds, unreadable shards, the process count."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from rag.common.errors import UserError
from retriever.batch_encode import EncodeConfig, encode_texts
from retriever.corpus import open_shards, write_arrow
from retriever.encoder import Encoder
from retriever.fusion import FusionConfig, RetrievalConfig
from retriever.index import DenseIndex
from retriever.index_factory import IndexConfig
from retriever.search import Retriever
from retriever.shards import SHARDS_FILE, ShardedIndex, build_shards, load_index, split_index
from retriever.sparse import SparseConfig, SparseIndex

QUERIES = ["What is the capital of France?", "largest planet moons", "river sea Africa flows",
           "zzz unknown words only", "Amazon Amazon basin"]
IDENTITY = {"name": "synthetic", "fingerprint": "f" * 16, "dim": 16}


def arrow(rows: list[dict], path):
    write_arrow(iter(rows), path)
    return open_shards([path])


@pytest.fixture(scope="module")
def encoder(tiny_encoder_dir):
    return Encoder.from_pretrained(str(tiny_encoder_dir), pooling="mean", normalize=True).eval()


@pytest.fixture(scope="module")
def whole(encoder, passages, tmp_path_factory) -> DenseIndex:
    """Every passage twice (the copy 8 rows later, in another of 3 shards), with BM25."""
    rows = passages + [{**p, "id": p["id"] + "-copy"} for p in passages]
    table = arrow(rows, tmp_path_factory.mktemp("shards") / "p.arrow")
    vectors = encode_texts(encoder, list(table["text"]), list(table["title"]),
                           EncodeConfig(progress=False))
    index = DenseIndex.build(vectors, table, encoder.identity())
    index.add_sparse(SparseConfig(), FusionConfig(), encoder.tokenizer)
    return index


@pytest.fixture(scope="module")
def sharded_dir(whole, tmp_path_factory):
    out = tmp_path_factory.mktemp("split") / "index"
    split_index(whole, out, 3)
    return out


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_sharded_search_equals_unsharded_ties_included(mode, encoder, whole, sharded_dir):
    sharded = load_index(sharded_dir)
    assert isinstance(sharded, ShardedIndex) and sorted(sharded.local) == [0, 1, 2]
    one = Retriever(encoder, whole, RetrievalConfig(retrieval=mode))
    many = Retriever(encoder, sharded, RetrievalConfig(retrieval=mode))
    for k in (1, 3, 7, len(whole)):
        s1, r1 = one.search(QUERIES, k)
        s2, r2 = many.search(QUERIES, k)
        assert torch.equal(s1, s2) and np.array_equal(r1.rows, r2.rows) and r1.ids == r2.ids
        assert [[p["text"] for p in hits] for hits in r1.passages] == \
               [[p["text"] for p in hits] for hits in r2.passages]
    scores = s1.numpy()  # all rows: every score comes twice, the lower row first
    assert (scores[:, 0::2] == scores[:, 1::2]).all() and (r1.rows[:, 0::2] < r1.rows[:, 1::2]).all()


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_scores_with_gradient_equal_unsharded(mode, encoder, whole, sharded_dir):
    grads = []
    for index in (whole, load_index(sharded_dir)):
        encoder.zero_grad()
        scores, result = Retriever(encoder, index, RetrievalConfig(retrieval=mode)).search(
            QUERIES, 5, grad=True)
        scores.sum().backward()
        grads.append((scores.detach(), result.rows,
                      [p.grad.clone() for p in encoder.parameters() if p.grad is not None]))
    (s1, r1, g1), (s2, r2, g2) = grads
    assert torch.equal(s1, s2) and np.array_equal(r1, r2)
    assert g1 and all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


def test_rows_vectors_and_passages_are_the_index_rows(whole, sharded_dir):
    sharded = load_index(sharded_dir)
    assert len(sharded) == len(whole) and sharded.manifest["shards"] == 3
    rows = np.array([15, 0, 7, 8, 5, 4])
    assert np.array_equal(sharded.vectors(rows), whole.vectors(rows))
    assert sharded.fetch(rows) == whole.fetch(rows)
    assert all(sharded.row_of(pid) == whole.row_of(pid) for pid in whole.passages["id"])
    with pytest.raises(UserError, match="read-only"):
        sharded._check_writable()


def tied_vectors(n_distinct: int, copies: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n_distinct`` random unit vectors, each ``copies`` times in random rows, and queries near
    some of them (so the top k cut through groups of equal scores)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n_distinct, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    vectors = np.repeat(base, copies, axis=0)[rng.permutation(n_distinct * copies)]
    queries = base[:40] + 0.05 * rng.standard_normal((40, 16)).astype(np.float32)
    return vectors, queries  # 40 queries: FAISS's BLAS path


def synthetic_passages(n: int, tmp_path):
    return arrow([{"id": f"p{i}", "title": "", "text": f"passage {i}"} for i in range(n)],
                 tmp_path / "synthetic.arrow")


def test_ties_at_the_cut_keep_the_lowest_rows(tmp_path):
    vectors, queries = tied_vectors(60, 50)
    index = DenseIndex.build(vectors, synthetic_passages(len(vectors), tmp_path), IDENTITY)
    scores, rows = index.search_knn(queries, 7)  # 7 of 50 equal scores at the top
    every, order = index.index.search(queries, len(vectors))  # FAISS's own scores of every row
    for b in range(len(queries)):
        brute = np.empty(len(vectors), dtype=np.float32)
        brute[order[b]] = every[b]
        expect = np.lexsort((np.arange(len(vectors)), -brute.astype(np.float64)))[:7]
        assert np.array_equal(rows[b], expect) and np.array_equal(scores[b], brute[expect])
    split_index(index, tmp_path / "split", 4)
    assert all(np.array_equal(a, b) for a, b in zip(
        load_index(tmp_path / "split").search_knn(queries, 7), (scores, rows), strict=True))


def test_ivfpq_built_in_shards_searches_as_unsharded(tmp_path):
    vectors, queries = tied_vectors(400, 10, seed=1)
    passages = synthetic_passages(len(vectors), tmp_path)
    config = IndexConfig(index_type="ivfpq", ivf_nlist=16, pq_m=4, nprobe=4)
    whole = DenseIndex.build(vectors, passages, IDENTITY, config)
    build_shards(vectors, passages, IDENTITY, config, 3, tmp_path / "ivf")
    sharded = load_index(tmp_path / "ivf")
    for k in (1, 10, 64):
        assert all(np.array_equal(a, b) for a, b in zip(
            sharded.search_knn(queries, k), whole.search_knn(queries, k), strict=True))


def test_built_shards_share_bm25_statistics(encoder, whole, tmp_path):
    """A shard's BM25 scores are its rows of the whole corpus's (not of a BM25 over the shard)."""
    build_shards(whole.vectors(np.arange(len(whole))), whole.passages, whole.manifest["encoder"],
                 IndexConfig(), 2, tmp_path / "bm25", whole.sparse, whole.manifest["fusion"])
    half = DenseIndex.load(tmp_path / "bm25" / "shard-00001-of-00002")
    assert np.array_equal(half.sparse.scores(QUERIES), whole.sparse.scores(QUERIES)[:, len(whole) // 2 :])
    alone = SparseIndex.build(half.passages["title"], half.passages["text"])
    assert not np.allclose(alone.scores(QUERIES), half.sparse.scores(QUERIES))


def test_shards_of_another_build_or_unreadable_are_refused(whole, sharded_dir, tmp_path):
    other = tmp_path / "other"
    split_index(whole, other, 3)
    mixed = tmp_path / "mixed"
    shutil.copytree(sharded_dir, mixed)
    shutil.rmtree(mixed / "shard-00001-of-00003")
    shutil.copytree(other / "shard-00001-of-00003", mixed / "shard-00001-of-00003")
    with pytest.raises(UserError, match="shard-00001-of-00003: not shard 1 of the build"):
        load_index(mixed)
    broken = tmp_path / "broken"
    shutil.copytree(sharded_dir, broken)
    (broken / "shard-00002-of-00003" / "index.faiss").write_bytes(b"not faiss")
    with pytest.raises(UserError, match="shard-00002-of-00003"):
        load_index(broken)
    (broken / SHARDS_FILE).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(UserError, match="not a ragqa-sharded-index file"):
        load_index(broken)
    with pytest.raises(UserError, match="a sharded index"):
        DenseIndex.load(sharded_dir)


def test_bad_shard_requests_are_refused(whole, tmp_path):
    with pytest.raises(UserError, match=f"between 1 and the {len(whole)} passages"):
        split_index(whole, tmp_path / "too-many", len(whole) + 1)
    assert not (tmp_path / "too-many").exists()
    vectors, _ = tied_vectors(100, 1)
    ivf = DenseIndex.build(vectors, synthetic_passages(100, tmp_path), IDENTITY,
                           IndexConfig(index_type="ivfpq", ivf_nlist=2, pq_m=4))
    with pytest.raises(UserError, match="sharded when it is built"):
        split_index(ivf, tmp_path / "ivf", 2)
