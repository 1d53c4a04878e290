"""Generator inputs: one ``title / text // question`` string per retrieved passage, tokenised.

The format is the one transformers' ``RagRetriever.postprocess_docs`` builds for the RAG models of
Lewis et al. (2020), quirks included, so checkpoints fine-tuned there see the same inputs here:

* one leading and one trailing double quote are removed from the title (each independently);
* the optional prefix (for T5-style generators) comes first, then title, separator, text,
  separator, question;
* every run of two spaces in the whole string becomes one space, in a single non-overlapping pass
  (so three spaces become two);
* the tokeniser truncates from the right, so an over-long passage cuts off the question.

Glossary: B questions, K passages per question, L tokens per generator input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from rag.common.errors import UserError

__all__ = [
    "DOC_SEP",
    "TITLE_SEP",
    "build_generator_inputs",
    "format_generator_input",
    "generator_input_strings",
    "pointer_targets",
]

TITLE_SEP = " / "  # RagConfig.title_sep
DOC_SEP = " // "  # RagConfig.doc_sep


def format_generator_input(title: str, text: str, question: str, prefix: str | None = None) -> str:
    """Return the generator input string for one (passage, question) pair, as RAG writes it."""
    title = title.removeprefix('"').removesuffix('"')
    joined = (prefix or "") + title + TITLE_SEP + text + DOC_SEP + question
    return joined.replace("  ", " ")


def generator_input_strings(
    questions: Sequence[str],
    titles: Sequence[Sequence[str]],
    texts: Sequence[Sequence[str]],
    prefix: str | None = None,
) -> list[list[str]]:
    """Return the (B, K) nested list of generator input strings.

    ``titles[b][k]`` and ``texts[b][k]`` are the k-th passage retrieved for ``questions[b]``; every
    question must have the same number K >= 1 of passages.

    Raises:
        UserError: mismatched lengths or a ragged passage axis.
    """
    n_passages = _check_nested(questions, titles, texts)
    return [
        [format_generator_input(titles[b][k], texts[b][k], q, prefix) for k in range(n_passages)]
        for b, q in enumerate(questions)
    ]


def build_generator_inputs(
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    titles: Sequence[Sequence[str]],
    texts: Sequence[Sequence[str]],
    max_length: int,
    prefix: str | None = None,
    *,
    pad_to_max_length: bool = True,
) -> dict[str, Tensor]:
    """Tokenise the generator input of every (question, passage) pair.

    Args:
        tokenizer: the generator's tokenizer (adds its special tokens, e.g. ``<s> ... </s>``).
        questions: B question strings.
        titles, texts: (B, K) passage titles and texts (see :func:`generator_input_strings`).
        max_length: inputs are truncated (from the right) to this many tokens; RAG's
            ``max_combined_length`` (300 in its config).
        prefix: prepended to every input (``None`` for BART).
        pad_to_max_length: pad to ``max_length`` as RAG does (``L == max_length``); ``False`` pads
            to the longest input in the batch.

    Returns:
        ``{"input_ids": (B, K, L) int64, "attention_mask": (B, K, L) int64}``, right-padded with the
        tokenizer's pad token; row ``[b, k]`` equals RAG's row ``b * K + k``.

    Raises:
        UserError: mismatched lengths, ``max_length < 1``, or a tokenizer without a pad token.
    """
    if max_length < 1:
        raise UserError(f"max_length must be at least 1, got {max_length}")
    if tokenizer.pad_token is None:
        raise UserError(f"the generator tokenizer {type(tokenizer).__name__} has no pad token")
    strings = generator_input_strings(questions, titles, texts, prefix)
    B, K = len(strings), len(strings[0])
    # the tokenizer works on a flat list: row b * K + k is (question b, passage k)
    encoded = tokenizer(
        [s for row in strings for s in row],
        max_length=max_length,
        padding="max_length" if pad_to_max_length else "longest",
        truncation=True,
        return_tensors="pt",
    )
    L = encoded["input_ids"].shape[-1]
    return {
        "input_ids": encoded["input_ids"].view(B, K, L),  # (B, K, L)
        "attention_mask": encoded["attention_mask"].view(B, K, L),  # (B, K, L)
    }


def _check_nested(
    questions: Sequence[str], titles: Sequence[Sequence[str]], texts: Sequence[Sequence[str]]
) -> int:
    """Check the (B,) / (B, K) / (B, K) layout and return K."""
    if isinstance(questions, str):
        raise UserError("questions must be a list of strings, not one string")
    if not questions:
        raise UserError("no questions given")
    if not len(questions) == len(titles) == len(texts):
        raise UserError(
            f"got {len(questions)} questions but {len(titles)} title lists "
            f"and {len(texts)} text lists"
        )
    n_passages = len(titles[0])
    if n_passages == 0:
        raise UserError("every question needs at least one passage")
    for b, (row_titles, row_texts) in enumerate(zip(titles, texts, strict=True)):
        if isinstance(row_titles, str) or isinstance(row_texts, str):
            raise UserError(f"titles[{b}] and texts[{b}] must be lists of strings")
        if not len(row_titles) == len(row_texts) == n_passages:
            raise UserError(
                f"question {b} has {len(row_titles)} titles and {len(row_texts)} texts; "
                f"expected {n_passages} of each like question 0"
            )
    return n_passages


def pointer_targets(
    tokenizer: PreTrainedTokenizerBase,
    strings: Sequence[Sequence[str]],
    answers: Sequence[str],
    labels: Tensor,
    input_ids: Tensor,
    n_start: int,
) -> Tensor:
    """Where a copy pointer should point while the decoder writes each answer (supervised pointing).

    The answer is looked up by characters in each generator input string (title and passage text,
    not the question; exact first, then ignoring case) and mapped to input tokens through the fast
    tokenizer's offsets, not by re-tokenising it in context. Answer token u is the target of the
    decoder step that predicts ``labels[:, n_start + u]`` when the input token at the found start
    + u has that id; the first mismatch (an answer starting or ending inside a word) ends the run.

    Args:
        strings: (B, K) input strings as :func:`generator_input_strings` builds them.
        answers: B answer strings, the ones ``labels`` encode.
        labels: (B, T) decoder targets: ``n_start`` start symbols, answer tokens, EOS, padding.
        input_ids: (B, K, L) the tokenised ``strings`` (same tokenizer, same truncation).
        n_start: symbols before the answer in ``labels`` (decoder start, forced BOS).

    Returns:
        (B, K, T - 1) int64 input positions, -1 where there is no target (answer not in that
        passage, or the step predicts EOS or padding).
    """
    B, K, L = input_ids.shape
    T = labels.shape[1]
    out = torch.full((B, K, T - 1), -1, dtype=torch.long)
    flat = [s for row in strings for s in row]
    enc = tokenizer(flat, max_length=L, truncation=True, return_offsets_mapping=True)
    for n, text in enumerate(flat):
        b, k = divmod(n, K)
        span = _find_answer(text, answers[b])
        if span is None:
            continue
        offsets = enc["offset_mapping"][n]
        inside = [i for i, (s, e) in enumerate(offsets) if e > s and s < span[1] and e > span[0]]
        for u, i in enumerate(inside):
            if n_start + u >= T or int(input_ids[b, k, i]) != int(labels[b, n_start + u]):
                break
            out[b, k, n_start + u - 1] = i
    return out


def _find_answer(text: str, answer: str) -> tuple[int, int] | None:
    """Character span of the first occurrence of ``answer`` before the question part of a
    generator input string (exact, then case-insensitive), or None."""
    answer = answer.strip()
    end = text.rfind(DOC_SEP)
    region = text if end < 0 else text[:end]
    if not answer:
        return None
    start = region.find(answer)
    if start < 0 and len(region.lower()) == len(region) and len(answer.lower()) == len(answer):
        start = region.lower().find(answer.lower())
    return None if start < 0 else (start, start + len(answer))
