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
from rag.common.options import updated
from rag.config import DecodeConfig, RagConfig
from rag.model import RagModel
from retriever.batch_encode import EncodeConfig
from retriever.build import BuildConfig, build_index
from retriever.encoder import Encoder
from retriever.index import DenseIndex

TINY_RAG = dict(k=3, max_input_length=64, decode=DecodeConfig(num_beams=2, max_length=8))


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
        config = updated(RagConfig(mode=mode, index=str(rag_index_dir), **TINY_RAG), **overrides)
        if mode == "closed_book":
            return RagModel(None, generator, tokenizer, None, config).eval()
        encoder = Encoder.from_pretrained(str(rag_question_encoder_dir))
        return RagModel(encoder, generator, tokenizer, DenseIndex.load(rag_index_dir), config).eval()

    return make


# --------------------------------------------------------------------- RAG core: marginal, decode
# A tiny random BART and transformers' RAG classes sharing its weights: the oracle for
# ``rag.marginal`` and ``rag.decode``. Imports stay inside the fixtures so that this block is
# self-contained.

TINY_BART = dict(vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2,
                 encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                 decoder_ffn_dim=64, max_position_embeddings=64, init_std=0.2)
TINY_BART_EOS_BIAS = 3.7  # random BART never stops or always stops at once; this mixes lengths


@pytest.fixture(scope="session")
def tiny_bart():
    """A seeded random BART (V=100, D=32, 2+2 layers) in eval mode; EOS made likelier."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    generator = BartForConditionalGeneration(BartConfig(**TINY_BART)).eval()
    with torch.no_grad():
        generator.final_logits_bias[0, generator.config.eos_token_id] = TINY_BART_EOS_BIAS
    return generator


@pytest.fixture(scope="session")
def hf_rag(tiny_bart) -> Callable:
    """``hf_rag(mode, n_docs, label_smoothing=0.0)``: transformers' ``RagSequenceForGeneration``
    (mode "sequence") or ``RagTokenForGeneration`` ("token") around ``tiny_bart`` (shared, not
    copied), with a tiny DPR question encoder that only fills the slot."""
    from transformers import (
        DPRConfig,
        DPRQuestionEncoder,
        RagConfig,
        RagSequenceForGeneration,
        RagTokenForGeneration,
    )

    dpr = DPRConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                    intermediate_size=8, max_position_embeddings=8)
    classes = {"sequence": RagSequenceForGeneration, "token": RagTokenForGeneration}

    def make(mode: str, n_docs: int, label_smoothing: float = 0.0):
        config = RagConfig.from_question_encoder_generator_configs(
            dpr, tiny_bart.config, n_docs=n_docs, label_smoothing=label_smoothing)
        return classes[mode](config, question_encoder=DPRQuestionEncoder(dpr),
                             generator=tiny_bart).eval()

    return make


@pytest.fixture(scope="session")
def rag_batch(tiny_bart) -> Callable:
    """``rag_batch(B, K, L=12, padded=True, seed=0)``: random ``(ids, mask, doc_scores)``,
    ids and mask (B, K, L) right-padded to random lengths >= 4, doc_scores (B, K)."""
    import torch

    pad = tiny_bart.config.pad_token_id
    vocab = tiny_bart.config.vocab_size

    def make(B: int, K: int, L: int = 12, padded: bool = True, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(4, vocab, (B, K, L), generator=g)
        lengths = torch.randint(4, L + 1, (B, K, 1), generator=g) if padded else torch.full(
            (B, K, 1), L)
        mask = (torch.arange(L) < lengths).long()
        return ids.masked_fill(mask == 0, pad), mask, 2 * torch.randn(B, K, generator=g)

    return make
