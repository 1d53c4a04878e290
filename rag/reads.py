"""What the generator reads for a batch (:class:`Read`), a training batch prepared ahead of its
step (:class:`TrainBatch`), and the pointer and span targets of the passages read
(:func:`training_targets`). Preparing a training batch needs no weights, so a DataLoader worker
can (``rag.common.loop.prepared_batches``); ``RagModel.training_batch`` builds one.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from generator.copy import has_copy_head
from generator.inputs import answer_char_spans, passage_pointer_targets, token_layout
from generator.span import gold_span_mask, has_span_head

from .span_reader import SpanTargets

log = logging.getLogger(__name__)


class Read(NamedTuple):
    """What the generator reads for a batch: its inputs (B, K, L), the doc scores (B, K) (logits
    of p(z|x)), the passages read (dicts; none in closed book) and the input strings tokenised
    (None in closed book)."""

    inputs: dict[str, torch.Tensor]
    doc_scores: torch.Tensor
    sources: list[list[dict]]
    strings: list[list[str]] | None

    def to(self, device) -> Read:
        return self._replace(inputs={k: v.to(device) for k, v in self.inputs.items()},
                             doc_scores=self.doc_scores.to(device))


class TrainBatch(NamedTuple):
    """A training batch as ``RagModel.training_batch`` prepares it, on the CPU: the questions and
    answers, the decoder targets (B, T), and, once passages are known (given ones, or closed
    book), what the generator reads, its pointer targets (B, K, T-1) and span targets, and the
    answers found in no passage (``{"pointer": n, "span": n}``). Without passages yet, the last
    four are None, None, None, {}: retrieval happens in the step."""

    questions: list[str]
    answers: list[str]
    labels: torch.Tensor
    read: Read | None
    pointer: torch.Tensor | None
    span: SpanTargets | None
    missing: dict[str, int]


def training_targets(model, answers: list[str], read: Read, labels: torch.Tensor
                     ) -> tuple[torch.Tensor | None, SpanTargets | None, dict[str, int]]:
    """The pointer targets (with a copy head) and span targets (with a span head) of
    ``read``'s passages for ``model`` (a ``RagModel``: its tokenizer, generator and config), and
    how many answers each found in no passage (``{"pointer": n, "span": n}``, for those it
    has)."""
    pointer = span = None
    missing: dict[str, int] = {}
    if read.strings is None:
        return pointer, span, missing
    if has_copy_head(model.generator) and model.config.pointer_weight > 0:
        pointer = passage_pointer_targets(model.tokenizer, read.strings, answers, labels,
                                          read.inputs["input_ids"],
                                          model.generator.generation_config)
        missing["pointer"] = int((~pointer.ge(0).flatten(1).any(dim=1)).sum())
    if has_span_head(model.generator) and model.config.span_weight > 0 and read.strings:
        span = span_targets(model, answers, read.strings, read.inputs["input_ids"])
        missing["span"] = int((~span.gold.flatten(1).any(dim=1)).sum())
    for name, n in missing.items():
        if n:
            log.debug("%s loss: %d of %d answers found in no passage, skipped", name, n,
                      len(answers))
    return pointer, span, missing


def span_targets(model, answers: list[str], strings: list[list[str]], input_ids: torch.Tensor
                 ) -> SpanTargets:
    """The span loss's allowed tokens and gold spans (every occurrence of each answer in each
    passage text, ``generator.inputs.answer_char_spans``); answers found in no passage have no
    gold span (the loss skips them)."""
    B, K, L = input_ids.shape
    M = model.config.max_answer_tokens
    offsets, allowed = token_layout(model.tokenizer, strings, L)
    spans = [answer_char_spans(s, answers[b]) for b, row in enumerate(strings) for s in row]
    gold = gold_span_mask(spans, offsets.view(B * K, L, 2), allowed.view(B * K, L), M)
    return SpanTargets(allowed, gold.view(B, K, L, M), model.config.span_weight, M)
