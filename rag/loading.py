"""Getting a :class:`~rag.model.RagModel` to work with: a new one assembled from its parts, as
training starts one (:func:`assemble`), or a saved one set up for a run (:func:`load_model`: the
settings the run changes applied, ``rag.config.run_config``, and checked against its index)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from generator.copy import CopyBartForConditionalGeneration, has_copy_head
from generator.model import load_generator
from generator.warmstart import warm_start_bart
from rag.common.errors import UserError
from retriever.encoder import Encoder
from retriever.fusion import RetrievalConfig
from retriever.shards import load_index

from .config import CONFIG_NAME, LoadConfig, Quantize, RagConfig, run_changes, run_config
from .hf_rag import is_transformers_rag, load
from .model import RagModel
from .span_reader import check_span_reader


def assemble(config: RagConfig, generator: str = "starter",
             retrieval: RetrievalConfig | None = None, *, copy_head: bool = False,
             span_head: bool = False, starter: dict | None = None, seed: int | None = None
             ) -> RagModel:
    """A new model from its parts, as ``ragqa finetune`` starts one without a model directory.

    ``generator`` is "starter" (a BART warm-started from the packaged all-MiniLM-L6-v2, with
    ``starter`` as :func:`generator.warmstart.warm_start_bart`'s keyword arguments, e.g.
    ``{"encoder_layers": 6}``), a transformers RAG checkpoint (its generator, and its DPR
    question encoder unless ``config.question_encoder`` names one), or a BART directory or
    hub id; ``copy_head`` gives it a copy path (``generator.copy``) if it has none, and
    ``span_head`` a span head (``generator.span``; a copy generator only). The index is
    ``config.index``, loaded as ``retrieval`` says; the question encoder
    ``config.question_encoder``, the checkpoint's, or else the index's own encoder. One named
    or brought along is paired with the index (``DenseIndex.check_question_encoder``).
    Closed book takes neither index nor question encoder. ``seed`` seeds torch before any weight
    is made (a new copy head's, a random cross-attention's), so that a run can be repeated.
    """
    if seed is not None:
        torch.manual_seed(seed)
    gen, tokenizer, q_enc = _generator_from(generator, copy_head, starter or {})
    if span_head:
        if not has_copy_head(gen):
            raise UserError("--span_head needs a copy generator: add --copy_head")
        gen.add_span_head()
    if config.reader == "span":
        check_span_reader(gen)
    if config.question_encoder:
        q_enc = None
    if config.mode == "closed_book":
        return RagModel(None, gen, tokenizer, None, config)
    if not config.index:
        raise UserError("--index DIR is required (except with --mode closed_book)")
    retrieval = retrieval or RetrievalConfig()
    index = load_index(config.index, mmap=retrieval.mmap)
    pair = bool(config.question_encoder) or q_enc is not None
    if q_enc is None:
        q_enc = Encoder.from_pretrained(config.question_encoder
                                        or index.manifest["encoder"]["name"])
    return RagModel(q_enc, gen, tokenizer, index, config, retrieval, pair=pair)


def load_model(model_dir: str | os.PathLike | None, index: str | os.PathLike | None = None,
               changes: Mapping[str, Any] | None = None,
               retrieval: Mapping[str, Any] | None = None,
               device: str | torch.device | None = None, quantize: Quantize = "none"
               ) -> tuple[RagModel, str]:
    """A saved model (``RagModel.from_pretrained``: the starter when ``model_dir`` is None) with
    ``index`` or its own, its settings with the run's ``changes`` (``{field: value}`` of
    :class:`~rag.config.RagConfig`, ``rag.config.run_changes``), in eval mode.

    Returns ``(model, the decoding's name)`` (``rag.config.run_config``). Raises
    :class:`UserError` for a bad change, a model directory that is not one, an index the model's
    question encoder does not belong to, a k larger than the index, or a decoding the mode does
    not have. ``retrieval`` changes the model's retrieval settings (``{field: value}`` of
    ``retriever.fusion.RetrievalConfig``). ``quantize="int8"`` quantizes its transformer layers
    (``rag.config.LoadConfig``). With ``device`` the model is moved there, and the starter's
    first-use index is encoded there.
    """
    changes = run_changes(changes or {})
    LoadConfig(quantize=quantize)  # checked before the load
    mode = changes.get("mode")
    if model_dir is not None:
        model_dir = Path(model_dir)
        if (mode in ("sequence", "token") and (model_dir / CONFIG_NAME).is_file()
                and not (model_dir / "question_encoder").is_dir()):
            raise UserError(f"{model_dir}: a closed-book model (no question encoder) cannot run "
                            f"in mode {mode!r}")
    # the decoding and its beams are settled after the load, by run_config
    at_load = {k: v for k, v in changes.items() if k not in ("decoding", "num_beams")}
    model = RagModel.from_pretrained(model_dir, index, retrieval, device, **at_load)
    model.config, decoding = run_config(model.config, changes)  # k was checked at load
    if quantize == "int8":
        model.quantize_int8()
    if device is not None:
        model.to(device)
    return model.eval(), decoding


def _generator_from(name: str, copy_head: bool, starter: dict) -> tuple[nn.Module, object,
                                                                         Encoder | None]:
    """``(generator, tokenizer, question encoder or None)`` for :func:`assemble`."""
    q_enc = None
    if is_transformers_rag(name):
        q_enc, generator, tokenizer, _ = load(name)
    elif name == "starter":
        generator, tokenizer = warm_start_bart("all-MiniLM-L6-v2", **starter)
    else:
        generator, tokenizer = load_generator(name)
    if copy_head and not has_copy_head(generator):
        generator = CopyBartForConditionalGeneration.from_bart(generator)
    return generator, tokenizer, q_enc
