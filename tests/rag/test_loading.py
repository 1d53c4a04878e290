"""Getting a model to work with: assembled from parts, or loaded with a run's overrides."""

from __future__ import annotations

import pytest
import torch

from generator.copy import has_copy_head
from rag.common.errors import UserError
from rag.config import DecodeConfig, Overrides, RagConfig
from rag.loading import assemble, load_model
from rag.model import RagModel
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
def test_no_overrides_keep_the_model_s_own_settings(mode):
    config = RagConfig(mode=mode, **TINY_RAG)  # 2 beams
    applied, decoding = Overrides().apply(config)
    assert applied == config
    assert decoding == ("thorough" if mode == "sequence" else "beam")


def test_overrides_replace_fields_and_name_the_decoding():
    config = RagConfig(**TINY_RAG)
    applied, decoding = Overrides(k=1, decoding="fast", num_beams=3).apply(config)
    assert (applied.k, applied.decoding, applied.decode.num_beams, decoding) == (1, "fast", 3, "fast")
    applied, decoding = Overrides(decoding="greedy").apply(config)
    assert (applied.decode.num_beams, applied.decoding, decoding) == (1, "thorough", "greedy")


@pytest.mark.parametrize("overrides, config, message", [
    (Overrides(decoding="thorough"), RagConfig(mode="token"), "RAG-Sequence's"),
    (Overrides(decoding="greedy", num_beams=2), RagConfig(), "one beam"),
    (Overrides(decoding="beam"), RagConfig(decode=DecodeConfig(num_beams=1)), "num_beams >= 2"),
])
def test_a_decoding_the_model_cannot_run_is_refused(overrides, config, message):
    with pytest.raises(UserError, match=message):
        overrides.apply(config)


def test_bad_overrides_are_refused_by_name():
    with pytest.raises(UserError, match="--k"):
        Overrides(k=0)
    with pytest.raises(UserError, match="--decoding"):
        Overrides(decoding="sideways")


def test_load_model_answers_as_the_overridden_model_does(make_rag, tmp_path):
    make_rag("sequence").save_pretrained(tmp_path / "model")
    model, decoding = load_model(tmp_path / "model", overrides=Overrides(k=2, decoding="greedy"))
    assert decoding == "greedy" and not model.training
    plain = RagModel.from_pretrained(tmp_path / "model", k=2).eval()
    assert model.answer(QUESTIONS) == plain.answer(QUESTIONS, num_beams=1)
    assert [len(a.passages) for a in model.answer(QUESTIONS)] == [2, 2]
