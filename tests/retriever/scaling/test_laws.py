"""Scaling laws on hand-computed values, their limits and inverse, the parameter count, JSON I/O."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rag.common.errors import UserError
from retriever.scaling import (
    JointLaw,
    ModelSizeLaw,
    count_non_embedding_params,
    data_size_law,
    joint_law,
    load_laws,
    model_size_law,
    published_msmarco_path,
    save_laws,
)


def test_laws_on_hand_computed_values():
    assert model_size_law(1e4, a=1e6, alpha=0.5, delta=0.1) == pytest.approx(10.1)  # 100^.5 + .1
    assert data_size_law(100.0, b=400.0, beta=2.0, delta=0.2) == pytest.approx(16.2)  # 4^2 + .2
    # [(1e4/1e2)^(1/2) + 20/10]^2 + 0.5 = (10 + 2)^2 + 0.5
    assert joint_law(1e2, 10.0, a=1e4, b=20.0, alpha=1.0, beta=2.0, delta=0.5) == pytest.approx(
        144.5)


def test_laws_are_vectorised_and_broadcast():
    n = np.array([1e6, 1e7, 1e8])
    d = np.array([[1e4], [1e5]])
    out = joint_law(n, d, a=3e4, b=1e4, alpha=0.5, beta=1.2, delta=0.05)
    assert out.shape == (2, 3)
    assert np.all(np.diff(out, axis=1) < 0) and np.all(np.diff(out, axis=0) < 0)
    assert model_size_law(n, 3e4, 0.5, 0.05).shape == (3,)


def test_joint_law_limits_are_the_single_laws():
    law = JointLaw(a=3.22e4, b=1e4, alpha=0.56, beta=1.31, delta=0.04)
    n = np.geomspace(1e5, 1e9, 5)
    np.testing.assert_allclose(law.predict(n, 1e30), ModelSizeLaw(3.22e4, 0.56, 0.04).predict(n),
                               rtol=1e-9)
    d = np.geomspace(1e3, 1e7, 5)
    np.testing.assert_allclose(law.predict(1e40, d), data_size_law(d, 1e4, 1.31, 0.04), rtol=1e-9)


def test_pairs_for_loss_inverts_the_joint_law():
    law = JointLaw(a=3.22e4, b=1e4, alpha=0.56, beta=1.31, delta=0.04)
    n = np.array([4e5, 1e7, 1e9])
    d = law.pairs_for_loss(n, 0.3)
    np.testing.assert_allclose(law.predict(n, d), 0.3, rtol=1e-10)
    assert np.isinf(law.pairs_for_loss(np.array([10.0]), 0.3)).all()  # model term alone > 0.3
    assert np.isinf(law.pairs_for_loss(n, 0.04)).all()  # at delta


class _Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok = torch.nn.Embedding(100, 8)  # 800, excluded
        self.pos = torch.nn.Embedding(16, 8)  # 128, excluded
        self.body = torch.nn.Linear(8, 8)  # 72
        self.head = torch.nn.Linear(8, 100, bias=False)
        self.head.weight = self.tok.weight  # tied to the token table: excluded with it


def test_count_non_embedding_params_toy():
    assert count_non_embedding_params(_Toy()) == 72


def test_count_non_embedding_params_bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=64, type_vocab_size=2)
    model = transformers.BertModel(cfg, add_pooling_layer=False)
    h, i = 16, 32
    per_layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * 2 * h  # attn, FFN, 2 LayerNorms
    assert count_non_embedding_params(model) == 2 * per_layer + 2 * h  # + embedding LayerNorm


def test_save_and_load_laws_round_trip(tmp_path):
    path = save_laws(tmp_path / "fit.json",
                     {"joint": {"a": 1.0, "b": 2.0, "alpha": 0.5, "beta": 1.0, "delta": 0.1,
                                "r2": 0.99}}, source="test")
    laws = load_laws(path)
    assert laws == {"joint": JointLaw(a=1.0, b=2.0, alpha=0.5, beta=1.0, delta=0.1)}


@pytest.mark.parametrize("payload, match", [
    ("not json", "not valid JSON"),
    (json.dumps({"laws": {}}), "expected an object"),
    (json.dumps({"laws": {"model": {"a": 1.0, "alpha": "x", "delta": 0.0}}}), "alpha"),
    (json.dumps({"laws": {"model": {"a": -1.0, "alpha": 0.5, "delta": 0.0}}}), "positive"),
])
def test_load_laws_rejects_bad_files(tmp_path, payload, match):
    path = tmp_path / "bad.json"
    path.write_text(payload)
    with pytest.raises(UserError, match=match) as err:
        load_laws(path)
    assert "bad.json" in str(err.value)


def test_shipped_msmarco_coefficients():
    laws = load_laws(published_msmarco_path())
    assert laws["model"] == ModelSizeLaw(a=3.22e4, alpha=0.53, delta=0.04)
    assert (laws["joint"].alpha, laws["joint"].beta) == (0.56, 1.31)
    notes = " ".join(json.loads(published_msmarco_path().read_text())["notes"])
    assert "assum" in notes  # the joint A, B, delta are labelled as our assumption
