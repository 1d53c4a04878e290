"""The cost model Z(N, D) on hand-computed values."""

from __future__ import annotations

import pytest

from rag.common.errors import UserError
from rag.common.options import updated
from retriever.scaling import CostModel, GpuPrice

# usd_per_flop = 1.8 / (3600 * 1e12 * 0.5) = 1e-15 exactly.
HAND = CostModel(price_per_pair=2.0, gpu=GpuPrice(gpu_flops=1e12, utilisation=0.5, gpu_hour_price=1.8),
                 tokens_per_query=10, tokens_per_passage=100, train_tokens_per_pair=50,
                 epochs=2.0, corpus_size=1000, queries_served=500.0)


def test_coefficients_by_hand():
    assert HAND.gpu.usd_per_flop == pytest.approx(1e-15)
    assert HAND.z_data == 2.0
    assert HAND.train_usd_per_param_pair == pytest.approx(6 * 50 * 2 * 1e-15)
    assert HAND.z_infer == pytest.approx(2 * (1000 * 100 + 500 * 10) * 1e-15)  # 2.1e-10


def test_breakdown_by_hand():
    cost = HAND.breakdown(1e6, 1e3)
    assert cost.data == pytest.approx(2000.0)
    # 6 FLOPs x 1e6 params x (1e3 pairs x 50 tokens x 2 epochs) = 6e11 FLOPs = 6e-4 $
    assert cost.train == pytest.approx(6e-4)
    assert cost.infer == pytest.approx(2.1e-4)  # 2 x 1e6 x 1.05e5 tokens x 1e-15
    assert cost.total == pytest.approx(2000.00081)
    assert HAND.z_train(1e3) * 1e6 == pytest.approx(cost.train)


def test_without_inference_and_vectorised():
    free = HAND.without_inference()
    assert free.z_infer == 0.0 and free.z_data == HAND.z_data
    totals = HAND.total([1e6, 2e6], [1e3, 1e3])
    assert totals[1] - totals[0] == pytest.approx(6e-4 + 2.1e-4)


@pytest.mark.parametrize("kwargs", [{"utilisation": 0.0}, {"utilisation": 1.5},
                                    {"price_per_pair": -1.0}, {"gpu_flops": 0.0}])
def test_bad_cost_inputs(kwargs):
    (name, value), = kwargs.items()
    with pytest.raises(UserError, match=f"^--{name} must be .*, got {value}$"):
        updated(CostModel(), **kwargs)
