"""RAG-Sequence decoding: beam search per passage, then the hypotheses ranked by log p(y|x).

Beam search runs with ``generator.generate`` on all B*K passages at once. "Thorough" decoding then
scores every distinct hypothesis under every passage (eq. 1) with one batched decoder pass that
reuses the encoder output and each shared prefix (``rag.rescore``), and returns what
``RagSequenceForGeneration.generate`` returns; "fast" decoding skips that pass and treats
p(y|x,z) as 0 for hypotheses that passage z's beam did not produce (Lewis et al. 2020, section
2.4).

Glossary: B questions, K passages per question, L context length, T output length, V vocabulary,
N beams, R returned sequences per question, C = K*N candidates per question, M distinct candidates
over the batch, P = B*C generated rows.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache, EncoderDecoderCache, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from generator.copy import copyable, source_kwargs

from .config import DecodeConfig
from .constrain import SpanLogitsProcessor
from .decode import RagDecoded, SpecialTokens, special_tokens
from .marginal import sequence_log_marginal
from .passages import check_rag_inputs, encode_passages
from .prefix_tree import passage_cross_cache
from .rescore import hypothesis_logprobs


@torch.no_grad()
def rag_sequence_generate(
    generator: PreTrainedModel,
    context_input_ids: Tensor,
    context_attention_mask: Tensor,
    doc_scores: Tensor,
    config: DecodeConfig | None = None,
    *,
    fast: bool = False,
    attend_to_padding: bool = False,
) -> RagDecoded:
    """RAG-Sequence decoding: beam search per passage, then rank hypotheses by log p(y|x).

    Thorough decoding (default) scores each distinct hypothesis under every passage, as
    ``RagSequenceForGeneration.generate`` does (including its ``exclude_bos_score=True`` scoring),
    and returns the same sequences. Fast decoding reuses the log-probs the beam search computed and
    treats p(y|x,z) as 0 when passage z's beam did not produce y.

    Args:
        context_input_ids, context_attention_mask: (B, K, L) int64.
        doc_scores: (B, K) float; p(z|x) = softmax over K.
        config: search settings for each passage's beam search.
        fast: fast instead of thorough decoding.
        attend_to_padding: run the beam search without ``context_attention_mask``, as
            ``RagSequenceForGeneration.generate`` does in transformers 5 (it passes
            ``attention_mask=None`` and ``generate`` does not rebuild masks for encoder-decoder
            models); thorough scoring still uses the mask. Set it to match transformers on
            padded inputs.

    Returns:
        :class:`RagDecoded` with (B, R, T) sequences and (B, R) log p(y|x).
    """
    config = config or DecodeConfig()
    check_rag_inputs(context_input_ids, context_attention_mask, doc_scores)
    B, K, L = context_input_ids.shape
    N = config.num_beams
    tok = special_tokens(generator, context_input_ids.device)
    search_mask = None if attend_to_padding else context_attention_mask
    enc = encode_passages(generator, context_input_ids, search_mask)  # (B, K, L, D)
    cross = passage_cross_cache(generator, enc, search_mask)  # (B*K) rows per layer
    out = _passage_beams(generator, context_input_ids, context_attention_mask, search_mask, enc,
                         cross, config, tok, fast)
    T = out.sequences.shape[1]
    cands = out.sequences.view(B, K * N, T)  # (B, C, T), passage-major as transformers orders them
    same = (cands[:, :, None, :] == cands[:, None, :, :]).all(dim=-1)  # (B, C, C)
    earlier = torch.ones(K * N, K * N, dtype=torch.bool, device=cands.device).tril(-1)
    distinct = ~(same & earlier).any(dim=-1)  # (B, C) first occurrence of each hypothesis
    q_idx, c_idx = distinct.nonzero(as_tuple=True)  # (M,), (M,)
    hyps = cands[q_idx, c_idx]  # (M, T)

    if fast:
        tok_logp, available = _beam_logprobs(out, same, q_idx, c_idx, tok.pad, N)
    else:
        if attend_to_padding:  # scoring attends with the mask, as transformers' does
            enc = encode_passages(generator, context_input_ids, context_attention_mask)
            cross = None
        tok_logp = hypothesis_logprobs(generator, enc, context_attention_mask, hyps, q_idx,
                                       context_input_ids, cross)
        available = None
    seq_logp = _log_marginal(hyps, q_idx, tok_logp, doc_scores, tok, available)  # (M,)

    table = seq_logp.new_full((B, K * N), -float("inf"))
    table[q_idx, c_idx] = seq_logp  # (B, C)
    scores, best = torch.topk(table, k=config.num_return_sequences, dim=1)  # (B, R)
    sequences = cands.gather(1, best[:, :, None].expand(-1, -1, T))  # (B, R, T)
    return RagDecoded(sequences, scores)


class _PassageCache(EncoderDecoderCache):
    """KV cache for ``generate``'s beam search over passages: a beam reorder stays within one
    passage, whose beams share their cross-attention keys/values, so only self-attention is
    reordered (``EncoderDecoderCache`` copies the L-long cross-attention cache at every step).
    It starts with the passages' keys and values, computed once per passage rather than once per
    beam."""

    @classmethod
    def for_beams(cls, cross: DynamicCache, beams: int, config) -> _PassageCache:
        """A cache whose cross-attention part is ``cross`` (P rows) repeated for ``beams``
        adjacent beams of each passage (P*beams rows), as ``generate`` orders them."""
        rows = [(k.repeat_interleave(beams, 0), v.repeat_interleave(beams, 0))
                for k, v, *_ in cross]
        return cls(DynamicCache(config=config), DynamicCache(rows, config=config))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.self_attention_cache.reorder_cache(beam_idx)


def _passage_beams(generator: PreTrainedModel, context_input_ids: Tensor,
                   context_attention_mask: Tensor, search_mask: Tensor | None, enc: Tensor,
                   cross: DynamicCache, config: DecodeConfig, tok: SpecialTokens,
                   output_logits: bool):
    """``generate``'s beam search on every passage at once, attending with ``search_mask``:
    its output, whose ``sequences`` are (P, T), the N beams of each passage adjacent (and whose
    ``logits`` are kept with ``output_logits``)."""
    B, K, L = context_input_ids.shape
    flat_ids = context_input_ids.reshape(B * K, L)  # transformers boundary: B*K passages at once
    processors = []
    if config.constrain == "spans":
        pointable = copyable(generator.config, flat_ids, context_attention_mask.reshape(B * K, L))
        processors.append(SpanLogitsProcessor(flat_ids, pointable, tok.eos, config.num_beams,
                                              tok.n_start))
    return generator.generate(
        input_ids=flat_ids,
        attention_mask=None if search_mask is None else search_mask.reshape(B * K, L),
        encoder_outputs=BaseModelOutput(last_hidden_state=enc.flatten(0, 1)),
        cache=_PassageCache.for_beams(cross, config.num_beams, generator.config),
        num_return_sequences=config.num_beams,
        return_dict_in_generate=True,
        output_logits=output_logits,
        logits_processor=processors,
        **config.generate_kwargs(),
        **source_kwargs(generator, flat_ids),
    )


def _beam_logprobs(out, same: Tensor, q_idx: Tensor, c_idx: Tensor, pad: int, N: int
                   ) -> tuple[Tensor, Tensor]:
    """Fast decoding: each distinct candidate's token log-probs under the passages whose beam
    produced it, read off the beam search.

    Args:
        out: ``generate`` output (:func:`_passage_beams` with ``output_logits``).
        same: (B, C, C) bool, which candidates of a question are equal.
        q_idx, c_idx: (M,) question and candidate of each distinct hypothesis.

    Returns:
        ``(tok_logp, available)``: (M, K, T-1) float, and (M, K) bool, where passage k's beam
        produced the hypothesis (elsewhere ``tok_logp`` is a stand-in that does not count).
    """
    B, C = same.shape[:2]
    K = C // N
    own = _generated_logprobs(out, pad).view(B, C, -1)  # (B, C, T-1)
    in_beam = same.view(B, C, K, N)  # (B, C, K, N): does passage k's beam n equal c?
    available = in_beam.any(dim=-1)[q_idx, c_idx]  # (M, K)
    src = in_beam.int().argmax(dim=-1) + torch.arange(K, device=same.device) * N  # (B, C, K)
    return own[q_idx[:, None], src[q_idx, c_idx]], available  # (M, K, T-1), (M, K)


def _generated_logprobs(out, pad: int) -> Tensor:
    """log p of each generated token under its own passage, read off ``generate``'s raw logits.

    Args:
        out: ``generate`` output with ``logits`` (S steps of (P, V)), ``sequences`` (P, T) and, for
            beam search, ``beam_indices`` (P, T-1).

    Returns:
        (P, T-1) float, 0 where the token is padding.
    """
    seqs = out.sequences
    P, T = seqs.shape
    steps = torch.stack(out.logits[: T - 1], dim=1)  # (P', T-1, V) rows of the running beams
    if out.get("beam_indices") is not None:
        src = out.beam_indices[:, : T - 1].clamp(min=0)  # (P, T-1)
        steps = steps[src, torch.arange(T - 1, device=seqs.device)]  # (P, T-1, V)
    logp = torch.log_softmax(steps.float(), dim=-1).gather(2, seqs[:, 1:, None])[..., 0]
    return logp.masked_fill(seqs[:, 1:].eq(pad), 0.0)  # (P, T-1)


def _log_marginal(hyps: Tensor, q_idx: Tensor, tok_logp: Tensor, doc_scores: Tensor,
                  tok: SpecialTokens, available: Tensor | None) -> Tensor:
    """(M,) log p(y|x) (eq. 1) of the (M, T) distinct hypotheses, with transformers'
    exclude_bos_score: the first target is skipped only if every candidate of the question starts
    with BOS."""
    B = doc_scores.shape[0]
    not_bos = hyps[:, 1].ne(tok.bos) if tok.bos is not None else torch.ones_like(q_idx, dtype=bool)
    any_not_bos = torch.zeros(B, device=hyps.device).index_add_(0, q_idx, not_bos.float()) > 0
    score_first = any_not_bos[q_idx]  # (M,)
    doc_logprior = torch.log_softmax(doc_scores, dim=1)[q_idx]  # (M, K)
    target_mask = hyps[:, 1:].ne(tok.pad)  # (M, T-1)
    return sequence_log_marginal(tok_logp, doc_logprior, target_mask, score_first, available)
