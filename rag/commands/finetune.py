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
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from generator.warmstart import CrossAttentionInit
from rag.commands.cli import parse
from rag.commands.training_run import TrainingRun
from rag.common.atomic import write_json
from rag.common.checkpoint import resume_dir
from rag.common.options import NON_NEGATIVE, POSITIVE, Changes, check_fields, option, updated
from rag.config import RagConfig
from rag.loading import assemble
from rag.model import RagModel
from rag.train import FinetuneConfig, finetune
from retriever.fusion import RetrievalConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Args:
    generator: str = option(
        "starter", 'BART directory or hub id; "starter" = warm-start from MiniLM-L6; a transformers '
        'RAG checkpoint gives its generator (and, without --question_encoder, its DPR question '
        'encoder, paired with --index)')
    starter_encoder_layers: int = option(6, "starter: BERT layers copied into the BART encoder",
        within=POSITIVE)
    starter_decoder_layers: int = option(6, "starter: BERT layers copied into the BART decoder",
        within=POSITIVE)
    starter_cross_attention: CrossAttentionInit = option(
        "copy_self", "starter: how cross-attention starts")
    copy_head: bool = option(
        False, "give the generator a copy path (generator/copy.py) if it has none: a pointer over its "
        "input, trained with --pointer_weight (supervised pointing)")
    span_head: bool = option(
        False, "give the generator a span head (generator/span.py) if it has none: start/end scores "
        "over its encoder states, for --reader span, trained with --span_weight; needs a copy "
        "generator (--copy_head)")
    train_offset: int = option(
        0, "skip the first N training questions (continue on unseen ones); --train_limit counts from "
        "there", within=NON_NEGATIVE)
    save_dtype: Literal["fp32", "fp16"] = option("fp32", "dtype of the saved generator (fp16: half the size)")

    def __post_init__(self) -> None:
        check_fields(self)


def build_model(run: TrainingRun, args: Args, rag_cfg: RagConfig, retrieval: dict[str, Any],
                seed: int) -> RagModel:
    """The model to fine-tune: the checkpoint of an interrupted run of this command, if any (its
    retrieval settings with the flags given, ``retrieval``), else one assembled from --generator,
    --index and --question_encoder (``rag.loading.assemble``), its new weights drawn with
    ``seed``."""
    resumed = resume_dir(run.out)
    if resumed is not None:
        log.info("resuming from %s", resumed)
        settings = {f.name: getattr(rag_cfg, f.name) for f in fields(rag_cfg) if f.name != "index"}
        return RagModel.from_pretrained(resumed, rag_cfg.index or None, retrieval, **settings)
    starter = {"encoder_layers": args.starter_encoder_layers,
               "decoder_layers": args.starter_decoder_layers,
               "cross_attention": args.starter_cross_attention}
    return assemble(rag_cfg, args.generator, updated(RetrievalConfig(), **retrieval),
                    copy_head=args.copy_head, span_head=args.span_head, starter=starter, seed=seed)


def main() -> None:
    run, args, rag_cfg, config, retrieval = parse(
        [TrainingRun, Args, RagConfig, FinetuneConfig, Changes(RetrievalConfig)], description=__doc__)
    run.check_outputs("rag-model", {"--index": rag_cfg.index, "--generator": args.generator,
                                    "--question_encoder": rag_cfg.question_encoder})
    train, dev = run.questions(args.train_offset)
    # first: under torchrun it joins the other processes, which a sharded index searches with
    acc = config.optim.accelerator()
    model = build_model(run, args, rag_cfg, retrieval, config.seed)
    logs = finetune(model, train, run.out, config, dev, accelerator=acc,
                    on_eval=lambda e: print(f"step {e['step']}: dev EM {e['dev_em']:.2f} "
                                            f"({e['n']} questions)", flush=True))
    if not acc.is_main_process:  # under torchrun: the first process saves and reports
        return
    if args.save_dtype == "fp16":  # re-save the final model at half the size
        final = RagModel.from_pretrained(run.out, model.index)
        log_text = (Path(run.out) / "train_log.json").read_text()
        final.save_pretrained(run.out, extra_files={"train_log.json": log_text}, half=True)
    print(f"model -> {run.out}")
    print(json.dumps(logs))
    if run.json:
        write_json(run.json, {"mode": rag_cfg.mode, "k": rag_cfg.k, "log": logs,
                               "config": asdict(config)})

