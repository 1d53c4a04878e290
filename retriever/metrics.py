"""Retrieval metrics as DPR reports them: top-k accuracy, gold-passage recall, MRR.

Top-k accuracy (Karpukhin et al. 2020, Sec. 5.1): the fraction of questions for which at least one
of the top-k passages contains a gold answer. "Contains" has two definitions here:

- ``dpr`` (the default of evaluation): DPR's. Passage and answer are Unicode-NFD-normalised and cut
  into lower-cased tokens, each a run of letters, digits and combining marks or a single other
  non-space character; the answer's tokens must appear as a contiguous run of the passage's.
- ``substring``: both sides normalised as SQuAD's evaluation script does (lowercase, no
  punctuation, no articles a/an/the, single spaces), the answer on word boundaries.

Regular-expression answers (CuratedTREC, as DPR distributes it) are tested the way DPR's regex
has_answer does under either definition: pattern and passage NFD-normalised, the pattern searched
anywhere in the passage, case-insensitive, multi-line.

The answer normalisation and the pattern compiler are the QA metrics' (``rag.common.qa_metrics``),
so a passage "holds" an answer by the same rule that scores it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import regex

from rag.common.qa_metrics import compile_pattern, normalize_answer

Match = Literal["dpr", "substring"]
MATCHES = get_args(Match)
_TOKEN = regex.compile(r"[\p{L}\p{N}\p{M}]+|[^\p{Z}\p{C}]")


def has_answer(passage: str, answers: Sequence[str], normalized: bool = False) -> bool:
    """True if a normalised gold answer occurs, on word boundaries, in the normalised passage.

    ``normalized=True`` says ``passage`` already went through :func:`normalize_answer` (callers
    checking many questions against one passage normalise it once).
    """
    hay = f" {passage if normalized else normalize_answer(passage)} "
    for ans in answers:
        norm = normalize_answer(ans)
        if norm and f" {norm} " in hay:
            return True
    return False


def dpr_tokens(text: str) -> list[str]:
    """DPR's tokens of ``text`` (module doc): NFD, lower-cased, alphanumeric runs or single symbols."""
    return [t.lower() for t in _TOKEN.findall(unicodedata.normalize("NFD", text))]


def token_has_answer(passage_tokens: Sequence[str], answers: Sequence[str]) -> bool:
    """DPR's has_answer: some answer's tokens are a contiguous run of ``passage_tokens``
    (:func:`dpr_tokens` of the passage)."""
    for answer in answers:
        want = dpr_tokens(answer)
        n = len(want)
        if n and any(list(passage_tokens[i : i + n]) == want
                     for i in range(len(passage_tokens) - n + 1)):
            return True
    return False


def regex_has_answer(passage: str, patterns: Sequence[str]) -> bool:
    """DPR's regex has_answer: some NFD-normalised pattern occurs anywhere in the NFD passage."""
    text = unicodedata.normalize("NFD", passage)
    return any(compile_pattern(unicodedata.normalize("NFD", p)).search(text) for p in patterns)


AnswerTest = Callable[[tuple[str, object], Sequence[str], Sequence[str]], bool]


def answer_test(match: str) -> tuple[Callable[[str], tuple[str, object]], AnswerTest]:
    """The has-answer test ``match`` ("dpr" or "substring") as ``(prepare, test)``: ``prepare(text)``
    once per passage, then ``test(prepared, answers, patterns=())`` per question (string answers
    by ``match``, regex answers by :func:`regex_has_answer`)."""
    if match == "dpr":
        ready, contains = dpr_tokens, token_has_answer
    else:
        ready = normalize_answer
        def contains(prepared, answers):
            return has_answer(prepared, answers, normalized=True)

    def prepare(text: str) -> tuple[str, object]:
        return text, ready(text)

    def test(prepared: tuple[str, object], answers: Sequence[str], patterns: Sequence[str] = ()
             ) -> bool:
        text, done = prepared
        return ((bool(answers) and contains(done, answers))
                or (bool(patterns) and regex_has_answer(text, patterns)))

    return prepare, test


def retrieval_metrics(
    hit_matrix: Sequence[Sequence[bool]],
    ks: Sequence[int],
    gold_matrix: Sequence[Sequence[bool]] | None = None,
) -> dict:
    """Aggregate per-question hits into DPR's figures.

    ``hit_matrix[q][r]`` says whether the passage at rank r (0-based) for question q holds an answer;
    ``gold_matrix`` the same for "is a gold passage". Returns ``{"n", "top_k_accuracy": {k: frac},
    "gold_recall": {k: frac} or None, "mrr": float}``; MRR is over the first answer-bearing passage
    within the retrieved list (0 when none is found).
    """
    n = len(hit_matrix)
    first = [next((r for r, hit in enumerate(row) if hit), None) for row in hit_matrix]
    acc = {str(k): sum(f is not None and f < k for f in first) / n for k in ks}
    mrr = sum(1.0 / (f + 1) for f in first if f is not None) / n
    gold = None
    if gold_matrix is not None:
        gold_first = [next((r for r, g in enumerate(row) if g), None) for row in gold_matrix]
        gold = {str(k): sum(f is not None and f < k for f in gold_first) / n for k in ks}
    return {"n": n, "top_k_accuracy": acc, "gold_recall": gold, "mrr": mrr}
