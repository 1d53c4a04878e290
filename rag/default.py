"""The embedded default: a small corpus shipped with the package, indexed on first use and cached.

``ragqa ask`` uses it when no ``--index`` is given, so a fresh machine answers questions
offline. The index is cached under ``$RAGQA_CACHE`` (default ``~/.cache/ragqa``), keyed by the
context encoder's fingerprint, and rebuilt only when that encoder changes. It has a BM25 side, so
the starter retrieves hybrid (dense + BM25, ``retriever.fusion``), the best on squad-open dev.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from retriever.batch_encode import EncodeConfig
from retriever.build import BuildConfig, build_index
from retriever.encoder import Encoder
from retriever.index import DenseIndex
from retriever.sparse import SparseConfig

log = logging.getLogger(__name__)
DEFAULT_DIR = Path(__file__).parent / "default"
CORPUS = DEFAULT_DIR / "corpus.jsonl"
QUESTIONS = DEFAULT_DIR / "questions.jsonl"
MODEL = DEFAULT_DIR / "model"
CONTEXT_ENCODER = "all-MiniLM-L6-v2"


def cache_dir() -> Path:
    """``$RAGQA_CACHE`` or ``~/.cache/ragqa``."""
    return Path(os.environ.get("RAGQA_CACHE", Path.home() / ".cache" / "ragqa"))


def default_index(context_encoder: Encoder | None = None, device: str | torch.device | None = None,
                  fingerprint: str | None = None) -> DenseIndex:
    """The embedded corpus's index, built with ``context_encoder`` (default: all-MiniLM-L6-v2)
    on ``device`` (the one the command was given: a GPU encodes it there) when it is not cached.

    ``fingerprint``, the context encoder's when the caller knows it (the starter's question
    encoder records the one it is paired with), finds a cached index without loading the
    encoder at all."""
    if fingerprint is not None and context_encoder is None:
        path = cache_dir() / f"default-index-{fingerprint}"
        if (path / "manifest.json").is_file():
            index = DenseIndex.load(path)
            if index.sparse is not None:
                return index
    encoder = context_encoder or Encoder.from_pretrained(CONTEXT_ENCODER)
    path = cache_dir() / f"default-index-{encoder.fingerprint}"
    if (path / "manifest.json").is_file():
        index = DenseIndex.load(path)
        if index.sparse is None:  # cached by a version without hybrid retrieval
            index.add_sparse(SparseConfig(), tokenizer=encoder.tokenizer)
            index.save(path, overwrite=True)
        return index
    log.info("indexing the embedded corpus (first use) -> %s", path)
    if device is not None:
        encoder.to(device)
    return build_index(CORPUS, encoder, path, BuildConfig(
        encode=EncodeConfig(progress=False), sparse=SparseConfig(), overwrite=True))
