"""RagModel end to end on tiny random models: losses, gradients, answers, save/load, input checks."""

from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np
import pytest
import torch

from generator.inputs import passage_inputs
from rag.common.errors import UserError
from rag.config import DecodeConfig, RagConfig
from rag.model import RagModel
from retriever.encoder import Encoder
from retriever.index import DenseIndex
from retriever.index_protocol import SearchResult

QUESTIONS = ["What is the capital of France?", "Who developed the theory of relativity?",
             "When did Apollo 11 land on the Moon?"]
ANSWERS = ["Paris", "Albert Einstein", "July 1969"]
MODES = ["sequence", "token", "closed_book"]


@pytest.mark.parametrize("mode", MODES)
def test_loss_is_finite_per_question_nll(make_rag, mode):
    model = make_rag(mode)
    mean, nll = model.loss(QUESTIONS, ANSWERS)
    assert nll.shape == (len(QUESTIONS),)
    assert torch.isfinite(nll).all() and (nll > 0).all()
    torch.testing.assert_close(mean, nll.mean())


@pytest.mark.parametrize("mode", ["sequence", "token"])
def test_loss_trains_the_question_encoder(make_rag, mode):
    """p(z|x) comes from the question embedding with gradient (Lewis et al. 2020, Sec. 2.4)."""
    model = make_rag(mode)
    model.question_encoder.requires_grad_(True)
    model.loss(QUESTIONS, ANSWERS)[0].backward()
    grads = [p.grad for p in model.question_encoder.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert model.generator.get_input_embeddings().weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["sequence", "token"])
def test_answer_returns_passages_best_first(make_rag, mode):
    model = make_rag(mode)
    answers = model.answer(QUESTIONS)
    assert [a.question for a in answers] == QUESTIONS
    for a in answers:
        assert isinstance(a.answer, str) and np.isfinite(a.score)
        assert len(a.passages) == model.config.k
        for p in a.passages:
            assert set(p) == {"id", "title", "text", "score"}
        scores = [p["score"] for p in a.passages]
        assert scores == sorted(scores, reverse=True)


def test_answer_retrieves_whole_corpus_with_k_of_index_size(make_rag):
    model = make_rag("sequence", k=8)
    (answer,) = model.answer(QUESTIONS[:1], num_beams=1)
    assert len({p["id"] for p in answer.passages}) == 8


def test_closed_book_answers_without_passages(make_rag):
    answers = make_rag("closed_book").answer(QUESTIONS)
    assert len(answers) == len(QUESTIONS)
    assert all(a.passages == [] and isinstance(a.answer, str) for a in answers)


@pytest.mark.parametrize("mode", MODES)
def test_save_and_load_round_trip(make_rag, tmp_path, mode):
    model = make_rag(mode)
    model.save_pretrained(tmp_path / "model")
    loaded = RagModel.from_pretrained(tmp_path / "model").eval()  # index from rag_config.json
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(model.loss(QUESTIONS, ANSWERS)[1], loaded.loss(QUESTIONS, ANSWERS)[1])
    assert [asdict(a) for a in model.answer(QUESTIONS)] == \
        [asdict(a) for a in loaded.answer(QUESTIONS)]


def test_trained_question_encoder_is_still_accepted_after_reload(make_rag, tmp_path):
    """A question encoder moved away from the index's encoder stays paired with it."""
    model = make_rag("sequence")
    with torch.no_grad():
        next(model.question_encoder.parameters()).add_(0.1)
    model.question_encoder.refresh_fingerprint()
    model.save_pretrained(tmp_path / "model")
    loaded = RagModel.from_pretrained(tmp_path / "model")
    assert loaded.question_encoder.fingerprint != \
        loaded.index.manifest["encoder"]["fingerprint"]


def test_question_encoder_of_another_dimension_is_refused(make_rag, tiny_encoder_dir_16):
    model = make_rag("sequence")
    other = Encoder.from_pretrained(str(tiny_encoder_dir_16), max_length=64)
    with pytest.raises(UserError, match="dim 16"):
        RagModel(other, model.generator, model.tokenizer, model.index, model.config)


def test_question_encoder_of_another_identity_is_refused(make_rag, rag_question_encoder_dir):
    model = make_rag("sequence")
    other = Encoder.from_pretrained(str(rag_question_encoder_dir))
    with torch.no_grad():  # same architecture and dimension, different weights
        next(other.parameters()).add_(0.1)
    with pytest.raises(UserError, match="fingerprint"):
        RagModel(other, model.generator, model.tokenizer, model.index, model.config)


def test_retrieval_modes_need_an_index(make_rag):
    model = make_rag("closed_book")
    with pytest.raises(UserError, match="needs an index"):
        RagModel(None, model.generator, model.tokenizer, None, RagConfig())


@pytest.mark.parametrize("text", [
    "the river " * 300,  # whole-word tokens
    "qzx vjk " * 200,  # words outside the vocabulary: several word pieces each
])
def test_long_passage_is_cut_and_the_question_kept(make_rag, text):
    model = make_rag("sequence", max_input_length=48)
    questions = ["Which river flows into the Mediterranean Sea?", "What is the capital of France?"]
    passages = [[{"id": "long", "title": "Nile", "text": text, "score": 1.0},
                 {"id": "short", "title": "Paris", "text": "Paris is a city.", "score": 0.5}]
                for _ in questions]
    result = SearchResult(scores=np.zeros((2, 2), np.float32), rows=np.zeros((2, 2), np.int64),
                          ids=[["long", "short"]] * 2, passages=passages)
    inputs = passage_inputs(model.tokenizer, questions, result.passages,
                            model.config.max_input_length)[0]
    B, K, L = inputs["input_ids"].shape
    assert (B, K) == (2, 2) and L <= 48
    tok = model.tokenizer
    for b, q in enumerate(questions):
        q_ids = tok(q, add_special_tokens=False)["input_ids"]
        for k in range(K):
            row = inputs["input_ids"][b, k][inputs["attention_mask"][b, k].bool()].tolist()
            assert row[-1] == tok.sep_token_id
            assert row[-1 - len(q_ids) : -1] == q_ids, tok.decode(row)
    long_row = inputs["input_ids"][0, 0][inputs["attention_mask"][0, 0].bool()]
    assert len(long_row) > 48 - 10  # the passage was cut, not dropped


def test_labels_start_with_decoder_start_and_end_with_eos(make_rag):
    model = make_rag("sequence")
    labels = model.labels(["Paris", "Albert Einstein", "a much longer answer " * 10])
    gen = model.generator.generation_config
    pad = model.generator.config.pad_token_id
    assert labels.shape[0] == 3 and labels.shape[1] <= model.config.decode.max_length
    for row in labels.tolist():
        body = [t for t in row if t != pad]
        assert body[0] == gen.decoder_start_token_id
        assert body[-1] == gen.eos_token_id
        assert row[: len(body)] == body  # right-padded


def test_empty_question_is_a_user_error(make_rag):
    model = make_rag("sequence")
    with pytest.raises(UserError, match="empty"):
        model.answer(["What is the capital of France?", "   "])
    with pytest.raises(UserError, match="empty"):
        model.loss([""], ["Paris"])


@pytest.mark.parametrize("mode", ["sequence", "closed_book"])
def test_huge_question_is_truncated_with_a_warning(make_rag, caplog, mode):
    model = make_rag(mode)
    question = ("what is the capital of france " * 4000)[:100_000]
    with caplog.at_level(logging.WARNING):
        (answer,) = model.answer([question], num_beams=1)
        _, nll = model.loss([question], ["Paris"])
    assert "truncated" in caplog.text
    assert isinstance(answer.answer, str) and torch.isfinite(nll).all()
    if mode == "sequence":
        assert len(answer.passages) == model.config.k


def test_index_object_can_be_passed_to_from_pretrained(make_rag, tmp_path, rag_index_dir):
    model = make_rag("token")
    model.save_pretrained(tmp_path / "model")
    index = DenseIndex.load(rag_index_dir)
    loaded = RagModel.from_pretrained(tmp_path / "model", index, k=2)
    assert loaded.index is index and loaded.config.k == 2 and loaded.config.mode == "token"


@pytest.mark.parametrize("copy_spans", [True, False])
def test_answers_use_copied_spans_when_configured(make_rag, monkeypatch, copy_spans):
    import rag.answers

    calls = []
    monkeypatch.setattr(rag.answers, "copy_span",
                        lambda tok, ids, passages: calls.append(passages) or "SPAN")
    model = make_rag("sequence", copy_spans=copy_spans)
    answers = model.answer(QUESTIONS, num_beams=1)
    assert all((a.answer == "SPAN") == copy_spans for a in answers)
    assert calls == ([a.passages for a in answers] if copy_spans else [])


@pytest.mark.parametrize("mode", ["sequence", "token"])
def test_answer_reads_given_passages_like_the_generator_alone(make_rag, mode):
    """One given passage, p(z|x) = 1: the answer is the BART generator's own greedy output."""
    from generator.inputs import build_generator_inputs

    model = make_rag(mode, copy_spans=False)
    given = [("Paris", "Paris is the capital of France."), ("Einstein", "Albert Einstein, physicist."),
             ("Apollo 11", "Apollo 11 landed in July 1969.")]
    answers = model.answer(QUESTIONS, num_beams=1, passages=given)
    enc = build_generator_inputs(model.tokenizer, QUESTIONS, [[t] for t, _ in given],
                                 [[x] for _, x in given], model.config.max_input_length,
                                 pad_to_max_length=False)
    with torch.no_grad():
        out = model.generator.generate(input_ids=enc["input_ids"][:, 0],
                                       attention_mask=enc["attention_mask"][:, 0], num_beams=1,
                                       do_sample=False, max_length=model.config.decode.max_length)
    want = model.tokenizer.batch_decode(out, skip_special_tokens=True)
    assert [a.answer for a in answers] == [w.strip() for w in want]
    assert [a.passages for a in answers] == [[{"id": "", "title": t, "text": x, "score": 0.0}]
                                             for t, x in given]
    with pytest.raises(UserError):
        model.answer(QUESTIONS, passages=given[:2])


def test_doc_scores_are_scaled_before_the_softmax(make_rag):
    plain = make_rag("sequence", score_scale=1.0)
    scores, result = plain.retrieve(QUESTIONS)
    np.testing.assert_allclose(scores.detach().numpy(), result.scores, rtol=1e-5, atol=1e-5)
    scaled, _ = make_rag("sequence", score_scale=5.0).retrieve(QUESTIONS)
    torch.testing.assert_close(scaled, 5.0 * scores)
    with pytest.raises(UserError, match="score_scale"):
        RagConfig(score_scale=-1.0)


@pytest.mark.parametrize("normalize, scale", [(True, 20.0), (False, 1.0)])
def test_the_automatic_scale_is_20_on_cosines_and_1_on_inner_products(make_rag, normalize, scale):
    """score_scale 0: sentence-transformers' training scale, 20, on the scores of a question
    encoder whose outputs are L2-normalised (checked below), and DPR's raw inner products as
    they are."""
    from dataclasses import replace

    model = make_rag("sequence", score_scale=0.0)
    model.question_encoder.config = replace(model.question_encoder.config, normalize=normalize)
    scores, result = model.retrieve(QUESTIONS)
    np.testing.assert_allclose(scores.detach().numpy(), scale * result.scores, rtol=1e-5, atol=1e-5)
    q = model.question_encoder.tokenize(QUESTIONS)
    norms = model.question_encoder(q["input_ids"], q["attention_mask"]).norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5) == normalize


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_one_retrieval_path_rag_and_evaluation_agree(mode, rag_index_dir, rag_question_encoder_dir,
                                                     rag_generator_dir, squad_questions, tmp_path):
    """RagModel retrieves through the same Retriever as evaluation (eval_retrieval.py): the same
    passages, and scores equal up to the factor of p(z|x), with and without gradient."""
    from generator.model import load_generator
    from rag.common.questions import read_questions
    from retriever.evaluation import evaluate_retrieval
    from retriever.fusion import RetrievalConfig
    from retriever.search import Retriever

    index = DenseIndex.load(rag_index_dir)
    if mode == "hybrid":
        encoder = Encoder.from_pretrained(str(rag_question_encoder_dir))
        index.add_sparse(tokenizer=encoder.tokenizer)
        index.save(tmp_path / "idx")
        index = DenseIndex.load(tmp_path / "idx")
    generator, tokenizer = load_generator(rag_generator_dir)
    model = RagModel(Encoder.from_pretrained(str(rag_question_encoder_dir)), generator, tokenizer,
                     index, RagConfig(k=3, max_input_length=64, decode=DecodeConfig(max_length=8)),
                     RetrievalConfig(fusion_changes={"candidates": 4})).eval()
    assert model.retriever.mode == mode
    questions = read_questions(squad_questions)
    kept: list = []
    retriever = Retriever(Encoder.from_pretrained(str(rag_question_encoder_dir)), index,
                          RetrievalConfig(fusion_changes={"candidates": 4}))
    evaluate_retrieval(retriever, questions, [1, 3], batch_size=4, progress=False, results=kept)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            scores, result = model.retrieve([q.question for q in questions])
        assert scores.requires_grad == grad
        assert result.ids == [[p["id"] for p in row] for row in kept]
        np.testing.assert_allclose(scores.detach().numpy() / model.score_scale,
                                   [[p["score"] for p in row] for row in kept], atol=1e-5)
