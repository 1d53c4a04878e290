"""Work split into equal shares and put back in order (rag.common.collective), with the world
faked: every rank's share computed in turn, and the gather handed all of them."""

from __future__ import annotations

import pytest

from rag.common import collective


@pytest.mark.parametrize("n, size", [(0, 3), (1, 4), (7, 1), (7, 3), (12, 4), (5, 8)])
def test_shares_are_equal_cover_every_item_and_gather_back_in_order(monkeypatch, n, size):
    shares = []
    for rank in range(size):
        monkeypatch.setattr(collective, "world", lambda rank=rank: (rank, size))
        shares.append(collective.share(n))
    assert len({len(s) for s in shares}) == 1  # as many batches on every rank
    assert set().union(*shares) == set(range(n))
    assert sum(len(s) for s in shares) - n < size  # padding: fewer than one item per rank
    results = [[f"answer {i}" for i in s] for s in shares]  # each rank's results, in its order
    monkeypatch.setattr(collective, "all_objects", lambda mine: results)
    assert collective.gather_shares(results[0], n) == [f"answer {i}" for i in range(n)]


def test_one_process_is_a_no_op():
    assert collective.world() == (0, 1)
    assert collective.share(3) == [0, 1, 2]
    assert collective.gather_shares(["a", "b", "c", "pad"], 3) == ["a", "b", "c"]
    assert collective.all_objects({"x": 1}) == [{"x": 1}]
    collective.agree(None)
    with pytest.raises(collective.UserError, match="bad row"):
        collective.agree("bad row")
