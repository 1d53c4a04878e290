"""Benchmark a RAG model on a question set: answer quality, retrieval of the same run, speed.

One run answers every question once and reports (``BenchmarkResult.metrics``)::

    n                   questions answered
    exact_match, f1     SQuAD EM and token F1 in percent (rag.metrics; regex answers for patterns)
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

Decoding (``BenchmarkConfig.decoding``): RAG-Sequence decodes "thorough" or "fast" (Lewis et al.
2020, Sec. 2.4) with the model's beam width; "greedy" is beam width 1 and "beam" the model's beam
width (or ``num_beams``), with the model's own thorough/fast rescoring in sequence mode. RAG-Token
takes only "greedy" or "beam".
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from rag.common.atomic import atomic_file, check_output_parent
from rag.common.collective import gather_shares, share, world
from rag.common.errors import UserError
from rag.common.progress import progress_bar
from retriever.fusion import RetrievalConfig
from retriever.metrics import MATCHES, answer_test, retrieval_metrics
from retriever.questions import Question, read_questions

from .constrain import CONSTRAINTS
from .metrics import check_patterns, qa_scores
from .pipeline import CONFIG_NAME, MODES, RagConfig, RagModel

DECODINGS = ("thorough", "fast", "greedy", "beam")
TOP_K_STEPS = (1, 5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass(frozen=True)
class BenchmarkConfig:
    k: int = 0  # passages per question; 0 = the model's own k
    mode: str = ""  # "sequence", "token" or "closed_book"; "" = the model's own mode
    decoding: str = ""  # "thorough" or "fast" (RAG-Sequence), "greedy" or "beam"; "" = the model's own
    num_beams: int = 0  # beam width for thorough, fast and beam decoding; 0 = the model's own
    max_input_length: int = 0  # generator tokens per passage input; 0 = the model's own
    constrain: str = ""  # "spans": answers only as stretches of the passages, "none": free; "" = the
    # model's own (rag.constrain)
    limit: int = 0  # answer only the first N questions; 0 = all
    batch_size: int = 8  # questions answered together (latency is per batch, divided by its size)
    seed: int = 0  # seed of torch, numpy and random, set before answering
    progress: bool = True  # show a progress bar on stderr
    match: str = "dpr"  # has-answer test of top_k_accuracy and answer_in_passages: "dpr" (DPR's:
    # the answer's tokens as a contiguous run of the passage's, after NFD) or "substring" (SQuAD-
    # normalised answer string on word boundaries); retriever.metrics

    def __post_init__(self) -> None:
        if self.match not in MATCHES:
            raise UserError(f"match {self.match!r} is not one of {MATCHES}")
        if self.mode and self.mode not in MODES:
            raise UserError(f"mode {self.mode!r} is not one of {MODES}")
        if self.constrain and self.constrain not in CONSTRAINTS:
            raise UserError(f"constrain {self.constrain!r} is not one of {CONSTRAINTS}")
        if self.decoding and self.decoding not in DECODINGS:
            raise UserError(f"decoding {self.decoding!r} is not one of {DECODINGS}")
        for name in ("k", "num_beams", "max_input_length", "limit"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size <= 0:
            raise UserError(f"batch_size must be positive, got {self.batch_size}")


@dataclass
class BenchmarkResult:
    """``metrics``: the run's figures (module doc); ``predictions``: one row per question with
    id, question, answers, [patterns], prediction, score, em and f1 (0 or 1, and in [0, 1]) and
    the retrieved passage ids, best first."""

    metrics: dict
    predictions: list[dict]


def resolve_decoding(rag: RagConfig, config: BenchmarkConfig) -> tuple[RagConfig, str]:
    """The model config that decodes as ``config`` asks, and the decoding's name for the report."""
    beams = config.num_beams or rag.num_beams
    decoding = config.decoding
    if not decoding:  # the model's own
        decoding = rag.decoding if rag.mode != "token" else ("greedy" if beams == 1 else "beam")
    if decoding in ("thorough", "fast"):
        if rag.mode == "token":
            raise UserError(f"decoding {decoding!r} is RAG-Sequence's; RAG-Token decodes 'greedy' or 'beam'")
        return replace(rag, decoding=decoding, num_beams=beams), decoding
    if decoding == "greedy":
        if config.num_beams > 1:
            raise UserError(f"greedy decoding has one beam, not num_beams={config.num_beams}")
        return replace(rag, num_beams=1), decoding
    if beams < 2:
        raise UserError(f"beam decoding needs num_beams >= 2 (the model's is {rag.num_beams}; "
                        "pass num_beams)")
    return replace(rag, num_beams=beams), decoding


def load_model(model_dir: str | os.PathLike, index: str | os.PathLike | None,
               config: BenchmarkConfig, retrieval: RetrievalConfig | None = None
               ) -> tuple[RagModel, str]:
    """Load a model directory (with ``index`` or its own) set up as ``config`` asks, in eval mode.

    Returns ``(model, decoding name)``. Raises :class:`UserError` for a model directory that is not
    one, an index the model's question encoder does not belong to, a k larger than the index, or a
    decoding the mode does not have. ``retrieval`` overrides the model's retrieval settings.
    """
    model_dir = Path(model_dir)
    if (config.mode in ("sequence", "token") and (model_dir / CONFIG_NAME).is_file()
            and not (model_dir / "question_encoder").is_dir()):
        raise UserError(f"{model_dir}: a closed-book model (no question encoder) cannot run in "
                        f"mode {config.mode!r}")
    overrides = {name: getattr(config, name) for name in ("k", "mode", "max_input_length",
                                                          "constrain") if getattr(config, name)}
    model = RagModel.from_pretrained(model_dir, index, retrieval, **overrides)
    model.config, decoding = resolve_decoding(model.config, config)
    if model.index is not None:
        model.index.check_k(model.config.k)
    return model.eval(), decoding


def _top_ks(k: int) -> list[int]:
    return [step for step in TOP_K_STEPS if step < k] + [k]


def _percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q))


def _versions() -> dict[str, str]:
    import faiss
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "faiss": faiss.__version__}


def run_benchmark(model: RagModel, questions: list[Question], config: BenchmarkConfig,
                  decoding: str = "") -> BenchmarkResult:
    """Answer ``questions`` (the first ``config.limit``) with ``model`` and score the answers.

    ``decoding`` is the name the report gives the model's decoding (see :func:`load_model`).
    The ``config`` record of the metrics names the run's model settings; the caller adds where the
    model, index and questions came from.
    """
    from transformers import set_seed

    questions = questions[: config.limit] if config.limit else list(questions)
    if not questions:
        raise UserError("no questions to answer")
    check_patterns([p for q in questions for p in q.patterns])  # fail before the work
    set_seed(config.seed)
    n = len(questions)
    questions = [questions[i] for i in share(n)]  # under torch.distributed: this process's share
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
    seconds, rows, hits = (gather_shares(x, n) for x in (seconds, rows, hits))

    rag, processes = model.config, world()[1]
    closed = rag.mode == "closed_book"
    total = float(sum(seconds))  # over all processes, which ran side by side
    metrics = {
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
            "k": None if closed else rag.k, "mode": rag.mode, "decoding": decoding or rag.decoding,
            "num_beams": rag.num_beams, "limit": config.limit, "seed": config.seed,
            "batch_size": config.batch_size, "processes": processes, "match": config.match,
            "max_input_length": rag.max_input_length,
            "max_answer_length": rag.max_answer_length, "constrain": rag.constrain,
            "retrieval": None if closed else {"mode": model.retriever.mode,
                                              **asdict(model.retriever.fusion)},
            "device": str(next(model.generator.parameters()).device), "versions": _versions(),
        },
    }
    return BenchmarkResult(metrics=metrics, predictions=rows)


def benchmark(model_dir: str | os.PathLike, index: str | os.PathLike | None,
              questions: str | os.PathLike, config: BenchmarkConfig = BenchmarkConfig(),
              device: str | torch.device | None = None,
              retrieval: RetrievalConfig | None = None) -> BenchmarkResult:
    """Read the question file, load the model (:func:`load_model`), move it to ``device`` and
    :func:`run_benchmark`; the metrics' ``config`` also names the model, index and question files.

    ``index`` None means the index the model was trained with. Bad files raise :class:`UserError`
    before the model is loaded (the questions) or before any question is answered.
    """
    records = read_questions(questions)
    check_patterns([p for q in records for p in q.patterns])
    model, decoding = load_model(model_dir, index, config, retrieval)
    if device is not None:
        model.to(device)
    result = run_benchmark(model, records, config, decoding)
    index_used = None if model.index is None else str(index or model.config.index)
    result.metrics["config"] = {"model": str(model_dir), "index": index_used,
                                "questions": str(questions), **result.metrics["config"]}
    return result


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write one JSON object per line, atomically; a missing directory is a :class:`UserError`."""
    path = Path(path)
    check_output_parent(path)
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
