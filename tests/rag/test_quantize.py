"""int8 answering (RagModel.quantize_int8): the quantized model computes what the float one does,
within what 8-bit weights allow, on the tiny fixtures."""

from __future__ import annotations

import pytest
import torch

QUESTIONS = ["what is the capital of france?", "who wrote hamlet?", "what is paris?"]
ANSWERS = ["paris", "shakespeare", "a city"]


def test_int8_matches_fp32_within_tolerance(make_rag):
    fp32, int8 = make_rag("sequence"), make_rag("sequence").quantize_int8()
    linear = sum(isinstance(m, torch.nn.Linear) for m in int8.generator.model.modules())
    assert linear == 0  # every transformer linear layer of the generator is quantized
    with torch.no_grad():
        scores_fp32, found_fp32 = fp32.retrieve(QUESTIONS)
        scores_int8, found_int8 = int8.retrieve(QUESTIONS)
        nll_fp32 = fp32.loss(QUESTIONS, ANSWERS)[1]
        nll_int8 = int8.loss(QUESTIONS, ANSWERS)[1]
    # stated tolerance: doc scores (x20 cosines) within 0.5, the same top passage, NLLs within 5%
    assert (scores_int8 - scores_fp32).abs().max().item() < 0.5
    assert [ids[0] for ids in found_int8.ids] == [ids[0] for ids in found_fp32.ids]
    assert torch.allclose(nll_int8, nll_fp32, rtol=0.05)
    answers = int8.answer(QUESTIONS)
    assert len(answers) == 3 and all(isinstance(a.answer, str) for a in answers)


def test_int8_is_refused_off_the_cpu(make_rag, monkeypatch):
    from rag.common.errors import UserError

    model = make_rag("sequence")
    param = next(model.parameters())
    monkeypatch.setattr(type(param), "device", property(lambda self: torch.device("meta")))
    with pytest.raises(UserError, match="CPU"):
        model.quantize_int8()
