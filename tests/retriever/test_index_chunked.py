"""DenseIndex.build in chunks: from a memory-mapped matrix, in pieces of ADD_CHUNK rows, IVF-PQ
trained on a sample; each against the in-memory, one-piece build or brute force."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

import retriever.index as index_mod
import retriever.index_factory as factory_mod
from retriever.corpus import open_shards, write_arrow
from retriever.index import DenseIndex
from retriever.index_factory import IndexConfig

pytestmark = pytest.mark.usefixtures("private_tempdir")

N, DIM, K = 6000, 32, 10
IDENTITY = {"name": "clustered", "fingerprint": "c" * 16, "dim": DIM}
# small IVF-PQ settings, so that the automatic training sample (64 per cell, >= 256 per code:
# 4096 here) is smaller than N
IVFPQ = IndexConfig(index_type="ivfpq", ivf_nlist=16, pq_m=16, pq_nbits=4, nprobe=4)
CONFIGS = {"flat": IndexConfig(), "hnsw": IndexConfig(index_type="hnsw"), "ivfpq": IVFPQ}


def clustered(n: int, seed: int) -> np.ndarray:
    """Unit vectors (N, D) float32 in clusters of 10 consecutive rows around random centres: a
    query near one has its cluster as exact top 10, which IVF-PQ can find too."""
    rng = np.random.default_rng(seed)
    centres = np.repeat(rng.standard_normal((n // 10, DIM)), 10, axis=0)  # (N, D)
    x = (centres + 0.2 * rng.standard_normal((n, DIM))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(N, seed=0)


@pytest.fixture(scope="module")
def queries(vectors) -> np.ndarray:
    noisy = vectors[7 :: N // 50] + 0.05 * np.random.default_rng(1).standard_normal((50, DIM))
    return noisy.astype(np.float32)


@pytest.fixture(scope="module")
def memmapped(vectors, tmp_path_factory) -> np.ndarray:
    path = tmp_path_factory.mktemp("vectors") / "vectors.npy"
    np.save(path, vectors)
    return np.load(path, mmap_mode="r")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("table") / "p.arrow"
    write_arrow(iter({"id": f"p{i}", "title": "", "text": "x"} for i in range(N)), path)
    return open_shards([path])


@pytest.fixture
def small_chunks(monkeypatch) -> int:
    monkeypatch.setattr(index_mod, "ADD_CHUNK", 1000)
    return 1000


def exact(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :K]  # (Q, k)


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(t)) / K for g, t in zip(got, truth, strict=True)]))


@pytest.mark.parametrize("kind", CONFIGS)
def test_memmap_builds_the_same_index_as_an_array(kind, vectors, memmapped, table, queries,
                                                  small_chunks):
    assert isinstance(memmapped, np.memmap)
    a = DenseIndex.build(vectors, table, IDENTITY, CONFIGS[kind]).search_knn(queries, K)
    b = DenseIndex.build(memmapped, table, IDENTITY, CONFIGS[kind]).search_knn(queries, K)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_chunked_add_equals_one_add(kind, vectors, table, queries, monkeypatch):
    monkeypatch.setattr(index_mod, "ADD_CHUNK", N)
    whole = DenseIndex.build(vectors, table, IDENTITY, CONFIGS[kind]).search_knn(queries, K)
    monkeypatch.setattr(index_mod, "ADD_CHUNK", 700)  # not a divisor of N: a short last chunk
    # float64 rows are converted a chunk at a time (float32 ones go to FAISS in one call)
    chunked = DenseIndex.build(vectors.astype(np.float64), table, IDENTITY,
                               CONFIGS[kind]).search_knn(queries, K)
    np.testing.assert_array_equal(whole[1], chunked[1])
    np.testing.assert_array_equal(whole[0], chunked[0])


@pytest.mark.parametrize("kind,cls", [("flat", faiss.IndexIDMap2), ("hnsw", faiss.IndexHNSWFlat),
                                      ("ivfpq", faiss.IndexIVFPQ)])
def test_faiss_gets_float32_chunks_with_row_ids(kind, cls, vectors, table, small_chunks,
                                                monkeypatch):
    calls = []
    method = "add" if kind == "hnsw" else "add_with_ids"
    original = getattr(cls, method)

    def spy(self, x, *ids):
        calls.append((x.shape, x.dtype, x.flags.c_contiguous, *(i.copy() for i in ids)))
        return original(self, x, *ids)

    monkeypatch.setattr(cls, method, spy)
    index = DenseIndex.build(vectors.astype(np.float64), table, IDENTITY, CONFIGS[kind])
    assert [c[0] for c in calls] == [(small_chunks, DIM)] * (N // small_chunks)
    assert all(c[1] == np.float32 and c[2] for c in calls)
    if kind != "hnsw":
        np.testing.assert_array_equal(np.concatenate([c[3] for c in calls]), np.arange(N))
    if kind != "ivfpq":  # row i is passage i: each vector finds itself
        probe = np.arange(0, N, 997)
        np.testing.assert_array_equal(index.search_knn(vectors[probe], K)[1][:, 0], probe)


def test_ivfpq_trains_on_a_sample_and_keeps_recall(memmapped, vectors, table, queries, monkeypatch):
    samples = []
    original = factory_mod._training_sample

    def spy(*args):
        samples.append(original(*args))
        return samples[-1]

    monkeypatch.setattr(factory_mod, "_training_sample", spy)
    index = DenseIndex.build(memmapped, table, IDENTITY, IVFPQ)
    assert samples[0].shape == (256 * 16, DIM)  # auto: 256 per PQ code (16), fewer than N
    assert samples[0].dtype == np.float32
    # the sample is rows of the input, distinct, taken in row order
    rows = [int(np.flatnonzero((vectors == s).all(1))[0]) for s in samples[0][:200]]
    assert rows == sorted(set(rows))
    truth = exact(queries, vectors)
    sampled = recall(index.search_knn(queries, K)[1], truth)
    full = factory_mod._factory(DIM, N, IVFPQ)  # the same index trained on every vector
    full.train(vectors)
    full.add(vectors)
    full.nprobe = IVFPQ.nprobe
    assert sampled >= 0.95
    assert sampled >= recall(full.search(queries, K)[1], truth) - 0.02

    DenseIndex.build(memmapped, table, IDENTITY, IndexConfig(**{**IVFPQ.__dict__,
                                                                "train_sample": 1000}))
    assert samples[1].shape == (1000, DIM)
    DenseIndex.build(memmapped, table, IDENTITY, IndexConfig(**{**IVFPQ.__dict__,
                                                                "train_sample": 10 * N}))
    assert samples[2].shape == (256 * 16, DIM)  # FAISS would drop more than 256 per centroid
