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
import textwrap
from collections.abc import Sequence
from contextlib import ExitStack

from rag.common.atomic import atomic_file
from rag.common.questions import Question

from .metrics import answer_test


def dpr_results(questions: Sequence[Question], passages: Sequence[list[dict]],
                match: str = "dpr") -> list[dict]:
    """DPR's results records for ``questions`` and their retrieved passages (dicts with id, title,
    text, score), in order; ``has_answer`` by the ``match`` test of ``retriever.metrics``."""
    prepare, test = answer_test(match)
    return [{"question": q.question, "answers": list(q.answers),
             "ctxs": [{"id": p["id"], "title": p["title"], "text": p["text"], "score": p["score"],
                       "has_answer": test(prepare(p["text"]), q.answers, q.patterns)} for p in hits]}
            for q, hits in zip(questions, passages, strict=True)]


def trec_lines(questions: Sequence[Question], passages: Sequence[list[dict]], first: int = 1,
               run: str = "ragqa") -> list[str]:
    """TREC run lines; a question without an id is numbered by its position (``first`` for the
    first of these)."""
    lines = []
    for i, (q, hits) in enumerate(zip(questions, passages, strict=True), start=first):
        qid = (q.id or str(i)).replace(" ", "_")
        lines += [f"{qid} Q0 {p['id']} {rank} {p['score']:.6f} {run}"
                  for rank, p in enumerate(hits, start=1)]
    return lines


class ResultsWriter:
    """Writes DPR's results JSON and/or a TREC run as questions are retrieved, batch by batch, so
    that memory does not grow with the number of questions. Each file is written under a temporary
    name and renamed into place when the ``with`` block ends normally (``atomic_file``); on an
    error neither is left behind.

        with ResultsWriter(results_path, trec_path, match) as out:
            out.add(questions, passages)   # per batch, in order
    """

    def __init__(self, results: str | os.PathLike | None = None,
                 trec: str | os.PathLike | None = None, match: str = "dpr"):
        self.paths, self.match = {"results": results, "trec": trec}, match
        self._files: dict = {}
        self._stack = ExitStack()
        self._count = 0

    def __enter__(self) -> ResultsWriter:
        for kind, path in self.paths.items():
            if path:
                tmp = self._stack.enter_context(atomic_file(path))
                self._files[kind] = self._stack.enter_context(tmp.open("w", encoding="utf-8"))
        if "results" in self._files:
            self._files["results"].write("[")
        return self

    def add(self, questions: Sequence[Question], passages: Sequence[list[dict]]) -> None:
        """The next questions, in order, with their passages (dicts with id, title, text, score)."""
        done = self._count
        if "results" in self._files:
            for j, record in enumerate(dpr_results(questions, passages, self.match)):
                # laid out as json.dumps(all records, indent=1) lays out each element of its list
                self._files["results"].write(("\n" if done + j == 0 else ",\n") + textwrap.indent(
                    json.dumps(record, ensure_ascii=False, indent=1), " "))
        if "trec" in self._files:
            lines = trec_lines(questions, passages, first=done + 1)
            self._files["trec"].writelines(line + "\n" for line in lines)
        self._count = done + len(questions)

    def __exit__(self, kind, value, trace) -> None:
        if kind is None and "results" in self._files:
            self._files["results"].write("\n]\n" if self._count else "]\n")
        self._stack.__exit__(kind, value, trace)
