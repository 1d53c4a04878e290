"""The (N, D) sweep on a tiny BERT: one readable row per (l, D), N grows with l, reruns resume."""

from __future__ import annotations

import json

import pytest

from retriever.errors import UserError
from retriever.scaling import read_measurements
from retriever.scaling.sweep import SweepConfig, load_sweep_data, run_sweep, truncated_encoder


def _split_squad(tmp_path, squad_questions, dev_titles: set[str]):
    """Train / dev SQuAD files over the fixture corpus: dev asks about ``dev_titles`` only."""
    full = json.loads(squad_questions.read_text())
    train = {"data": [a for a in full["data"] if a["title"] not in dev_titles]}
    dev = {"data": [a for a in full["data"] if a["title"] in dev_titles]}
    paths = tmp_path / "train.json", tmp_path / "dev.json"
    for path, payload in zip(paths, (train, dev), strict=True):
        path.write_text(json.dumps(payload))
    return paths


@pytest.fixture
def sweep_inputs(tmp_path, corpus_tsv, squad_questions, tiny_encoder_dir):
    train, dev = _split_squad(tmp_path, squad_questions, {"Paris", "Nile"})
    config = SweepConfig(model=str(tiny_encoder_dir), batch_size=2, eval_questions=2,
                         pool_size=5, num_negatives=3, repeats=2, max_length=64)
    return load_sweep_data(corpus_tsv, train, dev, config), config, tmp_path / "rows.jsonl"


def test_sweep_data_pool_excludes_dev_golds(sweep_inputs):
    data, _, _ = sweep_inputs
    assert len(data.train_questions) == 6 and len(data.dev_questions) == 2
    assert set(data.pool.tolist()).isdisjoint(data.dev_gold.tolist())
    assert len(data.pool) == 5


def test_sweep_writes_rows_and_resumes(sweep_inputs):
    data, config, out = sweep_inputs
    written = run_sweep(data, [1, 2], [2, 4], out, config)
    rows = read_measurements(out)
    assert [r.name for r in rows] == [w["name"] for w in written]
    assert {(r.extra["layers"], r.n_train_pairs) for r in rows} == {
        (1, 2), (1, 4), (2, 2), (2, 4)}
    n_by_layers = {r.extra["layers"]: r.n_params for r in rows}
    assert n_by_layers[1] < n_by_layers[2]
    assert all(r.contrastive_entropy > 0 and r.ce_std is not None for r in rows)

    again = run_sweep(data, [1, 2], [2, 4, 6], out, config)  # only D=6 is new
    assert [(w["layers"], w["n_train_pairs"]) for w in again] == [(1, 6), (2, 6)]
    assert len(read_measurements(out)) == 6


def test_truncated_encoder_keeps_first_layers(tiny_encoder_dir):
    from retriever.encoder import Encoder

    base = Encoder.from_pretrained(str(tiny_encoder_dir))
    one = truncated_encoder(base, 1)
    assert len(one.backbone.encoder.layer) == 1 and one.backbone.config.num_hidden_layers == 1
    assert len(base.backbone.encoder.layer) == 2  # the original is untouched
    with pytest.raises(UserError):
        truncated_encoder(base, 3)
