"""Exact re-ranking of IVF-PQ candidates against the full vectors, memory-mapped from disk.

An IVF-PQ index built with ``IndexConfig.rerank`` N > 0 keeps, beside its compressed codes, the
float32 vector of every row (removed rows included: row i is FAISS id i) in its directory's
``vectors.npy``, which it memory-maps: memory holds the codes, the disk the vectors. A search takes
the top max(N, k) candidates by PQ score, reads those rows only (N * D * 4 bytes a question),
scores them exactly and keeps the best k (``DenseIndex.search_knn``), the re-ranking of Jegou et
al. 2011 ("Searching in one billion vectors: re-rank with source coding") with the source itself
on disk. The result is exact search's whenever the candidates hold the true top k.

Glossary: Q questions, C candidates per question, U distinct candidate rows, n rows, D dimension.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rag.common.errors import UserError

from .batch_encode import to_numpy32

VECTORS_FILE = "vectors.npy"  # in the index directory, named by the manifest's "vectors"
CHUNK = 16_384  # rows copied, or candidate vectors read and scored, at a time (25 MB at D=384)
MISSING = np.finfo(np.float32).min  # the score of "no hit" (row -1), as FAISS gives it


class FullVectors:
    """Every row's float32 vector (n, D) in memory-mapped ``.npy`` parts: the file the index was
    built or loaded with, then one per hot-swap add. Rows are read from disk only when asked for."""

    def __init__(self, parts: list[np.ndarray], files: list[Path]):
        self.parts = parts  # (n_i, D) float32 each, memory-mapped read-only
        self.files = files  # the file of each part
        self.starts = np.cumsum([0] + [len(p) for p in parts])  # first row of each part, then n

    @classmethod
    def open(cls, path: Path, rows: int, dim: int) -> FullVectors:
        """The vectors file ``path``, memory-mapped, refused (:class:`UserError`) unless it holds
        (``rows``, ``dim``) float32."""
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError):
            raise UserError(f"{path}: not a readable array (corrupt or truncated)") from None
        if array.dtype != np.float32 or array.shape != (rows, dim):
            raise UserError(f"{path}: expected ({rows}, {dim}) float32 vectors, got {array.dtype} "
                            f"{array.shape}")
        return cls([array], [path])

    @classmethod
    def write(cls, path: Path, vectors: np.ndarray) -> FullVectors:
        """``vectors`` (n, D) (memory-mapped or not, any float dtype) written to the new file
        ``path`` as float32, ``CHUNK`` rows at a time, and opened."""
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=np.shape(vectors))
        for start in range(0, len(vectors), CHUNK):
            out[start : start + CHUNK] = to_numpy32(vectors[start : start + CHUNK])
        out.flush()
        del out
        return cls.open(path, *np.shape(vectors))

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def dim(self) -> int:
        return self.parts[0].shape[1]

    def append(self, vectors: np.ndarray, path: Path) -> None:
        """Add the vectors (n, D) of new rows, written to the new file ``path``."""
        added = FullVectors.write(path, vectors)
        self.parts, self.files = self.parts + added.parts, self.files + added.files
        self.starts = np.append(self.starts, self.starts[-1] + len(vectors))

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """The vectors (n, D) float32 of ``rows`` (n,), each in [0, len(self)); each part's rows
        are read in increasing order, so a memory-mapped file is read front to back."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        for part, start, stop in zip(self.parts, self.starts[:-1], self.starts[1:], strict=True):
            lo, hi = np.searchsorted(ordered, [start, stop])
            out[order[lo:hi]] = part[ordered[lo:hi] - start]
        return out

    def save(self, path: Path) -> None:
        """Write every row, part after part, to the new file ``path``."""
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(self), self.dim))
        for part, first in zip(self.parts, self.starts[:-1], strict=True):
            for start in range(0, len(part), CHUNK):
                chunk = part[start : start + CHUNK]
                out[first + start : first + start + len(chunk)] = chunk
        out.flush()


def exact_scores(queries: np.ndarray, candidates: np.ndarray, full: FullVectors) -> np.ndarray:
    """Inner products (Q, C) float32 of ``queries`` (Q, D) float32 with the vectors of their
    ``candidates`` (Q, C) rows (-1: none, scored ``MISSING``). Questions are taken in blocks of
    about ``CHUNK`` candidates; each block reads its distinct rows (U, D) once."""
    scores = np.full(candidates.shape, MISSING, dtype=np.float32)  # (Q, C)
    step = max(1, CHUNK // max(1, candidates.shape[1]))
    for start in range(0, len(candidates), step):
        block = candidates[start : start + step]  # (b, C)
        asked, place = np.nonzero(block >= 0)  # (m,) question in the block, candidate slot
        unique, inverse = np.unique(block[asked, place], return_inverse=True)
        vectors = full.rows(unique)[inverse]  # (m, D): each asked row's vector
        scores[start + asked, place] = np.einsum("md,md->m", queries[start + asked], vectors)
    return scores
