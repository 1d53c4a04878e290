"""Benchmark a RAG model on a question set: answer quality, retrieval of the same run, speed.

One run answers every question once and reports (``BenchmarkResult.metrics``)::

    n                   questions answered
    exact_match, f1     SQuAD EM and token F1 in percent (rag.common.qa_metrics; regex answers for patterns)
    top_k_accuracy      {"1": frac, "5": frac, ...}: fraction of questions with an answer-bearing
                        passage among the top k *that the answers were generated from*, for k in
                        1, 5, 10, 20, 50, 100, ... below the run's k, and the run's k itself
                        (fractions, as ragqa eval-retrieval reports them, with the same
                        has-answer test: ``match``, DPR's by default); {} for closed book
    answer_in_passages  fraction of questions whose gold answer occurs in any retrieved passage
                        (the upper bound a reader of these passages could reach); None closed book
    latency_ms          {"p50", "p95", "mean"} per-question latency in milliseconds, see below
    questions_per_s     questions answered per second of answering time
    seconds             total answering time
    config              what was run: model, index, k, mode, decoding, num_beams, questions,
                        limit, seed, batch_size, match, device, versions (torch, transformers, faiss)

Latency: questions are answered in batches of ``batch_size``; a question's latency is the wall-clock
time of its batch (retrieval, generation and decoding to text) divided by the batch size, i.e. the
amortised cost of one question at that batch size, not the time a lone question would wait (use
``batch_size=1`` for that). Loading the model and scoring are not timed; the first batch is (so
one-off costs such as moving a FAISS index to the GPU land in the p95 of short runs).

Decoding (a run's ``"decoding"`` change, ``rag.config.run_config``): RAG-Sequence decodes "thorough"
or "fast" (Lewis et al. 2020, Sec. 2.4) with the model's beam width; "greedy" is beam width 1 and
"beam" the model's beam width (or ``num_beams``), with the model's own thorough/fast rescoring in
sequence mode. RAG-Token takes only "greedy" or "beam".
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from transformers import set_seed

from rag.common.atomic import atomic_file, check_output_parent
from rag.common.collective import gather_shares, share, world
from rag.common.errors import UserError
from rag.common.options import NON_NEGATIVE, POSITIVE, check_fields, option
from rag.common.progress import progress_bar
from rag.common.qa_metrics import check_patterns, qa_scores
from rag.common.questions import Question, read_questions
from retriever.metrics import Match, answer_test, retrieval_metrics

from .config import Quantize
from .loading import load_model
from .model import RagModel

TOP_K_STEPS = (1, 5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass(frozen=True)
class BenchmarkConfig:
    """How a benchmark run answers and scores (the model's own settings are changed, if at all,
    by the run's changes, ``rag.config.RUN_CHANGES``)."""

    limit: int = option(0, "answer only the first N questions; 0 = all", within=NON_NEGATIVE)
    batch_size: int = option(
        8, "questions answered together (latency is per batch, divided by its size)",
        within=POSITIVE)
    seed: int = option(0, "seed of torch, numpy and random, set before answering")
    progress: bool = option(True, "show a progress bar on stderr")
    match: Match = option(
        "dpr", "has-answer test of top_k_accuracy and answer_in_passages: \"dpr\" (DPR's: the answer's "
        "tokens as a contiguous run of the passage's, after NFD) or \"substring\" (SQuAD- normalised "
        "answer string on word boundaries); retriever.metrics")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class BenchmarkResult:
    """``metrics``: the run's figures (module doc); ``predictions``: one row per question with
    id, question, answers, [patterns], prediction, score, em and f1 (0 or 1, and in [0, 1]) and
    the retrieved passage ids, best first."""

    metrics: dict
    predictions: list[dict]


def _top_ks(k: int) -> list[int]:
    return [step for step in TOP_K_STEPS if step < k] + [k]


def _percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q))


def _versions() -> dict[str, str]:
    # lazy: faiss is an optional extra; retriever.index_factory, loaded by now, says how to install it
    import faiss

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "faiss": faiss.__version__}


def run_benchmark(model: RagModel, questions: list[Question], config: BenchmarkConfig,
                  decoding: str = "") -> BenchmarkResult:
    """Answer ``questions`` (the first ``config.limit``) with ``model`` and score the answers.

    ``decoding`` is the name the report gives the model's decoding (``rag.config.run_config``).
    The ``config`` record of the metrics names the run's model settings; the caller adds where the
    model, index and questions came from.
    """
    questions = questions[: config.limit] if config.limit else list(questions)
    if not questions:
        raise UserError("no questions to answer")
    check_patterns([p for q in questions for p in q.patterns])  # fail before the work
    set_seed(config.seed)
    n = len(questions)
    mine = [questions[i] for i in share(n)]  # under torch.distributed: this process's share
    seconds, rows, hits = (gather_shares(x, n) for x in _answer(model, mine, config))
    return BenchmarkResult(metrics=_metrics(model, config, decoding, seconds, rows, hits),
                           predictions=rows)


def _answer(model: RagModel, questions: list[Question], config: BenchmarkConfig
            ) -> tuple[list[float], list[dict], list[list[bool]]]:
    """Answer ``questions`` in batches: each one's latency in seconds, its prediction row
    (:class:`BenchmarkResult`) and, per retrieved passage, whether it holds an answer."""
    seconds, rows, hits = [], [], []
    prepare, test = answer_test(config.match)
    seen: dict[str, object] = {}  # passage id -> the passage as the test reads it, computed once
    bar = progress_bar(total=len(questions), desc="answering", unit="q", enabled=config.progress)
    for start in range(0, len(questions), config.batch_size):
        chunk = questions[start : start + config.batch_size]
        tic = time.perf_counter()
        answers = model.answer([q.question for q in chunk])
        elapsed = time.perf_counter() - tic
        seconds += [elapsed / len(chunk)] * len(chunk)
        for q, ans in zip(chunk, answers, strict=True):
            em, f1 = qa_scores(ans.answer, q.answers, q.patterns)
            for p in ans.passages:
                if p["id"] not in seen:
                    seen[p["id"]] = prepare(p["text"])
            hits.append([test(seen[p["id"]], q.answers, q.patterns) for p in ans.passages])
            row = {"id": q.id, "question": q.question, "answers": list(q.answers)}
            if q.patterns:
                row["patterns"] = list(q.patterns)
            rows.append({**row, "prediction": ans.answer, "score": ans.score, "em": em, "f1": f1,
                         "retrieved": [p["id"] for p in ans.passages]})
        bar.update(len(chunk))
    bar.close()
    return seconds, rows, hits


def _metrics(model: RagModel, config: BenchmarkConfig, decoding: str, seconds: list[float],
             rows: list[dict], hits: list[list[bool]]) -> dict:
    """The report (module doc) of every process's answers, in question order."""
    rag, processes, n = model.config, world()[1], len(rows)
    closed = rag.mode == "closed_book"
    total = float(sum(seconds))  # over all processes, which ran side by side
    return {
        "n": n,
        "exact_match": 100.0 * sum(r["em"] for r in rows) / n,
        "f1": 100.0 * sum(r["f1"] for r in rows) / n,
        "top_k_accuracy": {} if closed else retrieval_metrics(hits, _top_ks(rag.k))["top_k_accuracy"],
        "answer_in_passages": None if closed else sum(any(h) for h in hits) / n,
        "latency_ms": {"p50": _percentile_ms(seconds, 50), "p95": _percentile_ms(seconds, 95),
                       "mean": 1000.0 * total / n},
        "questions_per_s": n * processes / total if total > 0 else None,
        "seconds": total,
        "config": {
            "k": None if closed else rag.k, "mode": rag.mode, "reader": rag.reader,
            **({"max_answer_tokens": rag.max_answer_tokens, "span_doc_weight": rag.span_doc_weight}
               if rag.reader == "span" else {}),
            "decoding": decoding or rag.decoding,
            "num_beams": rag.decode.num_beams, "limit": config.limit, "seed": config.seed,
            "batch_size": config.batch_size, "processes": processes, "match": config.match,
            "max_input_length": rag.max_input_length,
            "max_answer_length": rag.decode.max_length, "constrain": rag.decode.constrain,
            "retrieval": None if closed else {"mode": model.retriever.mode,
                                              **asdict(model.retriever.fusion)},
            "device": str(next(model.generator.parameters()).device), "versions": _versions(),
        },
    }


def benchmark(model_dir: str | os.PathLike, index: str | os.PathLike | None,
              questions: str | os.PathLike, config: BenchmarkConfig = BenchmarkConfig(),
              device: str | torch.device | None = None,
              retrieval: Mapping[str, Any] | None = None,
              changes: Mapping[str, Any] | None = None,
              quantize: Quantize = "none") -> BenchmarkResult:
    """Read the question file, load the model with the run's ``changes`` of its settings and
    ``retrieval`` changes of its retrieval settings (``{field: value}``; ``rag.loading.load_model``),
    move it to ``device`` and :func:`run_benchmark`; the metrics' ``config`` also names the model,
    index and question files.

    ``index`` None means the index the model was trained with. Bad files raise :class:`UserError`
    before the model is loaded (the questions) or before any question is answered.
    """
    records = read_questions(questions)
    check_patterns([p for q in records for p in q.patterns])
    model, decoding = load_model(model_dir, index, changes, retrieval, device, quantize)
    result = run_benchmark(model, records, config, decoding)
    index_used = None if model.index is None else str(index or model.config.index)
    result.metrics["config"] = {"model": str(model_dir), "index": index_used,
                                "questions": str(questions), **result.metrics["config"],
                                "quantize": quantize}
    return result


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write one JSON object per line, atomically; a missing directory is a :class:`UserError`."""
    path = Path(path)
    check_output_parent(path)
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
