"""Pack a trained RAG model as the shipped starter: fp16 weights, no index path, and the question
encoder's backbone stored as a reference to the packaged all-MiniLM-L6-v2 when it is unchanged
(a lexical head fitted on top then costs its own weights only).

The starter answers from the embedded corpus (rag/default/corpus.jsonl, indexed on first use), so
its rag_config.json names no index; settings given here (k, mode, decoding, beams, input length,
constrain: ``rag.config.RUN_CHANGES``) replace the model's own.

Example:
    python scripts/pack_starter.py --model runs/rag-copy --out rag/default/model --k 3
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from rag.commands.cli import parse, run
from rag.common.artefact import check_output_dir, check_paths
from rag.common.atomic import atomic_directory
from rag.common.errors import UserError
from rag.common.options import POSITIVE, check_fields, option
from rag.config import RUN_CHANGES, run_changes, run_config
from rag.model import RagModel


@dataclass(frozen=True)
class Args:
    model: str = field(metadata={"help": "RAG model directory to pack (ragqa finetune --out)"})
    out: str = field(metadata={"help": "directory to write (e.g. rag/default/model)"})
    index: str | None = option(None, "index to load the model with; default: the model's own")
    question_backbone_from: str = option(
        "all-MiniLM-L6-v2", 'store the question tower as this model (must be identical); "" stores its '
        'weights')
    max_mb: float = option(100.0, "refuse to write a directory larger than this", within=POSITIVE)

    def __post_init__(self) -> None:
        check_fields(self)


def main() -> None:
    args, changes = parse([Args, RUN_CHANGES], description=__doc__)
    out = Path(args.out)
    check_paths({"--model": args.model, "--index": args.index}, {"--out": args.out})
    check_output_dir(out, True, "rag-model")  # replaces only a RAG model of ours
    model = RagModel.from_pretrained(args.model, args.index)
    config, _ = run_config(model.config, run_changes(changes))
    # the starter's directory carries its question encoder: no index, no outside encoder path
    config = replace(config, index="", question_encoder="")
    packed = RagModel(model.question_encoder, model.generator, model.tokenizer, model.index, config,
                      model.retriever.config if model.retriever else None)
    with atomic_directory(out) as tmp:  # nothing is left behind when the size check fails
        staged = tmp / "staged"
        packed.save_pretrained(staged, half=True,
                               question_backbone_from=args.question_backbone_from or None)
        size = sum(f.stat().st_size for f in staged.rglob("*") if f.is_file()) / 2**20
        if size > args.max_mb:
            raise UserError(f"the packed model is {size:.1f} MB, more than --max_mb {args.max_mb:g}")
        for child in staged.iterdir():
            os.replace(child, tmp / child.name)
        staged.rmdir()
    print(f"starter -> {out} ({size:.1f} MB)")

if __name__ == "__main__":
    run(main)
