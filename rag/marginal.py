"""RAG likelihoods: marginalise a seq2seq generator over K retrieved passages, in log space.

Lewis et al. 2020 (arXiv:2005.11401), with p(z|x) = softmax_z(doc_scores):

- RAG-Sequence (eq. 1): log p(y|x) = logsumexp_z [log p(z|x) + sum_i log p(y_i|x,z,y_<i)]
- RAG-Token    (eq. 2): log p(y|x) = sum_i logsumexp_z [log p(z|x) + log p(y_i|x,z,y_<i)]

Label conventions and label smoothing follow transformers' ``RagSequenceForGeneration.get_nll``
and ``RagTokenForGeneration.get_nll`` so that the numbers agree (see :func:`rag_sequence_nll`).
The passages are encoded by ``rag.passages``; decoding rescores its hypotheses with
``rag.rescore`` and ranks them with :func:`sequence_log_marginal`.

Glossary: B questions, K passages per question, L context length, T label length (the decoder
reads T - 1 of them), D hidden size, V vocabulary.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

from generator.copy import has_copy_head, source_kwargs
from generator.span import has_span_head

from .passages import check_rag_inputs, encode_passages
from .span_reader import SpanTargets, passage_span_logprobs, span_nll

RagMode = Literal["sequence", "token"]


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
    states = encode_passages(generator, context_input_ids, context_attention_mask)  # (B, K, L, D)
    # transformers boundary: passages flattened to (B*K, ...)
    ids, mask = context_input_ids.reshape(B * K, L), context_attention_mask.reshape(B * K, L)
    out = generator(
        encoder_outputs=(states.flatten(0, 1),),
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


def _target_logprobs(generator: PreTrainedModel, context_input_ids: Tensor,
                     context_attention_mask: Tensor, doc_scores: Tensor, labels: Tensor,
                     logits: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """What both likelihoods (eqs. 1 and 2) start from, after checking the inputs' shapes.

    Returns:
        ``(logits, tok_logp, target_mask, doc_logprior)``: (B, K, T-1, V) logits (``logits`` when
        given, else :func:`generator_logits`), (B, K, T-1) log p(y_i|x,z,y_<i) (0 at padding),
        (B, T-1) bool real targets, and (B, K) float32 log p(z|x).
    """
    check_rag_inputs(context_input_ids, context_attention_mask, doc_scores)
    pad = generator.config.pad_token_id
    if logits is None:
        logits = generator_logits(generator, context_input_ids, context_attention_mask, labels)
    targets = labels[:, 1:]  # (B, T-1)
    doc_logprior = torch.log_softmax(doc_scores.float(), dim=1)  # (B, K)
    return logits, token_logprobs(logits, targets, pad), targets.ne(pad), doc_logprior


def rag_sequence_nll(generator: PreTrainedModel, context_input_ids: Tensor,
                     context_attention_mask: Tensor, doc_scores: Tensor, labels: Tensor, *,
                     epsilon: float = 0.0, exclude_bos_score: bool = False,
                     logits: Tensor | None = None) -> Tensor:
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
    logits, tok_logp, target_mask, doc_logprior = _target_logprobs(
        generator, context_input_ids, context_attention_mask, doc_scores, labels, logits)
    score_first = _bos_scored(labels, generator.config.bos_token_id, exclude_bos_score)
    nll = -sequence_log_marginal(tok_logp, doc_logprior, target_mask, score_first)  # (B,)
    if epsilon == 0.0:
        return nll
    V = logits.shape[-1]
    vocab_sum = _vocab_sum_logp(logits) * target_mask[:, None, :]  # (B, K, T-1)
    smooth_obj = vocab_sum.sum(dim=2) + V * doc_logprior * _prior_weight(target_mask)  # (B, K)
    smooth = -torch.logsumexp(smooth_obj, dim=1)  # (B,)
    return (1.0 - epsilon) * nll + (epsilon / V) * smooth


def rag_token_nll(generator: PreTrainedModel, context_input_ids: Tensor,
                  context_attention_mask: Tensor, doc_scores: Tensor, labels: Tensor, *,
                  epsilon: float = 0.0, logits: Tensor | None = None) -> Tensor:
    """Per-example RAG-Token negative log-likelihood, -log p(y|x) (eq. 2), optionally smoothed.

    Arguments, label convention and return value as :func:`rag_sequence_nll`'s. Without
    smoothing only the target token is marginalised over passages; with ``epsilon > 0`` the full
    marginal next-token distribution is needed for ``smooth = -sum_i sum_v log p(v|x,y_<i)``, and
    the loss is ``(1 - eps) * nll + eps / V * smooth``.
    """
    logits, tok_logp, target_mask, doc_logprior = _target_logprobs(
        generator, context_input_ids, context_attention_mask, doc_scores, labels, logits)
    marg = torch.logsumexp(tok_logp + doc_logprior[:, :, None], dim=1)  # (B, T-1)
    nll = -(marg * target_mask).sum(dim=1)  # (B,)
    if epsilon == 0.0:
        return nll
    V = logits.shape[-1]
    logp = torch.log_softmax(logits, dim=-1) + doc_logprior[:, :, None, None]  # (B, K, T-1, V)
    marg_vocab = torch.logsumexp(logp, dim=1).sum(dim=-1)  # (B, T-1)
    smooth = -(marg_vocab * target_mask).sum(dim=1)  # (B,)
    return (1.0 - epsilon) * nll + (epsilon / V) * smooth


def rag_loss(mode: RagMode, generator: PreTrainedModel, context_input_ids: Tensor,
             context_attention_mask: Tensor, doc_scores: Tensor, labels: Tensor, *,
             epsilon: float = 0.0, exclude_bos_score: bool = False,
             pointer_targets: Tensor | None = None, pointer_weight: float = 0.0,
             span: SpanTargets | None = None) -> tuple[Tensor, Tensor]:
    """Dispatch to :func:`rag_sequence_nll` (``mode="sequence"``) or :func:`rag_token_nll`.

    ``exclude_bos_score`` applies to RAG-Sequence only (transformers ignores it for RAG-Token).
    With a copy generator, ``pointer_targets`` (B, K, T-1) and ``pointer_weight`` > 0 add
    ``pointer_weight * pointer_nll`` (:func:`pointer_nll`) to each question's loss.

    With a span head, ``span`` (:class:`rag.span_reader.SpanTargets`) adds ``span.weight`` times
    the span reader's NLL of the gold answer (:func:`rag.span_reader.span_nll`), computed on the
    same encoder states; questions whose answer is in no passage add nothing.

    Returns:
        ``(loss, nll)``: the scalar mean over questions of the loss and the (B,) per-question RAG
        NLL (without the pointer and span terms).
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
    if span is not None and span.weight > 0 and has_span_head(generator):
        B, K, L = context_input_ids.shape
        states = out.encoder_last_hidden_state.view(B, K, L, -1)  # (B, K, L, D)
        span_logp = passage_span_logprobs(generator, states, span.allowed, span.max_tokens)
        doc_logprior = torch.log_softmax(doc_scores.float(), dim=1)  # (B, K)
        loss = loss + span.weight * span_nll(span_logp, doc_logprior, span.gold)[0]
    return loss.mean(), nll
