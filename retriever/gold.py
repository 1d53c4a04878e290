"""Gold passages: which passages of a corpus hold a question's gold.

DPR-format questions name theirs (``positive_ctxs``); a SQuAD question carries the paragraph it
was written on, which is matched to the passages with the same text, whitespace collapsed
(``rag.common.questions.collapse_ws``). Evaluation (gold recall), training examples (positives), the
scaling sweep and the reader warm-up (``rag.train``) all match them here.
"""

from __future__ import annotations

from collections.abc import Sequence

from rag.common.questions import Question, collapse_ws


def gold_rows(questions: Sequence[Question], texts: Sequence[str]) -> list[list[int]]:
    """For each question, the rows (ascending) of ``texts`` that are its gold paragraph
    (``gold_context``) after whitespace is collapsed; empty when it has none or no passage is it."""
    rows_of: dict[str, list[int]] = {}
    for row, text in enumerate(texts):
        rows_of.setdefault(collapse_ws(text), []).append(row)
    return [list(rows_of.get(collapse_ws(q.gold_context), ())) if q.gold_context else []
            for q in questions]


def gold_passage_ids(index, questions: Sequence[Question]) -> list[set[str]] | None:
    """Gold passage ids per question, when every question knows its gold passage, else None.

    ``index`` is anything with a ``passages`` table (id, text): a ``DenseIndex``. DPR-format
    questions name their passages; SQuAD questions are matched by :func:`gold_rows`.
    """
    if all(q.positive_ids for q in questions):
        return [set(q.positive_ids) for q in questions]
    if not all(q.gold_context for q in questions):
        return None
    ids = index.passages["id"]
    golds = [{ids[r] for r in rows} for rows in gold_rows(questions, index.passages["text"])]
    return golds if any(golds) else None
