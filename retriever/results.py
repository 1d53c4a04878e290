"""Per-question retrieval results in the formats other tools read.

- DPR's retrieval results JSON (what FiD, DPR's reader and pyserini's evaluation read): a list of
  ``{"question", "answers", "ctxs": [{"id", "title", "text", "score", "has_answer"}]}``, passages
  best first; ``has_answer`` is the test top-k accuracy used (``retriever.metrics``: DPR's token
  match by default).
- A TREC run file: ``qid Q0 docid rank score run`` per line, ranks from 1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from rag.common.atomic import atomic_file

from .metrics import answer_test
from .questions import Question


def dpr_results(questions: Sequence[Question], passages: Sequence[list[dict]],
                match: str = "dpr") -> list[dict]:
    """DPR's results records for ``questions`` and their retrieved passages (dicts with id, title,
    text, score), in order; ``has_answer`` by the ``match`` test of ``retriever.metrics``."""
    prepare, test = answer_test(match)
    return [{"question": q.question, "answers": list(q.answers),
             "ctxs": [{"id": p["id"], "title": p["title"], "text": p["text"], "score": p["score"],
                       "has_answer": test(prepare(p["text"]), q.answers, q.patterns)} for p in hits]}
            for q, hits in zip(questions, passages, strict=True)]


def write_dpr_results(path: str | os.PathLike, records: list[dict]) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n")


def write_trec(path: str | os.PathLike, questions: Sequence[Question],
               passages: Sequence[list[dict]], run: str = "ragqa") -> None:
    """A TREC run file; a question without an id is numbered by its position (from 1)."""
    lines = []
    for i, (q, hits) in enumerate(zip(questions, passages, strict=True), start=1):
        qid = (q.id or str(i)).replace(" ", "_")
        lines += [f"{qid} Q0 {p['id']} {rank} {p['score']:.6f} {run}"
                  for rank, p in enumerate(hits, start=1)]
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
