"""Evaluate a retriever on a question set: DPR top-k accuracy, gold-passage recall, MRR."""

from __future__ import annotations

from collections.abc import Sequence

from rag.common.collective import gather_shares, share
from rag.common.errors import UserError
from rag.common.progress import progress_bar

from .gold import gold_passage_ids
from .metrics import MATCHES, answer_test, retrieval_metrics
from .questions import Question
from .search import Retriever


def evaluate_retrieval(retriever: Retriever, questions: Sequence[Question],
                       ks: Sequence[int] = (1, 5, 20, 100), batch_size: int = 128,
                       progress: bool = True, results: list | None = None,
                       match: str = "dpr") -> dict:
    """Retrieve the top ``max(ks)`` passages per question and score them (see ``metrics``).

    Returns ``{"n", "top_k_accuracy": {"k": frac}, "gold_recall": {...} | None, "mrr"}``; with a
    list ``results``, also appends each question's passages (id, title, text, score), best first.
    ``match`` is the has-answer test: "dpr" (DPR's token match) or "substring" (``metrics``).
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
    questions = [questions[i] for i in positions]
    golds = None if golds is None else [golds[i] for i in positions]
    hits, gold_hits, found = [], [], []
    prepare, test = answer_test(match)
    seen: dict[int, object] = {}  # row -> the passage as the test reads it, computed once
    bar = progress_bar(total=len(questions), desc="retrieving", unit="q", enabled=progress)
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        result = retriever.retrieve([q.question for q in chunk], top)
        if results is not None:
            found += result.passages
        for j, (q, passages, rows) in enumerate(zip(chunk, result.passages, result.rows,
                                                    strict=True)):
            for p, row in zip(passages, rows, strict=False):
                if row not in seen:
                    seen[row] = prepare(p["text"])
            hits.append([test(seen[r], q.answers, q.patterns) for r in rows[: len(passages)]])
            if golds is not None:
                gold = golds[start + j]
                gold_hits.append([p["id"] in gold for p in passages])
        bar.update(len(chunk))
    bar.close()
    if results is not None:
        results += gather_shares(found, n)
    hits = gather_shares(hits, n)
    gold_hits = gather_shares(gold_hits, n) if golds is not None else None
    return retrieval_metrics(hits, ks, gold_hits)
