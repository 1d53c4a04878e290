"""Generator inputs: one ``title / text // question`` string per retrieved passage, tokenised.

The format is the one transformers' ``RagRetriever.postprocess_docs`` builds for the RAG models of
Lewis et al. (2020), quirks included, so checkpoints fine-tuned there see the same inputs here:

* one leading and one trailing double quote are removed from the title (each independently);
* the optional prefix (for T5-style generators) comes first, then title, separator, text,
  separator, question;
* every run of two spaces in the whole string becomes one space, in a single non-overlapping pass
  (so three spaces become two);
* the tokeniser truncates from the right, so an over-long passage cuts off the question.

RAG models build their inputs with :func:`passage_inputs`, which first cuts over-long passage
texts so that the question survives (:func:`fit_passages`), and their decoder targets with
:func:`answer_labels`; :func:`passage_pointer_targets` says where a copy pointer should point.

Glossary: B questions, K passages per question, L tokens per generator input, T decoder targets.
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
    "answer_char_spans",
    "answer_labels",
    "answer_start",
    "build_generator_inputs",
    "fit_passages",
    "format_generator_input",
    "generator_input_strings",
    "passage_inputs",
    "passage_pointer_targets",
    "pointer_targets",
    "question_inputs",
    "text_region",
    "token_layout",
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
    return tokenize_inputs(tokenizer, generator_input_strings(questions, titles, texts, prefix),
                           max_length, pad_to_max_length)


def tokenize_inputs(tokenizer: PreTrainedTokenizerBase, strings: Sequence[Sequence[str]],
                    max_length: int, pad_to_max_length: bool = True) -> dict[str, Tensor]:
    """(B, K) generator input strings (:func:`generator_input_strings`) tokenised as
    :func:`build_generator_inputs` says."""
    if max_length < 1:
        raise UserError(f"max_length must be at least 1, got {max_length}")
    if tokenizer.pad_token is None:
        raise UserError(f"the generator tokenizer {type(tokenizer).__name__} has no pad token")
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


def fit_passages(tokenizer: PreTrainedTokenizerBase, questions: Sequence[str],
                 titles: Sequence[Sequence[str]], texts: Sequence[Sequence[str]],
                 max_length: int) -> list[list[str]]:
    """Cut passage texts (at a token boundary) so that title, text *and question* fit max_length.

    transformers' RAG truncates the joined string from the right, which drops the question when
    the passage is long; trimming the passage instead keeps the input format and the question.
    """
    flat = [t for row in texts for t in row]
    enc = tokenizer(flat, add_special_tokens=False, return_offsets_mapping=True)
    q_len = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    t_len = tokenizer([t for row in titles for t in row], add_special_tokens=False)["input_ids"]
    out, i = [], 0
    for b, row in enumerate(texts):
        kept = []
        for _ in row:
            budget = max(8, max_length - q_len[b] - len(t_len[i]) - 8)  # 8: separators, specials
            offsets = enc["offset_mapping"][i]
            kept.append(flat[i] if len(offsets) <= budget else flat[i][: offsets[budget - 1][1]])
            i += 1
        out.append(kept)
    return out


def passage_inputs(tokenizer: PreTrainedTokenizerBase, questions: Sequence[str],
                   passages: Sequence[Sequence[dict]], max_length: int
                   ) -> tuple[dict[str, Tensor], list[list[str]]]:
    """Inputs (B, K, L) for K passage dicts (``title``, ``text``) per question, the texts cut to
    fit (:func:`fit_passages`), padded to the longest input (see :func:`build_generator_inputs`);
    and the (B, K) strings they were tokenised from (what :func:`passage_pointer_targets` reads)."""
    strings = generator_input_strings(questions, *_fitted(tokenizer, questions, passages, max_length))
    return tokenize_inputs(tokenizer, strings, max_length, pad_to_max_length=False), strings


def question_inputs(tokenizer: PreTrainedTokenizerBase, questions: Sequence[str],
                    max_length: int) -> dict[str, Tensor]:
    """Closed-book inputs: the questions alone, truncated to ``max_length``, as (B, 1, L)."""
    enc = tokenizer(questions, max_length=max_length, truncation=True, padding=True,
                    return_tensors="pt")
    return {key: enc[key][:, None, :] for key in ("input_ids", "attention_mask")}  # (B, 1, L)


def answer_start(generation_config) -> list[int]:
    """The symbols before the answer in the decoder targets: the decoder start symbol, then the
    forced BOS if the generator has one."""
    start = [generation_config.decoder_start_token_id]
    if getattr(generation_config, "forced_bos_token_id", None) is not None:
        start.append(generation_config.forced_bos_token_id)
    return start


def answer_labels(tokenizer: PreTrainedTokenizerBase, answers: Sequence[str], generation_config,
                  pad_token_id: int, max_length: int) -> Tensor:
    """Decoder targets (B, T) int64: :func:`answer_start`, the answer tokens (truncated so that
    T <= ``max_length``), EOS, right-padded with ``pad_token_id``."""
    start = answer_start(generation_config)
    body = tokenizer(answers, add_special_tokens=False, truncation=True,
                     max_length=max_length - len(start) - 1)["input_ids"]
    seqs = [start + ids + [generation_config.eos_token_id] for ids in body]
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [pad_token_id] * (width - len(s)) for s in seqs])  # (B, T)


def passage_pointer_targets(tokenizer: PreTrainedTokenizerBase, strings: Sequence[Sequence[str]],
                            answers: Sequence[str], labels: Tensor, input_ids: Tensor,
                            generation_config) -> Tensor:
    """:func:`pointer_targets` for inputs built by :func:`passage_inputs` (``strings``, its
    second result) and targets built by :func:`answer_labels`: (B, K, T - 1) int64 on the device
    of ``labels``."""
    targets = pointer_targets(tokenizer, strings, answers, labels.cpu(), input_ids.cpu(),
                              len(answer_start(generation_config)))
    return targets.to(labels.device)


def _fitted(tokenizer: PreTrainedTokenizerBase, questions: Sequence[str],
            passages: Sequence[Sequence[dict]], max_length: int
            ) -> tuple[list[list[str]], list[list[str]]]:
    """(B, K) titles and texts of passage dicts, the texts cut to fit (:func:`fit_passages`)."""
    titles = [[p["title"] for p in row] for row in passages]
    texts = [[p["text"] for p in row] for row in passages]
    return titles, fit_passages(tokenizer, questions, titles, texts, max_length)


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
    spans = answer_char_spans(text, answer, title=True)
    return spans[0] if spans else None


def text_region(text: str, title: bool = False) -> tuple[int, int]:
    """``(start, end)`` characters of the passage part of a generator input string: from after the
    title separator (from 0 with ``title``) to the question separator."""
    end = text.rfind(DOC_SEP)
    end = len(text) if end < 0 else end
    sep = text.find(TITLE_SEP)
    start = 0 if title or sep < 0 or sep >= end else sep + len(TITLE_SEP)
    return start, end


def answer_char_spans(text: str, answer: str, title: bool = False) -> list[tuple[int, int]]:
    """Character spans of every occurrence of ``answer`` (stripped) in the passage part of a
    generator input string (:func:`text_region`, the title included with ``title``): exact
    occurrences, or, when there are none, case-insensitive ones. Non-overlapping, in order."""
    answer = answer.strip()
    lo, hi = text_region(text, title)
    region = text[lo:hi]
    if not answer:
        return []
    spans = _occurrences(region, answer)
    if not spans and len(region.lower()) == len(region) and len(answer.lower()) == len(answer):
        spans = _occurrences(region.lower(), answer.lower())
    return [(lo + a, lo + b) for a, b in spans]


def _occurrences(haystack: str, needle: str) -> list[tuple[int, int]]:
    out, at = [], haystack.find(needle)
    while at >= 0:
        out.append((at, at + len(needle)))
        at = haystack.find(needle, at + len(needle))
    return out


def token_layout(tokenizer: PreTrainedTokenizerBase, strings: Sequence[Sequence[str]], width: int
                 ) -> tuple[Tensor, Tensor]:
    """Where each input token of (B, K) generator input strings sits, for a span reader.

    ``width`` is L of the inputs built from ``strings`` (:func:`passage_inputs`, same truncation).

    Returns:
        ``(offsets, allowed)``: (B, K, L, 2) int64 character offsets of each token in its string
        ((0, 0) for special tokens and padding) and (B, K, L) bool, the tokens of the passage text
        (:func:`text_region`), where an answer span may start and end.
    """
    B, K = len(strings), len(strings[0])
    flat = [s for row in strings for s in row]
    enc = tokenizer(flat, max_length=width, truncation=True, padding="max_length",
                    return_offsets_mapping=True, return_tensors="pt")
    offsets = enc["offset_mapping"][:, :width]  # (B*K, L, 2)
    regions = torch.tensor([text_region(s) for s in flat])  # (B*K, 2)
    starts, ends = offsets[..., 0], offsets[..., 1]
    allowed = ((ends > starts) & (starts >= regions[:, :1]) & (ends <= regions[:, 1:])
               & enc["attention_mask"][:, :width].bool())
    L = offsets.shape[1]
    return offsets.view(B, K, L, 2), allowed.view(B, K, L)
