"""The index interface (retriever.index_protocol): DenseIndex and ShardedIndex both implement
``Index``, each member by a method of its own class or of the shared ``IndexRows`` (none borrowed
from the other class), and the one difference callers see, ``collective``, is declared on both.
The sparse side answers the same through the protocol for either class (the sharded one
collectively, here in one process holding every shard)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from rag.common.errors import UserError
from retriever.corpus import open_shards, write_arrow
from retriever.fusion import FusionConfig
from retriever.index import DenseIndex
from retriever.index_protocol import Index, IndexRows
from retriever.shards import ShardedIndex, load_index, split_index
from retriever.sparse import SparseConfig

IDENTITY = {"name": "random", "fingerprint": "f" * 16, "dim": 8}
QUESTIONS = ["Paris France capital", "planet moons", "river Africa", "zzz no such words"]
# attributes first, then methods: what callers of an index use (module doc of index_protocol)
MEMBERS = {"manifest", "passages", "removed", "config", "sparse", "collective", "mmap", "path",
           "__len__", "check_k", "check_question_encoder", "search_knn", "search", "vectors",
           "sparse_candidates", "fetch", "result", "row_of", "add", "remove", "save"}


def protocol_methods() -> set[str]:
    return {name for name, value in vars(Index).items() if inspect.isfunction(value)
            and (not name.startswith("_") or name == "__len__")}


def protocol_members() -> set[str]:
    """The members ``Index`` declares: its annotated attributes and its methods."""
    return set(Index.__annotations__) | protocol_methods()


@pytest.fixture(scope="module")
def indexes(passages, tmp_path_factory) -> tuple[DenseIndex, ShardedIndex]:
    """A flat index of the fixture passages (random vectors, BM25 side) and its 3 shards."""
    tmp = tmp_path_factory.mktemp("protocol")
    write_arrow(iter(passages), tmp / "p.arrow")
    table = open_shards([tmp / "p.arrow"])
    vectors = np.random.default_rng(0).standard_normal((len(table), 8)).astype(np.float32)
    whole = DenseIndex.build(vectors, table, IDENTITY)
    whole.add_sparse(SparseConfig(), FusionConfig())
    split_index(whole, tmp / "sharded", 3)
    return whole, load_index(tmp / "sharded")


def test_the_protocol_names_what_callers_use():
    assert protocol_members() == MEMBERS


@pytest.mark.parametrize("which", [0, 1], ids=["dense", "sharded"])
def test_both_indexes_implement_every_member_themselves(indexes, which):
    index = indexes[which]
    cls = type(index)
    assert isinstance(index, Index) and isinstance(index, IndexRows)
    assert all(hasattr(index, name) for name in Index.__annotations__)
    for name in protocol_methods():
        owner = next(c for c in cls.__mro__ if name in vars(c))
        assert owner in (cls, IndexRows), (name, owner)
        # defined in its owner's body, not borrowed from another class
        assert vars(owner)[name].__qualname__ == f"{owner.__name__}.{name}", name


def test_collective_is_declared_on_both(indexes):
    whole, sharded = indexes
    assert whole.collective is False and sharded.collective is True
    assert DenseIndex.collective is False and ShardedIndex.collective is True


@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "hybrid"])
def test_sparse_candidates_are_the_same_through_either_index(indexes, dense):
    whole, sharded = indexes
    dense_rows = np.array([[0, 3, 1], [5, 1, 2], [7, 6, 4], [2, 0, 6]]) if dense else None
    (rows, scores, best), (rows2, scores2, best2) = [
        index.sparse_candidates(QUESTIONS, 4, dense_rows) for index in (whole, sharded)]
    assert np.array_equal(rows, rows2) and np.array_equal(best, best2)
    assert np.array_equal(scores[rows >= 0], scores2[rows >= 0])  # padding's scores: unspecified


def test_a_sharded_index_refuses_hot_swapping_and_saving(indexes, tmp_path):
    _, sharded = indexes
    assert sharded.mmap and sharded.path is not None  # what ragqa serve --persist checks
    for call in (lambda: sharded.add(np.zeros((1, 8), np.float32), [{"id": "x", "title": "",
                                                                      "text": "x"}]),
                 lambda: sharded.remove(["p0"]), lambda: sharded.save(tmp_path / "out")):
        with pytest.raises(UserError, match="read-only"):
            call()
