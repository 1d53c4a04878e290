"""Answer metrics for open-domain QA: SQuAD exact match and token F1, CuratedTREC regex answers.

Both sides are normalised as SQuAD v1.1's evaluation script does (:func:`normalize_answer`, the
project's one normalisation, which retrieval's substring test uses too: ``retriever.metrics``)
and each figure is the maximum over the gold answers. A question whose gold answers are regular
expressions (CuratedTREC, as DPR distributes it) is answered correctly when a pattern matches the
*whole* prediction, case-insensitively; its F1 is its EM, token overlap having no meaning against
a pattern.

Per-question figures are fractions in [0, 1]; :func:`qa_metrics` reports percentages (0-100), as
the SQuAD metric of ``evaluate`` does. ``evaluate.load(str(QA_METRIC_DIR))`` gives the same
figures as an ``evaluate`` module (``rag/common/qa_metric/qa_metric.py``, a thin wrapper of this
module).
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from .errors import UserError

QA_METRIC_DIR = Path(__file__).parent / "qa_metric"  # evaluate.load(str(QA_METRIC_DIR))
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 answer normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> re.Pattern:
    """A regex answer, compiled as DPR compiles them (case-insensitive, Unicode, multi-line);
    an invalid one raises :class:`UserError` naming it."""
    try:
        return re.compile(pattern, flags=re.IGNORECASE | re.UNICODE | re.MULTILINE)
    except re.error as err:
        raise UserError(f"answer pattern {pattern!r} is not a valid regular expression ({err})") from None


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals a normalised gold answer (SQuAD EM), else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def f1_score(prediction: str, golds: Sequence[str]) -> float:
    """SQuAD token F1 between the normalised prediction and the best normalised gold, in [0, 1].

    Tokens are the whitespace-separated words after normalisation, counted with multiplicity.
    When either side normalises to nothing, F1 is 1.0 if both do and 0.0 otherwise (SQuAD v2's
    rule; v1.1's script would divide by zero). No golds give 0.0.
    """
    pred = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        ref = normalize_answer(gold).split()
        if not pred or not ref:
            best = max(best, float(pred == ref))
            continue
        common = sum((Counter(pred) & Counter(ref)).values())
        if common:
            precision, recall = common / len(pred), common / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def check_patterns(patterns: Sequence[str]) -> None:
    """Raise :class:`UserError` naming the first pattern that is not a valid regular expression."""
    for pattern in patterns:
        compile_pattern(pattern)


def regex_match(prediction: str, patterns: Sequence[str]) -> float:
    """1.0 if a pattern matches the whole prediction (``re.fullmatch``, case-insensitive), else 0.0.

    The normalised prediction is tried first (DPR's CuratedTREC patterns are lowercase words), then
    the prediction as generated, stripped, so that a pattern spelling out punctuation (``\\$5\\.5``)
    can still match. An invalid pattern raises :class:`UserError`.
    """
    candidates = (normalize_answer(prediction), prediction.strip())
    return float(any(compile_pattern(p).fullmatch(c) for p in patterns for c in candidates))


def qa_scores(prediction: str, answers: Sequence[str], patterns: Sequence[str] = ()
              ) -> tuple[float, float]:
    """``(EM, F1)`` in [0, 1] of one prediction: regex answers when ``patterns``, else strings."""
    if patterns:
        em = regex_match(prediction, patterns)
        return em, em
    return exact_match(prediction, answers), f1_score(prediction, answers)


def qa_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]],
               patterns: Sequence[Sequence[str] | None] | None = None) -> dict[str, float]:
    """``{"exact_match", "f1"}`` in percent (0-100), averaged over the predictions.

    ``references[i]`` lists the gold answers of prediction i; ``patterns``, when given, has one
    entry per prediction: regex answers (a non-empty list) or ``None``/``[]`` for string answers.
    """
    n = len(predictions)
    if n == 0:
        raise ValueError("no predictions to score")
    if len(references) != n or (patterns is not None and len(patterns) != n):
        raise ValueError(f"{n} predictions but {len(references)} references"
                         + (f" and {len(patterns)} pattern lists" if patterns is not None else ""))
    em = f1 = 0.0
    for i, (pred, refs) in enumerate(zip(predictions, references, strict=True)):
        e, f = qa_scores(pred, refs, (patterns[i] or ()) if patterns is not None else ())
        em, f1 = em + e, f1 + f
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}
