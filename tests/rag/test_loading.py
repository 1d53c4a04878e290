"""Getting a model to work with: assembled from parts, or loaded with the settings a run changes."""

from __future__ import annotations

import pytest
import torch

from generator.copy import has_copy_head
from rag.common.errors import UserError
from rag.config import DecodeConfig, RagConfig, run_changes, run_config
from rag.loading import assemble, load_model
from rag.model import RagModel
from retriever.fusion import RetrievalConfig
from tests.rag.conftest import TINY_RAG

QUESTIONS = ["What is the capital of France?", "Which river flows through Egypt?"]


def test_assemble_builds_a_new_model_from_its_parts(rag_index_dir, rag_generator_dir):
    model = assemble(RagConfig(index=str(rag_index_dir), **TINY_RAG), str(rag_generator_dir),
                     copy_head=True)
    assert has_copy_head(model.generator) and model.retriever is not None
    assert model.question_encoder.fingerprint == model.index.manifest["encoder"]["fingerprint"]
    closed = assemble(RagConfig(mode="closed_book", **TINY_RAG), str(rag_generator_dir))
    assert closed.index is None and closed.question_encoder is None
    with pytest.raises(UserError, match="--index"):
        assemble(RagConfig(**TINY_RAG), str(rag_generator_dir))


def test_a_seed_makes_the_new_weights_again(rag_generator_dir):
    def copy_head(seed):
        model = assemble(RagConfig(mode="closed_book", **TINY_RAG), str(rag_generator_dir),
                         copy_head=True, seed=seed)
        return [p.detach().clone() for p in model.generator.copy_head.parameters()]

    first, again, other = copy_head(3), copy_head(3), copy_head(4)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("mode", ["sequence", "token"])
def test_no_changes_keep_the_model_s_own_settings(mode):
    config = RagConfig(mode=mode, **TINY_RAG)  # 2 beams
    applied, decoding = run_config(config, {})
    assert applied == config
    assert decoding == ("thorough" if mode == "sequence" else "beam")


def test_changes_replace_fields_and_name_the_decoding():
    config = RagConfig(**TINY_RAG)
    applied, decoding = run_config(config, {"k": 1, "decoding": "fast", "num_beams": 3})
    assert (applied.k, applied.decoding, applied.decode.num_beams, decoding) == (1, "fast", 3, "fast")
    applied, decoding = run_config(config, {"decoding": "greedy"})
    assert (applied.decode.num_beams, applied.decoding, decoding) == (1, "thorough", "greedy")


def test_a_change_equal_to_the_default_still_changes_the_saved_value():
    saved = RagConfig(k=3, decode=DecodeConfig(num_beams=2, max_length=9))
    applied, _ = run_config(saved, {"k": RagConfig().k, "max_input_length": 256})
    assert applied.k == 5 and applied.decode == saved.decode  # what was not given is kept


@pytest.mark.parametrize("changes, config, message", [
    ({"decoding": "thorough"}, RagConfig(mode="token"), "RAG-Sequence's"),
    ({"decoding": "greedy", "num_beams": 2}, RagConfig(), "one beam"),
    ({"decoding": "beam"}, RagConfig(decode=DecodeConfig(num_beams=1)), "num_beams >= 2"),
])
def test_a_decoding_the_model_cannot_run_is_refused(changes, config, message):
    with pytest.raises(UserError, match=message):
        run_config(config, changes)


def test_bad_changes_are_refused_by_name():
    with pytest.raises(UserError, match="--k"):
        run_changes({"k": 0})
    with pytest.raises(UserError, match="--decoding"):
        run_changes({"decoding": "sideways"})
    with pytest.raises(UserError, match="--num_beams"):
        run_changes({"num_beams": 0})
    with pytest.raises(TypeError, match="width"):
        run_changes({"width": 3})


def test_closed_book_drops_what_needs_passages_unless_asked_for(caplog):
    assert run_changes({"mode": "closed_book"}) == {"mode": "closed_book", "constrain": "none",
                                                    "reader": "generate"}
    assert len(caplog.records) == 1 and "closed book" in caplog.text
    given = {"mode": "closed_book", "constrain": "spans", "reader": "span"}
    assert run_changes(given) == given


def test_load_model_answers_as_the_changed_model_does(make_rag, tmp_path):
    make_rag("sequence").save_pretrained(tmp_path / "model")
    model, decoding = load_model(tmp_path / "model", changes={"k": 2, "decoding": "greedy"})
    assert decoding == "greedy" and not model.training
    plain = RagModel.from_pretrained(tmp_path / "model", k=2).eval()
    assert model.answer(QUESTIONS) == plain.answer(QUESTIONS, num_beams=1)
    assert [len(a.passages) for a in model.answer(QUESTIONS)] == [2, 2]


def test_retrieval_changes_keep_the_saved_settings_they_do_not_name(make_rag, tmp_path):
    made = make_rag("sequence")
    saved = RetrievalConfig("dense", {"candidates": 7})
    RagModel(made.question_encoder, made.generator, made.tokenizer, made.index, made.config,
             saved).save_pretrained(tmp_path / "model")
    assert load_model(tmp_path / "model")[0].retriever.config == saved
    model, _ = load_model(tmp_path / "model", retrieval={"fusion_weight": 0.0, "mmap": True})
    assert model.retriever.config == RetrievalConfig("dense", {"candidates": 7, "fusion_weight": 0.0},
                                                     mmap=True)
    assert model.retriever.fusion.candidates == 7 and model.index.mmap
