"""A small (N, D) sweep that produces measurement rows for the scaling laws (Fang et al., 2024).

Encoder sizes are one pretrained checkpoint (by default all-MiniLM-L6-v2) cut to l of its
transformer layers: by default the first l - 1 and the last (``keep="first_and_last"``), or the
first l (``keep="first"``). Cutting gives a clean model-size axis: every size shares the width,
the tokenizer, the embedding tables and the pretraining run, and only depth varies, so N
(non-embedding parameters) changes by one layer's worth at a time and nothing else moves.
Keeping the last layer matters: only its output was trained for mean-pooled similarity, and
without it every shorter model starts from an intermediate representation that one epoch of
training does not turn into an embedding (on squad-open, zero-shot contrastive entropy is then
not even monotone in depth).
Training-set sizes D are nested prefixes of one seeded shuffle of the training questions.

For each (l, D):

1. both towers are copies of the l-layer encoder. By default the context tower is frozen, and
   its vectors are computed once per l for every passage the sweep needs (training positives,
   evaluation gold passages, the negative pool). With ``train_context`` one shared encoder
   (siamese, as sentence-transformers trained MiniLM) encodes questions and passages and
   trains on both, so every depth adapts its passage side too (several times dearer);
2. the question tower (or the shared encoder) is trained for one epoch over D (question, gold
   passage) pairs with DPR's in-batch-negative loss (Karpukhin et al., 2020, Eq. 2), scores
   scaled by ``score_scale`` since the model's outputs are L2-normalised;
3. contrastive entropy (:mod:`.entropy`) is measured on (dev question, gold passage) pairs,
   negatives drawn from a pool of corpus passages that excludes every dev gold passage
   (``eval_questions`` dev questions drawn at random by default: SQuAD lists its questions by
   paragraph, so the first few hundred cover only a few dozen gold passages). The
   scores are the training scores, ``score_scale * q . p``, so the metric is the training
   objective's cross-entropy against random negatives (with unscaled cosines every model would
   sit near log(M + 1)).

One row per (l, D) is appended to a JSON-lines file as soon as it is measured, in the format
:func:`.measurements.read_measurements` reads; rows already in the file are skipped, so a
killed sweep resumes where it stopped.

Glossary: B batch of questions, C distinct candidate passages in a batch, H embedding size,
P evaluation pairs, R negative-pool passages.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rag.common.errors import UserError
from rag.common.options import NON_NEGATIVE, POSITIVE, check_fields, option, updated
from rag.common.questions import dev_subset, read_questions
from retriever.gold import gold_rows

from .entropy import contrastive_entropy, negative_pool_indices
from .laws import count_non_embedding_params
from .measurements import read_measurements

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepConfig:
    """How each point of the sweep is trained and measured."""

    model: str = option("all-MiniLM-L6-v2", "checkpoint whose layers make each encoder size")
    keep: Literal["first", "first_and_last"] = option(
        "first_and_last", 'size l keeps the "first" l layers, or the "first_and_last": layers 1..l-1 '
        'and the last one, so every size ends in the layer pretrained for pooling')
    lr: float = option(5e-5, "AdamW learning rate (linear warm-up over 10% of steps, then decay)",
        within=POSITIVE)
    batch_size: int = option(32, "questions per step; the other questions' positives are negatives",
        within=POSITIVE)
    score_scale: float = option(
        0.0, "multiply q . p in training and evaluation; 0 = 20 if normalised, else 1", within=NON_NEGATIVE)
    max_length: int = option(256, "tokens per passage (questions are far shorter)", within=POSITIVE)
    eval_questions: int = option(500, "dev questions (with a gold passage) to measure on", within=POSITIVE)
    eval_sample: Literal["random", "first"] = option("random", "which dev questions (random: seeded)")
    train_context: bool = option(False, "train one shared encoder for questions and passages (siamese)")
    pool_size: int = option(1500, "random corpus passages in the negative pool (dev golds excluded)",
        within=POSITIVE)
    num_negatives: int = option(256, "negatives per evaluation pair (Fang et al.: 256)", within=POSITIVE)
    repeats: int = option(5, "negative redraws averaged by the contrastive entropy", within=POSITIVE)
    seed: int = option(0, "training-set shuffle, initialisation of dropout / batches, negative draws",
        within=NON_NEGATIVE)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class SweepData:
    """Passages and question/gold-passage pairs, as corpus row indices."""

    titles: list[str]  # corpus titles, by row
    texts: list[str]  # corpus texts, by row
    train_questions: list[str]  # shuffled training questions (D-prefixes are nested)
    train_gold: np.ndarray  # (len(train_questions),) int64 corpus row of each gold passage
    dev_questions: list[str]  # the evaluation questions
    dev_gold: np.ndarray  # (P,) int64 corpus row of each gold passage
    pool: np.ndarray  # (R,) int64 corpus rows of the negative pool


def _first_gold_rows(questions: Sequence[Any], texts: Sequence[str]) -> tuple[list[int], np.ndarray]:
    """The positions (into ``questions``) of the questions whose gold context is a passage of
    ``texts``, and the (matched,) int64 row of each one's first such passage."""
    matched = gold_rows(questions, texts)
    kept = [i for i, rows in enumerate(matched) if rows]
    return kept, np.asarray([matched[i][0] for i in kept], dtype=np.int64)


def load_sweep_data(corpus: str | Path, train: str | Path, dev: str | Path,
                    config: SweepConfig) -> SweepData:
    """Read the corpus and SQuAD-style question files into a :class:`SweepData`.

    Questions whose gold context matches no corpus passage are dropped (and counted in the
    log). Raises :class:`UserError` when no training or dev question has a gold passage, or
    when the pool is smaller than ``num_negatives``.
    """
    from retriever.corpus import load_corpus  # lazy: datasets, as torch below

    table = load_corpus(corpus)
    ids, titles, texts = table["id"], table["title"], table["text"]
    train_qs = read_questions(train, require_answers=False)
    dev_qs = read_questions(dev, require_answers=False)
    train_kept, train_gold = _first_gold_rows(train_qs, texts)
    dev_kept, dev_gold_all = _first_gold_rows(dev_qs, texts)
    if not train_kept or not dev_kept:
        raise UserError(f"{train if not train_kept else dev}: no question's gold context "
                        f"matches a passage of {corpus}")
    log.info("gold passages found for %d/%d train and %d/%d dev questions",
             len(train_kept), len(train_qs), len(dev_kept), len(dev_qs))
    order = np.random.default_rng(config.seed).permutation(len(train_kept))
    relevant = {ids[row] for row in dev_gold_all}  # every dev gold, not only the evaluated ones
    pool = negative_pool_indices(ids, relevant, max_size=config.pool_size, seed=config.seed)
    if len(pool) < config.num_negatives:
        raise UserError(f"{corpus}: negative pool has {len(pool)} passages, fewer than "
                        f"num_negatives={config.num_negatives}")
    picked = np.asarray(dev_subset(range(len(dev_kept)), config.eval_questions, config.eval_sample,
                                   config.seed + 1), dtype=np.int64)
    evaluated = [dev_kept[i] for i in picked]
    return SweepData(
        titles=list(titles), texts=list(texts),
        train_questions=[train_qs[train_kept[i]].question for i in order],
        train_gold=train_gold[order],
        dev_questions=[dev_qs[i].question for i in evaluated],
        dev_gold=dev_gold_all[picked],
        pool=pool,
    )


def kept_layers(total: int, layers: int, keep: str = "first") -> list[int]:
    """Indices of the ``layers`` of ``total`` transformer layers an encoder size keeps.

    ``"first"``: the first ``layers`` (the top ones dropped). ``"first_and_last"``: the first
    ``layers - 1`` and the last one, so every size ends in the layer that was pretrained for the
    pooled output (dropping layers below the top, as in Sajjad et al. 2023, "On the effect of
    dropping layers of pre-trained transformer models").
    """
    if not 1 <= layers <= total:
        raise UserError(f"layers must be in 1..{total}, got {layers}")
    if keep == "first":
        return list(range(layers))
    if keep == "first_and_last":
        return list(range(layers - 1)) + [total - 1]
    raise UserError(f"keep must be 'first' or 'first_and_last', not {keep!r}")


def truncated_encoder(encoder, layers: int, keep: str = "first"):
    """A copy of ``encoder`` with ``layers`` of its transformer layers (see :func:`kept_layers`)."""
    kept = kept_layers(encoder.backbone.config.num_hidden_layers, layers, keep)
    enc = copy.deepcopy(encoder)
    blocks = enc.backbone.encoder.layer
    enc.backbone.encoder.layer = type(blocks)([blocks[i] for i in kept])
    enc.backbone.config.num_hidden_layers = layers
    enc.refresh_fingerprint()
    return enc


def train_question_tower(q_enc, questions: Sequence[str], gold: np.ndarray,
                         ctx_vecs: dict[int, np.ndarray] | None, config: SweepConfig,
                         data: SweepData | None = None) -> float:
    """One epoch of in-batch-negative DPR training of ``q_enc``, in the order given, through
    ``retriever.train``'s loss and ``rag.common.loop``'s epoch.

    ``gold`` (D,) holds each question's corpus row. Passages are scored by their frozen vectors
    ``ctx_vecs`` (row -> (H,) float32), or, when ``config.train_context``, encoded by ``q_enc``
    itself from ``data``'s texts at every step (one shared, trained encoder). Duplicate
    positives in a batch are merged into one candidate column, so no question is trained
    against its own gold passage as a negative. Gradients are not clipped; AdamW keeps its
    default weight decay (0.01). Returns the mean loss.
    """
    # lazy: torch (and datasets): `ragqa scale fit` and `select` import this module without them
    import torch

    from rag.common.loop import new_progress, optimizer_step, train_loop
    from retriever.examples import Example
    from retriever.train import TrainConfig, dpr_batch, dpr_batch_loss, dpr_optimizer

    train = updated(TrainConfig(), epochs=1, batch_size=config.batch_size, hard_negatives=0,
                    lr=config.lr, weight_decay=0.01, warmup_ratio=0.1)
    examples = [Example(q, int(row), ()) for q, row in zip(questions, gold, strict=True)]
    scale = q_enc.score_scale(config.score_scale)
    params = list(q_enc.parameters())
    acc = train.optim.accelerator()
    opt, sched = dpr_optimizer(q_enc, params, train, len(examples), acc.num_processes)
    # prepared, so that under torch.distributed the processes average their gradients (DDP)
    wrapped, opt = acc.prepare(q_enc, opt)

    def contexts(rows: list[int]) -> torch.Tensor:  # (C, H)
        if not config.train_context:
            return torch.from_numpy(np.stack([ctx_vecs[r] for r in rows]))
        return q_enc.embed([data.texts[r] for r in rows], [data.titles[r] for r in rows],
                           forward=wrapped)

    means = []  # the epoch's mean batch loss
    train_loop(
        acc, wrapped, new_progress({}), train.optim, lambda epoch: examples,
        lambda batch: dpr_batch(q_enc, batch, contexts, train, merge=True),
        lambda batch: dpr_batch_loss(q_enc, batch, contexts, scale, forward=wrapped),
        lambda loss: optimizer_step(acc, loss, params, opt, sched, max_grad_norm=None),
        seed=None, after_epoch=lambda state, mean: means.append(mean), progress=False)
    q_enc.eval()
    return means[0] if examples else float("nan")


def _encode_rows(encoder, data: SweepData, rows: np.ndarray, encode_cfg) -> dict[int, np.ndarray]:
    """Corpus row -> (H,) float32 vector of each passage in ``rows`` under ``encoder``."""
    from retriever.batch_encode import encode_texts  # lazy: torch, as in train_question_tower

    vecs = encode_texts(encoder, [data.texts[r] for r in rows], [data.titles[r] for r in rows],
                        encode_cfg)  # (rows, H)
    return dict(zip(rows.tolist(), vecs, strict=True))


def done_names(path: str | Path) -> set[str]:
    """Names of the rows already in the measurements file (empty if it has none)."""
    path = Path(path)
    if not path.is_file() or not path.read_text().strip():
        return set()
    return {row.name for row in read_measurements(path)}


def _append_row(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()


def run_sweep(data: SweepData, layers: Sequence[int], train_sizes: Sequence[int],
              out: str | Path, config: SweepConfig = SweepConfig(),
              device: str = "cpu") -> list[dict[str, Any]]:
    """Train and measure every (l, D) of ``layers`` x ``train_sizes`` not yet in ``out``.

    Each finished point is appended to ``out`` (JSON lines: ``name``, ``n_params``,
    ``n_train_pairs``, ``contrastive_entropy``, ``ce_std`` and run details). Returns the rows
    written by this call. Raises :class:`UserError` when a D exceeds the training pairs.
    """
    # lazy: torch, as in train_question_tower
    from retriever.batch_encode import EncodeConfig
    from retriever.encoder import Encoder

    out = Path(out)
    too_big = [d for d in train_sizes if not 0 < d <= len(data.train_questions)]
    if too_big:
        raise UserError(f"train sizes {too_big} outside 1..{len(data.train_questions)} pairs")
    base = Encoder.from_pretrained(config.model, max_length=config.max_length)
    done = done_names(out)
    encode_cfg = EncodeConfig(progress=False)
    written = []
    for n_layers in layers:
        todo = [d for d in train_sizes if _point_name(config, n_layers, d) not in done]
        if not todo:
            continue
        ctx_vecs = None if config.train_context else _frozen_context_vectors(
            base, n_layers, max(todo), data, config, device, encode_cfg)  # a frozen passage tower
        for d in todo:
            row = _sweep_point(base, n_layers, d, ctx_vecs, data, config, device, encode_cfg)
            _append_row(out, row)
            written.append(row)
            log.info("%s: N=%d CE=%.4f±%.4f (train loss %.3f, %.0fs)", row["name"],
                     row["n_params"], row["contrastive_entropy"], row["ce_std"],
                     row["train_loss"], row["seconds"])
    return written


def _point_name(config: SweepConfig, n_layers: int, d: int) -> str:
    """Point (l, D)'s row name; tags say which layers are kept and a shared, trained encoder."""
    tag = ("-last" if config.keep == "first_and_last" else "") + ("-shared" if config.train_context else "")
    return f"{Path(config.model).name}-l{n_layers}-d{d}{tag}"


def _frozen_context_vectors(base, n_layers: int, max_d: int, data: SweepData,
                            config: SweepConfig, device: str, encode_cfg) -> dict[int, np.ndarray]:
    """Corpus row -> (H,) float32 vector, under the frozen ``n_layers``-layer context tower, of
    every passage the depth's points need: the first ``max_d`` training golds, the dev golds and
    the negative pool (encoded once per depth)."""
    ctx_enc = truncated_encoder(base, n_layers, config.keep).to(device)
    ctx_enc = ctx_enc.eval().requires_grad_(False)
    need = np.unique(np.concatenate([data.train_gold[:max_d], data.dev_gold, data.pool]))  # (rows,)
    started = time.perf_counter()
    ctx_vecs = _encode_rows(ctx_enc, data, need, encode_cfg)
    log.info("l=%d: encoded %d passages in %.1fs", n_layers, len(need),
             time.perf_counter() - started)
    return ctx_vecs


def _sweep_point(base, n_layers: int, d: int, ctx_vecs: dict[int, np.ndarray] | None,
                 data: SweepData, config: SweepConfig, device: str, encode_cfg) -> dict[str, Any]:
    """Train the ``n_layers``-layer question tower (or shared encoder) on the first ``d`` pairs,
    from ``config.seed``, and measure it: the point's measurement row."""
    import torch  # lazy: as in train_question_tower

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    q_enc = truncated_encoder(base, n_layers, config.keep).to(device)
    train_loss = train_question_tower(q_enc, data.train_questions[:d],
                                      data.train_gold[:d], ctx_vecs, config, data)
    mean, std = _evaluate(q_enc, ctx_vecs, data, config, encode_cfg)
    return {"name": _point_name(config, n_layers, d),
            "n_params": count_non_embedding_params(q_enc),
            "n_train_pairs": d, "contrastive_entropy": mean, "ce_std": std,
            "layers": n_layers, "keep": config.keep, "model": config.model, "train_loss": train_loss,
            "train_context": config.train_context, "score_scale": q_enc.score_scale(config.score_scale),
            "eval_pairs": len(data.dev_questions), "pool_size": len(data.pool),
            "num_negatives": config.num_negatives, "repeats": config.repeats,
            "seed": config.seed, "seconds": round(time.perf_counter() - started, 1)}


def _evaluate(q_enc, ctx_vecs: dict[int, np.ndarray] | None, data: SweepData,
              config: SweepConfig, encode_cfg) -> tuple[float, float]:
    """Contrastive entropy (mean, std over negative redraws) of the trained ``q_enc`` on the dev
    pairs, scored ``score_scale * q . p``; passages by ``ctx_vecs`` (the frozen tower's), or
    when None encoded by ``q_enc`` itself (the trained shared encoder)."""
    from retriever.batch_encode import encode_texts  # lazy: torch, as in train_question_tower

    vecs = ctx_vecs if ctx_vecs is not None else _encode_rows(
        q_enc, data, np.unique(np.concatenate([data.dev_gold, data.pool])), encode_cfg)
    gold_vecs = np.stack([vecs[int(r)] for r in data.dev_gold])  # (P, H)
    pool_vecs = np.stack([vecs[int(r)] for r in data.pool])  # (R, H)
    scale = q_enc.score_scale(config.score_scale)
    q_vecs = scale * encode_texts(q_enc, data.dev_questions, None, encode_cfg)  # (P, H)
    return contrastive_entropy(q_vecs, gold_vecs, pool_vecs, num_negatives=config.num_negatives,
                               repeats=config.repeats, seed=config.seed)
