"""RAG end to end: retrieve with the question encoder, generate with BART, answer with provenance.

p(z|x) is the softmax of the retriever's scores of the top-k passages (Lewis et al. 2020, Sec. 2.2):
inner products between the question embedding and the passage vectors, plus with hybrid retrieval
the normalised BM25 score (``retriever.fusion``). Passages are found by ``retriever.search.Retriever``,
the one retrieval path. The passage vectors come from the (fixed) index, and the question
embedding is computed with gradient, so the RAG loss trains the question encoder through the dense
term of the document scores, as in the paper. ``mode="closed_book"`` is the baseline without retrieval:
the generator reads the question alone (RAG-Sequence with one empty passage is plain BART).

:class:`RagModel` ties the layers together: its settings are ``rag.config``, its generator inputs
and targets ``generator.inputs``, its loss ``rag.marginal``, its decoders ``rag.decode_sequence``
and ``rag.decode_token``, and its answers ``rag.answers``.

A model directory (written by :meth:`RagModel.save_pretrained`, read by ``from_pretrained``)::

    rag_config.json      mode, k, lengths, decoding, the index it was trained with, and the
                         retrieval settings ("retrieval": retriever.fusion.RetrievalConfig)
    question_encoder/    retriever.encoder.Encoder directory (paired with the index's encoder);
                         may be left out when rag_config.json names an untrained encoder instead
    generator/           BART directory (safetensors)

Glossary: B questions, K passages per question, L generator input length, T answer length,
D retriever dimension.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from generator.inputs import answer_labels, passage_inputs, question_inputs
from generator.model import load_generator, save_generator
from rag.common.atomic import atomic_directory
from rag.common.device import quantize_int8
from rag.common.errors import UserError
from rag.common.options import updated
from retriever.encoder import Encoder
from retriever.encoder_checkpoint import read_meta
from retriever.fusion import RetrievalConfig
from retriever.index_protocol import Index, SearchResult
from retriever.search import Retriever, check_questions
from retriever.shards import load_index

from . import default
from .answers import Answer, make_answers
from .config import CONFIG_NAME, RagConfig, read_config, write_config
from .decode_sequence import rag_sequence_generate
from .decode_token import rag_token_generate
from .hf_rag import is_transformers_rag, load
from .marginal import rag_loss
from .reads import Read, TrainBatch, training_targets
from .span_reader import check_span_reader, span_answers

log = logging.getLogger(__name__)


class RagModel(nn.Module):
    """Question encoder + index + BART generator, in one of the modes of :class:`RagConfig`."""

    def __init__(self, question_encoder: Encoder | None, generator, tokenizer,
                 index: Index | None, config: RagConfig | None = None,
                 retrieval: RetrievalConfig | None = None, pair: bool = False):
        super().__init__()
        self.config = config = config or RagConfig()
        self.question_encoder = question_encoder
        self.generator = generator
        self.tokenizer = tokenizer
        self.index = index
        self.pointer_stats = {"answers": 0, "not_found": 0}  # supervised pointing, this process
        self.span_stats = {"answers": 0, "not_found": 0}  # the span loss, this process
        self.retriever: Retriever | None = None
        if config.mode != "closed_book":
            if index is None or question_encoder is None:
                raise UserError(f"mode {config.mode!r} needs an index and a question encoder")
            self.retriever = Retriever(question_encoder, index, retrieval or RetrievalConfig(),
                                       pair=pair)
            self.retriever.check_k(config.k)
            if self.retriever.mode == "hybrid" and self.retriever.fusion.fusion == "rrf":
                raise UserError("--fusion rrf only ranks passages; RAG's p(z|x) needs scores: use "
                                "--fusion linear")

    def forward(self, questions: list[str] | None = None, answers: list[str] | None = None,
                passages: list[tuple[str, str]] | None = None, *, batch: TrainBatch | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss (what accelerate/DDP call): see :meth:`loss`; ``batch`` is one
        :meth:`training_batch` prepared already (by a loader worker, ``rag.common.loop``)."""
        return self.loss_on(batch if batch is not None
                            else self.training_batch(questions, answers, passages))

    # --------------------------------------------------------------- inputs
    def retrieve(self, questions: list[str], k: int | None = None,
                 ) -> tuple[torch.Tensor, SearchResult]:
        """Doc scores (B, K) float, the logits of p(z|x): ``score_scale`` times the retriever's
        scores, with gradient into the question encoder while grad is enabled; and the passages."""
        scores, result = self.retriever.search(questions, k or self.config.k,
                                               grad=torch.is_grad_enabled())
        return self.score_scale * scores, result

    @property
    def score_scale(self) -> float:
        """The factor on q . d in p(z|x) (see ``RagConfig.score_scale``)."""
        return self.question_encoder.score_scale(self.config.score_scale)

    def labels(self, answers: list[str]) -> torch.Tensor:
        """Decoder targets (B, T): start symbol [+ forced BOS], answer tokens, EOS, right-padded."""
        return answer_labels(self.tokenizer, answers, self.generator.generation_config,
                             self.generator.config.pad_token_id, self.config.decode.max_length)

    def _prepare(self, questions: list[str], given: list[tuple[str, str]] | None = None) -> Read:
        """What the generator reads (:class:`Read`) on its device; ``given`` (one
        ``(title, text)`` per question) replaces retrieval with that single passage (``id`` "",
        ``score`` 0), p(z|x) = 1."""
        return self._read(questions, given).to(next(self.generator.parameters()).device)

    def _read(self, questions: list[str], given: list[tuple[str, str]] | None = None) -> Read:
        """:meth:`_prepare` before the move: retrieval's doc scores on the question encoder's
        device, everything else on the CPU; with ``given`` passages it needs no weights."""
        questions = check_questions(questions)
        doc_scores, strings = torch.zeros(len(questions), 1), None
        if given is not None:
            sources = [[{"id": "", "title": t, "text": x, "score": 0.0}] for t, x in given]
        elif self.config.mode != "closed_book":
            doc_scores, result = self.retrieve(questions)
            sources = result.passages
        else:
            sources = [[] for _ in questions]
        if sources[0]:
            inputs, strings = passage_inputs(self.tokenizer, questions, sources,
                                             self.config.max_input_length)
        else:
            inputs = question_inputs(self.tokenizer, questions, self.config.max_input_length)
        return Read(inputs, doc_scores, sources, strings)

    # ------------------------------------------------------------- training
    def loss(self, questions: list[str], answers: list[str],
             passages: list[tuple[str, str]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """RAG NLL: ``(mean loss, per-question NLL (B,))`` (Lewis et al. 2020, Eqs. 1-2).

        ``passages`` (one ``(title, text)`` per question) replaces retrieval with that single
        given passage, p(z|x) = 1: the generator trains as a reader on it and the question
        encoder gets no gradient (a reader warm-up on gold passages).
        """
        return self.loss_on(self.training_batch(questions, answers, passages))

    def training_batch(self, questions: list[str], answers: list[str],
                       passages: list[tuple[str, str]] | None = None) -> TrainBatch:
        """Everything of a training batch that needs no weights (:class:`TrainBatch`, on the
        CPU): the decoder targets and, with given ``passages``, the inputs read and their pointer
        and span targets. Retrieval, when there is any, waits for :meth:`loss_on`."""
        labels = self.labels(answers)
        if passages is None and self.config.mode != "closed_book":
            return TrainBatch(questions, answers, labels, None, None, None, {})
        read = self._read(questions, passages)
        return TrainBatch(questions, answers, labels, read, *training_targets(self, answers, read, labels))

    def loss_on(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`loss` of a :meth:`training_batch`: retrieval (when the batch has no passages
        yet) and the RAG NLL, on the generator's device."""
        device = next(self.generator.parameters()).device
        read, pointer, span, missing = batch.read, batch.pointer, batch.span, batch.missing
        if read is None:
            read = self._read(batch.questions)
            pointer, span, missing = training_targets(self, batch.answers, read, batch.labels)
        for name, stats in (("pointer", self.pointer_stats), ("span", self.span_stats)):
            if name in missing:
                stats["answers"] += len(batch.answers)
                stats["not_found"] += missing[name]
        read = read.to(device)
        mode = "sequence" if self.config.mode == "closed_book" else self.config.mode
        return rag_loss(mode, self.generator, read.inputs["input_ids"],
                        read.inputs["attention_mask"], read.doc_scores, batch.labels.to(device),
                        epsilon=self.config.label_smoothing, pointer_targets=None if pointer is None
                        else pointer.to(device), pointer_weight=self.config.pointer_weight,
                        span=None if span is None else span.to(device))

    # ------------------------------------------------------------- decoding
    @torch.no_grad()
    def answer(self, questions: str | list[str], num_beams: int | None = None,
               passages: list[tuple[str, str]] | None = None, batch_size: int = 0
               ) -> Answer | list[Answer]:
        """Answer a question (a string: one :class:`Answer`) or several (a list: a list), each with
        the passages it was generated from, best first.

        ``batch_size`` answers that many questions at a time (0: all at once). ``num_beams``
        overrides the model's beam width. ``passages`` (one ``(title, text)`` per question)
        replaces retrieval with that single given passage (reading mode; its ``id`` is ``""`` and
        its ``score`` 0).
        """
        if isinstance(questions, str):
            return self.answer([questions], num_beams, passages, batch_size)[0]
        if batch_size < 0:
            raise UserError(f"batch_size must be >= 0, got {batch_size}")
        if 0 < batch_size < len(questions):
            return [a for start in range(0, len(questions), batch_size)
                    for a in self.answer(questions[start : start + batch_size], num_beams,
                                         None if passages is None
                                         else passages[start : start + batch_size])]
        read = self._prepare(questions, passages)
        if self.config.reader == "span":
            return span_answers(self.generator, self.tokenizer, questions, read.inputs,
                                read.doc_scores, read.strings, read.sources, self.config)
        # closed book has no constraint: RagConfig refuses "spans" without passages
        own = self.config.decode
        cfg = replace(own, num_beams=num_beams or own.num_beams, num_return_sequences=1)
        ids, mask = read.inputs["input_ids"], read.inputs["attention_mask"]
        if self.config.mode == "token":
            out = rag_token_generate(self.generator, ids, mask, read.doc_scores, cfg)
        else:
            out = rag_sequence_generate(self.generator, ids, mask, read.doc_scores, cfg,
                                        fast=self.config.decoding == "fast")
        return make_answers(self.tokenizer, questions, out.sequences[:, 0], out.scores[:, 0],
                            read.sources, self.config.copy_spans)

    def quantize_int8(self) -> RagModel:
        """Quantize the linear layers of the question encoder's transformer and of the
        generator's encoder and decoder to int8 (``rag.common.device.quantize_int8``), in place,
        for answering on the CPU. The copy and span heads and the output layer stay float (the
        rescoring reads the output layer's weights). Returns the model."""
        if any(p.device.type != "cpu" for p in self.parameters()):
            raise UserError("int8 quantization runs on the CPU: load the model there")
        parts = [self.generator.model]
        if self.question_encoder is not None:
            parts.append(self.question_encoder.backbone)
        quantize_int8(*parts)
        return self.eval()

    # ------------------------------------------------------------ save/load
    def save_pretrained(self, out_dir: str | os.PathLike, extra_files: dict[str, str] | None = None,
                        half: bool = False, question_backbone_from: str | None = None) -> None:
        """Write the model directory (see module doc) atomically, plus any ``extra_files``.

        ``half`` stores the weights in float16 (half the size; loading restores float32).
        ``question_backbone_from`` stores the question encoder's backbone as a reference to that
        model instead of weights (``Encoder.save_pretrained``'s ``backbone_from``).
        """
        with atomic_directory(out_dir, kind="rag-model") as tmp:
            retrieval = RetrievalConfig()
            if self.retriever is not None:
                self.retriever.save_question_encoder(tmp / "question_encoder", half=half,
                                                     backbone_from=question_backbone_from)
                retrieval = self.retriever.config
            save_generator(self.generator, self.tokenizer, tmp / "generator",
                           dtype=torch.float16 if half else None)
            write_config(tmp, self.config, retrieval)
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike | None = None,
                        index: Index | str | None = None,
                        retrieval: Mapping[str, Any] | None = None,
                        device: str | torch.device | None = None, **changes) -> RagModel:
        """Load a model: the starter shipped with the package (no ``model_dir``), one of our
        model directories, or a transformers RAG checkpoint (``rag.hf_rag``).

        ``index`` (object or directory) defaults to the one the model was trained with, and for the
        starter to the embedded corpus (indexed on first use and cached, ``rag.default``).
        ``retrieval`` changes the saved retrieval settings (``{field: value}`` of
        ``RetrievalConfig``, e.g. ``{"fusion_weight": 0.3}``); ``changes`` change
        :class:`RagConfig` fields (``rag.common.options.updated``), e.g. ``k=10`` or
        ``num_beams=1``. ``device`` is where the starter's embedded corpus is encoded on its first
        use; the model itself is loaded on the CPU (``rag.loading.load_model`` moves it).
        """
        starter = model_dir is None
        if starter:
            if not (default.MODEL / CONFIG_NAME).is_file():
                raise UserError(f"no starter model in {default.MODEL}; pass a model directory")
            model_dir = default.MODEL
        model_dir = Path(model_dir)
        if not (model_dir / CONFIG_NAME).is_file():
            if is_transformers_rag(model_dir):
                return cls._from_transformers(model_dir, index, retrieval, **changes)
            raise UserError(f"{model_dir}: not a RAG model directory (no {CONFIG_NAME}, and not a "
                            "transformers RAG checkpoint)")
        config, saved_retrieval = read_config(model_dir, **changes)
        retrieval = updated(saved_retrieval, **(retrieval or {}))
        generator, tokenizer = load_generator(model_dir / "generator")
        if config.reader == "span":  # before any index is loaded or built
            check_span_reader(generator)
        if index is None and starter:  # first use: the embedded corpus encoded on ``device``
            paired = read_meta(str(model_dir / "question_encoder")).get("paired_context_fingerprint")
            index = default.default_index(device=device, fingerprint=paired)
        if config.mode == "closed_book":
            return cls(None, generator, tokenizer, None, config)
        if index is None or isinstance(index, str | os.PathLike):
            path = index or config.index
            if not path:
                raise UserError(f"{model_dir}: no index recorded; pass an index directory")
            index = load_index(path, mmap=retrieval.mmap)
        q_dir = model_dir / "question_encoder"
        if not q_dir.is_dir() and not config.question_encoder:
            raise UserError(f"{model_dir}: no question_encoder/ and no question_encoder in config")
        if q_dir.is_dir():
            return cls(Encoder.from_pretrained(str(q_dir)), generator, tokenizer, index, config, retrieval)
        # the encoder named in the config was paired with the index by the user (check_question_encoder)
        return cls(Encoder.from_pretrained(config.question_encoder), generator, tokenizer, index,
                   config, retrieval, pair=True)

    @classmethod
    def _from_transformers(cls, model_dir: Path, index: Index | str | None,
                           retrieval: Mapping[str, Any] | None, **changes) -> RagModel:
        """A transformers RAG checkpoint (``rag.hf_rag``) with ``index``, paired explicitly."""
        q_enc, generator, tokenizer, fields = load(model_dir)
        config = updated(RagConfig(), **{**fields, **changes})
        retrieval = updated(RetrievalConfig(), **(retrieval or {}))
        if index is None or isinstance(index, str | os.PathLike):
            if not (index or config.index):
                raise UserError(f"{model_dir}: a transformers RAG checkpoint brings no index of "
                                "ours: pass one (--index DIR)")
            config = replace(config, index=str(index or config.index))
            index = load_index(config.index, mmap=retrieval.mmap)
        return cls(q_enc, generator, tokenizer, index, config, retrieval, pair=True)
