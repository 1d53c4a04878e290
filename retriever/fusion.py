"""Fusing dense and sparse scores: which passages a hybrid search returns, and with what score.

The candidates of a question are the union of the dense top-k' and the sparse top-k'. Each is
scored exactly by both sides (the dense score from the stored vectors, the BM25 score from the
sparse side), and the fused score is

    linear:  s = s_dense + w * s_sparse / (the question's best BM25 score over the corpus)
    rrf:     s = 1 / (60 + rank_dense) + 1 / (60 + rank_sparse)        (Cormack et al. 2009)

with ranks among the candidates. Dividing by the best BM25 score puts the sparse term in [0, w]
whatever the question's length, so one w suits short and long questions. The linear score keeps
the gradient of the dense term (the question encoder trains through it in RAG); RRF only ranks.

w, k' and the fusion are index settings (:class:`FusionConfig`, recorded in the manifest);
:class:`RetrievalConfig` is how a search runs: dense, sparse or hybrid, and which of the index's
fusion settings it changes (``fusion_changes``, a dict of FusionConfig fields; the others stay
the index's).

Glossary: B questions, C candidates per question.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from rag.common.errors import UserError
from rag.common.options import NON_NEGATIVE, POSITIVE, Changes, check_fields, option, updated

Retrieval = Literal["dense", "sparse", "hybrid"]
Fusion = Literal["linear", "rrf"]
RRF_K = 60  # Cormack et al.'s constant
# tuned on squad-open dev with all-MiniLM-L6-v2 and the "words" sparse tokenizer (docs/benchmarks.md)
DEFAULT_WEIGHT = 0.5
DEFAULT_CANDIDATES = 100
# how a model directory's rag_config.json writes a fusion setting a search leaves to the index
# (RetrievalConfig.saved): the format of every version so far
_LEFT_TO_INDEX = {"fusion": "", "fusion_weight": None, "candidates": 0}


@dataclass(frozen=True)
class FusionConfig:
    """How a hybrid index combines its dense and BM25 results (its defaults, in the manifest)."""

    fusion: Fusion = option(
        "linear", 'hybrid fusion: "linear" (dense + w * BM25 / best BM25) or "rrf" (reciprocal-rank '
        'fusion: ranks only, so RAG cannot train through it)')
    fusion_weight: float = option(DEFAULT_WEIGHT, "w, the weight of the normalised BM25 score",
        within=NON_NEGATIVE)
    candidates: int = option(DEFAULT_CANDIDATES, "k', passages each side proposes before fusion",
        within=POSITIVE)

    def __post_init__(self) -> None:
        check_fields(self)

    def check_k(self, k: int) -> None:
        if self.candidates < k:
            raise UserError(f"--candidates {self.candidates} is smaller than k={k}: each side must "
                            "propose at least k passages")


@dataclass(frozen=True)
class RetrievalConfig:
    """How a run searches an index: dense, sparse or hybrid, with the index's fusion settings (its
    manifest's :class:`FusionConfig`) except those ``fusion_changes`` changes. A model directory
    records it (:meth:`saved`), ``mmap`` aside.

    ``updated(config, fusion_weight=0.3)`` changes one more (``rag.common.options.updated``)."""

    retrieval: Literal["", Retrieval] = option(
        "", '"dense", "sparse" (BM25) or "hybrid"; "" = hybrid when the index has a sparse side (ragqa '
        'index --sparse bm25), else dense')
    fusion_changes: dict[str, Any] = option(
        {}, "the FusionConfig fields this search changes, e.g. {\"fusion_weight\": 0.3}",
        changes=Changes(FusionConfig, over="the index's", help={
            "fusion": "hybrid: how the two sides combine",
            "fusion_weight": "hybrid: w on the normalised BM25 score",
            "candidates": "hybrid: k', passages each side proposes"}))
    mmap: bool = option(
        False, "load the FAISS index memory-mapped and read-only, for a corpus larger than RAM (pages "
        "come from disk as searched); a load setting, never saved with a model")

    def __post_init__(self) -> None:
        check_fields(self)
        self.fusion_config()  # the changes themselves are checked now, before any work

    def saved(self) -> dict:
        """What a model directory records: the search settings, not how the index was loaded; a
        fusion setting left to the index as "", null or 0 (the file format of every version)."""
        return {"retrieval": self.retrieval, **_LEFT_TO_INDEX, **self.fusion_changes}

    @classmethod
    def from_saved(cls, saved: dict) -> RetrievalConfig:
        """The settings :meth:`saved` records. Raises ``UserError`` for a bad value, ``TypeError``
        for an unknown name and ``AttributeError`` for ``saved`` not a dict."""
        return updated(cls(), **{k: v for k, v in saved.items() if not (
            k in _LEFT_TO_INDEX and type(v) is type(_LEFT_TO_INDEX[k]) and v == _LEFT_TO_INDEX[k])})

    def fusion_config(self, saved: dict | None = None) -> FusionConfig:
        """The index's saved settings (or the defaults) with this search's changes."""
        return updated(FusionConfig(**(saved or {})), **self.fusion_changes)


def normalise_sparse(scores: np.ndarray, best: np.ndarray) -> np.ndarray:
    """BM25 scores (B, X) divided by each question's best score over the corpus (B,), in [0, 1]
    (float32); a question with no BM25 evidence (best <= 0) gets 0 everywhere."""
    norm = np.where(best > 0, best, np.inf)[:, None]
    return (scores / norm).astype(np.float32)


def fuse(dense: torch.Tensor, sparse: np.ndarray, best: np.ndarray, rows: np.ndarray,
         config: FusionConfig) -> torch.Tensor:
    """Fused scores (B, C) of the candidates ``rows`` (B, C) (module doc); padding (-1) gets -inf.

    dense (B, C) float tensor (may carry gradient); sparse (B, C) BM25 scores; best (B,) the best
    BM25 score of each question over the corpus.
    """
    valid = rows >= 0
    mask = torch.from_numpy(valid).to(dense.device)
    if config.fusion == "linear":
        term = torch.from_numpy(normalise_sparse(sparse, best)).to(dense.device)
        fused = dense.float() + config.fusion_weight * term  # fp32: the top k is chosen on it
    else:
        fused = torch.from_numpy(_rrf(dense.detach().cpu().numpy(), sparse, rows)).to(dense.device)
    return fused.masked_fill(~mask, -math.inf)


def _rrf(dense: np.ndarray, sparse: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """1 / (60 + rank) summed over both sides; ranks 1-based among the candidates (padding last),
    equal scores ranked by row number (candidates come in increasing row order)."""
    out = np.zeros(dense.shape, dtype=np.float32)
    for scores in (dense, sparse):
        s = np.where(rows >= 0, scores, -np.inf)
        order = np.argsort(-s, axis=1, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(1, s.shape[1] + 1)[None, :].repeat(len(s), 0), 1)
        out += 1.0 / (RRF_K + ranks)
    return out


def union(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per question, the distinct rows of ``first`` and ``second`` in increasing order (so that
    equal fused scores rank by row), padded with -1: (B, C) int64, C the largest union. Negative
    ids (no result) are dropped."""
    rows = []
    for a, b in zip(first, second, strict=True):
        both = np.union1d(a, b)
        rows.append(both[both >= 0])
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out
