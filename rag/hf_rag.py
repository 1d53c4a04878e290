"""transformers' RAG checkpoints, in and out.

In: a directory written by ``RagSequenceForGeneration.save_pretrained`` or
``RagTokenForGeneration.save_pretrained`` (with ``RagTokenizer``'s ``question_encoder_tokenizer/``
and ``generator_tokenizer/``) loads as a :class:`rag.model.RagModel`: the DPR question encoder
(its pooler output, as transformers' RAG uses it), the BART generator, the mode from the
architecture, ``n_docs`` as k and ``max_combined_length`` as the generator's input length. The
index is given separately, and the question encoder is paired with it explicitly (the pairing
rule, ``DenseIndex.check_question_encoder``), as transformers pairs it with its retriever.

Out: :func:`export` writes our model and index as transformers reads them: the RAG directory and
tokenizers, plus ``RagRetriever``'s custom index (``passages/``, a ``datasets`` directory with
id, title, text and embeddings columns, and ``passages.faiss``, an exact inner-product index),
named in the config (``index_name="custom"``), so ``RagRetriever.from_pretrained(DIR)`` and
``RagSequenceForGeneration.from_pretrained(DIR, retriever=...)`` load it as is. What transformers
cannot represent is refused with one line instead of exported to behave differently: a question
encoder that is not a pooler/[CLS] vector (mean pooling, normalisation, prompts, Dense layers, a
lexical head), a score scale other than 1, hybrid or sparse retrieval, a copy generator,
span-constrained decoding, a generator with a prefix or other separators.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import transformers
from datasets import Dataset
from transformers import AutoTokenizer, DPRConfig, DPRQuestionEncoder, RagTokenizer

from generator.copy import has_copy_head
from generator.inputs import DOC_SEP, TITLE_SEP
from rag.common.artefact import check_output_dir
from rag.common.atomic import atomic_directory
from rag.common.errors import UserError, loading
from rag.common.model_path import weights_file
from retriever.batch_encode import to_numpy32
from retriever.encoder import Encoder, EncoderConfig

PASSAGES, FAISS_FILE, EXPORT_NOTE = "passages", "passages.faiss", "ragqa_export.json"


def is_transformers_rag(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a transformers RAG checkpoint (``config.json`` of model type rag)."""
    file = Path(path) / "config.json"
    try:
        return file.is_file() and json.loads(file.read_text()).get("model_type") == "rag"
    except (ValueError, AttributeError):
        return False


def load(path: str | os.PathLike) -> tuple[Encoder, torch.nn.Module, object, dict]:
    """``(question encoder, generator, generator tokenizer, RagConfig fields)`` of a transformers
    RAG directory (module doc)."""
    path = Path(path)
    with loading(path / "config.json"):  # a bad question_encoder field is transformers' error
        config = transformers.RagConfig.from_pretrained(str(path))
        kinds = (config.question_encoder.model_type, config.generator.model_type)
    if kinds != ("dpr", "bart"):
        raise UserError(f"{path}: a RAG checkpoint of {kinds[0]} + {kinds[1]}; only DPR + BART "
                        "(facebook/rag-*-nq's kind) are supported")
    if (config.title_sep, config.doc_sep) != (TITLE_SEP, DOC_SEP) or (config.prefix or ""):
        raise UserError(f"{path}: separators {config.title_sep!r}/{config.doc_sep!r} or prefix "
                        f"{config.prefix!r}: only transformers' defaults are supported")
    mode = "token" if any("Token" in a for a in config.architectures or []) else "sequence"
    cls = transformers.RagTokenForGeneration if mode == "token" else transformers.RagSequenceForGeneration
    with loading(weights_file(path)):
        rag = cls.from_pretrained(str(path), dtype=torch.float32)
    with loading(path / "question_encoder_tokenizer"):
        q_tok = AutoTokenizer.from_pretrained(str(path / "question_encoder_tokenizer"))
    with loading(path / "generator_tokenizer"):
        g_tok = AutoTokenizer.from_pretrained(str(path / "generator_tokenizer"))
    encoder = Encoder(rag.rag.question_encoder, q_tok, EncoderConfig(pooling="pooler"),
                      name=f"{path} (question encoder)")
    fields = {"mode": mode, "k": config.n_docs, "max_input_length": config.max_combined_length,
              "label_smoothing": config.label_smoothing or 0.0}
    return encoder.eval(), rag.rag.generator.eval(), g_tok, fields


def _check_question_encoder(encoder: Encoder) -> None:
    """Refuse a question encoder with no ``DPRQuestionEncoder`` counterpart."""
    config = encoder.config
    unsupported = [what for what, bad in (
        ("normalised outputs", config.normalize), ("a projection", config.projection_dim),
        ("a lexical head", config.lexical_head), ("prompts", config.query_prompt),
        ("Dense layers", config.dense)) if bad]
    if config.pooling not in ("pooler", "cls") or unsupported:
        what = unsupported[0] if unsupported else f"{config.pooling} pooling"
        raise UserError(f"question encoder {encoder.name!r} has {what}: transformers' RAG uses "
                        "the DPR pooler output ([CLS]), so it cannot be exported")
    kind = encoder.backbone.config.model_type
    if kind != "dpr" and (config.pooling != "cls" or kind != "bert"):
        raise UserError(f"question encoder {encoder.name!r} ({kind}, {config.pooling} pooling) has "
                        "no DPRQuestionEncoder counterpart")


def _dpr_question_encoder(encoder: Encoder):
    """Our (checked) question encoder as a transformers ``DPRQuestionEncoder``, same outputs."""
    if encoder.backbone.config.model_type == "dpr":
        return encoder.backbone
    bert = encoder.backbone.config.to_dict()
    known = DPRConfig().to_dict()
    dpr = DPRQuestionEncoder(DPRConfig(**{k: v for k, v in bert.items() if k in known
                                          and k not in ("model_type", "architectures")},
                                       projection_dim=0))
    state = {k: v for k, v in encoder.backbone.state_dict().items() if not k.startswith("pooler.")}
    missing, unexpected = dpr.question_encoder.bert_model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if not m.startswith("pooler.")]:
        raise UserError(f"question encoder {encoder.name!r}: weights do not map onto DPR's BERT")
    return dpr.eval()


def check_exportable(model) -> None:
    """Raise :class:`UserError` naming the first thing transformers' RAG cannot represent."""
    if model.config.mode not in ("sequence", "token"):
        raise UserError(f"mode {model.config.mode!r} cannot be exported: transformers' RAG "
                        "classes are RAG-Sequence and RAG-Token")
    if model.retriever.mode != "dense":
        raise UserError(f"{model.retriever.mode} retrieval cannot be exported: transformers' "
                        "RagRetriever is dense only (export with --retrieval dense)")
    if model.config.decode.constrain != "none":
        raise UserError("span-constrained decoding cannot be exported: transformers' generate has "
                        "no such constraint (export with --constrain none)")
    if has_copy_head(model.generator) or model.generator.config.model_type != "bart":
        raise UserError("a copy generator cannot be exported: transformers' BART has no copy path")
    if model.score_scale != 1.0:
        raise UserError(f"a doc score scale of {model.score_scale:g} cannot be exported: "
                        "transformers' RAG takes p(z|x) = softmax(q . d)")
    _check_question_encoder(model.question_encoder)


def export(model, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``model`` (a :class:`rag.model.RagModel`) and its index as a transformers RAG
    directory with ``RagRetriever`` files (module doc); returns the directory."""
    # lazy: faiss is an optional extra; retriever.index_factory, loaded by now, says how to install it
    import faiss

    check_exportable(model)
    out = Path(out_dir).resolve()
    check_output_dir(out, overwrite, "export")
    index = model.index
    removed = set(index.removed.tolist())
    rows = np.array([r for r in range(len(index.passages)) if r not in removed], dtype=np.int64)
    vectors = to_numpy32(index.vectors(rows))
    q_model = _dpr_question_encoder(model.question_encoder)
    config = transformers.RagConfig.from_question_encoder_generator_configs(
        q_model.config, model.generator.config, n_docs=model.config.k,
        max_combined_length=model.config.max_input_length,
        label_smoothing=model.config.label_smoothing, retrieval_vector_size=vectors.shape[1],
        index_name="custom", passages_path=str(out / PASSAGES), index_path=str(out / FAISS_FILE))
    cls = (transformers.RagTokenForGeneration if model.config.mode == "token"
           else transformers.RagSequenceForGeneration)
    rag = cls(config, question_encoder=q_model, generator=model.generator)
    with atomic_directory(out, kind="export") as tmp:
        rag.save_pretrained(str(tmp))
        (tmp / EXPORT_NOTE).write_text(json.dumps(  # what was exported (marks the directory ours)
            {"index_encoder": index.manifest["encoder"]["name"], "passages": len(rows),
             "mode": model.config.mode, "k": model.config.k}, indent=2))
        RagTokenizer(question_encoder=model.question_encoder.tokenizer,
                     generator=model.tokenizer).save_pretrained(str(tmp))
        table = index.passages.select(rows)
        Dataset.from_dict({"id": table["id"], "title": table["title"], "text": table["text"],
                           "embeddings": list(vectors)}).save_to_disk(str(tmp / PASSAGES))
        flat = faiss.IndexFlatIP(vectors.shape[1])
        flat.add(vectors)
        faiss.write_index(flat, str(tmp / FAISS_FILE))
    return out
