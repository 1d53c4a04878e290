"""Retrieval accuracy on a question set: DPR top-k accuracy, gold-passage recall and MRR.

Example:
    ragqa eval-retrieval --index runs/index-l6 \\
        --questions ../shared/data/squad-open/dev.json --json runs/eval-l6.json \\
        --results runs/dev-retrieved.json --trec runs/dev.trec
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

from rag.commands.cli import parse
from rag.common.artefact import check_paths
from rag.common.atomic import check_output_parent, write_json
from rag.common.device import DeviceConfig
from rag.common.loop import make_accelerator
from rag.common.malloc import fix_mmap_threshold
from rag.common.options import NON_NEGATIVE, POSITIVE, check_fields, option
from rag.common.questions import read_questions
from retriever.encoder import Encoder
from retriever.evaluation import evaluate_retrieval
from retriever.fusion import RetrievalConfig
from retriever.metrics import Match
from retriever.results import ResultsWriter
from retriever.search import Retriever
from retriever.shards import load_index


@dataclass(frozen=True)
class Args:
    index: str = field(metadata={"help": "index directory written by ragqa index"})
    questions: str = field(metadata={"help": "SQuAD JSON, NQ-open JSONL, WebQuestions JSON or DPR TSV"})
    question_encoder: str | None = option(
        None, "hub id or directory; default: the index's own encoder. Given here, it is paired with "
        "the index's context encoder (DPR's twins), with a notice")
    ks: list[int] = option([1, 5, 20, 100], "k values for top-k accuracy (space- or comma-separated)",
        within=POSITIVE)
    batch_size: int = option(128, "questions per batch", within=POSITIVE)
    limit: int = option(0, "evaluate only the first N questions; 0 = all", within=NON_NEGATIVE)
    json: str | None = option(
        None, 'write {"n", "top_k_accuracy", "gold_recall", "mrr", "retrieval", "match"}')
    results: str | None = option(
        None, "write DPR's retrieval results JSON here (question, answers, ctxs with id, title, text, "
        "score, has_answer; the top max(--ks) passages), as FiD and DPR read it")
    trec: str | None = option(None, "write a TREC run file here (qid Q0 docid rank score ragqa)")
    match: Match = option(
        "dpr", "has-answer test: \"dpr\" (DPR's: the answer's tokens as a contiguous run of the "
        "passage's, after NFD) or \"substring\" (SQuAD-normalised answer string on word boundaries)")

    def __post_init__(self) -> None:
        check_fields(self)


def main() -> None:
    args, retrieval, where = parse([Args, RetrievalConfig, DeviceConfig], description=__doc__)
    device = where.resolve()
    check_paths({"--index": args.index, "--questions": args.questions,
                 "--question_encoder": args.question_encoder},
                {"--json": args.json, "--results": args.results, "--trec": args.trec})
    for path in (args.json, args.results, args.trec):
        if path:
            check_output_parent(path)
    fix_mmap_threshold()  # per-batch blocks from the heap would grow it with the questions
    acc = make_accelerator()  # under torchrun: join the other processes, which share the work
    index = load_index(args.index, mmap=retrieval.mmap)
    questions = read_questions(args.questions)
    if args.limit > 0:
        questions = questions[: args.limit]
    encoder = Encoder.from_pretrained(args.question_encoder or index.manifest["encoder"]["name"])
    encoder.to(device)
    retriever = Retriever(encoder, index, retrieval, pair=bool(args.question_encoder))
    sink = None
    if args.results or args.trec:  # written as the questions are retrieved, by the first process
        main = acc.is_main_process
        sink = ResultsWriter(args.results if main else None, args.trec if main else None,
                             args.match)
    with sink or nullcontext():
        metrics = evaluate_retrieval(retriever, questions, args.ks, args.batch_size,
                                     match=args.match, sink=sink)
    if not acc.is_main_process:  # the first process reports
        return
    metrics["match"] = args.match
    metrics["retrieval"] = {"mode": retriever.mode, **asdict(retriever.fusion)}
    print(json.dumps(metrics, indent=2))
    if args.json:
        write_json(args.json, metrics)

