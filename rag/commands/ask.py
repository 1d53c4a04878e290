"""Answer open-domain questions, with the passages each answer came from.

Examples:
    ragqa ask "Who designed the Eiffel Tower?"
    ragqa ask "Who wrote Hamlet?" --format json          # one JSON object per answer
    ragqa ask "Who wrote Hamlet?" --json answers.json    # and all answers in a JSON file
    printf 'question one\\nquestion two\\n' | ragqa ask      # one answer per line
    ragqa ask "..." --model runs/rag-seq --index runs/index-l6 --k 10

Questions are the bare arguments (anywhere on the line); with none, one question per line is
read from standard input. Without --model, the starter model shipped in rag/default/model is
used; without --index, the model's own index, or for the starter the embedded corpus (indexed on
first use and cached in ~/.cache/ragqa).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from typing import Literal

from rag.commands.cli import parse
from rag.common.artefact import check_paths
from rag.common.atomic import check_output_parent, write_json
from rag.common.device import DeviceConfig
from rag.common.errors import UserError
from rag.common.options import POSITIVE, Changes, check_fields, option
from rag.config import RUN_CHANGES, LoadConfig
from rag.loading import load_model
from retriever.fusion import RetrievalConfig


@dataclass(frozen=True)
class Args:
    model: str | None = option(None, "RAG model directory (ragqa finetune --out); default: the starter")
    index: str | None = option(
        None, "index directory; default: the model's index or the embedded corpus")
    format: Literal["text", "json"] = option(
        "text", '"text": the answer (and for one question its passages, best first); "json": one JSON '
        'object per question (question, answer, score, passages) per line')
    json: str | None = option(
        None, "also write every answer (a JSON list of those objects) to this file")
    batch_size: int = option(8, "questions answered together", within=POSITIVE)

    def __post_init__(self) -> None:
        check_fields(self)


def main() -> None:
    args, changes, load, retrieval, where, questions = parse(
        [Args, RUN_CHANGES, LoadConfig, Changes(RetrievalConfig), DeviceConfig],
        description=__doc__, quiet_by_default=True, positionals="QUESTION")
    device = where.resolve()
    check_paths({"--model": args.model, "--index": args.index}, {"--json": args.json})
    if args.json:
        check_output_parent(args.json)
    from_stdin = not questions
    if from_stdin:
        if sys.stdin.isatty():
            raise UserError("give a question, or pipe questions on standard input")
        try:  # bytes, decoded here: a locale's surrogateescape would pass bad bytes through
            text = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"standard input: not UTF-8 text (byte {err.start})") from None
        questions = [line.strip() for line in text.splitlines() if line.strip()]
        if not questions:
            raise UserError("no questions on standard input")
    model, _ = load_model(args.model, args.index, changes, retrieval, device, load.quantize)
    answered = []
    for start in range(0, len(questions), args.batch_size):
        for ans in model.answer(questions[start : start + args.batch_size]):
            answered.append(asdict(ans))
            if args.format == "json":
                print(json.dumps(answered[-1]), flush=True)
            elif from_stdin or len(questions) > 1:
                print(ans.answer)
            else:
                print(ans.answer)
                for rank, p in enumerate(ans.passages, start=1):
                    print(f"  [{rank}] {p['title']} (id {p['id']}, score {p['score']:.3f}): "
                          f"{p['text'][:160]}")
    if args.json:
        write_json(args.json, answered)
