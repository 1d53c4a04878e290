"""A RAG model's settings (:class:`RagConfig`, which holds how its answers are searched for, a
:class:`DecodeConfig`), the ``rag_config.json`` that records them, and what a run changes of them.

A model directory's ``rag_config.json`` holds the :class:`RagConfig` fields (``"decode"`` an
object of its own) and, under ``"retrieval"``, the search settings
(``retriever.fusion.RetrievalConfig.saved``). It is written by :func:`write_config` and read back by
:func:`read_config`, the one reader, which also accepts the files of older versions (the search
settings then stood beside the others, ``max_length`` as ``max_answer_length``).

A run (``ragqa ask``, ``benchmark``, ``serve``) changes a saved model's settings with a mapping
``{field: value}`` of the ones it gives (:data:`RUN_CHANGES` declares them for the command line,
:func:`run_config` applies them); the others stay the model's own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

from rag.common.errors import UserError, require
from rag.common.options import (
    NON_NEGATIVE,
    POSITIVE,
    Changes,
    Range,
    check_changes,
    check_fields,
    option,
    settable,
    updated,
)
from retriever.fusion import RetrievalConfig

from .constrain import Constraint

log = logging.getLogger(__name__)
Mode = Literal["sequence", "token", "closed_book"]
# how answers are searched for: RAG-Sequence's "thorough" or "fast" rescoring (Lewis et al. 2020,
# Sec. 2.4), or by name "greedy" (beam width 1) and "beam" (the model's beam width or a given one)
Decoding = Literal["thorough", "fast", "greedy", "beam"]
# how answers are read: decoded by the generator, or picked as passage spans by its span head
Reader = Literal["generate", "span"]
CONFIG_NAME = "rag_config.json"
# score_scale was called doc_score_scale before it took the name the retriever's training uses
# for the same factor: the rag_config.json of models saved then (the packaged starter's among
# them) and command lines written then still say doc_score_scale, and both are still read
_RENAMED = {"doc_score_scale": "score_scale"}
_OLD_FLAGS = {"aliases": ["--doc_score_scale", "--doc-score-scale"]}
_MAX_LENGTH = "max_length (--max_answer_length)"  # the flag, as errors name it


@dataclass(frozen=True)
class DecodeConfig:
    """How answers are searched for (``rag.decode``); the names and meanings are those of
    transformers' ``GenerationConfig``."""

    num_beams: int = option(1, "beam width; 1 = greedy search", within=POSITIVE)
    max_length: int = option(
        20, "longest answer in tokens, decoder start symbol included",
        aliases=["--max_answer_length", "--max-answer-length"])
    min_length: int = option(
        0, "EOS is forbidden while the answer (decoder start symbol included) is shorter",
        within=NON_NEGATIVE)
    length_penalty: float = option(
        1.0, "beam search: a finished hypothesis scores sum(log p) / (generated length ** this)")
    early_stopping: bool = option(
        False, "beam search: stop a question once num_beams hypotheses have finished")
    num_return_sequences: int = option(
        1, "hypotheses returned per question, at most num_beams", cli=False)  # an answer is one
    constrain: Constraint = option(
        "none", '"spans": answers may only be stretches of the generator input (passage title, text '
        'or question) followed by EOS (rag.constrain); any generator')

    def __post_init__(self) -> None:
        check_fields(self)
        require(1 <= self.num_return_sequences <= self.num_beams, "num_return_sequences",
                self.num_return_sequences, f"must be in 1..num_beams ({self.num_beams})")
        require(self.max_length >= 2, _MAX_LENGTH, self.max_length,
                "must be at least 2 (start symbol and EOS)")

    def generate_kwargs(self) -> dict:
        """Keyword arguments giving the same search to transformers' ``generate``."""
        kwargs = {"num_beams": self.num_beams, "max_length": self.max_length,
                  "min_length": self.min_length}
        if self.num_beams > 1:
            kwargs.update(length_penalty=self.length_penalty, early_stopping=self.early_stopping)
        return kwargs


@dataclass(frozen=True)
class RagConfig:
    """How a RAG model retrieves, reads, trains and decodes (Lewis et al. 2020)."""

    mode: Mode = option("sequence", '"sequence" (RAG-Sequence), "token" (RAG-Token) or "closed_book"')
    k: int = option(5, "passages retrieved per question", within=POSITIVE)
    max_input_length: int = option(256, 'generator tokens per "title / text // question" input',
                                   within=POSITIVE)
    decode: DecodeConfig = option(DecodeConfig(num_beams=4, max_length=24),
                                  "how answers are searched for")
    decoding: Literal["thorough", "fast"] = option("thorough", "RAG-Sequence rescoring (RAG-Token: none)")
    label_smoothing: float = option(0.0, "epsilon of label smoothing in the training loss",
                                    within=Range(0, 1, high_open=True))
    index: str = option("", "index directory the model was trained with (default for --index)")
    question_encoder: str = option(
        "", "question encoder to start from (default: the index's encoder), paired with the index "
        "explicitly (DPR's twins); also what a model dir without question_encoder/ loads")
    score_scale: float = option(
        0.0, "p(z|x) = softmax(scale * q . d) over the k passages; 0 = 20 for L2-normalised question "
        "encoders (cosine scores, nearly uniform over k without a scale; 20 is "
        "sentence-transformers' training scale, and train_retriever's), else 1 (DPR "
        "inner products)", within=NON_NEGATIVE, **_OLD_FLAGS)
    pointer_weight: float = option(
        1.0, "copy generators: weight of the supervised-pointing loss (the pointer at answer step t "
        "pulled to the answer's t-th token in each passage that contains it)", within=NON_NEGATIVE)
    copy_spans: bool = option(
        True, "an answer whose tokens occur in a retrieved passage is returned as that stretch of the "
        "passage (its casing, spacing and punctuation: \"Levi's Stadium\", not \"levi ' s stadium\"); "
        "False returns the detokenised tokens as they are")
    reader: Reader = option(
        "generate", '"generate": the generator decodes answers (--mode, --decoding, --num_beams); '
        '"span": the span head picks the passage stretch with the highest p(y|x), summed over '
        "passages (rag.span_reader; needs a generator with a span head: finetune --span_head)")
    max_answer_tokens: int = option(10, "span reader: longest answer in generator tokens (DPR: 10)",
                                    within=POSITIVE)
    span_weight: float = option(
        1.0, "generators with a span head: weight of the span reader's loss in training",
        within=NON_NEGATIVE)
    span_doc_weight: float = option(
        1.0, "span reader: weight w of log p(z|x) in an answer's score, log sum_z p(z|x)^w "
        "p(y|x,z) (1 = RAG-Sequence's marginal, 0 = the reader alone)", within=NON_NEGATIVE)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.decode.constrain == "spans" and self.mode == "closed_book":
            raise UserError("constrain 'spans' needs passages to copy from; closed_book has none")
        if self.reader == "span" and self.mode == "closed_book":
            raise UserError("--reader span reads answers from passages; closed_book has none")
        require(self.decode.max_length >= 3, _MAX_LENGTH, self.decode.max_length,
                "must be at least 3 for an answer (start symbol, one answer token, EOS)")


def write_config(model_dir: Path, config: RagConfig, retrieval: RetrievalConfig) -> None:
    """Write ``model_dir/rag_config.json`` (module doc)."""
    (model_dir / CONFIG_NAME).write_text(json.dumps(
        {**asdict(config), "retrieval": retrieval.saved()}, indent=2))


def read_config(model_dir: Path, **changes) -> tuple[RagConfig, RetrievalConfig]:
    """The model config of ``model_dir/rag_config.json``, with ``changes`` of its fields
    (``updated``), and the saved retrieval settings.

    Top-level keys this version does not know are ignored (not those inside "decode"). Raises
    :class:`UserError`, naming the file, when it is not JSON, not an object, or holds a bad value.
    """
    config_file = model_dir / CONFIG_NAME
    try:
        saved = json.loads(config_file.read_text())
        known = settable(RagConfig())
        settings = {_RENAMED.get(k, k): v for k, v in saved.items() if _RENAMED.get(k, k) in known}
        if isinstance(settings.get("decode"), dict):
            settings["decode"] = replace(RagConfig().decode, **settings["decode"])
        config = updated(RagConfig(), **settings)
    except (ValueError, AttributeError) as err:  # bad JSON, or not an object
        raise UserError(f"{config_file}: not a valid RAG config ({type(err).__name__})") from None
    except TypeError as err:  # a field of the wrong type, caught by a comparison in the checks
        raise UserError(f"{config_file}: a field has the wrong type ({err})") from None
    except UserError as err:
        raise UserError(f"{config_file}: {err}") from None
    config = updated(config, **changes)
    try:
        retrieval = RetrievalConfig.from_saved(saved.get("retrieval", {}))
    except (TypeError, AttributeError, UserError) as err:
        raise UserError(f"{config_file}: bad retrieval settings ({err})") from None
    return config, retrieval


Quantize = Literal["none", "int8"]


@dataclass(frozen=True)
class LoadConfig:
    """How a run loads a saved model, beside the settings it changes (``rag.loading.load_model``)."""

    quantize: Quantize = option(
        "none", "int8: dynamic int8 quantization of the question encoder's and the generator's "
        "transformer layers (torch's quantize_dynamic; CPU only)")

    def __post_init__(self) -> None:
        check_fields(self)


# What a run may change of a saved model's settings (ragqa ask, benchmark, serve;
# rag.loading.load_model's ``changes``): these RagConfig fields, DecodeConfig's by their own names,
# with the help --help gives them. A run's "decoding" also names beam widths, in either mode:
# "greedy" (one beam) and "beam" (two or more), see run_config.
RUN_CHANGES = Changes(RagConfig, over="the model's own", types={"decoding": Decoding}, help={
    "k": "passages per question",
    "mode": "",
    "decoding": "thorough or fast: RAG-Sequence's rescoring; greedy or beam: either mode "
                "(RAG-Sequence rescores them its own way, thorough or fast)",
    "num_beams": "beam width of thorough, fast and beam decoding",
    "max_input_length": "generator tokens per passage input",
    "constrain": "spans: answers only as stretches of the passages (then EOS); none: free "
                 "generation (rag.constrain)",
    "reader": "generate: the generator decodes; span: the span head picks passage stretches "
              "(needs a generator with a span head)",
    "max_answer_tokens": "span reader: longest answer in generator tokens",
    "span_doc_weight": "span reader: weight of log p(z|x) in an answer's score (1 = the RAG "
                       "marginal, 0 = the reader alone)",
})


def run_changes(changes: Mapping[str, Any]) -> dict:
    """A run's ``changes`` of a model's settings (:data:`RUN_CHANGES`' names), checked, as the run
    makes them: in closed book what needs passages (a span constraint, the span reader) is dropped
    unless asked for, with a notice. Raises :class:`UserError` for a value a setting does not take
    (``TypeError`` for an unknown name)."""
    changes = dict(changes)
    decoding = changes.get("decoding")
    require(decoding is None or decoding in get_args(Decoding), "decoding", decoding,
            f"must be one of {', '.join(map(repr, get_args(Decoding)))}")
    check_changes(RagConfig, {k: v for k, v in changes.items() if k != "decoding"})
    if changes.get("mode") == "closed_book" and not {"constrain", "reader"} <= changes.keys():
        log.warning("closed book: no passages to hold answers to, so the answers are "
                    "generated freely (--constrain none --reader generate)")
        changes = {"constrain": "none", "reader": "generate", **changes}
    return changes


def run_config(config: RagConfig, changes: Mapping[str, Any]) -> tuple[RagConfig, str]:
    """``config`` with a run's ``changes`` (:func:`run_changes`; ``updated``), and the name of the
    decoding it runs: "thorough", "fast", "greedy" or "beam" (without a "decoding", the model's
    own). Raises :class:`UserError` for a decoding the mode does not have, or a beam width it
    cannot take."""
    changes = dict(changes)
    decoding, given_beams = changes.pop("decoding", None), changes.pop("num_beams", None)
    config = updated(config, **changes)
    beams = given_beams or config.decode.num_beams
    if decoding is None:  # the model's own
        decoding = config.decoding if config.mode != "token" else ("greedy" if beams == 1
                                                                   else "beam")
    if decoding in ("thorough", "fast"):
        if config.mode == "token":
            raise UserError(f"decoding {decoding!r} is RAG-Sequence's; RAG-Token decodes "
                            "'greedy' or 'beam'")
        return updated(config, decoding=decoding, num_beams=beams), decoding
    if decoding == "greedy":
        if (given_beams or 1) > 1:
            raise UserError(f"greedy decoding has one beam, not num_beams={given_beams}")
        return updated(config, num_beams=1), decoding
    if beams < 2:
        raise UserError(f"beam decoding needs num_beams >= 2 (the model's is "
                        f"{config.decode.num_beams}; pass num_beams)")
    return updated(config, num_beams=beams), decoding
