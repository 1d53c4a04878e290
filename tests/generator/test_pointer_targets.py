"""Supervised-pointing targets: found by character offsets, right for sub-words and punctuation."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from generator.inputs import build_generator_inputs, generator_input_strings, pointer_targets


def targets_for(tokenizer, titles, texts, questions, answers, max_length=64):
    """Run the real input pipeline and return (targets, input_ids, labels)."""
    inputs = build_generator_inputs(tokenizer, questions, titles, texts, max_length,
                                    pad_to_max_length=False)
    start, eos = tokenizer.sep_token_id, tokenizer.sep_token_id
    body = tokenizer(answers, add_special_tokens=False)["input_ids"]
    width = max(len(ids) for ids in body) + 2
    labels = torch.tensor([[start] + ids + [eos] + [tokenizer.pad_token_id] * (width - len(ids) - 2)
                           for ids in body])
    strings = generator_input_strings(questions, titles, texts)
    return pointer_targets(tokenizer, strings, answers, labels, inputs["input_ids"], 1), \
        inputs["input_ids"], labels


def check_points_at_answer(tokenizer, targets, input_ids, labels, b, k, answer):
    """The targets of (b, k) are consecutive positions whose tokens are the answer's tokens."""
    n = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
    pos = targets[b, k, :n].tolist()
    assert pos[0] >= 0 and pos == list(range(pos[0], pos[0] + n))
    assert input_ids[b, k, pos].tolist() == labels[b, 1 : 1 + n].tolist()
    assert torch.all(targets[b, k, n:] == -1)  # EOS and padding get no target


def test_sub_word_answers(bert_tokenizer):
    # the fixture vocabulary splits "1990s" into characters and ## continuations
    titles = [["france", "paris"]]
    texts = [["paris is the capital of france since 1990s .", "hamlet"]]
    for answer in ["1990s", "capital of france", "the"]:
        targets, ids, labels = targets_for(bert_tokenizer, titles, texts, ["what is"], [answer])
        check_points_at_answer(bert_tokenizer, targets, ids, labels, 0, 0, answer)
        assert torch.all(targets[0, 1] == -1)  # the second passage lacks the answer


def test_answer_only_in_question_or_cut_off_gets_no_target(bert_tokenizer):
    targets, *_ = targets_for(bert_tokenizer, [["t"]], [["the capital " * 30 + "hamlet"]],
                              ["who wrote hamlet"], ["hamlet"], max_length=24)
    assert torch.all(targets == -1)  # "hamlet" is past the cut, and the question does not count


def test_answer_inside_a_word_stops_at_the_mismatch(bert_tokenizer):
    # "990" starts inside "1990": its first token in context is "##9", not "9"
    targets, *_ = targets_for(bert_tokenizer, [["t"]], [["in 1990 ."]], ["what"], ["990"])
    assert torch.all(targets == -1)


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_dir):
    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.mark.parametrize("answer", ["Levi's Stadium", "9.6%", "Denver Broncos", "levi's stadium"])
def test_punctuated_answers_with_a_real_tokenizer(minilm_tokenizer, answer):
    text = "The game was played at Levi's Stadium; turnout rose 9.6% as the Denver Broncos won."
    targets, ids, labels = targets_for(minilm_tokenizer, [["Super Bowl 50"]], [[text]],
                                       ["Where was it?"], [answer])
    check_points_at_answer(minilm_tokenizer, targets, ids, labels, 0, 0, answer)
