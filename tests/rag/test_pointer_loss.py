"""Supervised pointing inside RagModel.loss: added where the answer is in a passage, skipped and
counted where it is not, never a crash."""

from __future__ import annotations

import pytest
import torch

from generator.copy import CopyBartForConditionalGeneration
from generator.model import load_generator
from rag.config import DecodeConfig, RagConfig
from rag.model import RagModel

QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?"]


@pytest.fixture
def copy_reader(rag_generator_dir):
    """``copy_reader(pointer_weight)``: a closed-book-free reader (given passages) with a copy
    generator warm-started from the tiny BART."""

    def make(pointer_weight: float) -> RagModel:
        bart, tokenizer = load_generator(rag_generator_dir)
        torch.manual_seed(0)
        generator = CopyBartForConditionalGeneration.from_bart(bart)
        config = RagConfig(mode="closed_book", max_input_length=64, decode=DecodeConfig(max_length=8),
                           pointer_weight=pointer_weight)
        return RagModel(None, generator, tokenizer, None, config).eval()

    return make


def test_pointer_term_only_where_the_answer_is_in_the_passage(copy_reader):
    passages = [("France", "paris is the capital of france."), ("Hamlet", "a play by someone.")]
    answers = ["paris", "shakespeare"]  # the second passage lacks its answer
    with_pointer = copy_reader(1.0)
    loss, nll = with_pointer.loss(QUESTIONS, answers, passages)
    assert with_pointer.pointer_stats == {"answers": 2, "not_found": 1}
    plain_loss, plain_nll = copy_reader(0.0).loss(QUESTIONS, answers, passages)
    torch.testing.assert_close(nll, plain_nll)  # the reported NLL is the RAG NLL alone
    assert (loss * 2 - nll.sum()).item() > 1e-3  # question 0 adds -log a_t(target) > 0
    absent = copy_reader(1.0)
    only_absent, absent_nll = absent.loss(QUESTIONS[1:], answers[1:], passages[1:])
    torch.testing.assert_close(only_absent, absent_nll.mean())  # no pointer term, no crash
    assert absent.pointer_stats == {"answers": 1, "not_found": 1}


def test_pointer_loss_trains_the_copy_head(copy_reader):
    model = copy_reader(1.0)
    model.loss(QUESTIONS[:1], ["paris"], [("France", "paris is the capital of france.")])[0].backward()
    assert model.generator.copy_head.query.weight.grad.abs().sum() > 0
    assert model.generator.copy_head.follow.grad is not None
