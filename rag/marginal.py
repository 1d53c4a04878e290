"""RAG likelihoods: marginalise a seq2seq generator over K retrieved passages, in log space.

Lewis et al. 2020 (arXiv:2005.11401), with p(z|x) = softmax_z(doc_scores):

- RAG-Sequence (eq. 1): log p(y|x) = logsumexp_z [log p(z|x) + sum_i log p(y_i|x,z,y_<i)]
- RAG-Token    (eq. 2): log p(y|x) = sum_i logsumexp_z [log p(z|x) + log p(y_i|x,z,y_<i)]

Label conventions and label smoothing follow transformers' ``RagSequenceForGeneration.get_nll``
and ``RagTokenForGeneration.get_nll`` so that the numbers agree (see :func:`rag_sequence_nll`).

Glossary: B questions, K passages per question, L context length, T label length (the decoder
reads T - 1 of them), D hidden size, V vocabulary.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache, EncoderDecoderCache, PreTrainedModel

from generator.copy import has_copy_head, source_kwargs

RagMode = Literal["sequence", "token"]
_CHUNK_ELEMENTS = 2**25  # cap on floats per intermediate (logits, copied KV cache)


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


def generator_logits(
    generator: PreTrainedModel,
    context_input_ids: Tensor,
    context_attention_mask: Tensor,
    labels: Tensor,
) -> Tensor:
    """Teacher-forced next-token logits of ``generator`` for every (question, passage) pair.

    Args:
        generator: a seq2seq LM such as ``BartForConditionalGeneration`` (or the copy generator,
            whose logits are normalised log-probabilities).
        context_input_ids, context_attention_mask: (B, K, L) int64, one row per passage.
        labels: (B, T) int64, T >= 2, each starting with the decoder's start symbol. The decoder
            reads ``labels[:, :-1]`` (transformers also feeds the last label, but what it predicts
            there is the padding it appends, which is masked).

    Returns:
        (B, K, T - 1, V) float logits; entry t predicts ``labels[:, t + 1]``.
    """
    return generator_outputs(generator, context_input_ids, context_attention_mask, labels).logits


def generator_outputs(
    generator: PreTrainedModel,
    context_input_ids: Tensor,
    context_attention_mask: Tensor,
    labels: Tensor,
):
    """The generator's teacher-forced output (see :func:`generator_logits`), with ``logits``
    viewed as (B, K, T - 1, V); a copy generator's ``pointer_logp`` is (B, K, T - 1, L)."""
    B, K, L = context_input_ids.shape
    T = labels.shape[1]
    if labels.dim() != 2 or labels.shape[0] != B or T < 2:
        raise ValueError(f"labels must be (B={B}, T>=2), got shape {tuple(labels.shape)}")
    decoder_input_ids = labels[:, None, :-1].expand(B, K, T - 1)  # (B, K, T-1)
    # transformers boundary: passages flattened to (B*K, ...)
    ids, mask = context_input_ids.reshape(B * K, L), context_attention_mask.reshape(B * K, L)
    states = encoder_states(generator, ids, mask)  # (B*K, L, D)
    out = generator(
        encoder_outputs=(states,),
        attention_mask=mask,
        decoder_input_ids=decoder_input_ids.reshape(B * K, T - 1),
        use_cache=False,
        **source_kwargs(generator, ids),
    )
    out.logits = out.logits.view(B, K, T - 1, -1)  # (B, K, T-1, V)
    if getattr(out, "pointer_logp", None) is not None:
        out.pointer_logp = out.pointer_logp.view(B, K, T - 1, -1)  # (B, K, T-1, L)
    return out


def pointer_nll(pointer_logp: Tensor, pointer_targets: Tensor) -> Tensor:
    """Supervised pointing: -log a_t(target position), summed over the steps and passages that
    have a target (``pointer_targets`` >= 0), per question.

    Args:
        pointer_logp: (B, K, T', L) log-probs of the copy pointer.
        pointer_targets: (B, K, T') int64 input positions, -1 where there is no target.

    Returns:
        (B,) float.
    """
    has = pointer_targets.ge(0)
    picked = pointer_logp.gather(-1, pointer_targets.clamp(min=0)[..., None])[..., 0]  # (B, K, T')
    return -(picked.masked_fill(~has, 0.0)).sum(dim=(1, 2))


def token_logprobs(logits: Tensor, targets: Tensor, pad_token_id: int) -> Tensor:
    """log p(target | x, z, prefix) gathered from logits; 0 where the target is padding.

    Args:
        logits: (N, K, T', V) float.
        targets: (N, T') int64 (``labels[:, 1:]``).

    Returns:
        (N, K, T') float.
    """
    N, K, T, V = logits.shape
    flat_targets = targets[:, None, :].expand(N, K, T).reshape(-1)  # (N*K*T,)
    # cross_entropy fuses log_softmax + gather and skips padding in both passes
    nll = F.cross_entropy(
        logits.reshape(-1, V), flat_targets, ignore_index=pad_token_id, reduction="none"
    )
    return -nll.view(N, K, T)  # (N, K, T')


def sequence_log_marginal(
    tok_logp: Tensor,
    doc_logprior: Tensor,
    target_mask: Tensor,
    score_first: Tensor,
    available: Tensor | None = None,
) -> Tensor:
    """RAG-Sequence log p(y|x) (eq. 1) from per-passage token log-probabilities.

    As in transformers, log p(z|x) is booked on the *second* target position, so that it survives
    dropping the first (BOS) score; it is therefore lost when that position is padding or T' < 2.

    Args:
        tok_logp: (N, K, T') float, 0 at padded targets.
        doc_logprior: (N, K) float, log p(z|x).
        target_mask: (N, T') bool, True at real (non-pad) targets.
        score_first: (N,) bool, whether the first target's log-prob counts.
        available: optional (N, K) bool; p(y|x,z) is taken as 0 where False (fast decoding).

    Returns:
        (N,) float log-likelihoods.
    """
    first = tok_logp[:, :, 0] * score_first[:, None].to(tok_logp.dtype)  # (N, K)
    seq_logp = first + tok_logp[:, :, 1:].sum(dim=2)  # (N, K)
    joint = seq_logp + doc_logprior * _prior_weight(target_mask)  # (N, K)
    if available is not None:
        joint = joint.masked_fill(~available, -float("inf"))
    return torch.logsumexp(joint, dim=1)


def _prior_weight(target_mask: Tensor) -> Tensor:
    """(N, 1) weight of log p(z|x): 1 if the second target is real, else 0 (as transformers)."""
    if target_mask.shape[1] < 2:
        return target_mask.new_zeros(target_mask.shape[0], 1, dtype=torch.float32)
    return target_mask[:, 1:2].float()  # (N, 1)


def _vocab_sum_logp(logits: Tensor) -> Tensor:
    """sum_v log p(v|...) over the last axis of (..., V) logits, without materialising log-probs."""
    V = logits.shape[-1]
    return logits.sum(dim=-1) - V * torch.logsumexp(logits, dim=-1)


def _bos_scored(labels: Tensor, bos_token_id: int | None, exclude_bos_score: bool) -> Tensor:
    """(B,) bool: whether the first target token (labels[:, 1]) counts toward the likelihood."""
    keep = torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)
    if exclude_bos_score and bos_token_id is not None and labels.shape[1] > 1:
        keep = labels[:, 1].ne(bos_token_id)
    return keep


def rag_sequence_nll(
    generator: PreTrainedModel,
    context_input_ids: Tensor,
    context_attention_mask: Tensor,
    doc_scores: Tensor,
    labels: Tensor,
    *,
    epsilon: float = 0.0,
    exclude_bos_score: bool = False,
    logits: Tensor | None = None,
) -> Tensor:
    """Per-example RAG-Sequence negative log-likelihood, -log p(y|x) (eq. 1), optionally smoothed.

    ``labels`` follow transformers' RAG convention: the decoder reads them as they are and predicts
    ``labels[:, 1:]``; targets equal to ``generator.config.pad_token_id`` are masked. With
    ``epsilon > 0`` the loss is ``(1 - eps) * nll + eps / V * smooth`` where ``smooth`` is
    -logsumexp_z [V log p(z|x) + sum_{i, v} log p(v|x,z,y_<i)], as transformers computes it.
    ``exclude_bos_score`` drops the first target's score for examples whose first target is BOS
    (transformers decides this once for the whole batch, which agrees when all or none start with
    BOS). Gradients flow into ``doc_scores`` and the generator.

    Args:
        context_input_ids, context_attention_mask: (B, K, L) int64.
        doc_scores: (B, K) float, question-passage inner products.
        labels: (B, T) int64.
        logits: (B, K, T-1, V) from :func:`generator_logits` when already computed.

    Returns:
        (B,) float NLL per question.
    """
    check_rag_inputs(context_input_ids, context_attention_mask, doc_scores)
    cfg = generator.config
    if logits is None:
        logits = generator_logits(generator, context_input_ids, context_attention_mask, labels)
    targets = labels[:, 1:]  # (B, T-1)
    target_mask = targets.ne(cfg.pad_token_id)
    doc_logprior = torch.log_softmax(doc_scores.float(), dim=1)  # (B, K)
    tok_logp = token_logprobs(logits, targets, cfg.pad_token_id)  # (B, K, T-1)
    score_first = _bos_scored(labels, cfg.bos_token_id, exclude_bos_score)
    nll = -sequence_log_marginal(tok_logp, doc_logprior, target_mask, score_first)  # (B,)
    if epsilon == 0.0:
        return nll
    V = logits.shape[-1]
    vocab_sum = _vocab_sum_logp(logits) * target_mask[:, None, :]  # (B, K, T-1)
    smooth_obj = vocab_sum.sum(dim=2) + V * doc_logprior * _prior_weight(target_mask)  # (B, K)
    smooth = -torch.logsumexp(smooth_obj, dim=1)  # (B,)
    return (1.0 - epsilon) * nll + (epsilon / V) * smooth


def rag_token_nll(
    generator: PreTrainedModel,
    context_input_ids: Tensor,
    context_attention_mask: Tensor,
    doc_scores: Tensor,
    labels: Tensor,
    *,
    epsilon: float = 0.0,
    logits: Tensor | None = None,
) -> Tensor:
    """Per-example RAG-Token negative log-likelihood, -log p(y|x) (eq. 2), optionally smoothed.

    Same label convention as :func:`rag_sequence_nll`. Without smoothing only the target token is
    marginalised over passages; with ``epsilon > 0`` the full marginal next-token distribution is
    needed for ``smooth = -sum_i sum_v log p(v|x,y_<i)``, and the loss is
    ``(1 - eps) * nll + eps / V * smooth``.

    Args:
        context_input_ids, context_attention_mask: (B, K, L) int64.
        doc_scores: (B, K) float.
        labels: (B, T) int64.
        logits: (B, K, T-1, V) from :func:`generator_logits` when already computed.

    Returns:
        (B,) float NLL per question.
    """
    check_rag_inputs(context_input_ids, context_attention_mask, doc_scores)
    pad = generator.config.pad_token_id
    if logits is None:
        logits = generator_logits(generator, context_input_ids, context_attention_mask, labels)
    targets = labels[:, 1:]  # (B, T-1)
    target_mask = targets.ne(pad)
    doc_logprior = torch.log_softmax(doc_scores.float(), dim=1)  # (B, K)
    tok_logp = token_logprobs(logits, targets, pad)  # (B, K, T-1)
    marg = torch.logsumexp(tok_logp + doc_logprior[:, :, None], dim=1)  # (B, T-1)
    nll = -(marg * target_mask).sum(dim=1)  # (B,)
    if epsilon == 0.0:
        return nll
    V = logits.shape[-1]
    logp = torch.log_softmax(logits, dim=-1) + doc_logprior[:, :, None, None]  # (B, K, T-1, V)
    marg_vocab = torch.logsumexp(logp, dim=1).sum(dim=-1)  # (B, T-1)
    smooth = -(marg_vocab * target_mask).sum(dim=1)  # (B,)
    return (1.0 - epsilon) * nll + (epsilon / V) * smooth


def rag_loss(
    mode: RagMode,
    generator: PreTrainedModel,
    context_input_ids: Tensor,
    context_attention_mask: Tensor,
    doc_scores: Tensor,
    labels: Tensor,
    *,
    epsilon: float = 0.0,
    exclude_bos_score: bool = False,
    pointer_targets: Tensor | None = None,
    pointer_weight: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Dispatch to :func:`rag_sequence_nll` (``mode="sequence"``) or :func:`rag_token_nll`.

    ``exclude_bos_score`` applies to RAG-Sequence only (transformers ignores it for RAG-Token).
    With a copy generator, ``pointer_targets`` (B, K, T-1) and ``pointer_weight`` > 0 add
    ``pointer_weight * pointer_nll`` (:func:`pointer_nll`) to each question's loss.

    Returns:
        ``(loss, nll)``: the scalar mean over questions of the loss and the (B,) per-question RAG
        NLL (without the pointer term).
    """
    if mode not in ("sequence", "token"):
        raise ValueError(f"mode must be 'sequence' or 'token', got {mode!r}")
    if mode == "token" and exclude_bos_score:
        raise ValueError("exclude_bos_score is only defined for mode='sequence'")
    check_rag_inputs(context_input_ids, context_attention_mask, doc_scores)
    out = generator_outputs(generator, context_input_ids, context_attention_mask, labels)
    args = (generator, context_input_ids, context_attention_mask, doc_scores, labels)
    if mode == "sequence":
        nll = rag_sequence_nll(*args, epsilon=epsilon, exclude_bos_score=exclude_bos_score,
                               logits=out.logits)
    else:
        nll = rag_token_nll(*args, epsilon=epsilon, logits=out.logits)
    loss = nll
    if pointer_targets is not None and pointer_weight > 0 and has_copy_head(generator):
        loss = nll + pointer_weight * pointer_nll(out.pointer_logp, pointer_targets)
    return loss.mean(), nll


def hypothesis_logprobs(
    generator: PreTrainedModel,
    encoder_states: Tensor,
    context_attention_mask: Tensor,
    hyps: Tensor,
    q_idx: Tensor,
    source_ids: Tensor | None = None,
) -> Tensor:
    """Teacher-forced log p(hyps[m, t+1] | x, z, hyps[m, :t+1]) under each passage of its question.

    Reuses what the hypotheses share: the encoder output; the first decoder step (every hypothesis
    starts with the decoder start symbol), whose KV cache, cross-attention included, is copied to
    each (hypothesis, passage) row; and the output layer's normaliser, computed once per distinct
    (question, passage, prefix) since beam hypotheses share long prefixes.

    Used by RAG-Sequence thorough decoding, whose candidates share most of their computation.

    Args:
        generator: a BART-family seq2seq LM (logits = decoder state W^T + final_logits_bias).
        encoder_states: (B, K, L, D) from :func:`rag.decode.encode_passages`.
        context_attention_mask: (B, K, L) int64.
        hyps: (M, T) int64 hypotheses, each starting with the decoder start symbol.
        q_idx: (M,) int64, the question of each hypothesis.
        source_ids: (B, K, L) int64 passage input ids; needed by a copy generator only.

    Returns:
        (M, K, T-1) float, 0 at padded targets.
    """
    B, K, L, D = encoder_states.shape
    M, T = hyps.shape
    if not hyps[:, 0].eq(hyps[0, 0]).all():
        raise ValueError("hypotheses must all start with the decoder start symbol")
    decoder = generator.get_decoder()
    # transformers boundary: passages flattened to (B*K, ...)
    flat_enc = encoder_states.reshape(B * K, L, D)
    flat_mask = context_attention_mask.reshape(B * K, L)
    first = decoder(
        input_ids=hyps[:1, :1].expand(B * K, 1),
        encoder_hidden_states=flat_enc,
        encoder_attention_mask=flat_mask,
        use_cache=True,
    )
    cache0 = first.cache
    hidden = encoder_states.new_empty(M, K, T - 1, D)  # decoder states that predict hyps[:, 1:]
    passage = torch.arange(K, device=hyps.device)
    per_chunk = max(1, _CHUNK_ELEMENTS // (K * L * D * 2 * len(cache0)))  # bounds the copied cache
    for lo in range(0, M, per_chunk):
        h = hyps[lo : lo + per_chunk]  # (m, T)
        m = h.shape[0]
        rows = (q_idx[lo : lo + m, None] * K + passage).view(-1)  # (m*K,) rows of (B*K)
        hidden[lo : lo + m, :, 0] = first.last_hidden_state[rows, 0].view(m, K, D)
        if T > 2:
            inputs = h[:, None, 1 : T - 1].expand(m, K, T - 2).reshape(m * K, T - 2)  # (m*K, T-2)
            out = decoder(
                input_ids=inputs,
                encoder_hidden_states=flat_enc[rows],
                encoder_attention_mask=flat_mask[rows],
                cache=_cache_rows(cache0, rows),
                use_cache=True,
            )
            hidden[lo : lo + m, :, 1:] = out.last_hidden_state.view(m, K, T - 2, D)
    weight, bias = _output_layer(generator)  # (V, D), (V,)
    targets = hyps[:, 1:]  # (M, T-1)
    real = targets.ne(generator.config.pad_token_id)  # (M, T-1)
    gold = torch.einsum("mktd,mtd->mkt", hidden, weight[targets]) + bias[targets][:, None, :]
    lse = _log_normaliser(hidden, hyps, q_idx, real, weight, bias)  # (M, K, T-1)
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
    hidden: Tensor, hyps: Tensor, q_idx: Tensor, real: Tensor, weight: Tensor, bias: Tensor
) -> Tensor:
    """logsumexp_v of the logits at every (hypothesis, passage, position) whose target is real,
    computed once per distinct (question, prefix).

    Args:
        hidden: (M, K, T-1, D) decoder states; hyps: (M, T); q_idx: (M,).
        real: (M, T-1) bool, True where the target is not padding.

    Returns:
        (M, K, T-1) float, 0 where no target is real.
    """
    M, K, T1, D = hidden.shape
    same = (hyps[:, None, :T1] == hyps[None, :, :T1]).int().cumprod(dim=2).bool()  # (M, M, T-1)
    same &= (q_idx[:, None] == q_idx[None, :])[:, :, None]
    owner = same.int().argmax(dim=1)  # (M, T-1): first hypothesis sharing the prefix
    # a prefix needs its normaliser if any hypothesis through it has a real target there
    needed = torch.zeros(M, T1, device=hyps.device).scatter_add_(0, owner, real.float()) > 0
    m_idx, t_idx = needed.nonzero(as_tuple=True)  # only owners can be needed
    states = hidden[m_idx, :, t_idx].reshape(-1, D)  # (U*K, D) distinct prefixes
    per_chunk = max(1, _CHUNK_ELEMENTS // weight.shape[0])
    lse = torch.cat(
        [torch.logsumexp(F.linear(part, weight, bias), dim=-1) for part in states.split(per_chunk)]
    )
    table = hidden.new_zeros(M, T1, K)
    table[m_idx, t_idx] = lse.view(-1, K)
    return table.gather(0, owner[:, :, None].expand(M, T1, K)).transpose(1, 2)  # (M, K, T-1)


def _cache_rows(cache: EncoderDecoderCache, rows: Tensor) -> EncoderDecoderCache:
    """A new cache made of ``rows`` of ``cache`` (self- and cross-attention, every layer)."""

    def pick(part: DynamicCache) -> DynamicCache:
        return DynamicCache(
            [(k.index_select(0, rows), v.index_select(0, rows)) for k, v, *_ in part]
        )

    return EncoderDecoderCache(pick(cache.self_attention_cache), pick(cache.cross_attention_cache))
