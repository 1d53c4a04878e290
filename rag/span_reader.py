"""The span reader: answers as stretches of the retrieved passages, scored by the generator's span head.

With p(span | x, z) from ``generator.span`` and p(z|x) from the retriever, an answer string y is
scored as RAG-Sequence scores it (Lewis et al. 2020, eq. 1), its spans summed within and across
passages:

    p(y|x) = sum_z p(z|x) sum_{(i, j) in z : norm(text(i, j)) = norm(y)} p(i, j | x, z)

norm is SQuAD's answer normalisation (lower case, no punctuation or articles), so "the Nile" in one
passage and "Nile" in another add up, as pygaggle's reader sums span probabilities across passages.
Decoding may weight the retriever (``doc_weight`` w: log p(z|x) enters as w log p(z|x), the
interpolation of BERTserini; w = 1 is the marginal above, w = 0 the reader alone).

Training maximises the same marginal for the gold answer (:func:`span_nll`): passages that do not
hold it contribute only through p(z|x), as RAG-Sequence's loss has it.

Glossary: B questions, K passages per question, L input length, M longest answer in tokens,
D hidden size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from generator.inputs import text_region, token_layout
from generator.span import has_span_head, span_logprobs
from rag.common.errors import UserError
from rag.common.qa_metrics import normalize_answer

from .answers import Answer
from .passages import encode_passages


class SpanTargets(NamedTuple):
    """What the span loss reads for a batch: allowed tokens (B, K, L) bool, gold spans
    (B, K, L, M) bool, the loss weight and M."""

    allowed: Tensor
    gold: Tensor
    weight: float
    max_tokens: int

    def to(self, device) -> SpanTargets:
        return self._replace(allowed=self.allowed.to(device), gold=self.gold.to(device))


@dataclass
class SpanAnswer:
    """One question's best answer: its text (as written in the best passage holding it), its
    score (log of the marginal above, with ``doc_weight``), and for each of the K passages the
    (start, end) characters of its best span reading the answer in that passage's input string,
    or None."""

    text: str
    score: float
    spans: list[tuple[int, int] | None]


def passage_span_logprobs(generator, states: Tensor, allowed: Tensor, max_tokens: int) -> Tensor:
    """log p(i, i + m | x, z) (B, K, L, M) float32 from the encoder states (B, K, L, D)."""
    B, K, L, _ = states.shape
    start, end = generator.span_head(states)  # (B, K, L) each
    logp = span_logprobs(start.reshape(B * K, L), end.reshape(B * K, L),
                         allowed.reshape(B * K, L), max_tokens)  # (B*K, L, M)
    return logp.view(B, K, L, max_tokens)


def span_nll(span_logp: Tensor, doc_logprior: Tensor, gold: Tensor) -> tuple[Tensor, Tensor]:
    """-log p(y|x) of the gold answer under the span reader, per question.

    Args:
        span_logp: (B, K, L, M) log p(span | x, z); doc_logprior: (B, K) log p(z|x).
        gold: (B, K, L, M) bool, the spans reading the gold answer.

    Returns:
        ``(nll (B,), found (B,) bool)``: questions whose answer is in no passage (``found``
        False) get 0, they teach nothing.
    """
    B, K = doc_logprior.shape
    picked = span_logp.masked_fill(~gold, -float("inf")).flatten(2)  # (B, K, L*M)
    per_passage = torch.logsumexp(picked, dim=2)  # (B, K) log p(y | x, z)
    found = gold.flatten(1).any(dim=1)  # (B,)
    # a question found nowhere would take the log of 0, whose gradient into p(z|x) is nan (and
    # torch.where passes 0 * nan): its row is set to 0 first, and masked_fill's gradient there is 0
    joint = torch.logsumexp((per_passage + doc_logprior.float()).masked_fill(~found[:, None], 0.0),
                            dim=1)  # (B,)
    return torch.where(found, -joint, torch.zeros_like(joint)), found


def read_answers(span_logp: Tensor, doc_logprior: Tensor, offsets: Tensor,
                 strings: list[list[str]], top: int = 32, doc_weight: float = 1.0
                 ) -> list[SpanAnswer | None]:
    """The best answer of each question by the marginal of the module doc.

    Each passage offers its ``top`` most probable spans (all of them when ``top`` covers L * M);
    spans with the same normalised text are summed within and across passages, in float64.

    Args:
        span_logp: (B, K, L, M); doc_logprior: (B, K); offsets: (B, K, L, 2) character offsets
            of the tokens in ``strings`` (``generator.inputs.token_layout``).
        strings: (B, K) generator input strings.

    Returns:
        B answers; None for a question none of whose passages has an allowed span.
    """
    B, K, L, M = span_logp.shape
    n = min(top, L * M)
    logp, flat = span_logp.double().flatten(2).topk(n, dim=2)  # (B, K, n)
    weighted = logp + doc_weight * doc_logprior.double()[:, :, None]  # (B, K, n)
    starts, ends = (flat // M).tolist(), (flat // M + flat % M).tolist()
    off, scores, own = offsets.tolist(), weighted.tolist(), logp.tolist()
    out: list[SpanAnswer | None] = []
    for b in range(B):
        total: dict[str, list[float]] = {}  # normalised text -> span scores
        best: dict[str, tuple[float, int, int, int]] = {}  # -> (score, k, char start, end)
        where: dict[str, list[tuple[int, int] | None]] = {}
        for k in range(K):
            for c in range(n):
                if own[b][k][c] == -math.inf:
                    break
                a, e = off[b][k][starts[b][k][c]][0], off[b][k][ends[b][k][c]][1]
                key = normalize_answer(strings[b][k][a:e])
                if not key:
                    continue
                total.setdefault(key, []).append(scores[b][k][c])
                slots = where.setdefault(key, [None] * K)
                slots[k] = slots[k] or (a, e)  # spans come best first within a passage
                if key not in best or scores[b][k][c] > best[key][0]:
                    best[key] = (scores[b][k][c], k, a, e)
        if not total:
            out.append(None)
            continue
        marginal = {key: _logsumexp(v) for key, v in total.items()}
        key = max(marginal, key=marginal.__getitem__)
        _, k, a, e = best[key]
        out.append(SpanAnswer(strings[b][k][a:e], marginal[key], where[key]))
    return out


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def check_span_reader(generator) -> None:
    """Raise :class:`UserError` unless ``generator`` has the span head ``--reader span`` needs."""
    if not has_span_head(generator):
        raise UserError("--reader span needs a generator with a span head (train one with "
                        "ragqa finetune --span_head); this one has none: use --reader generate")


def span_answers(generator, tokenizer, questions: list[str], inputs: dict[str, Tensor],
                 doc_scores: Tensor, strings: list[list[str]], sources: list[list[dict]],
                 config) -> list[Answer]:
    """``RagModel.answer`` for ``--reader span``: one :class:`~rag.answers.Answer` per question,
    picked by :func:`read_answers` with the settings of ``config`` (a ``RagConfig``).

    Args:
        inputs: (B, K, L) ``input_ids`` and ``attention_mask`` of the ``strings``;
        doc_scores: (B, K) logits of p(z|x); sources: (B, K) passage dicts.

    Each passage holding the answer as a span gets ``answer_start`` and ``answer_end``: its
    characters in the passage's text. An empty answer with score -inf means no passage had text.
    """
    check_span_reader(generator)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    states = encode_passages(generator, ids, mask)  # (B, K, L, D)
    offsets, allowed = token_layout(tokenizer, strings, ids.shape[-1])
    logp = passage_span_logprobs(generator, states, allowed.to(ids.device), config.max_answer_tokens)
    doc_logprior = torch.log_softmax(doc_scores.float(), dim=1)  # (B, K)
    found = read_answers(logp.cpu(), doc_logprior.cpu(), offsets, strings,
                         doc_weight=config.span_doc_weight)
    return [Answer(question=q, answer=a.text.strip() if a else "",
                   score=a.score if a else -math.inf,
                   passages=[_with_span(p, s, a.spans[k] if a else None)
                             for k, (p, s) in enumerate(zip(sources[b], strings[b], strict=True))])
            for b, (q, a) in enumerate(zip(questions, found, strict=True))]


def _with_span(passage: dict, string: str, span: tuple[int, int] | None) -> dict:
    """``passage``, or a copy with ``answer_start``/``answer_end`` (characters in its text) when
    it holds the answer as the span ``span`` of its generator input ``string``."""
    if span is None:
        return passage
    piece = string[span[0] : span[1]]
    at = span[0] - text_region(string)[0]
    text = passage.get("text", "")
    if text[at : at + len(piece)] != piece:  # the input string differs from the text (spaces)
        at = text.find(piece)
    return passage if at < 0 else {**passage, "answer_start": at, "answer_end": at + len(piece)}
