"""A span head on the generator's encoder: the reader's p(span | x, z) over one passage input.

The encoder reads "title / text // question" (``generator.inputs``), so its states e_i are
question-aware. Two linear maps give start and end scores, and a span (i, j) scores their sum:

    a_i = w_s . e_i + b_s        c_j = w_e . e_j + b_e
    p(i, j | x, z) = exp(a_i + c_j) / sum_{(i', j') allowed} exp(a_i' + c_j')

A span is allowed when both ends are passage-text tokens (not title, separators, question,
special tokens or padding) and it is at most M tokens long, i <= j < i + M (M =
``max_answer_tokens``, 10 as DPR's reader). Normalising over the allowed spans only makes
p(. | x, z) a proper distribution over the answers passage z can give, so RAG-Sequence's
marginal p(y|x) = sum_z p(z|x) sum_{spans of z reading y} p(span|x, z) (Lewis et al. 2020, eq. 1)
stays exact (``rag.span_reader``).

Spans are held as a band: entry ``[n, i, m]`` of an (N, L, M) tensor is span (i, i + m).

Glossary: N rows (question, passage pairs), L input length, M longest answer in tokens,
D hidden size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SPAN_HEAD_KEYS", "SpanHead", "gold_span_mask", "has_span_head", "span_band",
           "span_logprobs"]

SPAN_HEAD_KEYS = ("span_head.proj.weight", "span_head.proj.bias")


def has_span_head(model: nn.Module) -> bool:
    """Whether ``model`` (a generator) carries a span head (``--reader span`` can use it)."""
    return isinstance(getattr(model, "span_head", None), SpanHead)


class SpanHead(nn.Module):
    """Start and end scores of every input token (module doc): one (D, 2) linear map."""

    def __init__(self, d_model: int):
        super().__init__()
        self.proj = nn.Linear(d_model, 2)

    def forward(self, enc: Tensor) -> tuple[Tensor, Tensor]:
        """``(start, end)`` scores, each (..., L) float32, for encoder states (..., L, D)."""
        scores = self.proj(enc).float()  # (..., L, 2); a softmax follows, so fp32 under autocast
        return scores[..., 0], scores[..., 1]


def span_band(allowed: Tensor, max_tokens: int) -> Tensor:
    """(N, L, M) bool: span (i, i + m) is allowed (both ends allowed tokens, inside the row).

    Args:
        allowed: (N, L) bool, the tokens an answer may start or end at.
        max_tokens: M >= 1.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    N, L = allowed.shape
    ends = torch.nn.functional.pad(allowed, (0, max_tokens - 1), value=False)  # (N, L + M - 1)
    end_ok = ends.unfold(1, max_tokens, 1)  # (N, L, M): allowed[i + m]
    return allowed[:, :, None] & end_ok


def span_logprobs(start: Tensor, end: Tensor, allowed: Tensor, max_tokens: int) -> Tensor:
    """log p(i, i + m | x, z) as an (N, L, M) band; -inf at spans that are not allowed.

    A row with no allowed span (no passage text) is -inf everywhere: it gives no answer.

    Args:
        start, end: (N, L) float scores (:class:`SpanHead`).
        allowed: (N, L) bool tokens an answer may start or end at.
        max_tokens: M, the longest answer in tokens.
    """
    band = span_band(allowed, max_tokens)  # (N, L, M)
    N, L = start.shape
    end_scores = torch.nn.functional.pad(end.float(), (0, max_tokens - 1))  # (N, L + M - 1)
    scores = start.float()[:, :, None] + end_scores.unfold(1, max_tokens, 1)  # (N, L, M)
    scores = scores.masked_fill(~band, -float("inf"))
    norm = torch.logsumexp(scores.flatten(1), dim=1)  # (N,)
    norm = torch.where(torch.isfinite(norm), norm, torch.zeros_like(norm))
    return scores - norm[:, None, None]


def gold_span_mask(char_spans: list[list[tuple[int, int]]], offsets: Tensor, allowed: Tensor,
                   max_tokens: int) -> Tensor:
    """(N, L, M) bool: the allowed token spans covering each row's gold character spans.

    A gold span (a, b) in the row's input string maps to the first token ending after a and the
    last token starting before b (an answer inside a word takes the whole word, as SQuAD readers
    do); spans that are too long or not allowed are dropped.

    Args:
        char_spans: N lists of (start, end) character offsets of the answer in each input string.
        offsets: (N, L, 2) int64 character offsets of each token ((0, 0) for specials, padding).
        allowed: (N, L) bool.
    """
    N, L = allowed.shape
    gold = torch.zeros(N, L, max_tokens, dtype=torch.bool)
    band = span_band(allowed, max_tokens)
    starts, ends = offsets[..., 0].tolist(), offsets[..., 1].tolist()
    real = allowed.tolist()
    for n, spans in enumerate(char_spans):
        for a, b in spans:
            inside = [i for i in range(L) if real[n][i] and ends[n][i] > a and starts[n][i] < b]
            if not inside:
                continue
            i, j = inside[0], inside[-1]
            if j - i < max_tokens and band[n, i, j - i]:
                gold[n, i, j - i] = True
    return gold
