"""The (N, D) sweep on a tiny BERT: one readable row per (l, D), N grows with l, reruns resume."""

from __future__ import annotations

import json

import pytest

from rag.common.errors import UserError
from retriever.scaling import read_measurements
from retriever.scaling.sweep import (
    SweepConfig,
    kept_layers,
    load_sweep_data,
    run_sweep,
    truncated_encoder,
)


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


def test_eval_sample_random_is_seeded_and_differs_from_first(tmp_path, corpus_tsv, squad_questions,
                                                              tiny_encoder_dir):
    train, dev = _split_squad(tmp_path, squad_questions, {"Paris", "Nile", "Python"})
    base = dict(model=str(tiny_encoder_dir), eval_questions=2, pool_size=3, num_negatives=2)
    first = load_sweep_data(corpus_tsv, train, dev, SweepConfig(eval_sample="first", **base))
    runs = [load_sweep_data(corpus_tsv, train, dev, SweepConfig(seed=s, **base)) for s in range(6)]
    assert runs[0].dev_questions == load_sweep_data(
        corpus_tsv, train, dev, SweepConfig(seed=0, **base)).dev_questions  # deterministic
    picks = {tuple(r.dev_questions) for r in runs}
    assert len(picks) > 1 and any(p != tuple(first.dev_questions) for p in picks)
    for r in runs:  # each pick keeps its gold passages aligned with its questions
        assert len(r.dev_questions) == len(r.dev_gold) == 2
    with pytest.raises(UserError, match="eval_sample"):
        load_sweep_data(corpus_tsv, train, dev, SweepConfig(eval_sample="last", **base))


def test_train_context_trains_the_passage_side(sweep_inputs):
    data, config, out = sweep_inputs
    from dataclasses import replace

    frozen = run_sweep(data, [1], [4], out, config)[0]
    shared = run_sweep(data, [1], [4], out, replace(config, train_context=True))[0]
    assert shared["name"].endswith("-shared") and shared["train_context"]
    assert frozen["name"] != shared["name"] and len(read_measurements(out)) == 2
    assert shared["contrastive_entropy"] != pytest.approx(frozen["contrastive_entropy"], abs=1e-6)


def test_kept_layers():
    assert kept_layers(6, 1, "first") == [0]
    assert kept_layers(6, 3, "first") == [0, 1, 2]
    assert kept_layers(6, 1, "first_and_last") == [5]
    assert kept_layers(6, 3, "first_and_last") == [0, 1, 5]
    assert kept_layers(6, 6, "first_and_last") == list(range(6))
    with pytest.raises(UserError, match="keep"):
        kept_layers(6, 2, "middle")
    with pytest.raises(UserError):
        kept_layers(6, 0)


def test_truncated_encoder_first_and_last_keeps_the_top_layer(tiny_encoder_dir):
    import torch

    from retriever.encoder import Encoder

    base = Encoder.from_pretrained(str(tiny_encoder_dir))
    one = truncated_encoder(base, 1, "first_and_last")
    top = base.backbone.encoder.layer[1].state_dict()
    got = one.backbone.encoder.layer[0].state_dict()
    assert len(one.backbone.encoder.layer) == 1 and got.keys() == top.keys()
    assert all(torch.equal(got[k], top[k]) for k in top)
    assert one.identity() != truncated_encoder(base, 1, "first").identity()
