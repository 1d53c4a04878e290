"""From a corpus file and an encoder to an index directory, in one resumable call."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .corpus import CorpusConfig, load_corpus
from .encode import EncodeConfig, encode_corpus
from .encoder import Encoder
from .errors import UserError
from .fsutil import check_output_dir
from .fusion import FusionConfig
from .index import DenseIndex, IndexConfig
from .sparse import SparseConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    sparse: SparseConfig | None = None  # also build a BM25 side (retriever.sparse) with these settings
    fusion: FusionConfig = field(default_factory=FusionConfig)  # hybrid defaults for the manifest
    overwrite: bool = False  # replace an existing index directory


def build_index(corpus_path: str | os.PathLike, encoder: Encoder, out_dir: str | os.PathLike,
                config: BuildConfig = BuildConfig(), accelerator=None) -> DenseIndex:
    """Read, encode and index a corpus; write ``out_dir`` atomically and return the index.

    Embedding shards go to ``<out_dir>.encoding/`` while the run lasts, so a killed run restarted
    with the same arguments resumes encoding where it stopped; the folder is removed on success.
    """
    if encoder.lexical is not None:
        raise UserError(f"encoder {encoder.name!r} has a lexical head, which belongs to the question "
                        "side only: build the index with its context encoder")
    out_dir = Path(out_dir)
    check_output_dir(out_dir, config.overwrite)
    work = out_dir.with_name(out_dir.name + ".encoding")
    fresh = not work.exists()
    try:
        passages = load_corpus(corpus_path, work / "passages.arrow", config.corpus)
    except BaseException:
        if fresh:  # a bad corpus leaves nothing behind
            shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("%d passages from %s", len(passages), corpus_path)
    vectors = encode_corpus(encoder, passages, work, config.encode, accelerator)
    if accelerator is not None and not accelerator.is_main_process:
        return None
    index = DenseIndex.build(vectors, passages, encoder.identity(), config.index)
    if config.sparse is not None:
        index.add_sparse(config.sparse, config.fusion, encoder.tokenizer)
    index.save(out_dir, overwrite=config.overwrite)
    shutil.rmtree(work, ignore_errors=True)
    return DenseIndex.load(out_dir)
