"""Contrastive entropy against hand computation and enumeration; sampling; the negative pool."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from retriever.scaling import (
    contrastive_entropy,
    negative_pool_indices,
    pair_contrastive_entropy,
    sample_negative_indices,
)

# Two queries, three pool passages, 2-D embeddings; dot-product scores are small integers.
Q = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
GOLD = np.array([[2.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # gold scores: 2, 2
POOL = np.array([[1.0, 1.0], [0.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
# q1 . pool = (1, 0, -1); q2 . pool = (2, 0, 0)
NEG_SCORES = [(1.0, 0.0, -1.0), (2.0, 0.0, 0.0)]


def _ce(gold: float, negs) -> float:
    return math.log(math.exp(gold) + sum(math.exp(s) for s in negs)) - gold


def test_all_pool_as_negatives_matches_hand_computation():
    expected = (_ce(2.0, NEG_SCORES[0]) + _ce(2.0, NEG_SCORES[1])) / 2
    mean, std = contrastive_entropy(Q, GOLD, POOL, num_negatives=3, repeats=3, seed=7)
    assert mean == pytest.approx(expected, rel=1e-6)  # ~0.3809 + ~0.8620, halved
    assert std == pytest.approx(0.0, abs=1e-7)  # every repeat uses the whole pool


def test_two_of_three_negatives_matches_enumeration():
    # Expected value: average over the 3 equally likely 2-subsets of the pool, per query.
    expected = np.mean([
        np.mean([_ce(2.0, [scores[i] for i in subset])
                 for subset in itertools.combinations(range(3), 2)])
        for scores in NEG_SCORES
    ])
    mean, std = contrastive_entropy(Q, GOLD, POOL, num_negatives=2, repeats=4000, seed=0)
    assert mean == pytest.approx(expected, abs=5e-3)
    assert std > 0


def test_pair_entropy_with_explicit_negatives():
    neg = POOL[None].repeat(2, axis=0)  # (P=2, M=3, H=2)
    out = pair_contrastive_entropy(Q, GOLD, neg)
    assert out.shape == (2,) and out.dtype == np.float64
    np.testing.assert_allclose(out, [_ce(2.0, s) for s in NEG_SCORES], rtol=1e-6)


def test_deterministic_for_a_seed_and_accepts_torch():
    rng = np.random.default_rng(1)
    q, gold, pool = (rng.standard_normal(s).astype(np.float32) for s in [(50, 8), (50, 8),
                                                                          (300, 8)])
    first = contrastive_entropy(q, gold, pool, num_negatives=16, repeats=3, seed=3)
    assert contrastive_entropy(q, gold, pool, num_negatives=16, repeats=3, seed=3) == first
    assert contrastive_entropy(q, gold, pool, num_negatives=16, repeats=3, seed=4) != first
    as_torch = contrastive_entropy(torch.from_numpy(q), torch.from_numpy(gold),
                                   torch.from_numpy(pool), num_negatives=16, repeats=3, seed=3)
    assert as_torch == pytest.approx(first)


def test_random_scorer_is_near_log_m_plus_one():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((200, 4)).astype(np.float32) * 1e-3  # scores ~ 0: uniform softmax
    mean, _ = contrastive_entropy(q, q, rng.standard_normal((5000, 4)), num_negatives=256,
                                  repeats=2)
    assert mean == pytest.approx(math.log(257), abs=1e-3)


@pytest.mark.parametrize("pool_size, m", [(10_000, 64), (50, 40), (5, 5)])
def test_sampled_negatives_are_distinct_and_in_range(pool_size, m):
    idx = sample_negative_indices(300, pool_size, m, np.random.default_rng(0))
    assert idx.shape == (300, m) and idx.dtype == np.int64
    assert idx.min() >= 0 and idx.max() < pool_size
    assert all(len(set(row)) == m for row in idx.tolist())


def test_sampled_negatives_cover_the_pool_uniformly():
    idx = sample_negative_indices(20_000, 10, 3, np.random.default_rng(0))
    counts = np.bincount(idx.ravel(), minlength=10) / idx.size
    np.testing.assert_allclose(counts, 0.1, atol=0.005)


def test_too_few_pool_passages():
    with pytest.raises(ValueError, match="num_negatives"):
        contrastive_entropy(Q, GOLD, POOL, num_negatives=4)


def test_negative_pool_excludes_judged_relevant():
    ids = ["p0", "p1", "p2", "p3", "p4"]
    idx = negative_pool_indices(ids, {"p1", "p3", "not-in-corpus"})
    assert idx.tolist() == [0, 2, 4]
    sub = negative_pool_indices(ids, ["p1"], max_size=2, seed=0)
    assert len(sub) == 2 and set(sub.tolist()) <= {0, 2, 3, 4}
    assert sub.tolist() == sorted(sub.tolist())
