"""RAG decoding, batched over questions and passages (Lewis et al. 2020, section 2.4).

- RAG-Token: greedy or beam search on the marginal next-token distribution
  log p(y_i|x,y_<i) = logsumexp_z [log p(z|x) + log p(y_i|x,z,y_<i)], with the passages encoded once
  and a KV cache. The search replicates ``RagTokenForGeneration.generate`` step for step.
- RAG-Sequence: beam search per passage with ``generator.generate`` on all B*K passages at once,
  then "thorough" decoding scores every distinct hypothesis under every passage (eq. 1) with one
  batched decoder pass that reuses the encoder output and the first decoder step; "fast" decoding
  skips that pass and treats p(y|x,z) as 0 for hypotheses that passage z's beam did not produce.
  Thorough decoding returns what ``RagSequenceForGeneration.generate`` returns.

Glossary: B questions, K passages per question, L context length, T output length, D hidden size,
V vocabulary, N beams, R returned sequences per question, C = K*N candidates per question,
M distinct candidates over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache, EncoderDecoderCache, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from generator.copy import copyable, has_copy_head, source_kwargs

from .constrain import CONSTRAINTS, SpanLogitsProcessor, span_allowed
from .marginal import (
    check_rag_inputs,
    encoder_states,
    hypothesis_logprobs,
    sequence_log_marginal,
)

_NEG = -1.0e9  # transformers' beam search "impossible" score; reused so ties break the same way


@dataclass(frozen=True)
class DecodeConfig:
    """Search settings; the names and meanings are those of transformers' ``GenerationConfig``."""

    num_beams: int = 1  # 1 = greedy search
    max_length: int = 20  # longest output, decoder start symbol included
    min_length: int = 0  # EOS is forbidden while the output (start included) is shorter
    length_penalty: float = 1.0  # a finished beam scores sum(log p) / generated_len**length_penalty
    early_stopping: bool = False  # stop a question once num_beams hypotheses have finished
    num_return_sequences: int = 1  # hypotheses returned per question, at most num_beams
    constrain: str = "none"  # "spans": outputs are stretches of the passages (rag.constrain)

    def __post_init__(self) -> None:
        if self.constrain not in CONSTRAINTS:
            raise ValueError(f"constrain must be one of {CONSTRAINTS}, got {self.constrain!r}")
        if self.num_beams < 1 or not 1 <= self.num_return_sequences <= self.num_beams:
            raise ValueError(
                f"need num_beams >= 1 and 1 <= num_return_sequences <= num_beams, got "
                f"num_beams={self.num_beams}, num_return_sequences={self.num_return_sequences}"
            )
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")

    def generate_kwargs(self) -> dict:
        """Keyword arguments giving the same search to transformers' ``generate``."""
        kwargs = {
            "num_beams": self.num_beams,
            "max_length": self.max_length,
            "min_length": self.min_length,
        }
        if self.num_beams > 1:
            kwargs.update(length_penalty=self.length_penalty, early_stopping=self.early_stopping)
        return kwargs


@dataclass(frozen=True)
class RagDecoded:
    """Decoded hypotheses, best first.

    ``sequences``: (B, R, T) int64, each starting with the decoder start symbol, padded after EOS.
    ``scores``: (B, R) float. RAG-Sequence: log p(y|x) (eq. 1; fast decoding's approximation of it).
    RAG-Token: the search score, i.e. the sum of processed marginal log-probs, divided by
    generated_len**length_penalty for beam search.
    """

    sequences: Tensor
    scores: Tensor


@dataclass(frozen=True)
class _Tokens:
    """Special tokens from the generator's generation config."""

    start: int
    pad: int
    bos: int | None
    eos: Tensor  # (E,) int64
    forced_bos: int | None
    forced_eos: Tensor | None  # (E',) int64


def _special_tokens(generator: PreTrainedModel, device: torch.device) -> _Tokens:
    gc = generator.generation_config

    def ids(value: int | list[int] | None) -> Tensor | None:
        if value is None:
            return None
        return torch.tensor([value] if isinstance(value, int) else list(value), device=device)

    eos = ids(gc.eos_token_id)
    if eos is None or gc.decoder_start_token_id is None:
        raise ValueError("the generator's generation_config needs eos and decoder_start token ids")
    pad = gc.pad_token_id if gc.pad_token_id is not None else int(eos[0])
    return _Tokens(
        gc.decoder_start_token_id,
        pad,
        gc.bos_token_id,
        eos,
        gc.forced_bos_token_id,
        ids(gc.forced_eos_token_id),
    )


def _process(scores: Tensor, cur_len: int, cfg: DecodeConfig, tok: _Tokens) -> Tensor:
    """Min-length, forced-BOS and forced-EOS masks on (R, V) scores, in transformers' order."""
    if cur_len < cfg.min_length:
        scores = scores.index_fill(1, tok.eos, -float("inf"))
    if tok.forced_bos is not None and cur_len == 1:
        scores = torch.full_like(scores, -float("inf"))
        scores[:, tok.forced_bos] = 0.0
    if tok.forced_eos is not None and cur_len == cfg.max_length - 1:
        scores = torch.full_like(scores, -float("inf"))
        scores[:, tok.forced_eos] = 0.0
    return scores


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


def _decoder_step(
    generator: PreTrainedModel,
    decoder_input_ids: Tensor,
    enc: Tensor,
    mask: Tensor,
    cache: EncoderDecoderCache | None,
    src: Tensor,
) -> tuple[Tensor, EncoderDecoderCache]:
    """One cached decoder call: (P, S) ids, (P, L, D) encoder states and (P, L) input ids ->
    (P, S, V) logits, cache."""
    out = generator(
        attention_mask=mask,
        encoder_outputs=BaseModelOutput(last_hidden_state=enc),
        decoder_input_ids=decoder_input_ids,
        cache=cache,
        use_cache=True,
        **source_kwargs(generator, src),
    )
    return out.logits, out.cache


class _PassageCache(EncoderDecoderCache):
    """KV cache for ``generate``'s beam search over passages: a beam reorder stays within one
    passage, whose beams share their cross-attention keys/values, so only self-attention is
    reordered (``EncoderDecoderCache`` copies the L-long cross-attention cache at every step)."""

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.self_attention_cache.reorder_cache(beam_idx)


def _span_mask(scores: Tensor, generator: PreTrainedModel, src: Tensor, mask: Tensor,
               prefix: Tensor, tok: _Tokens, cfg: DecodeConfig) -> Tensor:
    """RAG-Token: -inf on (R, V) ``scores`` where no passage of the row's question allows the
    token (``cfg.constrain == "spans"``). ``src``/``mask``: (R*K, L) passage rows, K per row;
    ``prefix``: (R, t) tokens after the start symbol (and forced BOS)."""
    if cfg.constrain != "spans":
        return scores
    R, V = scores.shape
    K = src.shape[0] // R
    allowed = span_allowed(src, copyable(generator.config, src, mask),
                           prefix.repeat_interleave(K, dim=0), tok.eos, V)  # (R*K, V)
    return scores.masked_fill(~allowed.view(R, K, V).any(dim=1), -float("inf"))


def _n_start(tok: _Tokens) -> int:
    """Symbols before the answer proper: the decoder start, and a forced BOS if any."""
    return 1 + (tok.forced_bos is not None)


def _marginalise(logits: Tensor, doc_logprior: Tensor, normalised: bool = False) -> Tensor:
    """RAG-Token next-token marginal: (R*K, V) logits, (R, K) log p(z|x) -> (R, V) log-probs.
    ``normalised``: the logits are log-probabilities already (a copy generator's), used as they are."""
    R, K = doc_logprior.shape
    logp = (logits if normalised else torch.log_softmax(logits, dim=-1)).view(R, K, -1)  # (R, K, V)
    return torch.logsumexp(logp + doc_logprior[:, :, None], dim=1)  # (R, V)


@torch.no_grad()
def rag_token_generate(
    generator: PreTrainedModel,
    context_input_ids: Tensor,
    context_attention_mask: Tensor,
    doc_scores: Tensor,
    config: DecodeConfig | None = None,
) -> RagDecoded:
    """RAG-Token greedy (``num_beams == 1``) or beam search decoding.

    Args:
        generator: seq2seq LM (e.g. ``BartForConditionalGeneration``); special tokens and forced
            BOS/EOS come from its ``generation_config``.
        context_input_ids, context_attention_mask: (B, K, L) int64.
        doc_scores: (B, K) float; p(z|x) = softmax over K.

    Returns:
        :class:`RagDecoded` with (B, R, T) sequences and (B, R) scores.
    """
    config = config or DecodeConfig()
    check_rag_inputs(context_input_ids, context_attention_mask, doc_scores)
    enc = encode_passages(generator, context_input_ids, context_attention_mask)
    doc_logprior = torch.log_softmax(doc_scores, dim=1)  # (B, K)
    tok = _special_tokens(generator, context_input_ids.device)
    search = _token_greedy if config.num_beams == 1 else _token_beam
    return search(generator, enc, context_input_ids, context_attention_mask, doc_logprior, config,
                  tok)


def _token_greedy(
    generator: PreTrainedModel,
    enc: Tensor,
    ids: Tensor,
    mask: Tensor,
    doc_logprior: Tensor,
    cfg: DecodeConfig,
    tok: _Tokens,
) -> RagDecoded:
    B, K, L, D = enc.shape
    seqs = torch.full((B, cfg.max_length), tok.pad, dtype=torch.long, device=enc.device)
    seqs[:, 0] = tok.start
    scores = enc.new_zeros(B)
    unfinished = torch.ones(B, dtype=torch.bool, device=enc.device)
    flat_enc, flat_mask = enc.reshape(B * K, L, D), mask.reshape(B * K, L)  # transformers boundary
    flat_ids = ids.reshape(B * K, L)
    cache, cur_len = None, 1
    while True:
        inputs = seqs[:, cur_len - 1].repeat_interleave(K)[:, None]  # (B*K, 1)
        logits, cache = _decoder_step(generator, inputs, flat_enc, flat_mask, cache, flat_ids)
        step = _marginalise(logits[:, -1], doc_logprior, has_copy_head(generator))  # (B, V)
        if cur_len >= _n_start(tok):
            step = _span_mask(step, generator, flat_ids, flat_mask,
                              seqs[:, _n_start(tok) : cur_len], tok, cfg)
        step = _process(step, cur_len, cfg, tok)  # (B, V)
        best = torch.argmax(step, dim=-1)  # (B,)
        scores += torch.where(unfinished, step.gather(1, best[:, None])[:, 0], 0.0)
        best = torch.where(unfinished, best, tok.pad)
        seqs[:, cur_len] = best
        cur_len += 1
        unfinished &= ~torch.isin(best, tok.eos) & (cur_len < cfg.max_length)
        if not unfinished.any():
            break
    return RagDecoded(seqs[:, None, :cur_len], scores[:, None])


def _token_beam(
    generator: PreTrainedModel,
    enc: Tensor,
    ids: Tensor,
    mask: Tensor,
    doc_logprior: Tensor,
    cfg: DecodeConfig,
    tok: _Tokens,
) -> RagDecoded:
    """Vectorised beam search with transformers' rules (keep 2N candidates, early-stop heuristic).

    Rows are ordered (B, N, K), so reordering beams within a question never changes a row's
    passage: only the self-attention cache is reordered, the cross-attention cache stays put.
    """
    B, K, L, D = enc.shape
    N, T = cfg.num_beams, cfg.max_length
    keep = max(2, 1 + tok.eos.numel()) * N
    dev = enc.device
    fill = tok.pad if tok.pad else int(tok.eos[0])
    running = torch.full((B, N, T), fill, dtype=torch.long, device=dev)
    running[:, :, 0] = tok.start
    finished_seqs = running.clone()
    run_scores = torch.zeros(B, N, device=dev)
    run_scores[:, 1:] = _NEG
    fin_scores = torch.full((B, N), _NEG, device=dev)
    fin_len = torch.zeros(B, N, dtype=torch.long, device=dev)
    is_finished = torch.zeros(B, N, dtype=torch.bool, device=dev)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=dev)
    top_n = torch.arange(keep, device=dev) < N  # (keep,)
    batch_offset = torch.arange(B, device=dev)[:, None] * N  # (B, 1)

    # All beams start identical: decode the first step once per (question, passage), then fan out.
    start = torch.full((B * K, 1), tok.start, dtype=torch.long, device=dev)
    flat_enc, flat_mask = enc.reshape(B * K, L, D), mask.reshape(B * K, L)  # transformers boundary
    flat_ids = ids.reshape(B * K, L)
    logits, cache = _decoder_step(generator, start, flat_enc, flat_mask, None, flat_ids)
    first = _marginalise(logits[:, -1], doc_logprior, has_copy_head(generator))  # (B, V)
    V = first.shape[-1]
    fan_out = torch.arange(B, device=dev)[:, None, None] * K + torch.arange(K, device=dev)
    fan_out = fan_out.expand(B, N, K).reshape(-1)  # (B*N*K,) source row of each (b, n, k)
    cache.batch_select_indices(fan_out)
    beam_enc, beam_mask = flat_enc[fan_out], flat_mask[fan_out]  # (B*N*K, L, D), (B*N*K, L)
    beam_ids = flat_ids[fan_out]  # (B*N*K, L)
    beam_prior = doc_logprior.repeat_interleave(N, dim=0)  # (B*N, K)
    passage = torch.arange(K, device=dev)

    cur_len = 1
    while True:
        if cur_len == 1:
            marg = first.repeat_interleave(N, dim=0)  # (B*N, V)
        else:
            inputs = running[:, :, cur_len - 1].reshape(B * N).repeat_interleave(K)[:, None]
            logits, cache = _decoder_step(generator, inputs, beam_enc, beam_mask, cache, beam_ids)
            marg = _marginalise(logits[:, -1], beam_prior, has_copy_head(generator))  # (B*N, V)
        logp = torch.log_softmax(marg, dim=-1)  # (B*N, V)
        if cur_len >= _n_start(tok):
            prefix = running[:, :, _n_start(tok) : cur_len].reshape(B * N, -1)  # (B*N, t)
            logp = _span_mask(logp, generator, beam_ids, beam_mask, prefix, tok, cfg)
        logp = _process(logp, cur_len, cfg, tok)  # (B*N, V)
        acc = (logp.view(B, N, V) + run_scores[:, :, None]).view(B, N * V)  # (B, N*V)
        cand_scores, cand_idx = torch.topk(acc, k=keep)  # (B, keep)
        src = cand_idx // V  # (B, keep) beam each candidate extends
        cand_seqs = running.gather(1, src[:, :, None].expand(B, keep, T)).clone()  # (B, keep, T)
        cand_seqs[:, :, cur_len] = cand_idx % V
        hits = torch.isin(cand_seqs[:, :, cur_len], tok.eos) | (cur_len + 1 >= T)  # (B, keep)

        # the best N unfinished candidates keep running
        alive = cand_scores + hits.float() * _NEG
        nxt = torch.topk(alive, k=N)[1]  # (B, N)
        running = cand_seqs.gather(1, nxt[:, :, None].expand(B, N, T))
        run_scores = alive.gather(1, nxt)
        beam_src = src.gather(1, nxt) + batch_offset  # (B, N) flat source beam

        # finished candidates among the top N enter the pool of finished hypotheses
        just_done = hits & top_n[None, :]
        done_scores = cand_scores / (cur_len**cfg.length_penalty)
        done_scores += (is_finished.all(-1, keepdim=True) & cfg.early_stopping).float() * _NEG
        done_scores += (~improvable).float() * _NEG
        done_scores += (~just_done) * _NEG
        pool_scores = torch.cat([fin_scores, done_scores], dim=1)  # (B, N + keep)
        best = torch.topk(pool_scores, k=N)[1]  # (B, N)
        fin_scores = pool_scores.gather(1, best)
        pool_seqs = torch.cat([finished_seqs, cand_seqs], dim=1)
        finished_seqs = pool_seqs.gather(1, best[:, :, None].expand(B, N, T))
        pool_len = torch.cat([fin_len, torch.full_like(cand_idx, cur_len)], dim=1)
        fin_len = pool_len.gather(1, best)
        is_finished = torch.cat([is_finished, just_done], dim=1).gather(1, best)

        rows = (beam_src.view(-1, 1) * K + passage).view(-1)  # (B*N*K,) cache rows to keep
        cache.self_attention_cache.reorder_cache(rows)
        cur_len += 1
        improvable &= _can_improve(run_scores, fin_scores, is_finished, cur_len, cfg)
        stop_all = is_finished.all() & cfg.early_stopping
        if not (improvable.any() and not stop_all and not hits.all()):
            break
    R = cfg.num_return_sequences
    out_len = 1 + int(fin_len[:, :R].max())
    return RagDecoded(finished_seqs[:, :R, :out_len], fin_scores[:, :R])


def _can_improve(
    run_scores: Tensor, fin_scores: Tensor, is_finished: Tensor, cur_len: int, cfg: DecodeConfig
) -> Tensor:
    """(B, 1) bool: can the best running beam still beat the worst finished one (transformers)."""
    best_running = run_scores[:, :1] / ((cur_len - 1) ** cfg.length_penalty)
    worst = torch.min(fin_scores, dim=1, keepdim=True)[0]
    worst = torch.where(is_finished, worst, _NEG)  # (B, N)
    return torch.any(best_running > worst, dim=-1, keepdim=True)


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
    tok = _special_tokens(generator, context_input_ids.device)
    search_mask = None if attend_to_padding else context_attention_mask
    enc = encode_passages(generator, context_input_ids, search_mask)  # (B, K, L, D)
    flat_ids = context_input_ids.reshape(B * K, L)  # transformers boundary: B*K passages at once
    processors = []
    if config.constrain == "spans":
        pointable = copyable(generator.config, flat_ids, context_attention_mask.reshape(B * K, L))
        processors.append(SpanLogitsProcessor(flat_ids, pointable, tok.eos, N, _n_start(tok)))
    out = generator.generate(
        input_ids=flat_ids,
        attention_mask=None if search_mask is None else search_mask.reshape(B * K, L),
        encoder_outputs=BaseModelOutput(last_hidden_state=enc.flatten(0, 1)),
        cache=_PassageCache(
            DynamicCache(config=generator.config), DynamicCache(config=generator.config)
        ),
        num_return_sequences=N,
        return_dict_in_generate=True,
        output_logits=fast,
        logits_processor=processors,
        **config.generate_kwargs(),
        **source_kwargs(generator, flat_ids),
    )
    T = out.sequences.shape[1]
    cands = out.sequences.view(B, K * N, T)  # (B, C, T), passage-major as transformers orders them
    same = (cands[:, :, None, :] == cands[:, None, :, :]).all(dim=-1)  # (B, C, C)
    earlier = torch.ones(K * N, K * N, dtype=torch.bool, device=cands.device).tril(-1)
    distinct = ~(same & earlier).any(dim=-1)  # (B, C) first occurrence of each hypothesis
    q_idx, c_idx = distinct.nonzero(as_tuple=True)  # (M,), (M,)
    hyps = cands[q_idx, c_idx]  # (M, T)

    if fast:
        own = _generated_logprobs(out, tok.pad).view(B, K * N, T - 1)  # (B, C, T-1)
        in_beam = same.view(B, K * N, K, N)  # (B, C, K, N): does passage k's beam n equal c?
        available = in_beam.any(dim=-1)[q_idx, c_idx]  # (M, K)
        src = in_beam.int().argmax(dim=-1) + torch.arange(K, device=cands.device) * N  # (B, C, K)
        tok_logp = own[q_idx[:, None], src[q_idx, c_idx]]  # (M, K, T-1)
    else:
        if attend_to_padding:  # scoring attends with the mask, as transformers' does
            enc = encode_passages(generator, context_input_ids, context_attention_mask)
        tok_logp = hypothesis_logprobs(generator, enc, context_attention_mask, hyps, q_idx,
                                       context_input_ids)
        available = None

    # transformers' exclude_bos_score: the first target is skipped only if every candidate of the
    # question starts with BOS
    not_bos = hyps[:, 1].ne(tok.bos) if tok.bos is not None else torch.ones_like(q_idx, dtype=bool)
    any_not_bos = torch.zeros(B, device=hyps.device).index_add_(0, q_idx, not_bos.float()) > 0
    score_first = any_not_bos[q_idx]  # (M,)
    doc_logprior = torch.log_softmax(doc_scores, dim=1)[q_idx]  # (M, K)
    target_mask = hyps[:, 1:].ne(tok.pad)  # (M, T-1)
    seq_logp = sequence_log_marginal(tok_logp, doc_logprior, target_mask, score_first, available)

    table = seq_logp.new_full((B, K * N), -float("inf"))
    table[q_idx, c_idx] = seq_logp  # (B, C)
    scores, best = torch.topk(table, k=config.num_return_sequences, dim=1)  # (B, R)
    sequences = cands.gather(1, best[:, :, None].expand(-1, -1, T))  # (B, R, T)
    return RagDecoded(sequences, scores)


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
