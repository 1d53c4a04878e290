"""The span head's distribution (generator.span) against probability-space brute force."""

from __future__ import annotations

import itertools

import pytest
import torch

from generator.span import SpanHead, gold_span_mask, span_band, span_logprobs


def _random_case(seed: int, N: int = 3, L: int = 9, M: int = 4):
    g = torch.Generator().manual_seed(seed)
    start, end = torch.randn(N, L, generator=g) * 3, torch.randn(N, L, generator=g) * 3
    allowed = torch.rand(N, L, generator=g) > 0.3
    allowed[:, 0] = False  # a special token
    return start, end, allowed, M


def _brute(start, end, allowed, M):
    """{(n, i, j): p} by enumerating every (i, j) pair in float64, straight from the definition."""
    out = {}
    N, L = start.shape
    for n in range(N):
        ok = [(i, j) for i, j in itertools.product(range(L), range(L))
              if allowed[n, i] and allowed[n, j] and i <= j < i + M]
        w = {s: torch.exp(start[n, s[0]].double() + end[n, s[1]].double()) for s in ok}
        z = sum(w.values())
        out.update({(n, i, j): float(v / z) for (i, j), v in w.items()})
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_span_probabilities_match_brute_force_and_sum_to_one(seed):
    start, end, allowed, M = _random_case(seed)
    logp = span_logprobs(start, end, allowed, M)  # (N, L, M)
    brute = _brute(start, end, allowed, M)
    N, L, _ = logp.shape
    for n in range(N):
        assert logp[n].exp().sum().item() == pytest.approx(1.0, abs=1e-5)
        for i, m in itertools.product(range(L), range(M)):
            p = logp[n, i, m].exp().item()
            assert p == pytest.approx(brute.get((n, i, i + m), 0.0), abs=1e-6)


def test_no_mass_outside_the_passage_or_past_the_cap():
    start, end, allowed, M = _random_case(5, L=12, M=3)
    logp = span_logprobs(start, end, allowed, M)
    N, L, _ = logp.shape
    for n, i, m in itertools.product(range(N), range(L), range(M)):
        j = i + m
        inside = j < L and bool(allowed[n, i]) and bool(allowed[n, j])
        if not inside:
            assert logp[n, i, m].item() == -float("inf")


def test_a_row_without_passage_text_has_no_answer():
    start, end = torch.randn(2, 5), torch.randn(2, 5)
    allowed = torch.tensor([[False] * 5, [False, True, True, False, False]])
    logp = span_logprobs(start, end, allowed, 2)
    assert torch.isneginf(logp[0]).all()
    assert logp[1].exp().sum().item() == pytest.approx(1.0, abs=1e-6)


def test_band_and_cap_one_token():
    allowed = torch.tensor([[True, True, False, True]])
    band = span_band(allowed, 1)
    assert band[0, :, 0].tolist() == [True, True, False, True]
    with pytest.raises(ValueError, match="max_tokens"):
        span_band(allowed, 0)


def test_gold_span_mask_maps_characters_to_tokens():
    # tokens: [CLS] "ab" "cd" "ef" "gh" [SEP]; characters 0-2, 3-5, 6-8, 9-11
    offsets = torch.tensor([[[0, 0], [0, 2], [3, 5], [6, 8], [9, 11], [0, 0]]])
    allowed = torch.tensor([[False, True, True, True, True, False]])
    gold = gold_span_mask([[(3, 8), (10, 11)]], offsets, allowed, max_tokens=2)
    # "cd ef" is tokens 2..3; "h" is inside token 4 and takes the whole word
    assert sorted(map(tuple, gold.nonzero().tolist())) == [(0, 2, 1), (0, 4, 0)]
    too_long = gold_span_mask([[(0, 11)]], offsets, allowed, max_tokens=2)
    assert not too_long.any()


def test_head_scores_are_float32():
    head = SpanHead(8).to(torch.bfloat16)
    start, end = head(torch.randn(2, 3, 5, 8, dtype=torch.bfloat16))
    assert start.shape == end.shape == (2, 3, 5) and start.dtype == torch.float32
