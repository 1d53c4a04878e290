"""The index interface: what every index answers, written down as the :class:`Index` protocol.

Two classes implement it: ``retriever.index.DenseIndex`` (one FAISS index in this process) and
``retriever.shards.ShardedIndex`` (this process's shards of a sharded index, searched together
with the other processes of a torch.distributed job). Callers (``Retriever``, ``RagModel``, the
trainers, the server) hold an ``Index`` and never ask which one it is; the one difference they
see is :attr:`Index.collective`: a collective index's ``search_knn``, ``search``, ``vectors``
and ``sparse_candidates`` must be called by every process of the job, as many times.

Rows are the index's row numbers (FAISS ids); -1 is "no hit". The reads that need only an
index's passages, manifest and removed rows (plus its ``search_knn``) are :class:`IndexRows`,
which both classes inherit.

Glossary: Q questions, k results per question, C candidates, D dimension.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from rag.common.errors import UserError

if TYPE_CHECKING:
    from datasets import Dataset

    from .index_factory import IndexConfig
    from .sparse import SparseIndex

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    """Top-k passages for Q questions: ``scores`` (Q, k) float32, ``rows`` (Q, k) int64 FAISS ids,
    ``ids`` passage ids, ``passages`` dicts with id, title, text, score; best first."""

    scores: np.ndarray
    rows: np.ndarray
    ids: list[list[str]]
    passages: list[list[dict]]


@runtime_checkable
class Index(Protocol):
    """An index of passages and their vectors, searched by inner product (module doc)."""

    manifest: dict  # dim, count, rows, encoder, question_encoders, index_config, sparse, fusion
    passages: Dataset  # every row's id, title, text (memory-mapped Arrow)
    removed: np.ndarray  # (n,) int64 rows removed by hot-swapping
    config: IndexConfig
    sparse: SparseIndex | None  # the BM25 side, None when the index has none
    collective: bool  # search, vectors and sparse_candidates are called by every process
    mmap: bool  # read-only: add, remove and save raise UserError
    path: Path | None  # the directory it was loaded from

    def __len__(self) -> int:
        """Live passages (rows less removed ones)."""

    def check_k(self, k: int) -> None:
        """Raise :class:`UserError` unless 0 < k <= len(self)."""

    def check_question_encoder(self, identity: dict, paired_fingerprint: str | None = None,
                               where: str = "index", pair: bool = False) -> None:
        """The pairing rule (``IndexRows.check_question_encoder``): raise UserError for an encoder that
        may not search this index."""

    def search_knn(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top k by inner product of query vectors (Q, D): ``(scores (Q, k) float32, rows (Q, k)
        int64)``, best first, equal scores by row."""

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """:meth:`search_knn` with the passages."""

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors (n, D) float32 of ``rows`` (n,): approximate for IVF-PQ, unless it keeps
        the full vectors to re-rank with (``IndexConfig.rerank``)."""

    def sparse_candidates(self, questions: list[str], width: int,
                          dense_rows: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The BM25 top ``width`` rows of each question, joined with ``dense_rows`` (Q, W) when
        given: ``(rows (Q, C), their BM25 scores (Q, C), each question's best BM25 score (Q,))``;
        rows are padded with -1, whose scores are unspecified (callers mask them)."""

    def fetch(self, rows: np.ndarray) -> list[dict | None]:
        """Passages (id, title, text) of ``rows`` in order; None for rows < 0."""

    def result(self, rows: np.ndarray, scores: np.ndarray) -> SearchResult:
        """The :class:`SearchResult` of ``rows`` (Q, k) and their ``scores`` (Q, k)."""

    def row_of(self, passage_id: str) -> int | None:
        """The row of a live passage id, or None."""

    def add(self, vectors: np.ndarray, rows: list[dict]) -> None:
        """Append passages and their vectors (n, D) without a rebuild (hot-swapping)."""

    def remove(self, passage_ids: list[str]) -> None:
        """Remove passages by id (hot-swapping)."""

    def save(self, out_dir: str | os.PathLike, overwrite: bool = False) -> None:
        """Write the index directory atomically."""


class IndexRows:
    """The :class:`Index` reads that need only ``passages``, ``manifest``, ``removed`` and
    ``search_knn``: one implementation for every index."""

    manifest: dict
    passages: Dataset
    removed: np.ndarray
    _row_of: dict[str, int] | None = None  # passage id -> row, built on first use

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def check_k(self, k: int) -> None:
        if k <= 0:
            raise UserError(f"k must be a positive number of passages, got {k}")
        if k > len(self):
            raise UserError(f"k={k} is larger than the index ({len(self)} passages)")

    def row_of(self, passage_id: str) -> int | None:
        """Row number (FAISS id) of a live passage id, or None."""
        if self._row_of is None:  # skip removed rows: an id removed and then re-added stays live
            removed = set(self.removed.tolist())
            self._row_of = {pid: i for i, pid in enumerate(self.passages["id"]) if i not in removed}
        return self._row_of.get(passage_id)

    def fetch(self, rows: np.ndarray) -> list[dict | None]:
        """Passages (id, title, text) for FAISS ids, in order; ids < 0 (no result) give None."""
        valid = [int(r) for r in rows if r >= 0]
        table = self.passages[valid] if valid else {"id": [], "title": [], "text": []}
        got = iter(dict(id=i, title=t, text=x) for i, t, x in
                   zip(table["id"], table["title"], table["text"], strict=True))
        return [next(got) if r >= 0 else None for r in rows]

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """``search_knn`` plus the passages: ids, titles, texts and scores, best first."""
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
