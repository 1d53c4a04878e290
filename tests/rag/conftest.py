"""Tiny RAG fixtures, built once per session from the shared tiny BERT (``tests/conftest.py``).

The question/context encoder is the tiny BERT (D=32, ``max_length`` 64 because it has only 128
positions), the index is a flat index of the eight fixture passages, and the generator is a BART
warm-started from the same BERT, so encoder and generator share one WordPiece vocabulary. Weights are
random: these fixtures test plumbing (shapes, gradients, save/load, resuming), never answer quality.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from generator.model import load_generator
from generator.warmstart import warm_start_bart
from rag.pipeline import RagConfig, RagModel
from retriever.build import BuildConfig, build_index
from retriever.encode import EncodeConfig
from retriever.encoder import Encoder
from retriever.index import DenseIndex

TINY_RAG = dict(k=3, max_input_length=64, max_answer_length=8, num_beams=2)


@pytest.fixture(scope="session")
def rag_question_encoder_dir(tmp_path_factory, tiny_encoder_dir) -> Path:
    """The tiny BERT as an :class:`Encoder` directory with ``max_length=64``."""
    out = tmp_path_factory.mktemp("rag-qenc") / "qenc"
    Encoder.from_pretrained(str(tiny_encoder_dir), max_length=64).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def rag_index_dir(tmp_path_factory, rag_question_encoder_dir, corpus_jsonl) -> Path:
    """Flat index of the eight fixture passages, built with the tiny encoder."""
    out = tmp_path_factory.mktemp("rag-index") / "index"
    build_index(corpus_jsonl, Encoder.from_pretrained(str(rag_question_encoder_dir)), out,
                BuildConfig(encode=EncodeConfig(progress=False)))
    return out


@pytest.fixture(scope="session")
def rag_generator_dir(tmp_path_factory, tiny_encoder_dir) -> Path:
    """A 2+2-layer BART warm-started from the tiny BERT (same vocabulary), saved as a directory."""
    out = tmp_path_factory.mktemp("rag-bart") / "bart"
    warm_start_bart(tiny_encoder_dir, out, cross_attention="copy_self")
    return out


@pytest.fixture
def make_rag(rag_question_encoder_dir, rag_index_dir, rag_generator_dir) -> Callable[..., RagModel]:
    """``make_rag(mode="sequence", **config)``: a fresh RagModel (eval mode) on the tiny fixtures."""

    def make(mode: str = "sequence", **overrides) -> RagModel:
        generator, tokenizer = load_generator(rag_generator_dir)
        config = RagConfig(mode=mode, index=str(rag_index_dir), **{**TINY_RAG, **overrides})
        if mode == "closed_book":
            return RagModel(None, generator, tokenizer, None, config).eval()
        encoder = Encoder.from_pretrained(str(rag_question_encoder_dir))
        return RagModel(encoder, generator, tokenizer, DenseIndex.load(rag_index_dir), config).eval()

    return make
