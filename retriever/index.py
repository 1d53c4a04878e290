"""FAISS inner-product index over passage vectors, stored as one directory with its passages.

Layout of an index directory (written to a temporary directory and renamed into place)::

    manifest.json       encoder identity, dimension, count, index type, metric, passage shards
    index.faiss         the FAISS index (FAISS's own binary format)
    passages/*.arrow    passage table (id, title, text), memory-mapped; FAISS id = row number
    removed.npy         rows removed by hot-swapping (int64), if any
    sparse/             BM25 over the passages (``retriever.sparse``), if built; the manifest
                        then names it ("sparse") and the hybrid settings ("fusion")

The interface follows DPR's ``DenseIndexer`` (build / search_knn / save / load). Passages can be
added and removed without rebuilding (the RAG paper's index hot-swapping, Lewis et al. 2020, Sec. 5):
flat and IVF-PQ indexes delete ids natively; HNSW cannot, so removed rows are filtered at search
time with a FAISS ``IDSelector``. bm25s cannot add documents to an index, so adding passages to
an index with a sparse side rebuilds that side over all rows (docs/benchmarks.md gives the cost);
removing masks the rows on both sides.

Glossary: Q questions, N passages, D dimension, k results per question.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Dataset

from rag.common.atomic import atomic_directory, remove_with
from rag.common.errors import UserError, non_negative, one_of, positive, require

from .corpus import open_shards, write_arrow
from .fusion import FusionConfig
from .sparse import SPARSE_DIR, SparseConfig, SparseIndex

try:
    import faiss
except ImportError:  # the "cpu" or "gpu" extra brings it (pyproject.toml)
    raise UserError("FAISS is not installed: pip install 'ragqa[cpu]', or 'ragqa[gpu]' with CUDA 12"
                    ) from None

log = logging.getLogger(__name__)
INDEX_TYPES = ("flat", "hnsw", "ivfpq")
ADD_CHUNK = 65_536  # rows converted to float32 and added to FAISS at a time
TRAIN_SEED = 0  # of the IVF-PQ training sample: one corpus, one index
FORMAT = "ragqa-index"
VERSION = 1


@dataclass(frozen=True)
class IndexConfig:
    index_type: str = "flat"  # "flat" (exact), "hnsw" (graph, fast, approximate) or "ivfpq" (small)
    hnsw_m: int = 32  # HNSW neighbours per node
    hnsw_ef_construction: int = 200  # HNSW build-time beam width
    hnsw_ef_search: int = 128  # HNSW search-time beam width (recall/speed trade-off)
    ivf_nlist: int = 0  # IVF cells; 0 = about 4*sqrt(N), capped so each cell has >= 39 points
    pq_m: int = 0  # PQ sub-quantisers; 0 = D/8 (must divide D)
    pq_nbits: int = 8  # bits per PQ code (lowered automatically for tiny corpora)
    nprobe: int = 32  # IVF cells visited per query
    train_sample: int = 0  # IVF-PQ training sample size; 0 = auto (64 per IVF cell, >= 256 per PQ code)
    use_gpu: bool = True  # search a flat index on GPU FAISS when faiss-gpu and a GPU are present

    def __post_init__(self) -> None:  # here, not after the corpus is encoded (FAISS aborts on some)
        one_of(self, "index_type", INDEX_TYPES)
        positive(self, "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "nprobe")
        non_negative(self, "ivf_nlist", "pq_m", "train_sample")
        require(isinstance(self.train_sample, int), "train_sample", self.train_sample,
                "must be a whole number")
        require(isinstance(self.pq_nbits, int) and 1 <= self.pq_nbits <= 16, "pq_nbits",
                self.pq_nbits, "must be in 1..16")


@dataclass
class SearchResult:
    """Top-k passages for Q questions: ``scores`` (Q, k) float32, ``rows`` (Q, k) int64 FAISS ids,
    ``ids`` passage ids, ``passages`` dicts with id, title, text, score; best first."""

    scores: np.ndarray
    rows: np.ndarray
    ids: list[list[str]]
    passages: list[list[dict]]


def _factory(dim: int, n: int, config: IndexConfig) -> faiss.Index:
    ip = faiss.METRIC_INNER_PRODUCT
    if config.index_type == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if config.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, ip)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        return index
    if config.index_type == "ivfpq":
        nlist = config.ivf_nlist or int(4 * math.sqrt(n))
        nlist = max(1, min(nlist, n // 39))
        pq_m = config.pq_m or max(1, dim // 8)
        if dim % pq_m:
            raise UserError(f"pq_m={pq_m} does not divide the dimension {dim}")
        nbits = max(1, min(config.pq_nbits, int(math.log2(max(2, n // 39)))))
        return faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, pq_m, nbits, ip)
    raise UserError(f"index type {config.index_type!r} is not one of {INDEX_TYPES}")


def _training_sample(vectors: np.ndarray, index: faiss.IndexIVFPQ, config: IndexConfig
                     ) -> np.ndarray:
    """The IVF-PQ training vectors (S, D) float32: all N rows, or a seeded random sample of them
    gathered in row order (a memory-mapped matrix is then read front to back).

    FAISS's k-means wants at least 39 points per centroid and uses at most 256 (it drops the
    rest), for the IVF cells and for the 2^nbits codes of each PQ sub-quantiser alike: a size
    asked for outside these bounds is moved inside them."""
    n = len(vectors)
    cells, codes = index.nlist, 1 << index.pq.nbits
    size = config.train_sample or max(64 * cells, 256 * codes)
    size = min(n, max(size, 39 * max(cells, codes)), 256 * max(cells, codes))
    if size == n:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(TRAIN_SEED).choice(n, size, replace=False))
    log.info("training IVF-PQ on %d of %d vectors", size, n)
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def trained_index(vectors: np.ndarray, config: IndexConfig) -> faiss.Index:
    """An empty FAISS index for ``vectors`` (N, D), trained if its type needs it (IVF-PQ, on a
    sample); ``DenseIndex.build(trained=)`` copies it, so shards share one coarse quantizer."""
    index = _factory(vectors.shape[1], len(vectors), config)
    if not index.is_trained:
        index.train(_training_sample(vectors, index, config))
    return index


def best_first(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k of each row of ``(scores, rows)`` (Q, W) ordered by score, highest first, then
    by row, lowest first; missing hits (row -1) last. The one order of every search result."""
    key = np.where(rows >= 0, rows, np.iinfo(np.int64).max)
    order = np.lexsort((key, -scores.astype(np.float64)), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


def _gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class DenseIndex:
    """Passages, their vectors in FAISS, and a manifest naming the encoder that made them."""

    def __init__(self, index: faiss.Index, passages: Dataset, manifest: dict,
                 removed: np.ndarray | None = None, shard_files: list[Path] | None = None,
                 sparse: SparseIndex | None = None):
        self.index = index
        self.sparse = sparse
        self.passages = passages
        self.manifest = manifest
        self.removed = removed if removed is not None else np.zeros(0, dtype=np.int64)
        self._shard_files = shard_files or []  # Arrow files backing ``passages``
        self._pending: list[Path] = []  # shards added since load (in a private temp dir)
        self._row_of: dict[str, int] | None = None
        self._gpu_index = None
        self.mmap = False  # loaded memory-mapped (load(mmap=True)): read-only
        self.config = IndexConfig(**manifest["index_config"])
        if self.config.index_type == "ivfpq":
            index.nprobe = self.config.nprobe

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, vectors: np.ndarray, passages: Dataset, encoder_identity: dict,
              config: IndexConfig = IndexConfig(), trained: faiss.Index | None = None
              ) -> DenseIndex:
        """Index ``vectors`` (N, D) whose row i is passage ``passages[i]``.

        ``vectors`` may be a memory-mapped array (``np.load(path, mmap_mode="r")``): it is read in
        chunks of ``ADD_CHUNK`` rows, converted to float32 one chunk at a time, so the vectors are
        held in memory only inside FAISS. IVF-PQ trains on a sample (``config.train_sample``)."""
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
            chunk = np.ascontiguousarray(vectors[start : start + step], dtype=np.float32)
            if config.index_type == "hnsw":
                index.add(chunk)  # HNSW ids are insertion order, i.e. the row number
            else:
                index.add_with_ids(chunk, np.arange(start, start + len(chunk), dtype=np.int64))
        manifest = {
            "format": FORMAT, "version": VERSION, "encoder": encoder_identity,
            "question_encoders": [encoder_identity["fingerprint"]], "dim": dim, "count": n,
            "rows": n, "index_type": config.index_type, "metric": "inner_product",
            "index_config": asdict(config),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        temp = None
        if _is_view(passages):  # a select()/shuffle() view or a slice: write the rows it shows
            temp = Path(tempfile.mkdtemp(prefix="ragqa-passages-"))
            write_arrow(iter(passages), temp / "00000.arrow")
            passages = open_shards([temp / "00000.arrow"])
        built = cls(index, passages, manifest, shard_files=_backing_files(passages))
        if temp is not None:
            remove_with(built, temp)
        return built

    # ----------------------------------------------------------------- search
    def __len__(self) -> int:
        return int(self.manifest["count"])

    def check_k(self, k: int) -> None:
        if k <= 0:
            raise UserError(f"k must be a positive number of passages, got {k}")
        if k > len(self):
            raise UserError(f"k={k} is larger than the index ({len(self)} passages)")

    def _searcher(self) -> faiss.Index:
        if self.config.index_type != "flat" or not self.config.use_gpu or not _gpu_available():
            return self.index
        if self._gpu_index is None:
            self._gpu_index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, self.index)
        return self._gpu_index

    def search_knn(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: ``(scores (Q, k) float32, rows (Q, k) int64)``, best first,
        equal scores in increasing row order.

        For flat and IVF-PQ indexes ties are settled at the cut too: of the passages tied at the
        k-th score, the lowest rows are kept, so the result is a function of the scores alone (as
        FAISS's is not) and a search split over shards (``retriever.shards``) merges to exactly
        this one. HNSW keeps the passages its graph search found.
        """
        self.check_k(k)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.manifest["dim"]:
            raise UserError(f"query vectors of shape {queries.shape} do not match the index "
                            f"dimension {self.manifest['dim']}")
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
        searcher, size = self._searcher(), int(self.index.ntotal)
        width = min(size, 2 * k)
        while True:  # widen while a tie at the k-th score may run past the list's end
            scores, rows = searcher.search(queries, width)
            open_ties = (scores[:, -1] == scores[:, k - 1]) & (rows[:, -1] >= 0)
            if width >= size or not open_ties.any():
                return best_first(scores, rows, k)
            width = min(size, 2 * width)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors (n, D) float32 of FAISS ids ``rows`` (approximate for IVF-PQ)."""
        rows = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
        if self.config.index_type == "ivfpq" and not self.index.direct_map.type:
            self.index.make_direct_map()
        if not len(rows):
            return np.zeros((0, self.manifest["dim"]), dtype=np.float32)
        return self.index.reconstruct_batch(rows)

    def row_of(self, passage_id: str) -> int | None:
        """Row number (FAISS id) of a live passage id, or None."""
        if self._row_of is None:  # skip removed rows: an id removed and then re-added stays live
            removed = set(self.removed.tolist())
            self._row_of = {pid: i for i, pid in enumerate(self.passages["id"]) if i not in removed}
        return self._row_of.get(passage_id)

    def fetch(self, rows: np.ndarray) -> list[dict]:
        """Passages (id, title, text) for FAISS ids, in order; ids < 0 (no result) give None."""
        valid = [int(r) for r in rows if r >= 0]
        table = self.passages[valid] if valid else {"id": [], "title": [], "text": []}
        got = iter(dict(id=i, title=t, text=x) for i, t, x in
                   zip(table["id"], table["title"], table["text"], strict=True))
        return [next(got) if r >= 0 else None for r in rows]

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """:meth:`search_knn` plus the passages: ids, titles, texts and scores, best first."""
        scores, rows = self.search_knn(queries, k)
        return self.result(rows, scores)

    def result(self, rows: np.ndarray, scores: np.ndarray) -> SearchResult:
        """The :class:`SearchResult` of rows (Q, k) and their scores (Q, k); rows < 0 are no hit."""
        k = rows.shape[1]
        flat = self.fetch(rows.reshape(-1))
        passages = []
        for q in range(rows.shape[0]):
            hits = []
            for j in range(k):
                p = flat[q * k + j]
                if p is not None:
                    hits.append({**p, "score": float(scores[q, j])})
            passages.append(hits)
        ids = [[p["id"] for p in hits] for hits in passages]
        return SearchResult(scores=scores, rows=rows, ids=ids, passages=passages)

    def check_question_encoder(self, identity: dict, paired_fingerprint: str | None = None,
                               where: str = "index", pair: bool = False) -> None:
        """The pairing rule: which question encoders may search this index.

        A question encoder of another dimension is always refused. Otherwise it is accepted when
        - it *is* the context encoder that built the index (one tower for both sides), or
        - it was trained against this index, or saved paired with it: its
          ``paired_context_fingerprint`` is the index's encoder fingerprint (ragqa train-retriever and
          ragqa finetune record this when they save it), or
        - the user pairs it explicitly (``pair``: ``--question_encoder X`` given on the command
          line, or ``RagConfig.question_encoder``), as for DPR's question/context twins, which are
          two different encoders trained together; a one-line notice says so.
        Anything else is refused: searching with an unrelated encoder of the same dimension
        returns confident nonsense.
        """
        built = self.manifest["encoder"]
        if identity["dim"] != self.manifest["dim"]:
            raise UserError(
                f"{where} was built with encoder {built['name']!r} (dim {self.manifest['dim']}); "
                f"question encoder {identity['name']!r} has dim {identity['dim']}")
        known = identity["fingerprint"] in self.manifest["question_encoders"]
        if known or paired_fingerprint == built["fingerprint"]:
            return
        if pair:
            log.warning("pairing question encoder %r (fingerprint %s) with %s's context encoder "
                        "%r (fingerprint %s), as asked", identity["name"], identity["fingerprint"],
                        where, built["name"], built["fingerprint"])
            return
        raise UserError(
            f"{where} was built with encoder {built['name']!r} (fingerprint "
            f"{built['fingerprint']}); question encoder {identity['name']!r} (fingerprint "
            f"{identity['fingerprint']}) was neither that encoder nor trained against it (to "
            "pair them, as DPR's question/context twins, pass it as --question_encoder)")

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
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
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
        if self.config.index_type != "hnsw":
            self.index.remove_ids(faiss.IDSelectorBatch(rows_arr))
        self.removed = np.union1d(self.removed, rows_arr).astype(np.int64)
        self.manifest["count"] = int(self.manifest["count"]) - len(rows_arr)
        self._row_of, self._gpu_index = None, None

    # ------------------------------------------------------------ save / load
    def save(self, out_dir: str | os.PathLike, overwrite: bool = False) -> None:
        """Write the index directory atomically (temp dir next to it, then rename)."""
        out_dir = Path(out_dir)
        if out_dir.exists() and not overwrite:
            raise UserError(f"{out_dir}: already exists (use overwrite to replace it)")
        with atomic_directory(out_dir) as tmp:
            (tmp / "passages").mkdir()
            names = []
            for i, src in enumerate(self._shard_files + self._pending):
                name = f"passages/{i:05d}.arrow"
                _link_or_copy(src, tmp / name)
                names.append(name)
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            if self.sparse is not None:
                self.sparse.save(tmp / SPARSE_DIR)
            if len(self.removed):
                np.save(tmp / "removed.npy", self.removed)
            manifest = {**self.manifest, "passage_shards": names}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        self.manifest["passage_shards"] = names
        self._shard_files = [out_dir / name for name in names]
        self._pending = []
        self.passages = open_shards(self._shard_files)

    @classmethod
    def load(cls, index_dir: str | os.PathLike, mmap: bool = False) -> DenseIndex:
        """Open an index directory; an incomplete or foreign directory raises :class:`UserError`.

        With ``mmap`` the FAISS index is memory-mapped read-only instead of read into memory (the
        vectors of flat and HNSW indexes, the inverted lists of IVF-PQ): a corpus larger than RAM
        can be searched, pages coming from disk as needed. Passages are always memory-mapped.
        Such an index cannot be hot-swapped."""
        index_dir = Path(index_dir)
        if not index_dir.is_dir():
            raise UserError(f"{index_dir}: no such index directory")
        manifest_file = index_dir / "manifest.json"
        if (index_dir / "shards.json").is_file():  # retriever.shards.SHARDS_FILE
            raise UserError(f"{index_dir}: a sharded index, which this needs whole (ragqa ask, "
                            "eval-retrieval, benchmark and finetune search sharded indexes)")
        if not manifest_file.is_file():
            raise UserError(f"{index_dir}: incomplete index directory (no manifest.json)")
        try:
            manifest = json.loads(manifest_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{manifest_file}: not valid JSON") from None
        if manifest.get("format") != FORMAT:
            raise UserError(f"{manifest_file}: not a ragqa index manifest")
        shards = manifest.get("passage_shards")
        if not shards or not isinstance(shards, list):
            raise UserError(f"{manifest_file}: lists no passage shards")
        files = [index_dir / "index.faiss"] + [_inside(index_dir, s, manifest_file) for s in shards]
        for f in files:
            if not f.is_file():
                raise UserError(f"{index_dir}: incomplete index directory (missing {f.name})")
        flags = 0
        if mmap:
            flags = faiss.IO_FLAG_READ_ONLY | (faiss.IO_FLAG_MMAP if manifest.get("index_type") ==
                                               "ivfpq" else faiss.IO_FLAG_MMAP_IFC)
        try:
            index = faiss.read_index(str(files[0]), flags)
        except RuntimeError:  # FAISS's message is a C++ trace; the file is what matters
            raise UserError(f"{files[0]}: not a readable FAISS index (corrupt or truncated)") from None
        try:
            if index.d != manifest["dim"] or index.ntotal != manifest[
                    "rows" if manifest["index_type"] == "hnsw" else "count"]:
                raise UserError(f"{index_dir}: index.faiss does not match manifest.json")
            IndexConfig(**manifest["index_config"])
        except (KeyError, TypeError) as err:
            raise UserError(f"{manifest_file}: missing or wrong field ({err})") from None
        removed_file = index_dir / "removed.npy"
        removed = None
        if removed_file.exists():
            try:
                removed = np.load(removed_file, allow_pickle=False)
            except (OSError, ValueError, EOFError):
                raise UserError(f"{removed_file}: not a readable array (corrupt or truncated)") from None
            if removed.ndim != 1 or removed.dtype != np.int64:
                raise UserError(f"{removed_file}: expected a 1-D int64 array, got {removed.dtype} "
                                f"{removed.shape}")
        try:
            passages = open_shards(files[1:])
        except (pa.ArrowException, OSError, ValueError) as err:
            raise UserError(f"{index_dir}: a passage shard is not a readable Arrow file "
                            f"({type(err).__name__})") from None
        sparse = None
        if "sparse" in manifest:
            sparse = SparseIndex.load(index_dir, manifest["sparse"], rows=manifest["rows"])
            try:  # the saved hybrid settings, checked as the flags are
                FusionConfig(**manifest.get("fusion", {}))
            except (TypeError, UserError) as err:
                raise UserError(f"{manifest_file}: bad fusion settings ({err})") from None
        loaded = cls(index, passages, manifest, removed, shard_files=files[1:], sparse=sparse)
        loaded.mmap = mmap
        return loaded


def _inside(index_dir: Path, name, manifest_file: Path) -> Path:
    """``index_dir / name``, refused unless it stays inside ``index_dir``."""
    path = index_dir / str(name)
    if Path(str(name)).is_absolute() or not path.resolve().is_relative_to(index_dir.resolve()):
        raise UserError(f"{manifest_file}: names {name!r}, outside the index directory")
    return path


def _backing_files(passages: Dataset) -> list[Path]:
    files = [Path(f["filename"]) for f in passages.cache_files]
    if not files:
        raise ValueError("passages must be an Arrow-backed table (see retriever.corpus.load_corpus)")
    return files


def _is_view(passages: Dataset) -> bool:
    """Whether ``passages`` shows other rows than its Arrow files hold, in their order (a
    ``select``/``shuffle`` view, or a slice, as a contiguous ``select`` gives)."""
    if passages._indices is not None:
        return True
    return len(passages) != sum(len(Dataset.from_file(str(f))) for f in _backing_files(passages))


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
