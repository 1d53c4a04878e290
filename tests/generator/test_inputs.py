"""Generator inputs against transformers' own ``RagRetriever.postprocess_docs``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generator.inputs import build_generator_inputs, format_generator_input, generator_input_strings
from rag.common.errors import UserError

QUESTIONS = ["who wrote hamlet?", "what is the  capital of france"]
TITLES = [
    ['"Hamlet"', 'Shakespeare "the bard"', '"', "  padded   title "],
    ["Paris", '""Quoted twice""', "France", 'ends with quote"'],
]
TEXTS = [
    ["Hamlet is a tragedy  by Shakespeare.", "text", "", "three   spaces"],
    ["Paris is the capital.", "x  y", " leading space", "trailing  "],
]
K = 4


class _SpyTokenizer:
    """Records the strings RagRetriever hands to the generator tokenizer, then tokenises them."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.strings: list[str] = []

    def __call__(self, strings, **kwargs):
        self.strings.extend(strings)
        return self.tokenizer(strings, **kwargs)


def _rag_postprocess(tokenizer, max_length: int, prefix: str | None):
    """Run transformers' RagRetriever.postprocess_docs on TITLES/TEXTS -> (strings, ids, mask)."""
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("faiss")
    from transformers import BartConfig, DPRConfig, RagConfig, RagRetriever
    from transformers.models.rag.retrieval_rag import CustomHFIndex

    config = RagConfig.from_question_encoder_generator_configs(
        DPRConfig(), BartConfig(), n_docs=K, max_combined_length=max_length,
        index_name="custom", retrieval_vector_size=4,
    )  # fmt: skip
    dataset = datasets.Dataset.from_dict(
        {"title": ["t"], "text": ["x"], "embeddings": [np.zeros(4, dtype=np.float32)]}
    )
    dataset.add_faiss_index("embeddings")
    spy = _SpyTokenizer(tokenizer)
    retriever = RagRetriever(
        config,
        question_encoder_tokenizer=tokenizer,
        generator_tokenizer=spy,
        index=CustomHFIndex(4, dataset),
        init_retrieval=False,
    )
    docs = [{"title": t, "text": x} for t, x in zip(TITLES, TEXTS, strict=True)]
    ids, mask = retriever.postprocess_docs(docs, QUESTIONS, prefix, K, return_tensors="pt")
    return spy.strings, ids, mask


@pytest.mark.parametrize("prefix", [None, "summarize:  "])
def test_strings_match_rag(bart_tokenizer, prefix):
    rag_strings, _, _ = _rag_postprocess(bart_tokenizer, 64, prefix)
    ours = generator_input_strings(QUESTIONS, TITLES, TEXTS, prefix)
    assert [s for row in ours for s in row] == rag_strings
    expected = "Hamlet / Hamlet is a tragedy by Shakespeare. // who wrote hamlet?"
    assert ours[0][0] == (expected if prefix is None else "summarize: " + expected)
    assert format_generator_input("x", "three   spaces", "q") == "x / three  spaces // q"


@pytest.mark.parametrize("tokenizer_name", ["bart_tokenizer", "bert_tokenizer"])
@pytest.mark.parametrize("max_length", [12, 80])
def test_tensors_match_rag(request, tokenizer_name, max_length):
    tokenizer = request.getfixturevalue(tokenizer_name)
    _, rag_ids, rag_mask = _rag_postprocess(tokenizer, max_length, None)
    out = build_generator_inputs(tokenizer, QUESTIONS, TITLES, TEXTS, max_length)
    assert out["input_ids"].shape == (2, K, max_length)
    assert out["attention_mask"].shape == (2, K, max_length)
    assert out["input_ids"].dtype == torch.int64
    # RAG's row b * K + k is our [b, k]
    assert torch.equal(out["input_ids"].view(2 * K, max_length), rag_ids)
    assert torch.equal(out["attention_mask"].view(2 * K, max_length), rag_mask)


def test_truncation_cuts_the_question_and_keeps_eos(bart_tokenizer):
    texts = [["long " * 50], ["short"]]
    out = build_generator_inputs(bart_tokenizer, ["q1", "q2"], [["a"], ["b"]], texts, max_length=24)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == (2, 1, 24)
    assert mask[0, 0].all()  # truncated: no padding
    assert ids[0, 0, -1] == bart_tokenizer.eos_token_id
    assert "q1" not in bart_tokenizer.decode(ids[0, 0])
    n_real = int(mask[1, 0].sum())
    assert n_real < 24 and (ids[1, 0, n_real:] == bart_tokenizer.pad_token_id).all()


def test_pad_to_longest(bert_tokenizer):
    out = build_generator_inputs(
        bert_tokenizer, ["q"], [["a", "b"]], [["x", "y z"]], max_length=50, pad_to_max_length=False
    )
    full = build_generator_inputs(bert_tokenizer, ["q"], [["a", "b"]], [["x", "y z"]], 50)
    L = out["input_ids"].shape[-1]
    assert out["input_ids"].shape == (1, 2, L) and L < 50
    assert torch.equal(out["input_ids"], full["input_ids"][..., :L])
    assert out["attention_mask"][0, 1].all()


@pytest.mark.parametrize(
    ("questions", "titles", "texts"),
    [
        (["q", "r"], [["a"]], [["x"]]),  # B mismatch
        (["q"], [["a", "b"]], [["x"]]),  # K mismatch inside a question
        (["q", "r"], [["a"], ["b", "c"]], [["x"], ["y", "z"]]),  # ragged K
        (["q"], [[]], [[]]),  # no passages
        ([], [], []),  # no questions
        ("q", [["a"]], [["x"]]),  # a string, not a list
    ],
)
def test_bad_layout_is_a_user_error(bert_tokenizer, questions, titles, texts):
    with pytest.raises(UserError):
        build_generator_inputs(bert_tokenizer, questions, titles, texts, max_length=8)


def test_bad_max_length(bert_tokenizer):
    with pytest.raises(UserError, match="max_length"):
        build_generator_inputs(bert_tokenizer, ["q"], [["a"]], [["x"]], max_length=0)
