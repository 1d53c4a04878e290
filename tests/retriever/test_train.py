"""DPR training: the loss against a hand computation, example building, and a short real run."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from rag.common.errors import UserError
from rag.common.options import updated
from rag.common.questions import Question, read_questions
from retriever.batch_encode import EncodeConfig, encode_texts
from retriever.corpus import open_shards, write_arrow
from retriever.encoder import Encoder
from retriever.examples import Example, build_examples, mine_bm25_negatives
from retriever.index import DenseIndex
from retriever.train import TrainConfig, dpr_loss, train_dpr, train_step_loss

QUIET = EncodeConfig(progress=False)


def hand_loss(q, ctx, positive_col, exclude=None, scale=1.0) -> float:
    """Mean over questions of -log softmax of the positive among non-excluded candidates (Eq. 2)."""
    total = 0.0
    for i in range(len(q)):
        scores = {}
        for j in range(len(ctx)):
            if exclude is not None and exclude[i][j]:
                continue
            scores[j] = scale * sum(float(a) * float(b) for a, b in zip(q[i], ctx[j], strict=True))
        log_z = math.log(sum(math.exp(s) for s in scores.values()))
        total += -(scores[int(positive_col[i])] - log_z)
    return total / len(q)


def test_dpr_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    q, ctx = torch.randn(3, 4, generator=g), torch.randn(6, 4, generator=g)
    positive_col = torch.tensor([0, 1, 2])
    exclude = torch.zeros(3, 6, dtype=torch.bool)
    exclude[0, 3] = True  # column 3 is the same passage as question 0's positive
    exclude[2, 0] = exclude[2, 5] = True
    for mask in (None, exclude):
        for scale in (1.0, 20.0):
            got = dpr_loss(q, ctx, positive_col, mask, scale)
            assert got.item() == pytest.approx(hand_loss(q, ctx, positive_col, mask, scale), rel=1e-5)
    assert dpr_loss(q, ctx, positive_col, exclude).item() != pytest.approx(
        dpr_loss(q, ctx, positive_col).item(), rel=1e-3)


# -------------------------------------------------------------- tiny setup
@pytest.fixture(scope="module")
def setup(tiny_encoder_dir, passages, questions, tmp_path_factory):
    """Frozen mean-pooling context encoder, its flat index over the tiny corpus, training questions."""
    ctx_enc = Encoder.from_pretrained(str(tiny_encoder_dir), pooling="mean")
    path = tmp_path_factory.mktemp("train") / "p.arrow"
    write_arrow(iter(passages), path)
    table = open_shards([path])
    vectors = encode_texts(ctx_enc, list(table["text"]), list(table["title"]), QUIET)
    index = DenseIndex.build(vectors, table, ctx_enc.identity())
    train = [Question(q, tuple(a), id=gold, positive_ids=(gold,)) for q, a, gold in questions]
    return ctx_enc, index, vectors, train


def full_corpus_loss(q_enc: Encoder, vectors: np.ndarray, train) -> tuple[float, int]:
    """DPR loss of each question's gold passage against the whole corpus, and top-1 hits."""
    q = torch.from_numpy(encode_texts(q_enc, [x.question for x in train], config=QUIET))
    ctx = torch.from_numpy(vectors)
    gold = torch.arange(len(train))  # question i's gold passage is row i
    hits = int(((q @ ctx.T).argmax(dim=1) == gold).sum())
    return dpr_loss(q, ctx, gold).item(), hits


def test_train_step_masks_duplicate_positives(tiny_encoder_dir, setup):
    ctx_enc, index, vectors, _ = setup
    q_enc = Encoder.from_pretrained(str(tiny_encoder_dir), pooling="mean").eval()
    # two questions on the same passage (row 5), one hard negative each
    batch = [Example("largest planet?", 5, (1,)), Example("moons of jupiter?", 5, (2, 7))]
    ctx_rows = []

    def lookup(rows):
        ctx_rows.append(list(rows))
        return torch.from_numpy(vectors[rows])

    with torch.no_grad():
        got = train_step_loss(q_enc, batch, lookup, TrainConfig(hard_negatives=1), scale=3.0)
        tok = q_enc.tokenize([ex.question for ex in batch])
        q = q_enc(tok["input_ids"], tok["attention_mask"])
    assert ctx_rows == [[5, 5, 1, 2]]  # positives first, then one hard negative per question
    exclude = [[False, True, False, False], [True, False, False, False]]
    expected = hand_loss(q, vectors[[5, 5, 1, 2]], [0, 1], exclude, scale=3.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_build_examples_with_given_hard_negatives(setup):
    _, index, _, _ = setup
    train = [Question("q1", ("a",), positive_ids=("nile",), hard_negative_ids=("paris", "gone", "apollo")),
             Question("q2", ("b",), positive_ids=("missing", "everest"), hard_negative_ids=("nile",)),
             Question("q3", ("c",), positive_ids=("not-in-index",), hard_negative_ids=("nile",))]
    got = build_examples(index, train, TrainConfig(hard_negatives=2))
    assert got == [Example("q1", 1, (0, 7)), Example("q2", 3, (1,))]  # q3 skipped: no gold row
    with pytest.raises(UserError, match="gold passage"):
        build_examples(index, train[2:], TrainConfig())


def test_build_examples_from_squad_contexts(setup, squad_questions):
    _, index, _, _ = setup
    got = build_examples(index, read_questions(squad_questions), TrainConfig(hard_negatives=0))
    assert [ex.positive for ex in got] == list(range(8))
    assert all(ex.negatives == () for ex in got)


def test_bm25_negatives_are_not_positive_and_hold_no_answer(setup, passages):
    _, index, _, train = setup
    positives = list(range(len(train)))
    negatives = mine_bm25_negatives(index, train, positives, n=2, depth=8)
    from retriever.metrics import has_answer

    for q, pos, negs in zip(train, positives, negatives, strict=True):
        assert len(negs) == 2 and pos not in negs
        for r in negs:
            assert not has_answer(passages[r]["title"] + " " + passages[r]["text"], q.answers)


def test_train_dpr_lowers_loss_and_freezes_context_encoder(tiny_encoder_dir, setup):
    ctx_enc, index, vectors, train = setup
    ctx_before = copy.deepcopy(ctx_enc.state_dict())
    q_enc = Encoder.from_pretrained(str(tiny_encoder_dir), pooling="mean")
    q_before = copy.deepcopy(q_enc.state_dict())
    fp_before = q_enc.fingerprint
    loss_before, hits_before = full_corpus_loss(q_enc, vectors, train)

    config = updated(TrainConfig(), epochs=10, batch_size=4, lr=3e-3, warmup_ratio=0.0,
                     hard_negatives=1)
    logs = train_dpr(q_enc, ctx_enc, index, train, config,
                     evaluate=lambda model: {"hits": full_corpus_loss(model, vectors, train)[1]})

    assert [entry["epoch"] for entry in logs] == list(range(1, 11))
    assert all(math.isfinite(entry["loss"]) and "hits" in entry["dev"] for entry in logs)
    loss_after, hits_after = full_corpus_loss(q_enc, vectors, train)
    assert loss_after < loss_before - 0.3
    assert hits_after > hits_before
    for key, value in ctx_enc.state_dict().items():
        torch.testing.assert_close(value, ctx_before[key], rtol=0, atol=0)
    assert any(not torch.equal(v, q_before[k]) for k, v in q_enc.state_dict().items())
    assert q_enc.fingerprint != fp_before  # refreshed after training


@pytest.mark.parametrize("setting, flag", [({"negatives": "corpus"}, "negatives corpus"),
                                           ({"lexical_head": True}, "--lexical_head"),
                                           ({"hybrid": True}, "--hybrid")])
def test_settings_that_need_the_frozen_context_encoder_are_refused_by_the_config(setting, flag):
    TrainConfig(**setting)  # fine with the frozen context encoder
    with pytest.raises(UserError, match=f"{flag} needs the frozen context encoder"):
        TrainConfig(train_context_encoder=True, **setting)
