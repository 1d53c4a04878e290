"""FAISS index types: settings checked up front, the index each type makes, IVF-PQ's training."""

from __future__ import annotations

import numpy as np
import pytest

from rag.common.errors import UserError
from retriever.index_factory import (
    IndexConfig,
    _factory,
    _training_sample,
    faiss,
    ivf_of,
    trained_index,
)

DIM = 16


def unit_vectors(n: int) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((n, DIM))
    return x / np.linalg.norm(x, axis=1, keepdims=True)  # float64: converted for FAISS


@pytest.mark.parametrize("bad", [-1, 2.5, True])
def test_train_sample_is_checked(bad):
    with pytest.raises(UserError, match="--train_sample"):
        IndexConfig(index_type="ivfpq", train_sample=bad)


@pytest.mark.parametrize("field, value", [("index_type", "lsh"), ("nprobe", 0), ("pq_nbits", 17),
                                          ("rerank", -5), ("opq", True), ("rerank", 10)])
def test_settings_are_checked(field, value):
    with pytest.raises(UserError, match=field):
        IndexConfig(**{field: value})


def test_each_type_makes_its_index():
    assert isinstance(_factory(DIM, 100, IndexConfig()), faiss.IndexIDMap2)
    hnsw = _factory(DIM, 100, IndexConfig(index_type="hnsw", hnsw_ef_construction=77))
    assert isinstance(hnsw, faiss.IndexHNSWFlat) and hnsw.hnsw.efConstruction == 77
    ivfpq = _factory(DIM, 390, IndexConfig(index_type="ivfpq"))
    assert isinstance(ivfpq, faiss.IndexIVFPQ)
    assert ivfpq.nlist == 10 and ivfpq.pq.M == DIM // 8  # >= 39 points a cell; D/8 codes
    assert ivfpq.pq.nbits == 3  # lowered for a corpus this small: 2^3 codes <= 390 / 39
    with pytest.raises(UserError, match="does not divide"):
        _factory(DIM, 390, IndexConfig(index_type="ivfpq", pq_m=3))


def test_ivfpq_trains_on_a_float32_sample_in_row_order():
    vectors = unit_vectors(2000)
    config = IndexConfig(index_type="ivfpq", ivf_nlist=4, pq_m=4, pq_nbits=4, train_sample=700)
    index = _factory(DIM, len(vectors), config)
    sample = _training_sample(vectors, index, config)
    assert sample.shape == (700, DIM) and sample.dtype == np.float32 and sample.flags.c_contiguous
    rows = [int(np.flatnonzero(np.isclose(vectors, s).all(1))[0]) for s in sample]
    assert rows == sorted(set(rows))
    trained = trained_index(vectors, config)
    assert trained.is_trained and trained.ntotal == 0
    assert not _factory(DIM, len(vectors), config).is_trained


def test_opq_rotates_before_the_ivfpq():
    config = IndexConfig(index_type="ivfpq", ivf_nlist=4, pq_m=4, pq_nbits=4, opq=True)
    index = _factory(DIM, 2000, config)
    assert isinstance(index, faiss.IndexPreTransform) and isinstance(ivf_of(index), faiss.IndexIVFPQ)
    assert ivf_of(index).pq.M == 4 and ivf_of(index).pq.nbits == 4
    assert _training_sample(unit_vectors(2000), index, config).shape == (2000, DIM)
    trained = trained_index(unit_vectors(2000), config)
    assert trained.is_trained and trained.ntotal == 0 and ivf_of(trained).nlist == 4
    rotation = faiss.downcast_VectorTransform(trained.chain.at(0))
    matrix = faiss.vector_to_array(rotation.A).reshape(DIM, DIM)
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(DIM), atol=1e-4)  # orthogonal
