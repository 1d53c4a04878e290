"""Hypothesis rescoring: teacher-forced log-probabilities of many candidate answers under every
passage of their question, for RAG-Sequence thorough decoding (``rag.decode_sequence``).

Beam candidates share most of their computation, and this reuses it: the encoder output
(``rag.passages.encode_passages``), the decoder state of every shared prefix (computed once per
passage as a node of the hypotheses' prefix tree, ``rag.prefix_tree``) and the output layer's
normaliser of every shared prefix. The results are
the per-token log-probs that the RAG-Sequence marginal (eq. 1, ``rag.marginal``) sums.

Glossary: B questions, K passages per question, L context length, D hidden size, V vocabulary,
M hypotheses over the batch, T hypothesis length (start symbol included).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel

from generator.copy import has_copy_head

from .prefix_tree import prefix_owner, tree_decoder_states

_CHUNK_ELEMENTS = 2**25  # cap on floats per intermediate (logits, copy-head scores)


def hypothesis_logprobs(
    generator: PreTrainedModel,
    encoder_states: Tensor,
    context_attention_mask: Tensor,
    hyps: Tensor,
    q_idx: Tensor,
    source_ids: Tensor | None = None,
    cross: DynamicCache | None = None,
) -> Tensor:
    """Teacher-forced log p(hyps[m, t+1] | x, z, hyps[m, :t+1]) under each passage of its question.

    Reuses what the hypotheses share: the encoder output; the passages' cross-attention keys and
    values; the decoder state of each distinct (question, passage, prefix), a node of the prefix
    tree (``rag.prefix_tree``); and the output layer's normaliser, once per such node too, since
    beam hypotheses share long prefixes.

    Used by RAG-Sequence thorough decoding, whose candidates share most of their computation.

    Args:
        generator: a BART-family seq2seq LM (logits = decoder state W^T + final_logits_bias).
        encoder_states: (B, K, L, D) from :func:`rag.passages.encode_passages`.
        context_attention_mask: (B, K, L) int64.
        hyps: (M, T) int64 hypotheses, each starting with the decoder start symbol.
        q_idx: (M,) int64, the question of each hypothesis.
        source_ids: (B, K, L) int64 passage input ids; needed by a copy generator only.
        cross: the passages' cross-attention cache (``rag.prefix_tree.passage_cross_cache`` of
            these states and mask), if the caller has it already.

    Returns:
        (M, K, T-1) float, 0 at padded targets.
    """
    B, K, L, D = encoder_states.shape
    M, T = hyps.shape
    if not hyps[:, 0].eq(hyps[0, 0]).all():
        raise ValueError("hypotheses must all start with the decoder start symbol")
    targets = hyps[:, 1:]  # (M, T-1)
    real = targets.ne(generator.config.pad_token_id)  # (M, T-1)
    last = (real * torch.arange(1, T, device=hyps.device)).amax(dim=1)  # (M,) last real + 1
    alive = torch.arange(T - 1, device=hyps.device)[None, :] < last[:, None]  # (M, T-1)
    owner = prefix_owner(hyps[:, : T - 1], q_idx)  # (M, T-1): first hypothesis sharing the prefix
    hidden = tree_decoder_states(generator, encoder_states, context_attention_mask,
                                 hyps[:, : T - 1], q_idx, alive, cross, owner)  # (M, K, T-1, D)
    weight, bias = _output_layer(generator)  # (V, D), (V,)
    gold = torch.einsum("mktd,mtd->mkt", hidden, weight[targets]) + bias[targets][:, None, :]
    lse = _log_normaliser(hidden, owner, real, weight, bias)  # (M, K, T-1)
    logp = gold - lse  # (M, K, T-1) log p_vocab of each target
    if has_copy_head(generator):
        logp = _copy_target_logprobs(generator, hidden, logp, encoder_states,
                                     context_attention_mask, source_ids, hyps, q_idx)
    return logp.masked_fill(~real[:, None, :], 0.0)


def _copy_target_logprobs(generator, hidden: Tensor, vocab_logp: Tensor, encoder_states: Tensor,
                          context_attention_mask: Tensor, source_ids: Tensor | None, hyps: Tensor,
                          q_idx: Tensor) -> Tensor:
    """The copy generator's mixture log p(target) from its vocabulary part (M, K, T-1)."""
    if source_ids is None:
        raise ValueError("a copy generator needs the passages' input ids (source_ids)")
    B, K, L, D = encoder_states.shape
    M, T1 = vocab_logp.shape[0], vocab_logp.shape[2]
    out = torch.empty_like(vocab_logp)
    per_chunk = max(1, _CHUNK_ELEMENTS // (K * T1 * L * 4))
    for lo in range(0, M, per_chunk):
        q = q_idx[lo : lo + per_chunk]
        m = q.shape[0]
        h = hyps[lo : lo + m, None, :].expand(m, K, T1 + 1).reshape(m * K, T1 + 1)  # (m*K, T)
        # transformers boundary: (hypothesis, passage) pairs flattened to (m*K, ...)
        out[lo : lo + m] = generator.target_logprobs(
            hidden[lo : lo + m].reshape(m * K, T1, D), vocab_logp[lo : lo + m].reshape(m * K, T1),
            encoder_states[q].reshape(m * K, L, D), context_attention_mask[q].reshape(m * K, L),
            source_ids[q].reshape(m * K, L), h[:, :-1], h[:, 1:],
        ).view(m, K, T1)
    return out


def _output_layer(generator: PreTrainedModel) -> tuple[Tensor, Tensor]:
    """(V, D) weight and (V,) bias of a BART-family LM head: logits = h W^T + final_logits_bias."""
    weight = generator.get_output_embeddings().weight
    bias = getattr(generator, "final_logits_bias", None)
    bias = weight.new_zeros(weight.shape[0]) if bias is None else bias.view(-1)
    return weight, bias


def _log_normaliser(
    hidden: Tensor, owner: Tensor, real: Tensor, weight: Tensor, bias: Tensor
) -> Tensor:
    """logsumexp_v of the logits at every (hypothesis, passage, position) whose target is real,
    computed once per distinct (question, prefix).

    Args:
        hidden: (M, K, T-1, D) decoder states.
        owner: (M, T-1) the first hypothesis of the question sharing each prefix
            (``rag.prefix_tree.prefix_owner``).
        real: (M, T-1) bool, True where the target is not padding.

    Returns:
        (M, K, T-1) float, 0 where no target is real.
    """
    M, K, T1, D = hidden.shape
    # a prefix needs its normaliser if any hypothesis through it has a real target there
    needed = torch.zeros(M, T1, device=owner.device).scatter_add_(0, owner, real.float()) > 0
    m_idx, t_idx = needed.nonzero(as_tuple=True)  # only owners can be needed
    states = hidden[m_idx, :, t_idx].reshape(-1, D)  # (U*K, D) distinct prefixes
    per_chunk = max(1, _CHUNK_ELEMENTS // weight.shape[0])
    lse = torch.cat(
        [torch.logsumexp(F.linear(part, weight, bias), dim=-1) for part in states.split(per_chunk)]
    )
    table = hidden.new_zeros(M, T1, K)
    table[m_idx, t_idx] = lse.view(-1, K)
    return table.gather(0, owner[:, :, None].expand(M, T1, K)).transpose(1, 2)  # (M, K, T-1)
