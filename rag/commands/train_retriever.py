"""Train the question encoder with DPR's loss (in-batch + BM25 hard negatives) against a frozen index.

The context encoder stays frozen by default, so the index built with it stays valid and the trained
question encoder (written to --out) is paired with it. Give --index, or --corpus to build one first.
--lexical_head gives the question encoder a bag-of-words head fitted to the index's BM25
(retriever/lexical.py) and --pseudo_queries adds passage-window pseudo-questions from the corpus.
Checkpoints go to <out>.checkpoint/ every --save_every batches; a killed run rerun with the same
command resumes from the last one and ends as an uninterrupted run would.

Example:
    ragqa train-retriever --train ../shared/data/squad-open/train.json \\
        --dev ../shared/data/squad-open/dev.json --index runs/index-l6 --out runs/qenc-l6
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from rag.commands.cli import parse
from rag.commands.training_run import TrainingRun
from rag.common.artefact import check_output_dir
from rag.common.atomic import write_json
from rag.common.checkpoint import checkpoint_dir, resume_dir
from rag.common.errors import UserError
from rag.common.options import NON_NEGATIVE, POSITIVE, check_fields, option
from retriever.build import BuildConfig, build_index
from retriever.encoder import Encoder
from retriever.evaluation import evaluate_retrieval
from retriever.fusion import RetrievalConfig
from retriever.index import DenseIndex
from retriever.search import Retriever
from retriever.train import TrainConfig, train_dpr

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Args:
    index: str | None = option(None, "index directory built with the (frozen) context encoder")
    corpus: str | None = option(
        None, "corpus file: build an index in <out>.index first (when no --index; --overwrite "
        "replaces one written by ragqa)")
    encoder: str | None = option(None, "context encoder; default: the index's encoder")
    question_encoder: str | None = option(None, "initial question encoder; default: same as --encoder")
    dev_ks: list[int] = option([1, 5, 20, 100], "k values reported on dev", within=POSITIVE)
    dev_limit: int = option(0, "evaluate on the first N dev questions only; 0 = all", within=NON_NEGATIVE)
    eval_before: bool = option(False, "also evaluate the untrained question encoder on dev first")

    def __post_init__(self) -> None:
        check_fields(self)


def main() -> None:
    run, args, config, retrieval = parse([TrainingRun, Args, TrainConfig, RetrievalConfig],
                                         description=__doc__)
    # the trainer's accelerator, made here: under torchrun this is one of several processes
    state = config.optim.accelerator()
    index_dir, resumed, reuse_index = check_outputs(run, args, config)
    train, dev = run.questions()
    if args.dev_limit > 0 and dev:
        dev = dev[: args.dev_limit]
    index, ctx_enc = open_index(args, run.overwrite, index_dir, reuse_index, retrieval.mmap, state)
    if resumed is not None:
        log.info("resuming from %s", resumed.parent)
    q_enc = Encoder.from_pretrained(str(resumed) if resumed else args.question_encoder or ctx_enc.name)
    # on the process's device from the start: mining negatives and dev evaluation encode with it
    ctx_enc, q_enc = ctx_enc.to(state.device), q_enc.to(state.device)
    retriever = Retriever(q_enc, index, retrieval, train=True)

    def evaluate(model: Encoder) -> dict:  # model is q_enc, the retriever's question encoder
        return evaluate_retrieval(retriever, dev, args.dev_ks, progress=False)

    before = None
    if (args.eval_before and dev and not config.train_context_encoder and resumed is None
            and state.is_main_process):
        before = evaluate(q_enc)
    if before:
        print(f"dev before training: top-k {before['top_k_accuracy']}")
    logs = train_dpr(q_enc, ctx_enc, index, train, config,
                     evaluate if dev and not config.train_context_encoder else None,
                     sparse_weight=retriever.fusion.fusion_weight, checkpoint=checkpoint_dir(run.out),
                     accelerator=state)
    if not state.is_main_process:  # the ranks end identical (gradients averaged): one saves
        return
    save(run.out, config, retriever, ctx_enc)
    report(run, config, logs, before)


def check_outputs(run: TrainingRun, args: Args, config: TrainConfig
                  ) -> tuple[Path, Path | None, bool]:
    """Refuse, before any work, missing inputs and outputs that may not be written. Returns the
    directory an index built from --corpus goes to (<out>.index), the checkpoint a rerun resumes
    from (None: a new run) and whether that run's index is there to be used again."""
    if args.index is None and args.corpus is None:
        raise UserError("give --index DIR or --corpus PATH")
    index_dir = Path(run.out).with_name(Path(run.out).name + ".index")
    run.check_outputs("encoder", {"--index": args.index, "--corpus": args.corpus,
                                  "--encoder": args.encoder,
                                  "--question_encoder": args.question_encoder},
                      {"<out>.index": None if args.index else str(index_dir)})
    resumed = None if config.train_context_encoder else resume_dir(run.out)
    reuse_index = args.index is None and resumed is not None and (index_dir / "manifest.json").is_file()
    if args.index is None and not reuse_index:
        check_output_dir(index_dir, run.overwrite, "index")
    return index_dir, resumed, reuse_index


def open_index(args: Args, overwrite: bool, index_dir: Path, reuse_index: bool, mmap: bool,
               state) -> tuple[DenseIndex, Encoder]:
    """The index to train against and its (frozen) context encoder: --index, the index a resumed
    run built, or one built now from --corpus into ``index_dir`` (by the first process)."""
    if args.index is not None or reuse_index:  # a resumed run uses the index it built before
        index = DenseIndex.load(args.index or index_dir, mmap=mmap)
        ctx_enc = Encoder.from_pretrained(args.encoder or index.manifest["encoder"]["name"])
    else:
        ctx_enc = Encoder.from_pretrained(args.encoder or "all-MiniLM-L6-v2").to(state.device)
        if state.is_main_process:  # built once; the other processes load it
            build_index(args.corpus, ctx_enc, index_dir, BuildConfig(overwrite=overwrite))
            log.info("built %s", index_dir)
        state.wait_for_everyone()
        index = DenseIndex.load(index_dir, mmap=mmap)
    index.check_question_encoder(ctx_enc.identity(), where="index")
    return index, ctx_enc


def save(out: str, config: TrainConfig, retriever: Retriever, ctx_enc: Encoder) -> None:
    """Write the trained question encoder to ``out``, paired with the index's context encoder, or
    with the context encoder trained beside it (written to <out>/context_encoder)."""
    q_enc = retriever.question_encoder
    if config.train_context_encoder:  # the pair is the new context encoder, not the index's
        ctx_enc.refresh_fingerprint()
        q_enc.save_pretrained(out, paired_context_fingerprint=ctx_enc.fingerprint)
        ctx_enc.save_pretrained(Path(out) / "context_encoder")
        print("context encoder trained: rebuild the index with --encoder "
              f"{Path(out) / 'context_encoder'}")
    else:
        retriever.save_question_encoder(out)
        shutil.rmtree(checkpoint_dir(out), ignore_errors=True)


def report(run: TrainingRun, config: TrainConfig, logs: list[dict], before: dict | None) -> None:
    """Print each epoch's loss and dev accuracy, and write the log to --json."""
    for entry in logs:
        loss = "lexical head fitted" if entry["loss"] is None else f"loss {entry['loss']:.4f}"
        print(f"epoch {entry['epoch']}: {loss}"
              + (f", dev top-k {entry['dev']['top_k_accuracy']}" if "dev" in entry else ""))
    print(f"question encoder -> {run.out}")
    if run.json:
        write_json(run.json, {"before": before, "epochs": logs, "config": asdict(config)})
