"""RAG-Token decoding: greedy or beam search on the marginal next-token distribution.

log p(y_i|x,y_<i) = logsumexp_z [log p(z|x) + log p(y_i|x,z,y_<i)] (Lewis et al. 2020, eq. 2 and
section 2.4), with the passages encoded once (``rag.passages``) and a KV cache. Greedy and beam
search take the same step (:class:`_Step`): one cached decoder call on every (row, passage) pair,
the marginal over passages, then the span constraint (``rag.constrain``) and the special-token
masks. The search replicates ``RagTokenForGeneration.generate`` step for step.

Glossary: B questions, K passages per question, L context length, T output length, D hidden size,
V vocabulary, N beams, R search rows (the questions, or their beams).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import EncoderDecoderCache, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from generator.copy import copyable, has_copy_head, source_kwargs

from .config import DecodeConfig
from .constrain import span_allowed
from .decode import RagDecoded, SpecialTokens, special_tokens
from .grouped_step import GroupedStep, can_group
from .passages import check_rag_inputs, encode_passages

_NEG = -1.0e9  # transformers' beam search "impossible" score; reused so ties break the same way


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
    B, K, L, D = enc.shape
    # transformers boundary: passages flattened to (B*K, ...)
    ids, mask = context_input_ids.reshape(B * K, L), context_attention_mask.reshape(B * K, L)
    pointable = copyable(generator.config, ids, mask) if config.constrain == "spans" else None
    rows = _Rows(enc.reshape(B * K, L, D), mask, ids, torch.log_softmax(doc_scores, dim=1),
                 pointable)
    step = _Step(generator, config, special_tokens(generator, context_input_ids.device))
    search = _greedy if config.num_beams == 1 else _beam
    return search(step, rows)


@dataclass(frozen=True)
class _Rows:
    """What the decoder reads, K rows per search row, flattened at the transformers boundary: each
    passage's encoder states, attention mask and input ids; each search row's log p(z|x); and,
    for span-constrained search, which input positions may be copied (``rag.constrain.copyable``,
    found once)."""

    enc: Tensor  # (R*K, L, D)
    mask: Tensor  # (R*K, L)
    ids: Tensor  # (R*K, L)
    doc_logprior: Tensor  # (R, K)
    pointable: Tensor | None = None  # (R*K, L) bool

    def take(self, index: Tensor, repeats: int, states: bool = True) -> _Rows:
        """Decoder rows ``index`` (R'*K,), for search rows that repeat each of ours ``repeats``
        times in a row (R' = R * repeats); without ``states`` the encoder states stay ours (a
        grouped step reads them from its cache)."""
        return _Rows(self.enc[index] if states else self.enc, self.mask[index], self.ids[index],
                     self.doc_logprior.repeat_interleave(repeats, dim=0),
                     None if self.pointable is None else self.pointable[index])


@dataclass(frozen=True)
class _Step:
    """One step of RAG-Token search, the same for greedy and beam search."""

    generator: PreTrainedModel
    config: DecodeConfig
    tok: SpecialTokens

    def marginal(self, inputs: Tensor, rows: _Rows, cache: EncoderDecoderCache | None
                 ) -> tuple[Tensor, EncoderDecoderCache]:
        """One cached decoder call on (R*K, 1) ``inputs``: the (R, V) marginal next-token
        log-probs and the cache. A copy generator's logits are log-probabilities already and
        are used as they are."""
        out = self.generator(
            attention_mask=rows.mask,
            encoder_outputs=BaseModelOutput(last_hidden_state=rows.enc),
            decoder_input_ids=inputs,
            cache=cache,
            use_cache=True,
            **source_kwargs(self.generator, rows.ids),
        )
        logits = out.logits[:, -1]  # (R*K, V)
        normalised = has_copy_head(self.generator)
        logp = logits if normalised else torch.log_softmax(logits, dim=-1)
        return _marginal(logp, rows), out.cache  # (R, V)

    def grouped_marginal(self, inputs: Tensor, rows: _Rows, grouped: GroupedStep) -> Tensor:
        """:meth:`marginal` by a :class:`~rag.grouped_step.GroupedStep` (beam rows sharing their
        passages' cross-attention), which holds the cache."""
        hidden = grouped.hidden(inputs)  # (R*K, 1, D)
        return _marginal(grouped.logprobs(hidden, inputs, rows.enc, rows.mask, rows.ids), rows)

    def mask(self, scores: Tensor, rows: _Rows, seqs: Tensor) -> Tensor:
        """(R, V) ``scores`` for the token after ``seqs`` (R, t), -inf where no passage of the
        row allows it (``config.constrain == "spans"``), then the special-token masks."""
        cur_len = seqs.shape[1]
        if self.config.constrain == "spans" and cur_len >= self.tok.n_start:
            R, K = rows.doc_logprior.shape
            V = scores.shape[1]
            prefix = seqs[:, self.tok.n_start :]  # (R, t') after the start symbol (and forced BOS)
            allowed = span_allowed(rows.ids, rows.pointable, prefix.repeat_interleave(K, dim=0),
                                   self.tok.eos, V)  # (R*K, V)
            scores = scores.masked_fill(~allowed.view(R, K, V).any(dim=1), -float("inf"))
        return self.tok.process(scores, cur_len, self.config)


def _marginal(logp: Tensor, rows: _Rows) -> Tensor:
    """(R, V) logsumexp_z [log p(z|x) + log p(y|x,z,...)] of per-passage log-probs (R*K, V)."""
    R, K = rows.doc_logprior.shape
    return torch.logsumexp(logp.view(R, K, -1) + rows.doc_logprior[:, :, None], dim=1)


def _greedy(step: _Step, rows: _Rows) -> RagDecoded:
    cfg, tok = step.config, step.tok
    B, K = rows.doc_logprior.shape
    dev = rows.enc.device
    seqs = torch.full((B, cfg.max_length), tok.pad, dtype=torch.long, device=dev)
    seqs[:, 0] = tok.start
    scores = rows.enc.new_zeros(B)
    unfinished = torch.ones(B, dtype=torch.bool, device=dev)
    cache, cur_len = None, 1
    while True:
        inputs = seqs[:, cur_len - 1].repeat_interleave(K)[:, None]  # (B*K, 1)
        marg, cache = step.marginal(inputs, rows, cache)  # (B, V)
        marg = step.mask(marg, rows, seqs[:, :cur_len])  # (B, V)
        best = torch.argmax(marg, dim=-1)  # (B,)
        scores += torch.where(unfinished, marg.gather(1, best[:, None])[:, 0], 0.0)
        best = torch.where(unfinished, best, tok.pad)
        seqs[:, cur_len] = best
        cur_len += 1
        unfinished &= ~torch.isin(best, tok.eos) & (cur_len < cfg.max_length)
        if not unfinished.any():
            break
    return RagDecoded(seqs[:, None, :cur_len], scores[:, None])


@dataclass
class _Finished:
    """Beam search's finished hypotheses, N per question, kept by transformers' rules."""

    seqs: Tensor  # (B, N, T)
    scores: Tensor  # (B, N) float, sum(log p) / length**length_penalty; _NEG in empty slots
    length: Tensor  # (B, N) int64, the step each finished at
    done: Tensor  # (B, N) bool, slots that hold a hypothesis

    def add(self, cand_seqs: Tensor, cand_scores: Tensor, just_done: Tensor, improvable: Tensor,
            cur_len: int, cfg: DecodeConfig) -> None:
        """Let the (B, keep) candidates that ``just_done`` compete for the N slots."""
        B, N, T = self.seqs.shape
        done_scores = cand_scores / (cur_len**cfg.length_penalty)
        done_scores += (self.done.all(-1, keepdim=True) & cfg.early_stopping).float() * _NEG
        done_scores += (~improvable).float() * _NEG
        done_scores += (~just_done) * _NEG
        pool_scores = torch.cat([self.scores, done_scores], dim=1)  # (B, N + keep)
        best = torch.topk(pool_scores, k=N)[1]  # (B, N)
        self.scores = pool_scores.gather(1, best)
        pool_seqs = torch.cat([self.seqs, cand_seqs], dim=1)  # (B, N + keep, T)
        self.seqs = pool_seqs.gather(1, best[:, :, None].expand(B, N, T))
        now = torch.full_like(just_done, cur_len, dtype=torch.long)  # (B, keep)
        self.length = torch.cat([self.length, now], dim=1).gather(1, best)
        self.done = torch.cat([self.done, just_done], dim=1).gather(1, best)

    def can_improve(self, run_scores: Tensor, cur_len: int, cfg: DecodeConfig) -> Tensor:
        """(B, 1) bool: can the best running beam still beat the worst finished one."""
        best_running = run_scores[:, :1] / ((cur_len - 1) ** cfg.length_penalty)
        worst = torch.min(self.scores, dim=1, keepdim=True)[0]
        worst = torch.where(self.done, worst, _NEG)  # (B, N)
        return torch.any(best_running > worst, dim=-1, keepdim=True)


def _beam(step: _Step, rows: _Rows) -> RagDecoded:
    """Vectorised beam search with transformers' rules (keep 2N candidates, early-stop heuristic).

    Rows are ordered (B, N, K), so reordering beams within a question never changes a row's
    passage: only the self-attention cache is reordered, the cross-attention cache stays put.
    """
    cfg, tok = step.config, step.tok
    B, K = rows.doc_logprior.shape
    N, T = cfg.num_beams, cfg.max_length
    keep = max(2, 1 + tok.eos.numel()) * N
    dev = rows.enc.device
    fill = tok.pad if tok.pad else int(tok.eos[0])
    running = torch.full((B, N, T), fill, dtype=torch.long, device=dev)
    running[:, :, 0] = tok.start
    finished = _Finished(running.clone(), torch.full((B, N), _NEG, device=dev),
                         torch.zeros(B, N, dtype=torch.long, device=dev),
                         torch.zeros(B, N, dtype=torch.bool, device=dev))
    run_scores = torch.zeros(B, N, device=dev)
    run_scores[:, 1:] = _NEG
    improvable = torch.ones(B, 1, dtype=torch.bool, device=dev)
    top_n = torch.arange(keep, device=dev) < N  # (keep,)
    batch_offset = torch.arange(B, device=dev)[:, None] * N  # (B, 1)
    passage = torch.arange(K, device=dev)

    # All beams start identical: decode the first step once per (question, passage), then fan out.
    start = torch.full((B * K, 1), tok.start, dtype=torch.long, device=dev)
    first, cache = step.marginal(start, rows, None)  # (B, V)
    V = first.shape[-1]
    fan_out = torch.arange(B, device=dev)[:, None, None] * K + passage
    fan_out = fan_out.expand(B, N, K).reshape(-1)  # (B*N*K,) source row of each (b, n, k)
    grouped = None
    if can_group(step.generator):  # beams read their passage's one copy of cross-attention
        grouped = GroupedStep(step.generator, cache, fan_out, rows.mask, N, K)
    else:
        cache.batch_select_indices(fan_out)
    states = grouped is None or has_copy_head(step.generator)  # the copy head reads them per row
    beams = rows.take(fan_out, N, states)  # (B*N*K, ...) rows, (B*N, K) log p(z|x)

    cur_len = 1
    while True:
        if cur_len == 1:
            marg = first.repeat_interleave(N, dim=0)  # (B*N, V)
        else:
            inputs = running[:, :, cur_len - 1].reshape(B * N).repeat_interleave(K)[:, None]
            if grouped is None:
                marg, cache = step.marginal(inputs, beams, cache)  # (B*N, V)
            else:
                marg = step.grouped_marginal(inputs, beams, grouped)  # (B*N, V)
        logp = torch.log_softmax(marg, dim=-1)  # (B*N, V)
        logp = step.mask(logp, beams, running[:, :, :cur_len].reshape(B * N, cur_len))
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
        finished.add(cand_seqs, cand_scores, hits & top_n[None, :], improvable, cur_len, cfg)
        kept = (beam_src.view(-1, 1) * K + passage).view(-1)  # (B*N*K,) cache rows to keep
        cache.self_attention_cache.reorder_cache(kept)
        cur_len += 1
        improvable &= finished.can_improve(run_scores, cur_len, cfg)
        stop_all = finished.done.all() & cfg.early_stopping
        if not (improvable.any() and not stop_all and not hits.all()):
            break
    R = cfg.num_return_sequences
    out_len = 1 + int(finished.length[:, :R].max())
    return RagDecoded(finished.seqs[:, :R, :out_len], finished.scores[:, :R])
