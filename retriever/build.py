"""From a corpus file and an encoder to an index directory, in one resumable call."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset

from rag.common import collective
from rag.common.artefact import check_output_dir
from rag.common.atomic import atomic_file
from rag.common.device import used_dtype
from rag.common.errors import UserError

from .batch_encode import EncodeConfig, encode_corpus, encode_texts
from .corpus import CorpusConfig, corpus_digest, corpus_embeddings, load_corpus, open_shards
from .encoder import Encoder
from .fusion import FusionConfig
from .index import DenseIndex
from .index_factory import IndexConfig
from .shards import ShardedIndex, build_shards, shard_ranges
from .sparse import SparseConfig, SparseIndex

log = logging.getLogger(__name__)
RECIPE = "recipe.json"
PASSAGES = "passages.arrow"  # the corpus as read, in the encoding folder


@dataclass(frozen=True)
class BuildConfig:
    """Everything ``build_index`` needs besides the corpus and the encoder."""

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    sparse: SparseConfig | None = None  # also build a BM25 side (retriever.sparse) with these settings
    fusion: FusionConfig = field(default_factory=FusionConfig)  # hybrid defaults for the manifest
    overwrite: bool = False  # replace an existing index directory
    use_embeddings: bool = False  # take the passage vectors from the corpus's "embeddings" column
    # (a RagRetriever custom dataset) instead of encoding; a sample is checked against the encoder
    shards: int = 0  # write N shards by passage range (retriever.shards); 0 = one index


def build_index(corpus_path: str | os.PathLike | Dataset, encoder: Encoder, out_dir: str | os.PathLike,
                config: BuildConfig = BuildConfig(), accelerator=None) -> DenseIndex:
    """Read, encode and index a corpus (file, datasets directory or in-memory ``Dataset``, see
    ``retriever.corpus``); write ``out_dir`` atomically and return the index.

    Embedding shards go to ``<out_dir>.encoding/`` while the run lasts, so a killed run restarted
    with the same arguments resumes encoding where it stopped; the folder is removed on success.
    It records what its shards were made from (``recipe.json``: the corpus's digest, the
    corpus settings, the encoder's fingerprint, max length, dtype and shard size); a run with any
    of these changed starts over instead of reusing them.
    """
    if encoder.lexical is not None:
        raise UserError(f"encoder {encoder.name!r} has a lexical head, which belongs to the question "
                        "side only: build the index with its context encoder")
    pq_m = config.index.pq_m
    if config.index.index_type == "ivfpq" and pq_m and encoder.dim % pq_m:
        raise UserError(f"--pq_m {pq_m} does not divide the encoder's dimension {encoder.dim}")
    out_dir = Path(out_dir)
    check_output_dir(out_dir, config.overwrite, "sharded-index" if config.shards else "index")
    work = out_dir.with_name(out_dir.name + ".encoding")
    main = accelerator is None or accelerator.is_main_process
    passages, error = None, None
    if main:  # under torchrun the first process reads the corpus, then the others open it
        try:
            passages = _prepare(corpus_path, encoder, work, config)
        except UserError as err:
            if accelerator is None:
                raise
            error = str(err)
    if accelerator is not None:
        collective.agree(error)  # a bad corpus stops every process, each with the line
        passages = passages if main else open_shards([work / PASSAGES])
    if config.use_embeddings:
        if not main:
            return None
        try:
            vectors = stored_vectors(corpus_path, passages, encoder, config)
        except BaseException:  # nothing to resume: refused embeddings leave nothing behind
            shutil.rmtree(work, ignore_errors=True)
            raise
    else:
        vectors = encode_corpus(encoder, passages, work, config.encode, accelerator)
    if not main:
        return None
    if config.shards:  # BM25 over the whole corpus, cut for each shard (retriever.shards)
        sparse = None if config.sparse is None else SparseIndex.build(
            passages["title"], passages["text"], config.sparse, encoder.tokenizer)
        build_shards(vectors, passages, encoder.identity(), config.index, config.shards, out_dir,
                     sparse, asdict(config.fusion), config.overwrite)
        shutil.rmtree(work, ignore_errors=True)
        return ShardedIndex.load(out_dir, mmap=True, alone=True)
    index = DenseIndex.build(vectors, passages, encoder.identity(), config.index)
    if config.sparse is not None:
        index.add_sparse(config.sparse, config.fusion, encoder.tokenizer)
    index.save(out_dir, overwrite=config.overwrite)
    shutil.rmtree(work, ignore_errors=True)
    return DenseIndex.load(out_dir)


def _prepare(corpus_path, encoder: Encoder, work: Path, config: BuildConfig) -> Dataset:
    """The corpus read into ``work`` (the encoding folder), with the recipe its shards are made
    from; a folder left by a build of anything else is started over (see :func:`build_index`)."""
    if work.exists() and (isinstance(corpus_path, Dataset) or Path(corpus_path).exists()):
        try:
            saved = json.loads((work / RECIPE).read_text())
        except (OSError, ValueError):  # none (an older or killed run), or unreadable
            saved = None
        if saved != _recipe(corpus_path, encoder, config):
            log.info("%s holds shards of another build (corpus, encoder or settings changed): "
                     "starting over", work)
            shutil.rmtree(work)
    fresh = not work.exists()
    try:
        passages = load_corpus(corpus_path, work / PASSAGES, config.corpus)
        if config.shards:  # before encoding: more shards than passages is refused
            shard_ranges(len(passages), config.shards)
        log.info("%d passages", len(passages))
    except BaseException:
        if fresh:  # a bad corpus leaves nothing behind
            shutil.rmtree(work, ignore_errors=True)
        raise
    if fresh or not (work / RECIPE).is_file():
        with atomic_file(work / RECIPE) as tmp:
            tmp.write_text(json.dumps(_recipe(corpus_path, encoder, config)))
    return passages


def stored_vectors(corpus_path, passages, encoder: Encoder, config: BuildConfig,
                   sample: int = 8) -> np.ndarray:
    """The corpus's stored embeddings, checked: one per passage, of the encoder's dimension, and
    the first ``sample`` equal (cosine >= 0.99, allowing for half-precision storage) to what the
    encoder makes of those passages, so vectors of another encoder are refused."""
    if config.corpus.passage_words:
        raise UserError("--use_embeddings keeps the stored passages whole: leave out --passage_words")
    vectors = corpus_embeddings(corpus_path)
    if vectors.shape != (len(passages), encoder.dim):
        raise UserError(f"{corpus_path}: {vectors.shape[0]} embeddings of dimension "
                        f"{vectors.shape[1]} for {len(passages)} passages and encoder "
                        f"{encoder.name!r} of dimension {encoder.dim}")
    head = passages[:sample]
    fresh = encode_texts(encoder, head["text"], head["title"], config.encode)
    cos = (fresh * vectors[: len(fresh)]).sum(1) / np.maximum(
        np.linalg.norm(fresh, axis=1) * np.linalg.norm(vectors[: len(fresh)], axis=1), 1e-12)
    if cos.min() < 0.99:
        row = int(cos.argmin())
        raise UserError(f"{corpus_path}: the stored embedding of row {row} is not encoder "
                        f"{encoder.name!r}'s (cosine {cos[row]:.3f}): were they made by another "
                        "encoder? Pass that one as --encoder")
    log.info("%d stored embeddings used (a sample of %d checked against %s)", len(vectors),
             len(fresh), encoder.name)
    return vectors


def _recipe(corpus_path: str | os.PathLike, encoder: Encoder, config: BuildConfig) -> dict:
    """What a build's embedding shards are made from (see :func:`build_index`)."""
    return {"corpus_sha256": corpus_digest(corpus_path), "corpus": asdict(config.corpus),
            "encoder": encoder.fingerprint, "max_length": encoder.config.max_length,
            # the precision used, not the setting: "auto" is bf16 on a GPU and fp32 on a CPU,
            # and a resumed build must not mix the two
            "dtype": used_dtype(config.encode.dtype, next(encoder.parameters()).device),
            "shard_size": config.encode.shard_size}
