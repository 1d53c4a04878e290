"""Question-side retrieval: the one way questions become passages.

:class:`Retriever` holds a question encoder and an index (with its sparse side, when built) and
searches dense, sparse or hybrid (``retriever.fusion``). Everything that retrieves goes through it:
``RagModel`` (with gradient into the question encoder), evaluation, the scripts. It checks its
inputs (non-empty questions, 0 < k <= corpus size) and, once, that the question encoder belongs
with the index (the pairing rule, ``Index.check_question_encoder``: it is the index's
encoder, or was trained against it, ``train=True`` saying it is about to be, or the user pairs it
explicitly, ``pair=True``). Saving the question encoder through it records
the pairing, so no caller touches an encoder's bookkeeping.

Scores, best first: dense q . d with the stored passage vectors; sparse the BM25 score divided by
the question's best; hybrid the fused score. Hybrid and sparse search mask rows removed by
hot-swapping, as FAISS does on the dense side. The index is any ``Index``
(``retriever.index_protocol``); a ``collective`` one (sharded) searches together with the other
processes, so every process calls :meth:`Retriever.search` as many times.

Glossary: B questions, K passages per question, C candidates, D dimension, R index rows.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from rag.common.device import fp32_einsum
from rag.common.errors import UserError

from .batch_encode import EncodeConfig, encode_texts, to_numpy32
from .encoder import Encoder
from .fusion import FusionConfig, RetrievalConfig, fuse, normalise_sparse
from .index_protocol import Index, SearchResult

log = logging.getLogger(__name__)


def check_questions(questions: list[str], max_chars: int = 10_000) -> list[str]:
    """Refuse empty questions; truncate very long ones (with a warning) rather than fail."""
    if isinstance(questions, str):
        raise UserError("expected a list of questions, got one string")
    out = []
    for i, q in enumerate(questions):
        if not isinstance(q, str) or not q.strip():
            raise UserError(f"question {i} is empty")
        if len(q) > max_chars:
            log.warning("question %d has %d characters; truncated to %d", i, len(q), max_chars)
            q = q[:max_chars]
        out.append(q.strip())
    return out


class Retriever:
    """A question encoder and an :class:`Index`, searched as ``config`` says (module doc)."""

    def __init__(self, question_encoder: Encoder | None, index: Index,
                 config: RetrievalConfig | None = None, encode_config: EncodeConfig | None = None,
                 train: bool = False, pair: bool = False):
        config = config or RetrievalConfig()
        self.question_encoder = question_encoder
        self.index = index
        self.config = config
        self.encode_config = encode_config or EncodeConfig(progress=False)
        self.mode = config.retrieval or ("hybrid" if index.sparse is not None else "dense")
        if self.mode != "dense" and index.sparse is None:
            raise UserError(f"--retrieval {self.mode} needs an index with a sparse side "
                            "(ragqa index --add_sparse INDEX adds one)")
        self.fusion: FusionConfig = config.fusion_config(index.manifest.get("fusion"))
        if self.mode != "sparse":
            if question_encoder is None:
                raise UserError(f"{self.mode} retrieval needs a question encoder")
            # an encoder about to be trained against this index is paired with it by that training
            paired = (index.manifest["encoder"]["fingerprint"] if train
                      else question_encoder.paired_context_fingerprint)
            index.check_question_encoder(question_encoder.identity(), paired, pair=pair)

    def check_k(self, k: int) -> None:
        self.index.check_k(k)
        if self.mode == "hybrid":
            self.fusion.check_k(k)

    def save_question_encoder(self, out_dir: str | os.PathLike, **kwargs) -> None:
        """``Encoder.save_pretrained`` recording that the encoder is paired with this index."""
        self.question_encoder.save_pretrained(
            out_dir, paired_context_fingerprint=self.index.manifest["encoder"]["fingerprint"],
            **kwargs)

    # ------------------------------------------------------------------ search
    def encode(self, questions: list[str], grad: bool = False) -> torch.Tensor:
        """Question vectors (B, D) float; with ``grad``, on the encoder's device with gradient."""
        enc = self.question_encoder
        if not grad:
            return torch.from_numpy(encode_texts(enc, questions, config=self.encode_config))
        return enc.embed(questions).float()

    def dense_scores(self, q: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        """q . d (B, C) against the stored vectors of ``rows`` (B, C); padding (-1) gets the first
        column's score (callers mask it)."""
        B, C = rows.shape
        vecs = self.index.vectors(np.where(rows >= 0, rows, rows[:, :1]))  # (B*C, D)
        docs = torch.from_numpy(vecs).view(B, C, -1).to(q.device)
        return fp32_einsum("bd,bcd->bc", q, docs)  # fp32 under autocast (rag.common.device)

    def search(self, questions: list[str], k: int, grad: bool = False
               ) -> tuple[torch.Tensor, SearchResult]:
        """Top-k passages per question: ``(scores (B, K) float tensor, SearchResult)``, best first.

        With ``grad`` the scores carry gradient into the question encoder (dense and hybrid).
        """
        questions = check_questions(questions)
        self.check_k(k)
        q = None
        if self.mode != "sparse":
            q = self.encode(questions, grad)
        if self.mode == "dense":  # FAISS's scores, or with gradient the same from the stored vectors
            found, rows = self.index.search_knn(to_numpy32(q), k)
            scores = self.dense_scores(q, rows) if grad else torch.from_numpy(found)
        elif self.mode == "sparse":
            rows, found, best = self.index.sparse_candidates(questions, k)
            scores = torch.from_numpy(normalise_sparse(found, best))
        else:
            width = min(self.fusion.candidates, len(self.index))
            _, dense_rows = self.index.search_knn(to_numpy32(q), width)
            cand, cand_sparse, best = self.index.sparse_candidates(questions, width, dense_rows)
            fused = fuse(self.dense_scores(q, cand), cand_sparse, best, cand,
                         self.fusion)  # (B, C)
            order = torch.sort(fused.detach(), dim=1, descending=True, stable=True).indices[:, :k]
            scores = fused.gather(1, order)
            rows = np.take_along_axis(cand, order.cpu().numpy(), 1)
        return scores, self.index.result(rows, scores.detach().float().cpu().numpy())

    def retrieve(self, questions: list[str], k: int) -> SearchResult:
        """Top-k passages per question (ids, titles, texts, scores), best first, no gradient."""
        with torch.no_grad():
            return self.search(questions, k)[1]
