"""Contrastive entropy, the continuous retrieval metric of Fang et al. (SIGIR 2024).

For a query q with gold passage p+ and M random negatives p_1..p_M, scored by dot product
s(q, p) = q . p, the contrastive entropy is the cross-entropy of the gold passage

    CE(q, p+) = -log [ exp s(q, p+) / (exp s(q, p+) + sum_j exp s(q, p_j)) ]

averaged over evaluation pairs (Fang et al., 2024, the contrastive-entropy definition; their
code draws M = 256 negatives per pair from a pool of corpus passages that excludes every
passage judged relevant to any evaluation query, and averages several repeats).

Glossary: P evaluation (query, gold passage) pairs, M negatives per pair, R passages in the
negative pool, H embedding dimension.

Everything works on float32 numpy arrays; torch tensors are accepted and converted. The only
Python loops are over repeats and over memory-bounded chunks of pairs, never over single pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy.special import logsumexp

_CHUNK_ELEMENTS = 1 << 24  # floats gathered at once (64 MiB in float32)


def _as_f32(x: Any, name: str) -> np.ndarray:
    """A 2-D float32 numpy view of ``x`` (numpy array or torch tensor, any device)."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().to("cpu").float().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, H), got shape {arr.shape}")
    return arr


def pair_contrastive_entropy(
    q_vecs: np.ndarray, gold_vecs: np.ndarray, neg_vecs: np.ndarray
) -> np.ndarray:
    """Per-pair contrastive entropy given explicit negatives.

    Args:
        q_vecs: (P, H) query embeddings.
        gold_vecs: (P, H) gold passage embeddings, row i the gold passage of query i.
        neg_vecs: (P, M, H) negative passage embeddings for each pair.

    Returns:
        (P,) float64: logsumexp over [s+, s_1..s_M] minus s+, i.e. CE(q, p+) above.
    """
    gold = np.einsum("ph,ph->p", q_vecs, gold_vecs).astype(np.float64)  # (P,)
    neg = np.einsum("ph,pmh->pm", q_vecs, neg_vecs).astype(np.float64)  # (P, M)
    logits = np.concatenate([gold[:, None], neg], axis=1)  # (P, 1+M)
    return logsumexp(logits, axis=1) - gold


def sample_negative_indices(
    num_pairs: int, pool_size: int, num_negatives: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw ``num_negatives`` distinct pool indices for each pair, uniformly and independently.

    Returns (P, M) int64 indices into the pool. When M^2 <= R a row rarely repeats an index, so
    rows are drawn with replacement and only rows holding a repeat are redrawn; otherwise
    (a small pool) each row keeps the M smallest of R uniform keys. Deterministic given ``rng``.
    """
    if not 0 < num_negatives <= pool_size:
        raise ValueError(f"need 0 < num_negatives <= pool size, got {num_negatives} > {pool_size}")
    if num_negatives * num_negatives <= pool_size:
        idx = rng.integers(0, pool_size, size=(num_pairs, num_negatives))  # (P, M)
        while True:
            ordered = np.sort(idx, axis=1)
            repeats = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)  # (P,)
            if not repeats.any():
                return idx
            idx[repeats] = rng.integers(0, pool_size, size=(int(repeats.sum()), num_negatives))
    rows = max(1, _CHUNK_ELEMENTS // pool_size)
    chunks = [np.zeros((0, num_negatives), dtype=np.int64)]
    for start in range(0, num_pairs, rows):
        keys = rng.random((min(rows, num_pairs - start), pool_size))  # (C, R)
        picked = np.argpartition(keys, num_negatives - 1, axis=1)[:, :num_negatives]  # (C, M)
        chunks.append(picked.astype(np.int64))
    return np.concatenate(chunks, axis=0)  # (P, M)


def _mean_entropy(q: np.ndarray, gold: np.ndarray, pool: np.ndarray, idx: np.ndarray) -> float:
    """Mean over pairs of CE with negatives ``pool[idx]``, gathered in memory-bounded chunks."""
    num_pairs, num_negatives = idx.shape
    rows = max(1, _CHUNK_ELEMENTS // (num_negatives * pool.shape[1]))
    total = 0.0
    for start in range(0, num_pairs, rows):
        stop = min(start + rows, num_pairs)
        neg = pool[idx[start:stop]]  # (C, M, H)
        total += pair_contrastive_entropy(q[start:stop], gold[start:stop], neg).sum()
    return total / num_pairs


def contrastive_entropy(
    q_vecs: Any,
    gold_vecs: Any,
    pool_vecs: Any,
    *,
    num_negatives: int = 256,
    repeats: int = 5,
    seed: int = 0,
) -> tuple[float, float]:
    """Contrastive entropy of a retriever on (query, gold passage) pairs, Fang et al. (2024).

    Each repeat draws, for every pair independently, ``num_negatives`` distinct passages from
    the pool (uniformly, without replacement) and averages CE(q, p+) over pairs.

    Args:
        q_vecs: (P, H) query embeddings (numpy or torch; converted to float32).
        gold_vecs: (P, H) gold passage embeddings aligned with ``q_vecs``.
        pool_vecs: (R, H) negative pool; it must hold no passage judged relevant to any
            evaluation query (build it with :func:`negative_pool_indices`).
        num_negatives: M, negatives per pair (the paper uses 256).
        repeats: independent redraws of the negatives.
        seed: seeds ``numpy.random.default_rng``; equal seeds give equal results.

    Returns:
        ``(mean, std)`` in nats: the mean over repeats of the per-repeat mean over pairs, and the
        population standard deviation (ddof=0) of those per-repeat means (0.0 for one repeat).
    """
    q = _as_f32(q_vecs, "q_vecs")
    gold = _as_f32(gold_vecs, "gold_vecs")
    pool = _as_f32(pool_vecs, "pool_vecs")
    if q.shape != gold.shape or q.shape[0] == 0:
        raise ValueError(f"q_vecs {q.shape} and gold_vecs {gold.shape} must match and be non-empty")
    if pool.shape[1] != q.shape[1]:
        raise ValueError(f"pool_vecs has dimension {pool.shape[1]}, queries {q.shape[1]}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    rng = np.random.default_rng(seed)
    means = np.array([
        _mean_entropy(q, gold, pool, sample_negative_indices(len(q), len(pool), num_negatives, rng))
        for _ in range(repeats)
    ])
    return float(means.mean()), float(means.std())


def negative_pool_indices(
    passage_ids: Sequence[str],
    relevant_ids: Iterable[str],
    *,
    max_size: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Corpus rows usable as random negatives: every passage not judged relevant to any query.

    Args:
        passage_ids: ids of the corpus passages, in corpus row order.
        relevant_ids: ids of all passages judged relevant to any evaluation query (qrels with
            positive grade, gold passages); ids absent from the corpus are ignored.
        max_size: if set and smaller than the eligible set, keep a uniform random subset of
            this size (so that only the pool needs encoding).
        seed: seeds the subset draw.

    Returns:
        Sorted (R,) int64 row indices into ``passage_ids``.
    """
    relevant = set(relevant_ids)
    keep = np.fromiter((pid not in relevant for pid in passage_ids), dtype=bool,
                       count=len(passage_ids))
    idx = np.flatnonzero(keep).astype(np.int64)
    if max_size is not None and max_size < len(idx):
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(idx, size=max_size, replace=False))
    return idx
