"""Training examples for DPR: each question's gold row, its hard negatives, pseudo-questions.

Positives are found in the index (DPR JSON names them; a SQuAD question's paragraph is matched to
its passage). Hard negatives are given (DPR's training JSON), mined with BM25 (the index's sparse
side), or mined with the starting dense retriever (ANCE). Pseudo-questions are passage windows with
words dropped, the passage as positive (an inverse cloze task, Lee et al. 2019).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rag.common.errors import UserError
from rag.common.qa_metrics import normalize_answer
from rag.common.questions import Question

from .batch_encode import EncodeConfig, encode_texts
from .encoder import Encoder
from .gold import gold_passage_ids
from .index import sparse_scores
from .index_protocol import Index
from .metrics import has_answer
from .sparse import SparseIndex, passage_texts, top_k

if TYPE_CHECKING:
    from .train import TrainConfig

log = logging.getLogger(__name__)
EXAMPLES = "examples.json"  # in a checkpoint: the training examples, negatives included


@dataclass(frozen=True)
class Example:
    question: str
    positive: int  # row of the gold passage in the index
    negatives: tuple[int, ...]  # rows of hard negatives


def positives_from_index(index: Index, questions: Sequence[Question]) -> list[int | None]:
    """Row of each question's gold passage in ``index`` (DPR positive ids or SQuAD context)."""
    golds = gold_passage_ids(index, questions)
    if golds is None:
        raise UserError("training questions must name their gold passage (SQuAD JSON or DPR JSON)")
    return [min((index.row_of(g) for g in gold if index.row_of(g) is not None), default=None)
            for gold in golds]


def mine_bm25_negatives(index: Index, questions: Sequence[Question], positives: Sequence[int],
                        n: int, depth: int) -> list[tuple[int, ...]]:
    """For each question, the top BM25 passages that are not its positive and hold no gold answer
    (BM25: the index's sparse side, or one built with the default settings when it has none)."""
    texts = passage_texts(index.passages["title"], index.passages["text"])
    sparse = index.sparse or SparseIndex.build(index.passages["title"], index.passages["text"])
    depth = min(depth, len(index))
    rows = []
    for start in range(0, len(questions), 256):
        chunk = [q.question for q in questions[start : start + 256]]
        rows += list(top_k(sparse_scores(index, chunk, sparse), depth))
    out = []
    for q, pos, cand in zip(questions, positives, rows, strict=True):
        picked = [int(r) for r in cand if int(r) != pos and not has_answer(texts[int(r)], q.answers)]
        out.append(tuple(picked[:n]))
    return out


def mine_dense_negatives(index: Index, q_enc: Encoder, questions: Sequence[Question],
                         positives: Sequence[int], n: int, depth: int) -> list[tuple[int, ...]]:
    """Hard negatives from the retriever itself (as ANCE/RocketQA mine them): the top-ranked
    passages of the starting question encoder that are not the positive and hold no gold answer."""
    vecs = encode_texts(q_enc, [q.question for q in questions], config=EncodeConfig(),
                        desc="mining dense negatives")
    _, rows = index.search_knn(vecs, min(depth, len(index)))
    texts: dict[int, str] = {}
    out = []
    for q, pos, cand in zip(questions, positives, rows, strict=True):
        picked = []
        for r in (int(r) for r in cand if r >= 0 and int(r) != pos):
            if r not in texts:
                texts[r] = normalize_answer(index.passages[r]["text"])
            if not has_answer(texts[r], q.answers, normalized=True):
                picked.append(r)
            if len(picked) == n:
                break
        out.append(tuple(picked))
    return out


PSEUDO_WORDS = (8, 16)  # words in a pseudo-question's window, inclusive
PSEUDO_DROP = 0.25  # fraction of the window's words dropped


def active_rows(index: Index) -> np.ndarray:
    """Rows of the index that hold a passage (hot-swap removals excluded), ascending."""
    return np.setdiff1d(np.arange(int(index.manifest["rows"])), index.removed)


def pseudo_questions(index: Index, n: int, seed: int) -> tuple[list[Question], list[int]]:
    """``n`` pseudo-questions per passage (TrainConfig.pseudo_queries) and their passages' rows."""
    rng = np.random.default_rng(seed)
    rows = active_rows(index)
    questions, positives = [], []
    for row, text in zip(rows.tolist(), index.passages[rows.tolist()]["text"], strict=True):
        words = text.split()
        for _ in range(n):
            size = int(rng.integers(PSEUDO_WORDS[0], PSEUDO_WORDS[1] + 1))
            start = int(rng.integers(0, max(1, len(words) - size + 1)))
            window = words[start : start + size]
            kept = [w for w in window if rng.random() >= PSEUDO_DROP] or window
            if kept:
                questions.append(Question(" ".join(kept), answers=()))
                positives.append(row)
    return questions, positives


def build_examples(index: Index, questions: Sequence[Question], config: TrainConfig,
                   q_enc: Encoder | None = None) -> list[Example]:
    """Training examples: question, gold row, hard-negative rows (given, else BM25-mined), then
    ``config.pseudo_queries`` pseudo-questions per passage (no given negatives; mined alike)."""
    positives = positives_from_index(index, questions)
    keep = [i for i, p in enumerate(positives) if p is not None]
    if len(keep) < len(questions):
        log.warning("%d of %d training questions have no gold passage in the index; skipped",
                    len(questions) - len(keep), len(questions))
    if not keep:
        raise UserError("no training question's gold passage is in the index")
    questions = [questions[i] for i in keep]
    positives = [positives[i] for i in keep]
    examples = _with_negatives(index, questions, positives, config, q_enc)
    if config.pseudo_queries > 0:
        pseudo, rows = pseudo_questions(index, config.pseudo_queries, config.seed)
        log.info("%d pseudo-questions from %d passages", len(pseudo), len(index))
        examples += _with_negatives(index, pseudo, rows, config, q_enc)
    return examples


def _with_negatives(index: Index, questions: list[Question], positives: list[int],
                    config: TrainConfig, q_enc: Encoder | None) -> list[Example]:
    if config.negatives == "corpus":
        negatives = [()] * len(questions)
    elif config.hard_negatives and all(q.hard_negative_ids for q in questions):
        negatives = [tuple(r for r in (index.row_of(h) for h in q.hard_negative_ids)
                           if r is not None)[: config.hard_negatives] for q in questions]
    elif config.hard_negatives and config.negatives == "dense":
        if q_enc is None:
            raise ValueError("dense negatives need the question encoder")
        negatives = mine_dense_negatives(index, q_enc, questions, positives,
                                         config.hard_negatives, config.bm25_depth)
    elif config.hard_negatives:  # "bm25"
        negatives = mine_bm25_negatives(index, questions, positives, config.hard_negatives,
                                        config.bm25_depth)
    else:
        negatives = [()] * len(questions)
    return [Example(q.question, p, n) for q, p, n in zip(questions, positives, negatives, strict=True)]
