"""Passage encoding: the generator's encoder over the K retrieved passages of each question.

The one place RAG inputs are checked for shape and run through the generator's encoder; the
likelihoods (``rag.marginal``), the rescoring of hypotheses (``rag.rescore``) and the decoders
(``rag.decode_token``, ``rag.decode_sequence``) all start here. Passages of uneven length are
encoded in length buckets (:func:`encoder_states`), so that short ones do not pay for the padding
of long ones.

Glossary: B questions, K passages per question, N = B*K rows, L context length, D hidden size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel


def check_rag_inputs(
    context_input_ids: Tensor, context_attention_mask: Tensor, doc_scores: Tensor
) -> None:
    """Raise ``ValueError`` unless ids and mask are (B, K, L) and doc_scores is (B, K)."""
    if context_input_ids.dim() != 3:
        raise ValueError(
            f"context_input_ids must be (B, K, L), got shape {tuple(context_input_ids.shape)}"
        )
    if context_attention_mask.shape != context_input_ids.shape:
        raise ValueError(
            f"context_attention_mask {tuple(context_attention_mask.shape)} does not match "
            f"context_input_ids {tuple(context_input_ids.shape)}"
        )
    if doc_scores.shape != context_input_ids.shape[:2]:
        raise ValueError(
            f"doc_scores must be (B, K) = {tuple(context_input_ids.shape[:2])}, "
            f"got {tuple(doc_scores.shape)}"
        )


def encoder_states(generator: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor | None,
                   min_saving: float = 0.1) -> Tensor:
    """The generator encoder's last hidden states (N, L, D) for (N, L) inputs, run in buckets.

    Rows are sorted by their last attended position and cut into a few buckets, each trimmed to
    its own longest row, so passages of uneven length do not pay for each other's padding (the
    self-attention cost falls quadratically). Columns past a bucket's width come back as
    zeros; attention masks hide them downstream, so results equal one padded pass up
    to float rounding. Buckets are used only when they skip at least ``min_saving`` of the
    padded tokens; otherwise, and for masks that are all ones, it is one ordinary call.
    """
    encoder = generator.get_encoder()
    N, L = input_ids.shape
    if attention_mask is None or N < 2 or bool(attention_mask[:, -1].all()):
        return encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    positions = torch.arange(1, L + 1, device=attention_mask.device)
    width = (attention_mask.ne(0) * positions).amax(dim=1).clamp(min=1)  # (N,) last attended + 1
    order = torch.argsort(width)  # (N,)
    n_buckets = max(1, min(4, N // 4))
    buckets = torch.tensor_split(order, n_buckets)
    widths = [int(width[rows].max()) for rows in buckets]
    if sum(w * len(rows) for w, rows in zip(widths, buckets, strict=True)) > (1 - min_saving) * N * L:
        return encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    parts = []
    for rows, w in zip(buckets, widths, strict=True):
        states = encoder(input_ids=input_ids[rows, :w],
                         attention_mask=attention_mask[rows, :w]).last_hidden_state  # (n, w, D)
        parts.append(F.pad(states, (0, 0, 0, L - w)))  # (n, L, D)
    return torch.cat(parts)[torch.argsort(order)]  # back to input order, (N, L, D)


def encode_passages(
    generator: PreTrainedModel, context_input_ids: Tensor, context_attention_mask: Tensor | None
) -> Tensor:
    """Run the generator's encoder over all passages (length-bucketed, :func:`encoder_states`).

    Args:
        context_input_ids: (B, K, L) int64.
        context_attention_mask: (B, K, L) int64, or None to attend to every position.

    Returns:
        (B, K, L, D) float encoder states.
    """
    B, K, L = context_input_ids.shape
    mask = None if context_attention_mask is None else context_attention_mask.reshape(B * K, L)
    # transformers boundary: passages flattened to (B*K, L)
    states = encoder_states(generator, context_input_ids.reshape(B * K, L), mask)
    return states.view(B, K, L, -1)  # (B, K, L, D)
