"""The index directory: its parts written and read back, views written out, paths kept inside."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rag.common.errors import UserError
from retriever.corpus import open_shards, write_arrow
from retriever.index_factory import IndexConfig, trained_index
from retriever.index_files import FORMAT, arrow_files, new_manifest, read_index, write_index

pytestmark = pytest.mark.usefixtures("private_tempdir")

DIM, N = 8, 20
IDENTITY = {"name": "random", "fingerprint": "e" * 16, "dim": DIM}


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "p.arrow"
    write_arrow(iter({"id": f"p{i}", "title": "", "text": f"text {i}"} for i in range(N)), path)
    return open_shards([path])


@pytest.fixture
def stored(tmp_path, table):
    """An index directory of N flat vectors, row 3 removed; returns (directory, vectors)."""
    vectors = np.random.default_rng(0).standard_normal((N, DIM)).astype(np.float32)
    index = trained_index(vectors, IndexConfig())
    index.add_with_ids(vectors, np.arange(N))
    manifest = new_manifest(IDENTITY, N, IndexConfig())
    files = [f["filename"] for f in table.cache_files]
    names = write_index(tmp_path / "idx", index, files, manifest, np.array([3]), None)
    assert names == ["passages/00000.arrow"]
    return tmp_path / "idx", vectors


def test_parts_read_back(stored):
    directory, vectors = stored
    got = read_index(directory)
    assert got.manifest["format"] == FORMAT and got.manifest["passage_shards"] == ["passages/00000.arrow"]
    assert got.manifest["dim"] == DIM and got.manifest["count"] == got.manifest["rows"] == N
    assert got.passages["id"] == [f"p{i}" for i in range(N)] and got.sparse is None
    assert got.removed.tolist() == [3] and got.shard_files == [directory / "passages/00000.arrow"]
    np.testing.assert_array_equal(got.index.reconstruct_batch(np.arange(N)), vectors)


def test_manifest_may_not_point_outside(stored):
    directory, _ = stored
    manifest = directory / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()),
                                    "passage_shards": ["../elsewhere.arrow"]}))
    with pytest.raises(UserError, match="points outside"):
        read_index(directory)


def test_removed_rows_are_checked(stored):
    directory, _ = stored
    np.save(directory / "removed.npy", np.array([1.5]))
    with pytest.raises(UserError, match="1-D int64"):
        read_index(directory)


def test_views_are_written_out(table):
    same, files, temp = arrow_files(table)
    assert same is table and temp is None and len(files) == 1
    view, files, temp = arrow_files(table.select([5, 2]))
    assert view["id"] == ["p5", "p2"] and temp is not None and files == [temp / "00000.arrow"]
    sliced, _, temp = arrow_files(table.select(range(4)))  # contiguous: a slice of the file
    assert sliced["id"] == ["p0", "p1", "p2", "p3"] and temp is not None
