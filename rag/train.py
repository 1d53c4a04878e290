"""Joint fine-tuning of the question encoder and the generator (Lewis et al. 2020, Sec. 2.4).

The context encoder and the index stay fixed, as in the paper; only the question encoder (through
the document scores) and the BART generator train, on the RAG-Sequence or RAG-Token NLL. accelerate
handles mixed precision, gradient accumulation and several processes.

Checkpoints go to ``<out>.checkpoint/`` (model directory, optimizer and scheduler state, progress),
written to a temporary directory and renamed, so a killed run restarted with the same command
resumes from the last one; it is removed once the final model is in ``<out>``. Optimizer state is
loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from rag.common.checkpoint import (
    checkpoint_dir,
    data_digest,
    load_checkpoint,
    restore_rng,
    training_settings,
)
from rag.common.collective import gather_shares, share
from rag.common.errors import UserError, require
from rag.common.loop import (
    NOT_SHAPING,
    OptimConfig,
    Saving,
    new_progress,
    optimizer_step,
    train_loop,
)
from rag.common.options import NON_NEGATIVE, POSITIVE, check_fields, option
from rag.common.qa_metrics import exact_match
from rag.common.questions import Question, collapse_ws, dev_subset
from retriever.gold import gold_rows

from .model import RagModel
from .reads import TrainBatch

log = logging.getLogger(__name__)
# settings that do not change the weights a run trains: a resume may change them
_NOT_SHAPING = ("eval_every", "eval_limit", "eval_sample", "eval_beams", "save_every",
                *NOT_SHAPING, "index", "question_encoder",
                "decode", "decoding", "copy_spans", "reader", "span_doc_weight", "num_beams",
                "max_length", "min_length", "length_penalty", "early_stopping",
                "num_return_sequences", "constrain")


# Lewis et al. 2020 fine-tune with lr 3e-5
OPTIM = OptimConfig(epochs=1, batch_size=8, lr=3e-5, warmup_ratio=0.05, max_grad_norm=1.0)


@dataclass(frozen=True)
class FinetuneConfig:
    """How ``finetune`` trains a RAG model: its optimiser steps, what trains (question encoder,
    generator encoder), the gold-paragraph reader warm-up, and when it evaluates and saves."""

    optim: OptimConfig = option(OPTIM, "batches, AdamW, schedule, clipping, precision")
    max_steps: int = option(0, "stop after this many optimizer steps; 0 = run all epochs",
        within=NON_NEGATIVE)
    train_question_encoder: bool = option(
        True, 'False keeps the retriever fixed (faster; "frozen" RAG)')
    freeze_generator_encoder: bool = option(
        False, "train only the BART decoder (no backward through the encoder or the shared "
        "embeddings/LM head: ~2.5x cheaper steps, for CPU-sized runs)")
    gold_window: int = option(
        0, "> 0: reader warm-up: train the generator on each question's own gold paragraph (SQuAD "
        "context, found in the index for its title) cut to the answer and 2N characters around it, "
        "instead of on retrieved passages; the question encoder does not train", within=NON_NEGATIVE)
    gold_position: Literal["random", "centred"] = option(
        "random", 'where the answer sits in its gold window: "random" (drawn again each epoch) or '
        '"centred" (the reader then learns to copy from the middle of its input)')
    eval_every: int = option(0, "optimizer steps between dev evaluations; 0 = after each epoch only",
        within=NON_NEGATIVE)
    eval_limit: int = option(500, "dev questions per evaluation (0 = all)", within=NON_NEGATIVE)
    eval_sample: Literal["random", "first"] = option(
        "random", "which eval_limit dev questions: \"random\" (drawn once, seeded by --seed; SQuAD's "
        "dev file is grouped by article, so its first questions share one article) or \"first\"")
    eval_beams: int = option(1, "beam width for dev evaluation (1 = greedy, fastest)", within=POSITIVE)
    save_every: int = option(200, "optimizer steps between checkpoints", within=POSITIVE)
    seed: int = option(0, "data order and initialisation", within=NON_NEGATIVE)

    def __post_init__(self) -> None:
        check_fields(self)
        require(self.optim.epochs > 0, "epochs", self.optim.epochs, "must be a positive number")


def dev_exact_match(model: RagModel, dev: Sequence[Question], batch_size: int = 16,
                    num_beams: int = 1) -> float:
    """SQuAD exact match (percent) of ``model``'s answers on ``dev``. With a sharded index under
    torch.distributed it is collective: each process answers its share (``collective.share``)."""
    was_training = model.training
    model.eval()
    together = model.index is not None and model.index.collective
    mine = [dev[i] for i in share(len(dev))] if together else list(dev)
    scores = []
    for start in range(0, len(mine), batch_size):
        chunk = mine[start : start + batch_size]
        answers = model.answer([q.question for q in chunk], num_beams=num_beams)
        scores += [exact_match(a.answer, q.answers) for a, q in zip(answers, chunk, strict=True)]
    model.train(was_training)
    if together:
        scores = gather_shares(scores, len(dev))
    return 100.0 * sum(scores) / max(1, len(scores))


def answer_window(context: str, answer: str, width: int, rng: random.Random | None = None
                  ) -> str | None:
    """``context`` cut to ``2 * width`` characters of surrounding text around the first occurrence of
    ``answer``, widened to whole words; None when the answer does not occur in it.

    Without ``rng`` the answer sits in the middle (``width`` characters either side). With ``rng``
    the split is drawn uniformly: a reader trained on centred windows learns to copy from the
    middle of its input instead of reading it.
    """
    start = context.find(answer)
    if start < 0:
        return None
    left = width if rng is None else rng.randint(0, 2 * width)
    a, b = max(0, start - left), min(len(context), start + len(answer) + 2 * width - left)
    while a > 0 and not context[a - 1].isspace():
        a -= 1
    while b < len(context) and not context[b].isspace():
        b += 1
    return context[a:b].strip()


def gold_examples(train: Sequence[Question], model: RagModel, width: int, seed: int | None = None
                  ) -> list[tuple[str, str, tuple[str, str]]]:
    """(question, answer, (title, window)) for every question whose gold paragraph is in the
    model's index and contains its first answer; titles come from the index's passages.

    ``seed`` None centres each answer in its window; otherwise its place is drawn at random
    (see :func:`answer_window`)."""
    if model.index is None:
        raise UserError("gold_window needs an index (the titles of the gold paragraphs)")
    table = model.index.passages
    titles = table["title"]
    out, rng = [], None if seed is None else random.Random(seed)
    for q, rows in zip(train, gold_rows(train, table["text"]), strict=True):
        title = titles[rows[0]] if rows and q.answers else None
        window = answer_window(collapse_ws(q.gold_context), q.answers[0], width, rng) if title else None
        if window:
            out.append((q.question, q.answers[0], (title, window)))
    if not out:
        raise UserError("gold_window: no training question has a gold paragraph (SQuAD context) "
                        "that is in the index and contains its answer")
    log.info("reader warm-up on %d/%d questions with their gold paragraphs", len(out), len(train))
    return out


def finetune(model: RagModel, train: Sequence[Question], out: str | os.PathLike,
             config: FinetuneConfig = FinetuneConfig(), dev: Sequence[Question] | None = None,
             accelerator=None, on_eval: Callable[[dict], None] | None = None) -> list[dict]:
    """Fine-tune ``model`` on (question, first gold answer) pairs; returns the evaluation log.

    Resumes from ``<out>.checkpoint`` when present (the caller loads the model from
    :func:`resume_dir`). The final model directory is ``out``, with ``train_log.json`` in it.
    """
    out = Path(out)
    ckpt = checkpoint_dir(out)
    optim = config.optim
    acc = accelerator or optim.accelerator()
    torch.manual_seed(config.seed)

    def epoch_pairs(epoch: int) -> list[tuple[str, str, tuple[str, str] | None]]:
        if config.gold_window <= 0:
            return [(q.question, q.answers[0], None) for q in train if q.answers]
        seed = None if config.gold_position == "centred" else config.seed * 1_000_003 + epoch
        return gold_examples(train, model, config.gold_window, seed)

    cached: dict[int, list] = {}

    def data(epoch: int) -> list[tuple[str, str, tuple[str, str] | None]]:
        if epoch not in cached:  # windows drawn again each epoch (gold_position random)
            cached.clear()
            cached[epoch] = epoch_pairs(epoch)
        return cached[epoch]

    pairs = data(0)
    if model.question_encoder is not None:  # sparse retrieval never calls it: DDP would wait
        used = model.retriever is not None and model.retriever.mode != "sparse"  # for its grads
        model.question_encoder.requires_grad_(config.train_question_encoder and used
                                              and config.gold_window <= 0)
    if config.freeze_generator_encoder:
        model.generator.get_encoder().requires_grad_(False)
        model.generator.get_input_embeddings().requires_grad_(False)  # tied to the LM head
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = optim.optimizer(params, optim.updates(len(pairs), acc.num_processes,
                                                       config.max_steps))
    settings = training_settings(config, model.config, exclude=_NOT_SHAPING,
                                 data=data_digest([(q, a) for q, a, _ in pairs]),
                                 processes=acc.num_processes)
    state = load_checkpoint(ckpt, opt, sched, settings) or new_progress(settings)
    if state["step"]:
        log.info("resuming from step %d (epoch %d, batch %d)", state["step"], state["epoch"],
                 state["batch"])
    wrapped, opt = acc.prepare(model, opt)  # the scheduler stays unprepared (optimizer_step)
    restore_rng(ckpt)
    subset = dev_subset(dev or [], config.eval_limit, config.eval_sample, config.seed)

    def evaluate() -> None:  # on the main process; on all when a sharded index searches
        if subset and (acc.is_main_process or (model.index is not None and model.index.collective)):
            unwrapped = acc.unwrap_model(wrapped)
            entry = {"step": state["step"], "dev_em": dev_exact_match(
                unwrapped, subset, num_beams=config.eval_beams), "n": len(subset)}
            if unwrapped.pointer_stats["answers"]:
                entry["pointer_not_found"] = dict(unwrapped.pointer_stats)
            if unwrapped.span_stats["answers"]:
                entry["span_not_found"] = dict(unwrapped.span_stats)
            state["log"].append(entry)
            log.info("step %d: dev EM %.2f on %d questions", entry["step"], entry["dev_em"],
                     entry["n"])
            if on_eval and acc.is_main_process:
                on_eval(entry)

    def prepare(batch: list) -> TrainBatch:  # needs no weights: may run in a loader worker
        gold = [p for _, _, p in batch] if config.gold_window > 0 else None
        return model.training_batch([q for q, _, _ in batch], [a for _, a, _ in batch], gold)

    def after_update(state: dict) -> None:
        if config.eval_every and state["step"] % config.eval_every == 0:
            evaluate()

    def after_epoch(state: dict, loss: float) -> None:
        if not config.eval_every:
            evaluate()

    train_loop(
        acc, wrapped, state, optim, data, prepare, lambda batch: wrapped(batch=batch)[0],
        lambda loss: optimizer_step(acc, loss, params, opt, sched, optim.max_grad_norm),
        seed=config.seed, max_steps=config.max_steps,
        saving=Saving(ckpt, lambda d: acc.unwrap_model(wrapped).save_pretrained(d), opt, sched,
                      config.save_every),
        after_update=after_update, after_epoch=after_epoch, desc="fine-tuning",
        progress=acc.is_local_main_process)
    if not state["log"] or state["log"][-1]["step"] != state["step"]:
        evaluate()
    if acc.is_main_process:
        unwrapped = acc.unwrap_model(wrapped)
        if unwrapped.question_encoder is not None:
            unwrapped.question_encoder.refresh_fingerprint()
        unwrapped.save_pretrained(out, extra_files={"train_log.json": json.dumps(
            {"config": asdict(config), "log": state["log"], "steps": state["step"]}, indent=2)})
        shutil.rmtree(ckpt, ignore_errors=True)
    acc.wait_for_everyone()
    return state["log"]
