"""FAISS index types: their settings (:class:`IndexConfig`), construction and IVF-PQ training.

Three types, all by inner product: "flat" (exact), "hnsw" (a graph: fast, approximate) and
"ivfpq" (inverted lists of product-quantised codes: small, approximate, trained on a sample).
IVF-PQ can rotate the vectors before quantising them (``opq``: OPQ, Ge et al. 2013, an
orthogonal matrix trained so that the sub-vectors quantise with less error; FAISS's
``OPQMatrix`` in an ``IndexPreTransform``), and re-rank its candidates exactly against the full
vectors kept on disk (``rerank``, ``retriever.rerank``). FAISS is imported here, with a one-line
error when it is missing; the other index modules (``retriever.index``, ``retriever.index_files``)
take it from here.

Glossary: N passages, D dimension, S training sample.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from rag.common.errors import UserError, require
from rag.common.options import NON_NEGATIVE, POSITIVE, Range, check_fields, option

from .batch_encode import to_numpy32

try:
    import faiss
except ImportError:  # the "cpu" or "gpu" extra brings it (pyproject.toml)
    raise UserError("FAISS is not installed: pip install 'ragqa[cpu]', or 'ragqa[gpu]' with CUDA 12"
                    ) from None

log = logging.getLogger(__name__)
IndexType = Literal["flat", "hnsw", "ivfpq"]
INDEX_TYPES = get_args(IndexType)
TRAIN_SEED = 0  # of the IVF-PQ training sample: one corpus, one index


@dataclass(frozen=True)
class IndexConfig:
    """Which FAISS index holds the passage vectors, and the settings of each type."""

    index_type: IndexType = option(
        "flat", '"flat" (exact), "hnsw" (graph, fast, approximate) or "ivfpq" (small)')
    hnsw_m: int = option(32, "HNSW neighbours per node", within=POSITIVE)
    hnsw_ef_construction: int = option(200, "HNSW build-time beam width", within=POSITIVE)
    hnsw_ef_search: int = option(128, "HNSW search-time beam width (recall/speed trade-off)", within=POSITIVE)
    ivf_nlist: int = option(0, "IVF cells; 0 = about 4*sqrt(N), capped so each cell has >= 39 points",
        within=NON_NEGATIVE)
    pq_m: int = option(0, "PQ sub-quantisers; 0 = D/8 (must divide D)", within=NON_NEGATIVE)
    pq_nbits: int = option(8, "bits per PQ code (lowered automatically for tiny corpora)",
                           within=Range(1, 16, integer=True))
    nprobe: int = option(32, "IVF cells visited per query", within=POSITIVE)
    train_sample: int = option(
        0, "IVF-PQ training sample size; 0 = auto (64 per IVF cell, >= 256 per PQ code)",
        within=Range(0, integer=True))
    use_gpu: bool = option(
        True, "search a flat index on GPU FAISS when faiss-gpu and a GPU are present (the "
        "process's own GPU under torchrun; not for --mmap or k > 2048: those search on the CPU)")
    gpu_fp16: bool = option(
        False, "the GPU copy of a flat index holds fp16 vectors: half the GPU memory, scores "
        "rounded to about 1e-3")
    opq: bool = option(
        False, "ivfpq only: rotate the vectors by a trained OPQ matrix before the IVF and PQ "
        "(higher recall for the same code size)")
    rerank: int = option(
        0, "ivfpq only: keep the full float32 vectors on disk (vectors.npy, memory-mapped) and "
        "re-rank the top max(RERANK, k) IVF-PQ candidates by their exact inner product; 0 = off",
        within=Range(0, integer=True))

    def __post_init__(self) -> None:  # here, not after the corpus is encoded (FAISS aborts on some)
        check_fields(self)
        if self.index_type != "ivfpq":
            for flag, value in (("opq", self.opq), ("rerank", self.rerank)):
                require(not value, flag, value,
                        f"applies to --index_type ivfpq only, not {self.index_type!r}")


def _factory(dim: int, n: int, config: IndexConfig) -> faiss.Index:
    ip = faiss.METRIC_INNER_PRODUCT
    if config.index_type == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if config.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, ip)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        return index
    # "ivfpq" (IndexConfig checks the type)
    nlist = config.ivf_nlist or int(4 * math.sqrt(n))
    nlist = max(1, min(nlist, n // 39))
    pq_m = config.pq_m or max(1, dim // 8)
    if dim % pq_m:
        raise UserError(f"pq_m={pq_m} does not divide the dimension {dim}")
    nbits = max(1, min(config.pq_nbits, int(math.log2(max(2, n // 39)))))
    ivfpq = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, pq_m, nbits, ip)
    if not config.opq:
        return ivfpq
    opq = faiss.OPQMatrix(dim, pq_m)
    # OPQ trains against a PQ of the codes' own size (its default is 8 bits, too many codes for a
    # small corpus); FAISS reads it only while training, and the wrappers keep it alive till then
    pq = faiss.ProductQuantizer(dim, pq_m, nbits)
    opq.pq, opq.referenced_objects = pq, [pq]
    return faiss.IndexPreTransform(opq, ivfpq)


def ivf_of(index: faiss.Index) -> faiss.IndexIVFPQ:
    """The IVF-PQ part of an "ivfpq" index, with or without its OPQ rotation in front: where its
    nprobe, nlist, PQ and direct map live."""
    return faiss.downcast_index(faiss.extract_index_ivf(index))


def _training_sample(vectors: np.ndarray, index: faiss.Index, config: IndexConfig
                     ) -> np.ndarray:
    """The IVF-PQ training vectors (S, D) float32: all N rows, or a seeded random sample of them
    gathered in row order (a memory-mapped matrix is then read front to back).

    FAISS's k-means wants at least 39 points per centroid and uses at most 256 (it drops the
    rest), for the IVF cells and for the 2^nbits codes of each PQ sub-quantiser alike (OPQ's
    rotation trains on the same sample): a size asked for outside these bounds is moved inside
    them."""
    n, ivf = len(vectors), ivf_of(index)
    cells, codes = ivf.nlist, 1 << ivf.pq.nbits
    size = config.train_sample or max(64 * cells, 256 * codes)
    size = min(n, max(size, 39 * max(cells, codes)), 256 * max(cells, codes))
    if size == n:
        return to_numpy32(vectors)
    rows = np.sort(np.random.default_rng(TRAIN_SEED).choice(n, size, replace=False))
    log.info("training IVF-PQ on %d of %d vectors", size, n)
    return to_numpy32(vectors[rows])


def trained_index(vectors: np.ndarray, config: IndexConfig) -> faiss.Index:
    """An empty FAISS index for ``vectors`` (N, D), trained if its type needs it (IVF-PQ, on a
    sample); ``DenseIndex.build(trained=)`` copies it, so shards share one coarse quantizer."""
    index = _factory(vectors.shape[1], len(vectors), config)
    if not index.is_trained:
        index.train(_training_sample(vectors, index, config))
    return index
