"""DPR training of the question encoder (and optionally the context encoder), with accelerate.

Loss (Karpukhin et al. 2020, Eq. 2): for question q_i with positive passage p_i^+ and negatives
p_j^-, the negative log-likelihood of the positive under a softmax over inner products,

    L_i = -log exp(s(q_i, p_i^+)) / (exp(s(q_i, p_i^+)) + sum_j exp(s(q_i, p_j^-)))

with in-batch negatives (every other question's positive and hard negatives in the batch) plus
hard negatives mined with BM25 (bm25s), given in DPR's training JSON, or mined with the starting
dense retriever itself (its top-ranked passages without a gold answer; Xiong et al. 2021, ANCE).
A candidate that is another question's positive but also *this* question's positive (SQuAD has
~5 questions per paragraph) is masked out rather than treated as a negative.

By default only the question encoder trains: the context encoder is frozen, so the index built with
it stays valid and the passage vectors are read from it instead of being recomputed every step.

Glossary: B questions per batch, H hard negatives per question, C = B * (1 + H) candidate passages,
D embedding dimension, R rows (passages) in the corpus.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from rag.common.checkpoint import (
    data_digest,
    load_checkpoint,
    restore_rng,
    training_settings,
)
from rag.common.device import fp32_einsum
from rag.common.errors import UserError
from rag.common.loop import NOT_SHAPING, OptimConfig, Saving, new_progress, optimizer_step, train_loop
from rag.common.options import NON_NEGATIVE, POSITIVE, check_fields, option
from rag.common.questions import Question

from .candidates import FrozenContexts, fit_lexical_head, frozen_contexts, passage_encoding, sparse_term
from .encoder import Encoder
from .examples import EXAMPLES, Example, active_rows, build_examples
from .index import DenseIndex

log = logging.getLogger(__name__)


# DPR's (Karpukhin et al. 2020): lr 2e-5, gradient norm clipped at 2.0; in-batch negatives grow
# with the batch
OPTIM = OptimConfig(epochs=3, batch_size=32, lr=2e-5, warmup_ratio=0.1, max_grad_norm=2.0)


@dataclass(frozen=True)
class TrainConfig:
    """How ``train_dpr`` trains the question encoder (Karpukhin et al. 2020): its optimiser steps,
    the negatives, the score scale, and what trains besides (context encoder, lexical head)."""

    optim: OptimConfig = option(OPTIM, "batches, AdamW, schedule, clipping, precision")
    hard_negatives: int = option(1, "hard negatives per question (DPR used 1)", within=NON_NEGATIVE)
    negatives: Literal["bm25", "dense", "corpus"] = option(
        "bm25", "hard negatives: \"bm25\" (DPR), \"dense\" (the starting encoder's top wrong passages) "
        "or \"corpus\" (every indexed passage is a candidate; frozen context encoder only)")
    bm25_depth: int = option(30, "results searched for hard negatives", within=POSITIVE)
    score_scale: float = option(
        0.0, "multiply scores before softmax; 0 = 20 for L2-normalised encoders, else 1", within=NON_NEGATIVE)
    train_context_encoder: bool = option(
        False, "also train the context encoder (the index must be rebuilt)")
    freeze_embeddings: bool = option(
        False, "keep the word embeddings fixed (cheaper steps; small data)")
    lexical_head: bool = option(
        False, "give the question encoder a lexical head fitted to the index's BM25 "
        "(retriever.lexical), then train it along; frozen context encoder only")
    lexical_weight: float = option(0.02, "BM25's weight against the cosine when the head is fitted",
        within=NON_NEGATIVE)
    lexical_lr: float = option(1e-4, "AdamW learning rate of the lexical head", within=POSITIVE)
    pseudo_queries: int = option(
        0, "per indexed passage, add this many pseudo-questions to training: a random 8-16 word window "
        "of the passage with a quarter of its words dropped, the passage as positive (an inverse "
        "cloze task, Lee et al. 2019); they cover the whole corpus, not only the training articles",
        within=NON_NEGATIVE)
    hybrid: bool = option(
        False, "train inside the hybrid score (retriever.fusion): every candidate's score gains the "
        "index's normalised BM25 times --fusion_weight, as at search time, so the question encoder "
        "learns what BM25 misses; needs an index with a sparse side")
    save_every: int = option(
        200, "optimizer updates between checkpoints in <out>.checkpoint (frozen context encoder); a "
        "killed run resumes from the last one when rerun with the same command", within=POSITIVE)
    seed: int = option(0, "shuffling and initialisation seed", within=NON_NEGATIVE)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.train_context_encoder:  # these need the index's vectors to stay the model's
            for flag, on in (("negatives corpus", self.negatives == "corpus"),
                             ("--lexical_head", self.lexical_head), ("--hybrid", self.hybrid)):
                if on:
                    raise UserError(f"{flag} needs the frozen context encoder (no "
                                    "--train_context_encoder)")


def dpr_loss(q: torch.Tensor, ctx: torch.Tensor, positive_col: torch.Tensor,
             exclude: torch.Tensor | None = None, scale: float = 1.0,
             sparse: torch.Tensor | None = None) -> torch.Tensor:
    """DPR's NLL of the positive among all candidates (see module doc).

    q (B, D) questions; ctx (C, D) candidate passages; positive_col (B,) long, the column of each
    question's positive in ctx; exclude (B, C) bool marks columns to drop (duplicates of the
    positive); sparse (B, C) a constant added to the inner products before scaling (the hybrid's
    weighted, normalised BM25 term). Returns the mean loss, a scalar float tensor.
    """
    scores = fp32_einsum("bd,cd->bc", q, ctx)  # (B, C), fp32 under autocast (rag.common.device)
    scores = scale * (scores if sparse is None else scores + sparse.to(scores))
    if exclude is not None:
        scores = scores.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(scores, positive_col)


def _batch_candidates(batch: list[Example], hard: int, merge: bool = False
                      ) -> tuple[list[int], torch.Tensor]:
    """Candidate rows (C,) for a batch, positives first, and each question's positive column (B,);
    with ``merge``, each distinct row once, ascending."""
    rows = [ex.positive for ex in batch]
    for ex in batch:
        rows += list(ex.negatives)[:hard]  # a question short of negatives just brings fewer
    if merge:
        unique, column = np.unique(rows, return_inverse=True)  # (C,), (B + negatives,)
        return unique.tolist(), torch.as_tensor(column[: len(batch)])
    return rows, torch.arange(len(batch))


class DprBatch(NamedTuple):
    """A DPR batch as :func:`dpr_batch` prepares it, on the CPU (no weights needed, so a loader
    worker can): the questions tokenised, the candidate rows (C,) (None: every passage of a
    ``negatives corpus`` lookup), each question's positive column (B,), the columns masked out of
    each question's softmax (B, C), and the hybrid's sparse term (B, C) or None."""

    questions: dict[str, torch.Tensor]
    rows: list[int] | None
    positive_col: torch.Tensor
    exclude: torch.Tensor
    sparse: torch.Tensor | None


def dpr_batch(q_enc: Encoder, batch: list[Example], ctx_lookup, config: TrainConfig,
              index: DenseIndex | None = None, sparse_weight: float = 0.0, merge: bool = False
              ) -> DprBatch:
    """Prepare a batch for :func:`dpr_batch_loss`. A passage that is a candidate twice (two
    questions on one paragraph) is masked out of the softmax of the questions it is the positive
    of; with ``merge`` it is one column instead (the scaling sweep's loss), so no other question
    counts it twice. With ``config.hybrid``, the sparse term of ``index``'s BM25 side, weight
    ``sparse_weight``."""
    if config.negatives == "corpus":  # every passage is a candidate, in the lookup's row order
        rows, positive_col = None, torch.tensor([ctx_lookup.slot[ex.positive] for ex in batch])
        rows_t = torch.from_numpy(ctx_lookup.rows)  # (C,), on the CPU (a worker has no GPU)
    else:
        rows, positive_col = _batch_candidates(batch, config.hard_negatives, merge)
        rows_t = torch.tensor(rows)  # (C,)
    gold = rows_t[positive_col]  # (B,)
    exclude = (rows_t[None, :] == gold[:, None])  # (B, C) same passage as the positive ...
    exclude[torch.arange(len(batch)), positive_col] = False  # ... except the positive
    texts = [ex.question for ex in batch]
    sparse = sparse_term(index, texts, rows_t, sparse_weight) if config.hybrid else None
    return DprBatch(q_enc.tokenize(texts), rows, positive_col, exclude, sparse)


def dpr_batch_loss(q_enc: Encoder, batch: DprBatch, ctx_lookup, scale: float, forward=None
                   ) -> torch.Tensor:
    """Encode a prepared batch's questions and return the DPR loss against its candidates.

    ``forward`` runs the encoder (default ``q_enc`` itself): under torch.distributed, the
    accelerate-prepared (DDP) module, so that gradients are averaged across processes."""
    device = next(q_enc.parameters()).device
    # (C, D): a training context encoder runs before the questions; corpus negatives: all rows,
    # on the device already (train_dpr)
    ctx = ctx_lookup.vectors if batch.rows is None else ctx_lookup(batch.rows)
    q = q_enc.embed_tokens(batch.questions, forward=forward)  # (B, D)
    ctx = ctx.to(device)  # its dtype as it is: dpr_loss scores in fp32
    return dpr_loss(q, ctx, batch.positive_col.to(device), batch.exclude.to(device), scale,
                    None if batch.sparse is None else batch.sparse.to(device))


def train_step_loss(q_enc: Encoder, batch: list[Example], ctx_lookup, config: TrainConfig,
                    scale: float, index: DenseIndex | None = None, sparse_weight: float = 0.0,
                    forward=None, merge: bool = False) -> torch.Tensor:
    """The DPR loss of a batch of examples: :func:`dpr_batch` then :func:`dpr_batch_loss`."""
    prepared = dpr_batch(q_enc, batch, ctx_lookup, config, index, sparse_weight, merge)
    return dpr_batch_loss(q_enc, prepared, ctx_lookup, scale, forward)


def dpr_optimizer(q_enc: Encoder, params: list, config: TrainConfig, examples: int, processes: int):
    """AdamW over ``params`` (the lexical head's, if any, at ``config.lexical_lr``) and its linear
    warm-up and decay over the run's updates: ``(optimizer, scheduler)``."""
    head = {id(p) for p in q_enc.lexical.parameters()} if q_enc.lexical is not None else set()
    groups = [{"params": [p for p in params if p.requires_grad and id(p) not in head]},
              {"params": [p for p in params if id(p) in head], "lr": config.lexical_lr}]
    return config.optim.optimizer([g for g in groups if g["params"]],
                                  config.optim.updates(examples, processes))


def _examples(index: DenseIndex, train: Sequence[Question], config: TrainConfig, q_enc: Encoder,
              checkpoint: Path | None) -> list[Example]:
    """The training examples: a checkpoint's (mined with the starting encoder: kept), else built."""
    saved = checkpoint / EXAMPLES if checkpoint is not None else None
    if saved is not None and saved.is_file():
        return [Example(q, p, tuple(n)) for q, p, n in json.loads(saved.read_text())]
    return build_examples(index, train, config, q_enc)


def _check_settings(index: DenseIndex, config: TrainConfig, sparse_weight: float | None
                    ) -> float | None:
    """Refuse settings that do not go together; returns the hybrid's sparse weight."""
    if config.hybrid:
        if index.sparse is None:
            raise UserError("--hybrid needs an index with a sparse side (ragqa index --add_sparse)")
        if sparse_weight is None:
            return index.manifest["fusion"]["fusion_weight"]
    return sparse_weight


def train_dpr(q_enc: Encoder, ctx_enc: Encoder, index: DenseIndex, train: Sequence[Question],
              config: TrainConfig = TrainConfig(), evaluate=None, accelerator=None,
              sparse_weight: float | None = None, checkpoint: Path | None = None) -> list[dict]:
    """Train ``q_enc`` (and ``ctx_enc`` if configured) with DPR's loss; returns per-epoch logs.

    ``evaluate(q_enc) -> dict`` runs after each epoch (e.g. dev top-k accuracy). With
    ``config.hybrid``, ``sparse_weight`` is w (default: the index's ``fusion_weight``). With
    ``checkpoint`` (a directory; frozen context encoder only) the run saves its progress there every
    ``config.save_every`` optimizer updates and resumes from it exactly: the caller passes the checkpoint's
    question encoder (``rag.common.checkpoint.resume_dir``) as ``q_enc``.
    """
    acc = accelerator or config.optim.accelerator()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    sparse_weight = _check_settings(index, config, sparse_weight)
    if checkpoint is not None and config.train_context_encoder:
        log.warning("no checkpoints when the context encoder trains too")
        checkpoint = None
    examples = _examples(index, train, config, q_enc, checkpoint)
    scale = ctx_enc.score_scale(config.score_scale)
    # the training context encoder's lookup is made once it is prepared
    ctx_lookup = None if config.train_context_encoder else frozen_contexts(
        index, ctx_enc, examples, config.negatives == "corpus")
    logs: list[dict] = []  # per epoch; epoch 0 = a freshly fitted lexical head, before training
    resumed = checkpoint is not None and (checkpoint / "state.json").is_file()
    if config.lexical_head and q_enc.lexical is None and not resumed:
        live = active_rows(index)
        same = np.array_equal(ctx_lookup.rows, live)  # corpus negatives: those vectors are at hand
        fit_lexical_head(q_enc, ctx_lookup if same else FrozenContexts(index, ctx_enc, live), index,
                         config.lexical_weight)
        if evaluate is not None and acc.is_main_process:  # the fitted head before training
            q_enc.eval()
            logs.append({"epoch": 0, "loss": None, "dev": evaluate(q_enc)})
            log.info("lexical head fitted, before training: %s", logs[-1])
    params = list(q_enc.parameters())  # the lexical head, if any, included
    if config.train_context_encoder:
        params += list(ctx_enc.parameters())
    if config.freeze_embeddings:
        for enc in (q_enc, ctx_enc):
            enc.backbone.get_input_embeddings().requires_grad_(False)
    opt, sched = dpr_optimizer(q_enc, params, config, len(examples), acc.num_processes)
    settings = training_settings(config, exclude=("save_every", *NOT_SHAPING),
                                 data=data_digest([(q.question, q.answers, q.positive_ids)
                                                   for q in train]),
                                 processes=acc.num_processes)
    state = new_progress(settings)
    state["log"] = logs
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, opt, sched, settings) or state
        if resumed:
            log.info("resuming from %s (epoch %d, batch %d)", checkpoint, state["epoch"] + 1,
                     state["batch"])
    if config.train_context_encoder:  # the scheduler stays unprepared (optimizer_step)
        plain_ctx = ctx_enc
        q_enc, ctx_enc, opt = acc.prepare(q_enc, ctx_enc, opt)
        ctx_lookup = passage_encoding(index, plain_ctx, ctx_enc)
    else:
        q_enc, opt = acc.prepare(q_enc, opt)
    model = acc.unwrap_model(q_enc)
    if config.negatives == "corpus":  # every step scores all of them: not a copy a step
        ctx_lookup.to(next(model.parameters()).device)
    saving = None
    if checkpoint is not None:
        restore_rng(checkpoint)
        saving = Saving(checkpoint, model.save_pretrained, opt, sched, config.save_every,
                        {EXAMPLES: json.dumps([[e.question, e.positive, list(e.negatives)]
                                               for e in examples])})

    def after_epoch(state: dict, loss: float) -> None:
        entry = {"epoch": state["epoch"], "loss": loss}
        model.refresh_fingerprint()
        if evaluate is not None and acc.is_main_process:
            q_enc.eval()
            entry["dev"] = evaluate(model)
            q_enc.train()
        state["log"].append(entry)
        log.info("epoch %d: %s", state["epoch"], entry)

    train_loop(
        acc, q_enc, state, config.optim, lambda epoch: examples,
        lambda batch: dpr_batch(model, batch, ctx_lookup, config, index, sparse_weight or 0.0),
        lambda batch: dpr_batch_loss(model, batch, ctx_lookup, scale, forward=q_enc),
        lambda loss: optimizer_step(acc, loss, params, opt, sched, config.optim.max_grad_norm),
        seed=config.seed, saving=saving, after_epoch=after_epoch, desc="training the retriever",
        progress=acc.is_local_main_process)
    acc.wait_for_everyone()
    return state["log"]
