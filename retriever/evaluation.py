"""Evaluate a retriever on a question set: DPR top-k accuracy, gold-passage recall, MRR."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from rag.common.collective import gather_shares, share
from rag.common.errors import UserError
from rag.common.progress import progress_bar
from rag.common.questions import Question

from .gold import gold_passage_ids
from .metrics import MATCHES, answer_test, retrieval_metrics
from .search import Retriever


def evaluate_retrieval(retriever: Retriever, questions: Sequence[Question],
                       ks: Sequence[int] = (1, 5, 20, 100), batch_size: int = 128,
                       progress: bool = True, results: list | None = None,
                       match: str = "dpr", sink=None) -> dict:
    """Retrieve the top ``max(ks)`` passages per question and score them (see ``metrics``).

    Returns ``{"n", "top_k_accuracy": {"k": frac}, "gold_recall": {...} | None, "mrr"}``; with a
    list ``results``, also appends each question's passages (id, title, text, score), best first.
    With a ``sink`` (``retriever.results.ResultsWriter``), each batch's questions and passages go
    to ``sink.add`` as they are retrieved instead, so memory stays flat with the number of
    questions (under torch.distributed: gathered at the end, then added). ``match`` is the
    has-answer test: "dpr" (DPR's token match) or "substring" (``metrics``).
    """
    if match not in MATCHES:
        raise UserError(f"--match {match!r} is not one of {MATCHES}")
    ks = sorted(set(ks))
    if not ks or ks[0] <= 0:
        raise UserError(f"k values must be positive, got {list(ks)}")
    top = ks[-1]
    retriever.check_k(top)
    n = len(questions)
    golds = gold_passage_ids(retriever.index, questions)
    positions = share(n)  # under torch.distributed each process retrieves its share
    all_questions, questions = questions, [questions[i] for i in positions]
    golds = None if golds is None else [golds[i] for i in positions]
    together = len(positions) != n  # several processes: passages are gathered, not streamed
    if sink is not None and together:
        results = []
    hits, gold_hits, found = [], [], []
    prepare, test = answer_test(match)
    seen = _Prepared(prepare)
    bar = progress_bar(total=len(questions), desc="retrieving", unit="q", enabled=progress)
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        result = retriever.retrieve([q.question for q in chunk], top)
        if results is not None:
            found += result.passages
        elif sink is not None:
            sink.add(chunk, result.passages)
        for j, (q, passages, rows) in enumerate(zip(chunk, result.passages, result.rows,
                                                    strict=True)):
            row_hits = [test(seen.get(r, p["text"]), q.answers, q.patterns)
                        for p, r in zip(passages, rows, strict=False)]
            hits.append(_to_first(row_hits))  # all retrieval_metrics reads: memory stays flat
            if golds is not None:
                gold = golds[start + j]
                gold_hits.append(_to_first([p["id"] in gold for p in passages]))
        bar.update(len(chunk))
    bar.close()
    if results is not None:
        found = gather_shares(found, n)
        if sink is not None:
            sink.add(list(all_questions), found)
        else:
            results += found
    hits = gather_shares(hits, n)
    gold_hits = gather_shares(gold_hits, n) if golds is not None else None
    return retrieval_metrics(hits, ks, gold_hits)


def _to_first(row: list[bool]) -> list[bool]:
    """``row`` up to its first True (all of it when none is): what ``retrieval_metrics`` reads."""
    return row[: row.index(True) + 1] if True in row else []


class _Prepared:
    """Passages as the has-answer test reads them (``prepare(text)``), by row, computed once for
    the most recent ``size`` rows: bounded, so memory does not grow with the questions asked of
    a large corpus. 2,048 rows are as fast as 50,000 on squad-open (docs/benchmarks.md, "What
    grew"): the passages top-k lists share are the recent ones."""

    def __init__(self, prepare, size: int = 2048):
        self.prepare, self.size, self.rows = prepare, size, OrderedDict()

    def get(self, row: int, text: str):
        if row in self.rows:
            self.rows.move_to_end(row)
            return self.rows[row]
        self.rows[row] = ready = self.prepare(text)
        if len(self.rows) > self.size:
            self.rows.popitem(last=False)
        return ready
