"""Question-side retrieval: encode questions with the question encoder, search the index.

:class:`Retriever` is what the generator side (``rag/``) and the scripts use: it checks its inputs
(non-empty questions, 0 < k <= corpus size) and that the question encoder belongs with the index.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .encode import EncodeConfig, encode_texts
from .encoder import Encoder
from .errors import UserError
from .index import DenseIndex, SearchResult

log = logging.getLogger(__name__)


def check_questions(questions: list[str], max_chars: int = 10_000) -> list[str]:
    """Refuse empty questions; truncate very long ones (with a warning) rather than fail."""
    out = []
    for i, q in enumerate(questions):
        if not isinstance(q, str) or not q.strip():
            raise UserError(f"question {i} is empty")
        if len(q) > max_chars:
            log.warning("question %d has %d characters; truncated to %d", i, len(q), max_chars)
            q = q[:max_chars]
        out.append(q.strip())
    return out


@dataclass
class Retriever:
    """A question encoder paired with a :class:`DenseIndex` (checked on construction)."""

    question_encoder: Encoder
    index: DenseIndex
    encode_config: EncodeConfig = EncodeConfig(progress=False)

    def __post_init__(self) -> None:
        enc = self.question_encoder
        self.index.check_question_encoder(enc.identity(), enc.paired_context_fingerprint)

    def encode(self, questions: list[str]) -> torch.Tensor:
        """Question embeddings (Q, D) float32 on the CPU, without gradient."""
        qs = check_questions(questions)
        return torch.from_numpy(encode_texts(self.question_encoder, qs, config=self.encode_config))

    def retrieve(self, questions: list[str], k: int) -> SearchResult:
        """Top-k passages per question (ids, scores, passages), best first."""
        self.index.check_k(k)
        return self.index.search(self.encode(questions).numpy(), k)
