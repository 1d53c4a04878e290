"""DenseIndex against brute force, save/load, the encoder check, hot-swapping and broken directories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import retriever.index_files as files_mod
from rag.common.errors import UserError
from retriever.corpus import open_shards, write_arrow
from retriever.index import DenseIndex
from retriever.index_factory import IndexConfig

pytestmark = pytest.mark.usefixtures("private_tempdir")

DIM = 32
IDENTITY = {"name": "random", "fingerprint": "f" * 16, "dim": DIM}


def unit_vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_table(path: Path, n: int, prefix: str = "p"):
    """Arrow-backed passages ``{prefix}{i}`` with texts ``"text {i}"``."""
    write_arrow(iter({"id": f"{prefix}{i}", "title": f"T{i}", "text": f"text {i}"} for i in range(n)),
                path)
    return open_shards([path])


def brute_force(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ vectors.T  # (Q, N)
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, axis=1), rows


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return unit_vectors(2000, seed=0)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return make_table(tmp_path_factory.mktemp("table") / "p.arrow", 2000)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((40, DIM)).astype(np.float32)


def test_flat_equals_brute_force(vectors, table, queries):
    # unnormalised queries on purpose: inner product, not cosine
    index = DenseIndex.build(vectors, table, IDENTITY, IndexConfig(index_type="flat"))
    scores, rows = index.search_knn(queries, 10)
    exp_scores, exp_rows = brute_force(queries, vectors, 10)
    np.testing.assert_array_equal(rows, exp_rows)
    np.testing.assert_allclose(scores, exp_scores, rtol=1e-5, atol=1e-5)
    assert scores.dtype == np.float32 and rows.dtype == np.int64

    result = index.search(queries[:3], 10)
    assert result.ids == [[f"p{r}" for r in row] for row in exp_rows[:3]]
    first = result.passages[0][0]
    assert first == {"id": f"p{exp_rows[0, 0]}", "title": f"T{exp_rows[0, 0]}",
                     "text": f"text {exp_rows[0, 0]}", "score": pytest.approx(float(exp_scores[0, 0]))}


def test_hnsw_recall_against_brute_force(vectors, table, queries):
    index = DenseIndex.build(vectors, table, IDENTITY, IndexConfig(index_type="hnsw"))
    _, rows = index.search_knn(queries, 10)
    _, exp_rows = brute_force(queries, vectors, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exp_rows, strict=True)])
    assert recall >= 0.95


def test_ivfpq_returns_valid_rows(vectors, table, queries):
    index = DenseIndex.build(vectors, table, IDENTITY, IndexConfig(index_type="ivfpq"))
    assert index.index.is_trained and index.index.ntotal == len(vectors)
    scores, rows = index.search_knn(queries, 10)
    assert rows.shape == (len(queries), 10)
    assert ((rows >= 0) & (rows < len(vectors))).all()
    assert all(len(set(r)) == 10 for r in rows)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    # each stored vector finds itself among its top 10 (PQ is lossy, but not that lossy)
    _, self_rows = index.search_knn(vectors[:100], 10)
    assert np.mean([i in self_rows[i] for i in range(100)]) >= 0.9


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivfpq"])
def test_save_load_round_trip(vectors, table, queries, tmp_path, index_type):
    index = DenseIndex.build(vectors, table, IDENTITY, IndexConfig(index_type=index_type, nprobe=8))
    before = index.search(queries, 5)
    index.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [
        "index.faiss", "manifest.json", "passages", "ragqa.json"]
    loaded = DenseIndex.load(tmp_path / "idx")
    after = loaded.search(queries, 5)
    np.testing.assert_array_equal(after.rows, before.rows)
    np.testing.assert_array_equal(after.scores, before.scores)
    assert after.passages == before.passages
    assert loaded.config == index.config
    assert loaded.manifest["encoder"] == IDENTITY and loaded.manifest["count"] == len(vectors)
    assert [Path(f["filename"]).parent for f in loaded.passages.cache_files] == [
        tmp_path / "idx" / "passages"]


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivfpq"])
def test_memory_mapped_load_searches_alike_and_is_read_only(vectors, table, queries, tmp_path,
                                                            index_type):
    index = DenseIndex.build(vectors, table, IDENTITY, IndexConfig(index_type=index_type, nprobe=8))
    index.remove(["p3"])  # a hot-swapped index maps too
    index.save(tmp_path / "idx")
    plain, mapped = DenseIndex.load(tmp_path / "idx"), DenseIndex.load(tmp_path / "idx", mmap=True)
    want, got = plain.search(queries, 5), mapped.search(queries, 5)
    np.testing.assert_array_equal(got.rows, want.rows)
    np.testing.assert_array_equal(got.scores, want.scores)
    assert "p3" not in {pid for ids in got.ids for pid in ids}
    with pytest.raises(UserError, match="memory-mapped"):
        mapped.remove(["p4"])
    with pytest.raises(UserError, match="memory-mapped"):
        mapped.add(vectors[:1], [{"id": "new", "title": "", "text": "x"}])


def test_build_from_a_selected_view(vectors, table, tmp_path):
    view = table.select([5, 3, 9])
    index = DenseIndex.build(vectors[[5, 3, 9]], view, IDENTITY)
    assert list(index.passages["id"]) == ["p5", "p3", "p9"]
    assert index.search(vectors[[3]], 1).ids == [["p3"]]
    index.save(tmp_path / "idx")
    assert list(DenseIndex.load(tmp_path / "idx").passages["id"]) == ["p5", "p3", "p9"]


# ------------------------------------------------------- encoder identity
@pytest.fixture
def small_index(vectors, table) -> DenseIndex:
    return DenseIndex.build(vectors, table, IDENTITY)


def test_question_encoder_of_another_dimension(small_index):
    with pytest.raises(UserError, match="dim 16"):
        small_index.check_question_encoder({"name": "q", "fingerprint": "f" * 16, "dim": 16})


def test_question_encoder_of_another_identity(small_index):
    other = {"name": "q", "fingerprint": "0" * 16, "dim": DIM}
    with pytest.raises(UserError, match="fingerprint") as info:
        small_index.check_question_encoder(other)
    assert "0" * 16 in str(info.value) and "f" * 16 in str(info.value)
    with pytest.raises(UserError, match="fingerprint"):
        small_index.check_question_encoder(other, paired_fingerprint="1" * 16)
    small_index.check_question_encoder(other, paired_fingerprint="f" * 16)  # trained against it
    small_index.check_question_encoder(dict(IDENTITY))  # the context encoder itself


# ---------------------------------------------------------------- hot-swap
HOT_N = 1000


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivfpq"])
def test_hot_swap_add_and_remove(tmp_path, index_type):
    x = unit_vectors(HOT_N, seed=2)
    index = DenseIndex.build(x, make_table(tmp_path / "p.arrow", HOT_N), IDENTITY,
                             IndexConfig(index_type=index_type))
    removed_rows = np.random.default_rng(3).choice(HOT_N, size=50, replace=False)
    removed_ids = {f"p{r}" for r in removed_rows}
    index.remove(sorted(removed_ids))
    new = unit_vectors(5, seed=4)
    new_rows = [{"id": f"new{i}", "title": "N", "text": f"fresh {i}"} for i in range(5)]
    index.add(new, new_rows)

    def check(ix: DenseIndex) -> None:
        assert len(ix) == HOT_N - 50 + 5
        queries = np.concatenate([x[removed_rows], unit_vectors(30, seed=5)])
        result = ix.search(queries, 10)
        returned = {pid for ids in result.ids for pid in ids}
        assert not returned & removed_ids
        assert not set(result.rows.ravel().tolist()) & set(removed_rows.tolist())
        assert all(ix.row_of(pid) is None for pid in removed_ids)
        if index_type == "flat":
            keep = np.setdiff1d(np.arange(HOT_N), removed_rows)
            all_vecs = np.concatenate([x[keep], new])
            all_ids = [f"p{r}" for r in keep] + [r["id"] for r in new_rows]
            exp_scores, exp_rows = brute_force(queries, all_vecs, 10)
            assert result.ids == [[all_ids[j] for j in row] for row in exp_rows]
            np.testing.assert_allclose(result.scores, exp_scores, rtol=1e-5, atol=1e-5)
        found = ix.search(new, 10)
        for i in range(5):
            assert f"new{i}" in found.ids[i]
            hit = found.passages[i][found.ids[i].index(f"new{i}")]
            assert hit["text"] == f"fresh {i}" and hit["title"] == "N"
            assert ix.row_of(f"new{i}") == HOT_N + i
        if index_type != "ivfpq":
            assert [ids[0] for ids in found.ids] == [f"new{i}" for i in range(5)]

    check(index)
    index.save(tmp_path / "idx")
    check(index)  # still usable after save (passages now read from the saved directory)
    loaded = DenseIndex.load(tmp_path / "idx")
    check(loaded)
    loaded.save(tmp_path / "idx", overwrite=True)  # re-save in place keeps everything
    check(DenseIndex.load(tmp_path / "idx"))


def test_removed_then_re_added_id_is_live(tmp_path):
    x = unit_vectors(50, seed=6)
    index = DenseIndex.build(x, make_table(tmp_path / "p.arrow", 50), IDENTITY)
    index.remove(["p7"])
    updated = unit_vectors(1, seed=7)
    index.add(updated, [{"id": "p7", "title": "T7", "text": "updated text"}])
    assert index.row_of("p7") == 50
    assert index.search(updated, 1).passages[0][0]["text"] == "updated text"
    with pytest.raises(UserError, match="already in the index"):
        index.add(updated, [{"id": "p7", "title": "", "text": "again"}])
    index.remove(["p7"])
    assert index.row_of("p7") is None and len(index) == 49


def test_remove_unknown_id_removes_nothing(small_index):
    with pytest.raises(UserError, match="'nope'"):
        small_index.remove(["p1", "nope"])
    assert len(small_index) == 2000 and small_index.row_of("p1") == 1


def test_add_existing_id(small_index):
    with pytest.raises(UserError, match="'p3'"):
        small_index.add(unit_vectors(1, seed=8), [{"id": "p3", "title": "", "text": "x"}])


# ------------------------------------------------------------ bad inputs
def test_k_out_of_range(small_index, queries):
    for k in (0, -1, 2001):
        with pytest.raises(UserError, match="k"):
            small_index.search_knn(queries, k)
        with pytest.raises(UserError, match="k"):
            small_index.search(queries, k)
    assert small_index.search_knn(queries[:1], 2000)[1].shape == (1, 2000)


def test_query_dimension_mismatch(small_index):
    with pytest.raises(UserError, match="dimension"):
        small_index.search_knn(np.zeros((1, 16), np.float32), 1)


@pytest.fixture
def saved_dir(tmp_path, vectors, table) -> Path:
    DenseIndex.build(vectors[:100], table.select(range(100)), IDENTITY).save(tmp_path / "idx")
    return tmp_path / "idx"


@pytest.mark.parametrize("missing", ["index.faiss", "manifest.json", "passages/00000.arrow"])
def test_incomplete_directory(saved_dir, missing):
    (saved_dir / missing).unlink()
    with pytest.raises(UserError, match="incomplete index directory") as info:
        DenseIndex.load(saved_dir)
    assert Path(missing).name in str(info.value)


def test_foreign_or_broken_directories(saved_dir, tmp_path):
    with pytest.raises(UserError, match="no such index directory"):
        DenseIndex.load(tmp_path / "nope")
    manifest = saved_dir / "manifest.json"
    good = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**good, "count": 99}))
    with pytest.raises(UserError, match="does not match"):
        DenseIndex.load(saved_dir)
    manifest.write_text(json.dumps({**good, "format": "other"}))
    with pytest.raises(UserError, match="not a ragqa index"):
        DenseIndex.load(saved_dir)
    manifest.write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        DenseIndex.load(saved_dir)


def test_save_refuses_to_overwrite(small_index, saved_dir):
    with pytest.raises(UserError, match="already exists"):
        small_index.save(saved_dir)


def failing_write(*args):
    raise RuntimeError("disk full")


def test_failing_save_leaves_nothing_behind(small_index, tmp_path, monkeypatch):
    monkeypatch.setattr(files_mod.faiss, "write_index", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        small_index.save(tmp_path / "idx")
    assert list(tmp_path.iterdir()) == []


def test_failing_overwrite_keeps_the_old_index(small_index, saved_dir, queries, monkeypatch):
    before = DenseIndex.load(saved_dir).search(queries, 3)
    monkeypatch.setattr(files_mod.faiss, "write_index", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        small_index.save(saved_dir, overwrite=True)
    assert sorted(p.name for p in saved_dir.parent.iterdir()) == ["idx"]
    after = DenseIndex.load(saved_dir).search(queries, 3)
    assert after.ids == before.ids
