"""Compressed indexes that keep recall: OPQ's rotation and exact re-ranking of IVF-PQ candidates
against the full vectors on disk (retriever.rerank). The oracle is brute force: re-ranking every
candidate is exact search, hot-swapped or not, saved and loaded (memory-mapped too) or not, whole
or in shards; on a clustered corpus re-ranking lifts recall well above IVF-PQ's own; and the
vectors file is read for the candidate rows only."""

from __future__ import annotations

import numpy as np
import pytest

from rag.common.errors import UserError
from retriever.corpus import open_shards, write_arrow
from retriever.index import DenseIndex
from retriever.index_factory import IndexConfig, faiss, ivf_of
from retriever.rerank import VECTORS_FILE, FullVectors
from retriever.shards import build_shards, load_index

pytestmark = pytest.mark.usefixtures("private_tempdir")

DIM, N = 16, 400
IDENTITY = {"name": "random", "fingerprint": "f" * 16, "dim": DIM}
# every cell probed and every row a candidate: re-ranking is then exact search
COVERING = IndexConfig(index_type="ivfpq", ivf_nlist=4, nprobe=4, pq_m=4, opq=True, rerank=N + 50)


def table(path, n: int, prefix: str = "p"):
    write_arrow(iter({"id": f"{prefix}{i}", "title": "", "text": ""} for i in range(n)), path)
    return open_shards([path])


def brute_force(queries: np.ndarray, vectors: np.ndarray, k: int, live: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k (scores, rows) of the ``live`` rows (default all), best first, ties by row."""
    scores = queries @ vectors.T  # (Q, N)
    if live is not None:
        scores[:, np.setdiff1d(np.arange(len(vectors)), live)] = -np.inf
    rows = np.lexsort((np.broadcast_to(np.arange(len(vectors)), scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, rows, 1), rows


def assert_exact(got: tuple[np.ndarray, np.ndarray], expected: tuple[np.ndarray, np.ndarray]):
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    queries = rng.standard_normal((12, DIM)).astype(np.float32)
    return vectors, queries


def test_opq_rerank_covering_the_corpus_is_exact_search(data, tmp_path):
    vectors, queries = data
    index = DenseIndex.build(vectors, table(tmp_path / "p.arrow", N), IDENTITY, COVERING)
    assert isinstance(index.index, faiss.IndexPreTransform) and ivf_of(index.index).nprobe == 4
    for k in (1, 10, N):
        assert_exact(index.search_knn(queries, k), brute_force(queries, vectors, k))
    np.testing.assert_array_equal(index.vectors(np.array([5, 0, 399])), vectors[[5, 0, 399]])


def test_rerank_lifts_recall_on_a_clustered_corpus(tmp_path):
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((20, 32)).astype(np.float32)
    vectors = centres[rng.integers(0, 20, 4000)] + 0.5 * rng.standard_normal((4000, 32))
    queries = centres[rng.integers(0, 20, 50)] + 0.5 * rng.standard_normal((50, 32))
    passages, identity = table(tmp_path / "p.arrow", 4000), {**IDENTITY, "dim": 32}
    truth = brute_force(queries.astype(np.float32), vectors.astype(np.float32), 10)[1]

    def recall(**settings) -> float:
        config = IndexConfig(index_type="ivfpq", ivf_nlist=16, nprobe=4, pq_m=4, pq_nbits=4, **settings)
        rows = DenseIndex.build(vectors, passages, identity, config).search_knn(queries, 10)[1]
        return np.mean([len(set(r) & set(t)) / 10 for r, t in zip(rows, truth, strict=True)])

    plain, reranked = recall(), recall(opq=True, rerank=200)
    assert plain < 0.5 and reranked >= 0.9, (plain, reranked)


@pytest.mark.parametrize("mmap", [False, True])
def test_save_and_load_keep_the_vectors_file(data, tmp_path, mmap):
    vectors, queries = data
    index = DenseIndex.build(vectors, table(tmp_path / "p.arrow", N), IDENTITY, COVERING)
    before = index.search_knn(queries, 10)
    index.save(tmp_path / "idx")
    assert index.manifest["vectors"] == VECTORS_FILE
    np.testing.assert_array_equal(np.load(tmp_path / "idx" / VECTORS_FILE), vectors)
    loaded = DenseIndex.load(tmp_path / "idx", mmap=mmap)
    assert loaded.config == COVERING and isinstance(loaded.full.parts[0], np.memmap)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.search_knn(queries, 10), before, strict=True))
    np.testing.assert_array_equal(loaded.vectors(np.arange(N)), vectors)


def test_hot_swap_keeps_the_vectors_file_and_search_exact(data, tmp_path):
    vectors, queries = data
    extra = np.random.default_rng(2).standard_normal((50, DIM)).astype(np.float32)
    everything = np.concatenate([vectors, extra])  # row N + i is extra[i]
    index = DenseIndex.build(vectors, table(tmp_path / "p.arrow", N), IDENTITY, COVERING)
    index.vectors(np.arange(3))
    index.add(extra, [{"id": f"new{i}", "title": "", "text": ""} for i in range(50)])
    index.remove(["p3", "p7", "new0", "new9"])
    live = np.setdiff1d(np.arange(N + 50), [3, 7, N, N + 9])
    for k in (5, len(live)):
        assert_exact(index.search_knn(queries, k), brute_force(queries, everything, k, live))
    np.testing.assert_array_equal(index.vectors(np.array([N + 1, 2])), everything[[N + 1, 2]])
    index.save(tmp_path / "idx")
    np.testing.assert_array_equal(np.load(tmp_path / "idx" / VECTORS_FILE), everything)
    loaded = DenseIndex.load(tmp_path / "idx", mmap=True)
    assert_exact(loaded.search_knn(queries, 5), brute_force(queries, everything, 5, live))


class CountingRows:
    """A stand-in for the memory-mapped vectors (n, D) that records which rows are read."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape, self.read = array, array.shape, []

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, rows):
        self.read.append(np.asarray(rows).copy())
        return self.array[rows]


def test_only_the_candidates_rows_are_read(data, tmp_path):
    vectors, queries = data
    config = IndexConfig(index_type="ivfpq", ivf_nlist=4, nprobe=2, pq_m=4, rerank=30)
    index = DenseIndex.build(vectors, table(tmp_path / "p.arrow", N), IDENTITY, config)
    counting = CountingRows(index.full.parts[0])
    index.full.parts = [counting]
    index.search_knn(queries, 10)
    _, candidates = index.index.search(queries, 30)  # the PQ top 30 of each question
    read = np.concatenate(counting.read)
    assert len(read) == len(np.unique(read))  # each row once
    np.testing.assert_array_equal(np.sort(read), np.unique(candidates[candidates >= 0]))


def test_shards_rerank_their_candidates(data, tmp_path):
    vectors, queries = data
    passages = table(tmp_path / "p.arrow", N)
    build_shards(vectors, passages, IDENTITY, COVERING, 3, tmp_path / "sharded")
    sharded = load_index(tmp_path / "sharded")
    assert_exact(sharded.search_knn(queries, 10), brute_force(queries, vectors, 10))
    np.testing.assert_array_equal(sharded.vectors(np.array([399, 0])), vectors[[399, 0]])
    opq = IndexConfig(index_type="ivfpq", ivf_nlist=4, nprobe=2, pq_m=4, opq=True)
    build_shards(vectors, passages, IDENTITY, opq, 3, tmp_path / "opq")  # one rotation, one quantizer
    whole = DenseIndex.build(vectors, passages, IDENTITY, opq)
    assert all(np.array_equal(a, b) for a, b in zip(
        load_index(tmp_path / "opq").search_knn(queries, 10), whole.search_knn(queries, 10), strict=True))


def test_a_missing_or_wrong_vectors_file_is_refused(data, tmp_path):
    vectors, _ = data
    DenseIndex.build(vectors, table(tmp_path / "p.arrow", N), IDENTITY, COVERING).save(tmp_path / "idx")
    np.save(tmp_path / "idx" / VECTORS_FILE, vectors[:10])
    with pytest.raises(UserError, match=r"expected \(400, 16\) float32 vectors"):
        DenseIndex.load(tmp_path / "idx")
    (tmp_path / "idx" / VECTORS_FILE).unlink()
    with pytest.raises(UserError, match="missing vectors.npy"):
        DenseIndex.load(tmp_path / "idx")


@pytest.mark.parametrize("settings, flag", [
    ({"index_type": "flat", "opq": True}, "--opq"), ({"index_type": "hnsw", "rerank": 100}, "--rerank"),
    ({"index_type": "ivfpq", "rerank": -1}, "--rerank")])
def test_bad_combinations_name_the_flag(settings, flag):
    with pytest.raises(UserError, match=flag):
        IndexConfig(**settings)


def test_full_vectors_read_across_parts(tmp_path):
    first = np.arange(12, dtype=np.float32).reshape(6, 2)
    full = FullVectors.write(tmp_path / "a.npy", first)
    full.append(-first[:3], tmp_path / "b.npy")
    expected = np.concatenate([first, -first[:3]])
    np.testing.assert_array_equal(full.rows(np.array([8, 0, 6, 5, 8])), expected[[8, 0, 6, 5, 8]])
    full.save(tmp_path / "all.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "all.npy"), expected)
