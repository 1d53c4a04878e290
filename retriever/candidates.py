"""The passages a DPR batch is scored against (``retriever.train``): the frozen context
encoder's vectors of the rows training meets, read from the index or re-encoded
(:class:`FrozenContexts`); or, when the context encoder trains too, the candidates encoded afresh
at every step (:func:`passage_encoding`). Also what is fitted to or added on those vectors: the
lexical head's fit to BM25, and the hybrid's sparse term.

Glossary: C candidate passages, D embedding dimension, R rows (passages), B questions.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .batch_encode import EncodeConfig, encode_texts
from .encoder import Encoder
from .examples import Example, active_rows
from .fusion import normalise_sparse
from .index import sparse_scores
from .index_protocol import Index
from .lexical import bm25_weights, fit_head

log = logging.getLogger(__name__)


def context_vectors(index: Index, context_encoder: Encoder, rows: np.ndarray) -> torch.Tensor:
    """Vectors (len(rows), D) of the given rows: read from a flat/HNSW index, else re-encoded."""
    if index.config.index_type in ("flat", "hnsw"):
        return torch.from_numpy(index.vectors(rows))
    part = index.passages[rows.tolist()]
    return torch.from_numpy(encode_texts(context_encoder, part["text"], part["title"],
                                         EncodeConfig(), desc="encoding passages"))


class FrozenContexts:
    """Vectors of a frozen context encoder for a fixed set of index rows; ``self(rows)`` -> (C, D)."""

    def __init__(self, index: Index, ctx_enc: Encoder, rows: np.ndarray):
        self.rows = rows
        self.rows_t = torch.from_numpy(rows)  # (R,)
        self.slot = {int(r): i for i, r in enumerate(rows)}
        self.vectors = context_vectors(index, ctx_enc, rows)  # (R, D)

    def to(self, device: torch.device) -> FrozenContexts:
        """Move the vectors (and rows) to ``device``, once, where every step reads them all."""
        self.vectors, self.rows_t = self.vectors.to(device), self.rows_t.to(device)
        return self

    def __call__(self, rows: list[int]) -> torch.Tensor:
        return self.vectors[[self.slot[r] for r in rows]]


def fit_lexical_head(q_enc: Encoder, ctx: FrozenContexts, index: Index, weight: float) -> None:
    """Add a lexical head to ``q_enc`` and fit it to BM25 over the passages of ``ctx`` (all of the
    index's live rows; retriever.lexical)."""
    part = index.passages[ctx.rows.tolist()]
    bm25 = bm25_weights(q_enc.tokenizer, part["title"], part["text"])
    head = q_enc.add_lexical_head()
    fit_head(head, bm25, ctx.vectors, weight)
    log.info("lexical head fitted to BM25 over %d passages (weight %g)", len(ctx.rows), weight)


def sparse_term(index: Index, questions: list[str], rows: torch.Tensor, weight: float
                ) -> torch.Tensor:
    """The hybrid's sparse term (B, C) of candidate rows (C,): weight * BM25 / the question's best
    (retriever.fusion)."""
    scores = sparse_scores(index, questions)  # (B, R)
    return weight * torch.from_numpy(normalise_sparse(scores[:, rows.cpu().numpy()],
                                                      scores.max(axis=1)))


def frozen_contexts(index: Index, ctx_enc: Encoder, examples: list[Example],
                    whole_corpus: bool) -> FrozenContexts:
    """The frozen context encoder's vectors of every passage training meets: each example's
    positive and negatives, or, ``whole_corpus`` (corpus negatives), every live passage."""
    if whole_corpus:
        rows = active_rows(index)
    else:
        rows = np.unique([r for ex in examples for r in (ex.positive, *ex.negatives)])
    lookup = FrozenContexts(index, ctx_enc, rows)
    ctx_enc.requires_grad_(False)
    return lookup


def passage_encoding(index: Index, ctx_enc: Encoder, forward):
    """Candidate rows -> vectors (C, D) encoded by the training context encoder, through
    ``forward`` (the prepared, DDP module under torch.distributed)."""
    def lookup(rows):
        part = index.passages[rows]
        return ctx_enc.embed(part["text"], part["title"], forward=forward)
    return lookup
