"""Answers: decoded token ids turned into answer text, with the passages they came from.

An answer whose tokens occur in a retrieved passage is given as that stretch of the passage
(:func:`copy_span`), so it keeps the passage's casing, spacing and punctuation ("Levi's Stadium")
that detokenising a lowercasing WordPiece vocabulary loses ("levi ' s stadium").
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Answer:
    """An answer and where it came from: the passages (id, title, text, score) it was generated
    from, best first; ``score`` is log p(y|x) (RAG-Sequence) or the search score (RAG-Token)."""

    question: str
    answer: str
    score: float
    passages: list[dict]


def copy_span(tokenizer, answer_ids: list[int], passages: list[dict]) -> str | None:
    """The passage text the answer tokens were copied from, or None.

    Searches the passages in order (best first), text before title, for ``answer_ids`` (without
    special tokens) as a contiguous run of the passage's own tokens, and cuts the original string
    at that run's character offsets. Needs a fast tokenizer (offsets); None without one.
    """
    if not answer_ids or not getattr(tokenizer, "is_fast", False):
        return None
    n = len(answer_ids)
    for p in passages:
        for field_name in ("text", "title"):
            source = p.get(field_name) or ""
            enc = tokenizer(source, add_special_tokens=False, return_offsets_mapping=True)
            ids = enc["input_ids"]
            for i in range(len(ids) - n + 1):
                if ids[i : i + n] == answer_ids:
                    offsets = enc["offset_mapping"]
                    return source[offsets[i][0] : offsets[i + n - 1][1]]
    return None


def make_answers(tokenizer, questions: list[str], sequences: Tensor, scores: Tensor,
                 sources: list[list[dict]], copy_spans: bool) -> list[Answer]:
    """One :class:`Answer` per question from its best hypothesis.

    Args:
        sequences: (B, T) int64 decoded ids, special tokens included.
        scores: (B,) float, the hypotheses' scores.
        sources: B lists of the passage dicts each answer was generated from, best first.
        copy_spans: give an answer found in its passages as the passage's text (:func:`copy_span`).
    """
    texts = tokenizer.batch_decode(sequences, skip_special_tokens=True)
    if copy_spans:
        special = set(tokenizer.all_special_ids)
        for b, seq in enumerate(sequences.tolist()):
            span = copy_span(tokenizer, [t for t in seq if t not in special], sources[b])
            texts[b] = span if span is not None else texts[b]
    return [Answer(question=q, answer=t.strip(), score=float(s), passages=sources[b])
            for b, (q, t, s) in enumerate(zip(questions, texts, scores.tolist(), strict=True))]


def with_offsets(answer: Answer) -> Answer:
    """``answer`` with, on each passage that holds the answer as a stretch of its text and does
    not say where yet, ``answer_start`` and ``answer_end``: the characters of its first
    occurrence (exact, else ignoring case). The span reader sets them itself."""
    text = answer.answer
    passages = []
    for p in answer.passages:
        if text and "answer_start" not in p:
            body = p.get("text", "")
            at = body.find(text)
            if at < 0 and len(body.lower()) == len(body):
                at = body.lower().find(text.lower())
            if at >= 0:
                p = {**p, "answer_start": at, "answer_end": at + len(text)}
        passages.append(p)
    return Answer(answer.question, answer.answer, answer.score, passages)
