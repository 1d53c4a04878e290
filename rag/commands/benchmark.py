"""Benchmark a RAG model on a question set: EM and F1, retrieval top-k accuracy, latency.

Writes one JSON report (n, exact_match, f1, top_k_accuracy, answer_in_passages, latency_ms,
questions_per_s, config; see rag/benchmark.py) and, with --predictions, one JSON line per question
(question, gold answers, prediction, em, f1, retrieved passage ids). Latency is per question:
each batch's wall-clock time divided by its size (--batch_size 1 for unbatched latency).
Under torchrun the processes share the questions (and search a sharded index together); the
first one reports.

Example:
    ragqa benchmark --model runs/rag-seq --index runs/index-l6 \\
        --questions ../shared/data/squad-open/dev.json --k 10 --decoding fast \\
        --json runs/bench-seq-k10.json --predictions runs/bench-seq-k10.jsonl
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from rag.benchmark import BenchmarkConfig, benchmark, write_jsonl
from rag.commands.cli import parse
from rag.common.artefact import check_paths
from rag.common.atomic import check_output_parent, write_json
from rag.common.device import DeviceConfig
from rag.common.loop import make_accelerator
from rag.common.options import Changes, option
from rag.config import RUN_CHANGES, LoadConfig
from retriever.fusion import RetrievalConfig


@dataclass(frozen=True)
class Args:
    model: str = field(metadata={"help": "RAG model directory (ragqa finetune --out)"})
    questions: str = field(metadata={"help": "SQuAD JSON, NQ-open JSONL, WebQuestions JSON or DPR TSV"})
    json: str = field(metadata={"help": "write the report (JSON) here"})
    index: str | None = option(None, "index directory; default: the index the model was trained with")
    predictions: str | None = option(None, "write one JSON line per question here")


def main() -> None:
    args, changes, load, config, retrieval, where = parse(
        [Args, RUN_CHANGES, LoadConfig, BenchmarkConfig, Changes(RetrievalConfig), DeviceConfig],
        description=__doc__)
    check_paths({"--model": args.model, "--index": args.index, "--questions": args.questions},
                {"--json": args.json, "--predictions": args.predictions})
    for path in (args.json, args.predictions):
        if path:
            check_output_parent(path)
    acc = make_accelerator()  # under torchrun: join the other processes, which share the questions
    result = benchmark(args.model, args.index, args.questions, config, device=where.resolve(),
                       retrieval=retrieval, changes=changes, quantize=load.quantize)
    if not acc.is_main_process:  # the first process reports
        return
    if args.predictions:
        write_jsonl(args.predictions, result.predictions)
    write_json(args.json, result.metrics)
    print(json.dumps(result.metrics, indent=2))

