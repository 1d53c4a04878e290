"""The dense index: passages and their vectors in FAISS, searched by inner product.

The interface follows DPR's ``DenseIndexer`` (build / search_knn / save / load); the directory it
saves and loads is ``retriever.index_files``'s, the FAISS index types ``retriever.index_factory``'s.
An IVF-PQ index built with ``rerank`` also keeps every row's full vector on disk, memory-mapped,
and re-ranks its candidates exactly against them (``retriever.rerank``).
Passages can be added and removed without rebuilding (the RAG paper's index hot-swapping, Lewis
et al. 2020, Sec. 5): flat and IVF-PQ indexes delete ids natively; HNSW cannot, so removed rows
are filtered at search time with a FAISS ``IDSelector``. bm25s cannot add documents to an index,
so adding passages to an index with a sparse side rebuilds that side over all rows
(docs/benchmarks.md gives the cost); removing masks the rows on both sides.

``DenseIndex`` implements ``retriever.index_protocol.Index``, as ``retriever.shards.ShardedIndex``
does; its row-level reads (fetch, result, row_of, the pairing rule) are ``IndexRows``'.

Glossary: Q questions, N passages, D dimension, k results per question.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
from datasets import Dataset

from rag.common.atomic import remove_with
from rag.common.device import FAISS_GPU_MAX_K, faiss_gpu
from rag.common.errors import UserError

from .batch_encode import to_numpy32
from .corpus import open_shards, write_arrow
from .fusion import FusionConfig, union
from .index_factory import IndexConfig, faiss, ivf_of, trained_index
from .index_files import arrow_files, new_manifest, read_index, write_index
from .index_protocol import Index, IndexRows
from .rerank import VECTORS_FILE, FullVectors, exact_scores
from .sparse import SparseConfig, SparseIndex, top_k

__all__ = ["ADD_CHUNK", "DenseIndex", "best_first", "query_matrix", "sparse_scores"]

ADD_CHUNK = 65_536  # rows converted to float32 and added to FAISS at a time


def best_first(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k of each row of ``(scores, rows)`` (Q, W) ordered by score, highest first, then
    by row, lowest first; missing hits (row -1) last. The one order of every search result."""
    key = np.where(rows >= 0, rows, np.iinfo(np.int64).max)
    order = np.lexsort((key, -scores.astype(np.float64)), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


def query_matrix(queries, dim: int) -> np.ndarray:
    """Query vectors as FAISS takes them (:func:`to_numpy32`), refused unless (Q, ``dim``)."""
    queries = to_numpy32(queries)
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise UserError(f"query vectors of shape {queries.shape} do not match the index "
                        f"dimension {dim}")
    return queries


def sparse_scores(index: Index, questions: list[str], sparse: SparseIndex | None = None
                  ) -> np.ndarray:
    """BM25 scores (Q, N) of every row of ``index`` by its sparse side (or ``sparse``, one built
    over the same rows); rows removed by hot-swapping get -inf."""
    scores = (sparse or index.sparse).scores(questions)
    if len(index.removed):
        scores[:, index.removed] = -np.inf
    return scores


class DenseIndex(IndexRows):
    """Passages, their vectors in FAISS, and a manifest naming the encoder that made them: an
    ``Index`` (``retriever.index_protocol``) searched by this process alone."""

    collective = False

    def __init__(self, index: faiss.Index, passages: Dataset, manifest: dict,
                 removed: np.ndarray | None = None, shard_files: list[Path] | None = None,
                 sparse: SparseIndex | None = None, full: FullVectors | None = None):
        self.index = index
        self.full = full  # every row's exact vector, memory-mapped (IVF-PQ with rerank), or None
        self.sparse = sparse
        self.passages = passages
        self.manifest = manifest
        self.removed = removed if removed is not None else np.zeros(0, dtype=np.int64)
        self._shard_files = shard_files or []  # Arrow files backing ``passages``
        self._pending: list[Path] = []  # shards added since load (in a private temp dir)
        self._gpu_index = None
        self.mmap = False  # loaded memory-mapped (load(mmap=True)): read-only
        self.path: Path | None = None  # the directory it was loaded from
        self.config = IndexConfig(**manifest["index_config"])
        if self.config.index_type == "ivfpq":
            ivf_of(index).nprobe = self.config.nprobe

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, vectors: np.ndarray, passages: Dataset, encoder_identity: dict,
              config: IndexConfig | None = None, trained: faiss.Index | None = None
              ) -> DenseIndex:
        """Index ``vectors`` (N, D) whose row i is passage ``passages[i]``.

        ``vectors`` may be a memory-mapped array (``np.load(path, mmap_mode="r")``): it is read in
        chunks of ``ADD_CHUNK`` rows, converted to float32 one chunk at a time, so the vectors are
        held in memory only inside FAISS. IVF-PQ trains on a sample (``config.train_sample``;
        default settings: ``IndexConfig()``); with ``config.rerank`` the vectors are also copied,
        as float32, to a temporary file that ``save`` puts in the index directory."""
        config = config or IndexConfig()
        n, dim = vectors.shape
        if n != len(passages):
            raise ValueError(f"{n} vectors for {len(passages)} passages")
        if dim != encoder_identity["dim"]:
            raise ValueError(f"vectors have dim {dim}, encoder says {encoder_identity['dim']}")
        index = faiss.clone_index(trained) if trained is not None else trained_index(vectors, config)
        # Flat storage (flat and HNSW) is one growing buffer, reallocated as chunks are added, old
        # and new copies held at once (a 10M x 384 build, added in chunks, ran out of 24 GB).
        # Float32 rows in order (a memory-mapped encoding) are therefore added in one call, which
        # FAISS copies once from the pages; anything else is converted a chunk at a time.
        step = n if vectors.dtype == np.float32 and vectors.flags.c_contiguous else ADD_CHUNK
        for start in range(0, n, max(step, 1)):
            chunk = to_numpy32(vectors[start : start + step])
            if config.index_type == "hnsw":
                index.add(chunk)  # HNSW ids are insertion order, i.e. the row number
            else:
                index.add_with_ids(chunk, np.arange(start, start + len(chunk), dtype=np.int64))
        full, full_dir = None, None
        if config.rerank:
            full_dir = Path(tempfile.mkdtemp(prefix="ragqa-vectors-"))
            full = FullVectors.write(full_dir / VECTORS_FILE, vectors)
        passages, files, temp = arrow_files(passages)
        built = cls(index, passages, new_manifest(encoder_identity, n, config), shard_files=files,
                    full=full)
        for made in (temp, full_dir):
            if made is not None:
                remove_with(built, made)
        return built

    # ----------------------------------------------------------------- search
    def _searcher(self, k: int) -> faiss.Index:
        """The FAISS index to search for ``k`` results per query: a clone of a flat index on this
        process's GPU (``rag.common.device.faiss_gpu``; fp16 vectors with ``gpu_fp16``) when
        faiss-gpu and a GPU are there, else the index itself. Also the index itself for k past
        FAISS's GPU limit (``FAISS_GPU_MAX_K``), and for a memory-mapped index, whose vectors
        would otherwise all be copied into GPU memory."""
        if (self.config.index_type != "flat" or not self.config.use_gpu or self.mmap
                or k > FAISS_GPU_MAX_K):
            return self.index
        if self._gpu_index is None:
            gpu = faiss_gpu(faiss)
            if gpu is None:
                return self.index
            resources, device = gpu
            options = faiss.GpuClonerOptions()
            options.useFloat16 = self.config.gpu_fp16
            self._gpu_index = faiss.index_cpu_to_gpu(resources, device, self.index, options)
        return self._gpu_index

    def search_knn(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: ``(scores (Q, k) float32, rows (Q, k) int64)``, best first,
        equal scores in increasing row order.

        For flat and IVF-PQ indexes ties are settled at the cut too: of the passages tied at the
        k-th score, the lowest rows are kept, so the result is a function of the scores alone (as
        FAISS's is not) and a search split over shards (``retriever.shards``) merges to exactly
        this one. HNSW keeps the passages its graph search found. An index with the full vectors
        (IVF-PQ with ``rerank``) returns the top k of its top max(rerank, k) IVF-PQ candidates by
        exact inner product (:meth:`_reranked`).
        """
        self.check_k(k)
        queries = query_matrix(queries, self.manifest["dim"])
        if self.full is not None:
            return self._reranked(queries, k)
        if self.config.index_type == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.config.hnsw_ef_search, k)
            batch = selector = None  # locals keep the SWIG selectors alive during the search
            if len(self.removed):
                batch = faiss.IDSelectorBatch(self.removed)
                selector = faiss.IDSelectorNot(batch)
                params.sel = selector
            scores, rows = self.index.search(queries, k, params=params)
            del batch, selector
            return best_first(scores, rows, k)
        size = int(self.index.ntotal)
        width = min(size, 2 * k)
        while True:  # widen while a tie at the k-th score may run past the list's end
            scores, rows = self._searcher(width).search(queries, width)
            open_ties = (scores[:, -1] == scores[:, k - 1]) & (rows[:, -1] >= 0)
            if width >= size or not open_ties.any():
                return best_first(scores, rows, k)
            width = min(size, 2 * width)

    def _reranked(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The IVF-PQ top max(rerank, k) candidates of ``queries`` (Q, D), scored exactly against
        the full vectors (only those rows are read) and cut to the best k, as search_knn orders
        them: ``(scores (Q, k) float32, rows (Q, k) int64)``. Which candidates tie at the PQ cut
        is FAISS's choice; the order and cut among the candidates are by exact score, then row."""
        width = min(int(self.index.ntotal), max(self.config.rerank, k))
        _, rows = self.index.search(queries, width)  # (Q, C) by PQ score; -1 past the probed rows
        return best_first(exact_scores(queries, rows, self.full), rows, k)

    def sparse_candidates(self, questions: list[str], width: int,
                          dense_rows: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The BM25 top ``width`` rows of each question, joined with ``dense_rows`` (Q, W) when
        given (``fusion.union``): ``(rows (Q, C), their BM25 scores (Q, C), each question's best
        BM25 score (Q,))``."""
        scores = sparse_scores(self, questions)
        rows = top_k(scores, width)
        cand = rows if dense_rows is None else union(dense_rows, rows)
        return cand, np.take_along_axis(scores, np.where(cand >= 0, cand, 0), 1), scores.max(axis=1)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors (n, D) float32 of FAISS ids ``rows``: exact, except for IVF-PQ without
        ``rerank``, whose vectors are decoded from their PQ codes (approximate); with ``rerank``
        they are the full vectors, read from the memory-mapped vectors file."""
        rows = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
        if self.full is not None:
            return self.full.rows(rows)
        if self.config.index_type == "ivfpq" and not ivf_of(self.index).direct_map.type:
            # a hash table, not an array: an array refuses remove_ids afterwards
            ivf_of(self.index).set_direct_map_type(faiss.DirectMap.Hashtable)
        if not len(rows):
            return np.zeros((0, self.manifest["dim"]), dtype=np.float32)
        return self.index.reconstruct_batch(rows)

    # -------------------------------------------------------------- hot-swap
    def _check_writable(self) -> None:
        if self.mmap:
            raise UserError("this index was loaded memory-mapped, which is read-only: load it "
                            "without mmap to add or remove passages")

    def add(self, vectors: np.ndarray, rows: list[dict]) -> None:
        """Append passages (dicts with id, title, text) and their vectors (n, D) without rebuild."""
        self._check_writable()
        if len(rows) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors for {len(rows)} passages")
        if np.ndim(vectors) != 2 or np.shape(vectors)[1] != self.manifest["dim"]:
            raise UserError(f"vectors of shape {np.shape(vectors)} do not match the index "
                            f"dimension {self.manifest['dim']}")
        seen: set[str] = set()
        for r in rows:
            if self.row_of(r["id"]) is not None or r["id"] in seen:
                raise UserError(f"passage id {r['id']!r} is already in the index")
            seen.add(r["id"])
        start = int(self.manifest["rows"])
        tmp_dir = Path(tempfile.mkdtemp(prefix="ragqa-add-"))
        remove_with(self, tmp_dir)
        shard = tmp_dir / f"{len(self._shard_files) + len(self._pending):05d}.arrow"
        write_arrow(iter(rows), shard)
        self._pending.append(shard)
        self.passages = open_shards(self._shard_files + self._pending)
        new_rows = np.arange(start, start + len(rows), dtype=np.int64)
        vectors = to_numpy32(vectors)
        if self.full is not None:  # row start + i of the vectors file is vectors[i]
            self.full.append(vectors, tmp_dir / VECTORS_FILE)
        if self.config.index_type == "hnsw":
            self.index.add(vectors)
        else:
            self.index.add_with_ids(vectors, new_rows)
        self.manifest["rows"] = start + len(rows)
        self.manifest["count"] = int(self.manifest["count"]) + len(rows)
        self._row_of, self._gpu_index = None, None
        if self.sparse is not None:  # bm25s cannot add documents: rebuild over every row
            self.add_sparse(self.sparse.config, FusionConfig(**self.manifest["fusion"]),
                            self.sparse.tokenize.tokenizer)

    def add_sparse(self, config: SparseConfig | None = None, fusion: FusionConfig | None = None,
                   tokenizer=None) -> None:
        """Give the index a sparse side over all its rows (``tokenizer``: the context encoder's, for
        the word-piece sparse tokenizer) and the hybrid settings ``fusion``; replaces any before."""
        self.sparse = SparseIndex.build(self.passages["title"], self.passages["text"],
                                        config or SparseConfig(), tokenizer)
        self.manifest["sparse"] = self.sparse.entry()
        self.manifest["fusion"] = asdict(fusion or FusionConfig())

    def remove(self, passage_ids: list[str]) -> None:
        """Remove passages by id; unknown ids raise :class:`UserError` and nothing is removed."""
        self._check_writable()
        rows = []
        for pid in passage_ids:
            row = self.row_of(pid)
            if row is None:
                raise UserError(f"passage id {pid!r} is not in the index")
            rows.append(row)
        rows_arr = np.unique(np.asarray(rows, dtype=np.int64))
        if self.config.index_type == "ivfpq" and ivf_of(self.index).direct_map.type:
            self.index.remove_ids(faiss.IDSelectorArray(rows_arr))  # as a hash table direct map needs
        elif self.config.index_type != "hnsw":
            self.index.remove_ids(faiss.IDSelectorBatch(rows_arr))
        self.removed = np.union1d(self.removed, rows_arr).astype(np.int64)
        self.manifest["count"] = int(self.manifest["count"]) - len(rows_arr)
        self._row_of, self._gpu_index = None, None

    # ------------------------------------------------------------ save / load
    def save(self, out_dir: str | os.PathLike, overwrite: bool = False) -> None:
        """Write the index directory atomically (``retriever.index_files``)."""
        out_dir = Path(out_dir)
        if out_dir.exists() and not overwrite:
            raise UserError(f"{out_dir}: already exists (use overwrite to replace it)")
        names = write_index(out_dir, self.index, self._shard_files + self._pending, self.manifest,
                            self.removed, self.sparse, self.full)
        self.manifest["passage_shards"] = names
        self._shard_files = [out_dir / name for name in names]
        self._pending = []
        self.passages = open_shards(self._shard_files)
        if self.full is not None:  # the saved file, whole, in place of the parts
            self.manifest["vectors"] = VECTORS_FILE
            self.full = FullVectors.open(out_dir / VECTORS_FILE, int(self.manifest["rows"]),
                                         int(self.manifest["dim"]))

    @classmethod
    def load(cls, index_dir: str | os.PathLike, mmap: bool = False) -> DenseIndex:
        """Open an index directory; an incomplete or foreign directory raises :class:`UserError`.

        With ``mmap`` the FAISS index is memory-mapped read-only instead of read into memory (the
        vectors of flat and HNSW indexes, the inverted lists of IVF-PQ): a corpus larger than RAM
        can be searched, pages coming from disk as needed. Passages, and the full vectors of an
        index that re-ranks, are always memory-mapped. Such an index cannot be hot-swapped."""
        stored = read_index(Path(index_dir), mmap)
        loaded = cls(stored.index, stored.passages, stored.manifest, stored.removed,
                     shard_files=stored.shard_files, sparse=stored.sparse, full=stored.full)
        loaded.mmap = mmap
        loaded.path = Path(index_dir)
        return loaded
