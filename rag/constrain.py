"""Span-constrained decoding: answers that are stretches of the passages, then EOS.

After a generated prefix y_1..y_t (the decoder start symbol, and a forced BOS, not counted), the
allowed next tokens are

- t = 0: every token of the passage that may be copied (not padding, not a special token);
- t >= 1: EOS, and x_{i+1} for every position i where the passage ends with the prefix
  (x_{i-t+1..i} = y_1..y_t).

If nothing is allowed (an empty passage), EOS is. RAG-Sequence holds each passage's beam search
to that passage; RAG-Token to the union of the question's K passages. The mask is computed for all
rows at once from the prefix and the input ids (a vectorised successor table); the only loop is
over the t prefix positions.

Glossary: R decoding rows, L input length, t prefix length, V vocabulary, K passages.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from transformers import LogitsProcessor

Constraint = Literal["none", "spans"]


def span_allowed(source_ids: Tensor, pointable: Tensor, prefix: Tensor, eos: Tensor,
                 vocab_size: int) -> Tensor:
    """(R, V) bool: the next tokens that keep each row's output a passage span (module doc).

    Args:
        source_ids: (R, L) int64 input ids of each row's passage.
        pointable: (R, L) bool, the input tokens an answer may contain.
        prefix: (R, t) int64 generated tokens so far, start symbol excluded (t may be 0).
        eos: (E,) int64 end-of-sequence ids.
    """
    R, L = source_ids.shape
    t = prefix.shape[1]
    if t == 0:
        alive_next = pointable  # (R, L) any copyable token may start the answer
    else:
        alive = pointable.clone()  # (R, L): x_{i-t+1..i} == prefix, all copyable, ends at i
        for j in range(t):
            shift = t - 1 - j  # prefix[j] must sit at position i - shift
            hit = (source_ids == prefix[:, j : j + 1]) & pointable  # (R, L)
            alive[:, :shift] = False
            alive[:, shift:] &= hit[:, : L - shift]
        alive_next = torch.zeros_like(alive)
        alive_next[:, 1:] = alive[:, :-1] & pointable[:, 1:]  # (R, L) continuations x_{i+1}
    allowed = torch.zeros(R, vocab_size, dtype=torch.int32, device=source_ids.device)
    allowed = allowed.scatter_add_(1, source_ids, alive_next.to(torch.int32)) > 0  # (R, V)
    if t > 0:
        allowed[:, eos] = True
    stuck = ~allowed.any(dim=1)  # (R,) nothing to copy: end the answer
    allowed[:, eos] |= stuck[:, None]
    return allowed


class SpanLogitsProcessor(LogitsProcessor):
    """``generate`` hook that sets disallowed tokens to -inf (RAG-Sequence: one passage per row).

    Rows of ``generate``'s input are the B*K passages times ``num_beams``, beams of a passage
    adjacent, so row r reads passage r // num_beams.
    """

    def __init__(self, source_ids: Tensor, pointable: Tensor, eos: Tensor, num_beams: int,
                 n_start: int):
        self.source_ids, self.pointable = source_ids, pointable
        self.eos, self.num_beams, self.n_start = eos, num_beams, n_start

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        rows = torch.arange(input_ids.shape[0], device=input_ids.device) // self.num_beams
        allowed = span_allowed(self.source_ids[rows], self.pointable[rows],
                               input_ids[:, self.n_start :], self.eos, scores.shape[-1])
        return scores.masked_fill(~allowed, -float("inf"))
