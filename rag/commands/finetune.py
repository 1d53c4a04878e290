"""Fine-tune RAG: question encoder and BART generator jointly, context encoder and index fixed.

Writes a model directory (question_encoder/, generator/, rag_config.json naming mode, k and index)
to --out; checkpoints go to <out>.checkpoint/ and a killed run resumes from them when restarted
with the same command. --mode closed_book trains the same generator without retrieval (baseline).

Example (the starter generator, warm-started from the packaged all-MiniLM-L6-v2):
    ragqa finetune --train ../shared/data/squad-open/train.json \\
        --dev ../shared/data/squad-open/dev.json --index runs/index-l6 \\
        --question_encoder runs/qenc-l6 --generator starter --mode sequence --out runs/rag-seq
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from generator.warmstart import CrossAttentionInit
from rag.commands.cli import parse
from rag.common.atomic import check_output_dir, check_output_parent, write_json
from rag.common.errors import check_choices, non_negative, positive
from rag.common.options import option
from rag.config import RagConfig
from rag.loading import assemble
from rag.model import RagModel
from rag.train import FinetuneConfig, finetune
from retriever.checkpoint import resume_dir
from retriever.fusion import RetrievalConfig
from retriever.loop import make_accelerator
from retriever.questions import read_questions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Args:
    train: str = field(metadata={"help": "training questions with answers (any supported format)"})
    out: str = field(metadata={"help": "model directory to write"})
    dev: str | None = option(None, "dev questions for exact match during training")
    generator: str = option(
        "starter", 'BART directory or hub id; "starter" = warm-start from MiniLM-L6; a transformers '
        'RAG checkpoint gives its generator (and, without --question_encoder, its DPR question '
        'encoder, paired with --index)')
    starter_encoder_layers: int = option(6, "starter: BERT layers copied into the BART encoder")
    starter_decoder_layers: int = option(6, "starter: BERT layers copied into the BART decoder")
    starter_cross_attention: CrossAttentionInit = option(
        "copy_self", "starter: how cross-attention starts")
    copy_head: bool = option(
        False, "give the generator a copy path (generator/copy.py) if it has none: a pointer over its "
        "input, trained with --pointer_weight (supervised pointing)")
    train_offset: int = option(0, "skip the first N training questions (continue on unseen ones)")
    train_limit: int = option(0, "then use only the next N training questions; 0 = all")
    save_dtype: Literal["fp32", "fp16"] = option("fp32", "dtype of the saved generator (fp16: half the size)")
    overwrite: bool = option(False, "replace an existing --out written by ragqa")
    json: str | None = option(None, "write the dev evaluation log here")

    def __post_init__(self) -> None:
        check_choices(self)
        non_negative(self, "train_offset", "train_limit")
        positive(self, "starter_encoder_layers", "starter_decoder_layers")


def build_model(args: Args, rag_cfg: RagConfig, retrieval: RetrievalConfig) -> RagModel:
    """The model to fine-tune: the checkpoint of an interrupted run of this command, if any, else
    one assembled from --generator, --index and --question_encoder (``rag.loading.assemble``)."""
    resumed = resume_dir(args.out)
    if resumed is not None:
        log.info("resuming from %s", resumed)
        settings = {k: v for k, v in asdict(rag_cfg).items() if k != "index"}
        return RagModel.from_pretrained(resumed, rag_cfg.index or None, retrieval, **settings)
    starter = {"encoder_layers": args.starter_encoder_layers,
               "decoder_layers": args.starter_decoder_layers,
               "cross_attention": args.starter_cross_attention}
    return assemble(rag_cfg, args.generator, retrieval, copy_head=args.copy_head, starter=starter)


def main() -> None:
    args, rag_cfg, config, retrieval = parse([Args, RagConfig, FinetuneConfig, RetrievalConfig],
                                             description=__doc__)
    if args.json:
        check_output_parent(args.json)
    check_output_dir(args.out, args.overwrite)
    train = read_questions(args.train)[args.train_offset :]
    if args.train_limit > 0:
        train = train[: args.train_limit]
    dev = read_questions(args.dev) if args.dev else None
    # first: under torchrun it joins the other processes, which a sharded index searches with
    acc = make_accelerator(config.mixed_precision, config.grad_accum)
    model = build_model(args, rag_cfg, retrieval)
    logs = finetune(model, train, args.out, config, dev, accelerator=acc,
                    on_eval=lambda e: print(f"step {e['step']}: dev EM {e['dev_em']:.2f} "
                                            f"({e['n']} questions)", flush=True))
    if not acc.is_main_process:  # under torchrun: the first process saves and reports
        return
    if args.save_dtype == "fp16":  # re-save the final model at half the size
        final = RagModel.from_pretrained(args.out, model.index)
        log_text = (Path(args.out) / "train_log.json").read_text()
        final.save_pretrained(args.out, extra_files={"train_log.json": log_text}, half=True)
    print(f"model -> {args.out}")
    print(json.dumps(logs))
    if args.json:
        write_json(args.json, {"mode": rag_cfg.mode, "k": rag_cfg.k, "log": logs,
                               "config": config.__dict__})

