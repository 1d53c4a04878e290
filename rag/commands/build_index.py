"""Encode a passage corpus with a (frozen) context encoder and write a FAISS index directory.

With --sparse bm25 the index also gets a BM25 side (bm25s, in <out>/sparse/) and searches can be
hybrid: dense and BM25 candidates fused as s = s_dense + w * s_bm25 / (best s_bm25) (see
retriever/fusion.py). --add_sparse gives an existing index a BM25 side without re-encoding.
--use_embeddings indexes vectors already stored with the passages (the "embeddings" column of a
Parquet file or datasets directory, as transformers' RagRetriever custom index keeps them).
--shards N writes the index as N shards by passage range, for processes that each hold one
(docs/scale-out.md); --split INDEX --shards N does so for an index already built. Under torchrun
the processes encode a share of the corpus each, and the first one indexes.

Example:
    ragqa index --corpus ../shared/data/squad-open/corpus.tsv \\
        --encoder all-MiniLM-L6-v2 --out runs/index-l6 --sparse bm25
    ragqa index --add_sparse runs/index-l6
    ragqa index --corpus my_knowledge_dataset/ --use_embeddings \\
        --encoder facebook/dpr-ctx_encoder-multiset-base --out runs/index-imported
    ragqa index --split runs/index-l6 --shards 2 --out runs/index-l6-2shards
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rag.commands.cli import parse
from rag.common.artefact import check_output_dir, check_paths
from rag.common.atomic import check_output_parent, write_json
from rag.common.device import DeviceConfig
from rag.common.errors import UserError
from rag.common.loop import make_accelerator
from rag.common.options import NON_NEGATIVE, check_fields, option
from retriever.batch_encode import EncodeConfig
from retriever.build import BuildConfig, build_index
from retriever.corpus import CorpusConfig
from retriever.encoder import Encoder
from retriever.fusion import FusionConfig
from retriever.index import DenseIndex
from retriever.index_factory import IndexConfig
from retriever.shards import split_index
from retriever.sparse import SPARSE_DIR, SparseConfig


@dataclass(frozen=True)
class Args:
    corpus: str | None = option(
        None, "passages: DPR TSV (id, text, title), JSONL, SQuAD JSON, Parquet (id, text, title "
        "columns) or a datasets save_to_disk directory")
    out: str | None = option(None, "index directory to write (atomically)")
    encoder: str = option(
        "all-MiniLM-L6-v2", "context encoder: hub id, local directory or packaged name")
    max_length: int = option(
        0, "tokens per passage (title + text); 0 = the encoder's own (256, or fewer if its position "
        "table is shorter)", within=NON_NEGATIVE)
    sparse: Literal["none", "bm25"] = option(
        "none", '"bm25": also index the passages with BM25 for sparse and hybrid search')
    add_sparse: str | None = option(
        None, "existing index directory to give a BM25 side (replacing any), without re-encoding; "
        "--corpus, --out and --encoder are then not used")
    overwrite: bool = option(False, "replace an existing index directory")
    use_embeddings: bool = option(
        False, "index the vectors stored in the corpus's \"embeddings\" column (a Parquet file or "
        "datasets directory, e.g. transformers' RagRetriever custom passages) instead of encoding; "
        "--encoder names the encoder that made them, and a sample is checked against it")
    json: str | None = option(None, "write figures (count, dim, seconds, passages/s) to this JSON file")
    shards: int = option(
        0, "write N shards by passage range, searched together by N (or a multiple of N) processes "
        "under torchrun, each holding one (docs/scale-out.md); 0 = one index", within=NON_NEGATIVE)
    split: str | None = option(
        None, "existing index directory (flat or hnsw) to write as --shards N shards into --out, "
        "without re-encoding; --corpus and --encoder are then not used")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.split is not None:
            if self.corpus or self.add_sparse is not None or not self.out or self.shards < 1:
                raise UserError("--split INDEX takes --shards N and --out DIR (no --corpus or "
                                "--add_sparse)")
            return
        if self.add_sparse is not None and (self.corpus or self.out):
            raise UserError("--add_sparse INDEX works on an existing index: leave out --corpus and --out")
        if self.add_sparse is None and not (self.corpus and self.out):
            raise UserError("give --corpus FILE and --out DIR (or --add_sparse INDEX)")


def _sparse_size(index_dir: str) -> int:
    return sum(f.stat().st_size for f in (Path(index_dir) / SPARSE_DIR).rglob("*") if f.is_file())


def add_sparse(args: Args, sparse: SparseConfig, fusion: FusionConfig) -> dict:
    index = DenseIndex.load(args.add_sparse)
    tokenizer = None
    if sparse.sparse_tokenizer == "wordpiece":
        tokenizer = Encoder.from_pretrained(index.manifest["encoder"]["name"]).tokenizer
    start = time.perf_counter()
    index.add_sparse(sparse, fusion, tokenizer)
    index.save(args.add_sparse, overwrite=True)
    seconds = time.perf_counter() - start
    print(f"BM25 side over {len(index)} passages in {seconds:.1f}s "
          f"({_sparse_size(args.add_sparse) / 2**20:.1f} MiB) -> {args.add_sparse}")
    return {"count": len(index), "sparse": index.manifest["sparse"], "fusion": index.manifest["fusion"],
            "seconds": round(seconds, 2), "sparse_bytes": _sparse_size(args.add_sparse),
            "out": args.add_sparse}


def main() -> None:
    args, corpus, encode, index_cfg, sparse, fusion, where = parse(
        [Args, CorpusConfig, EncodeConfig, IndexConfig, SparseConfig, FusionConfig, DeviceConfig],
        description=__doc__)
    device = where.resolve()
    check_paths({"--corpus": args.corpus, "--split": args.split, "--encoder": args.encoder,
                 "--add_sparse": args.add_sparse},
                {"--out": None if args.add_sparse else args.out, "--json": args.json})
    if args.json:
        check_output_parent(args.json)
    if args.split is not None:
        check_output_dir(args.out, args.overwrite, "sharded-index")
        start = time.perf_counter()
        split_index(DenseIndex.load(args.split), args.out, args.shards, args.overwrite)
        seconds = time.perf_counter() - start
        print(f"split {args.split} into {args.shards} shards in {seconds:.1f}s -> {args.out}")
        figures = {"split": args.split, "shards": args.shards, "seconds": round(seconds, 2),
                   "out": args.out}
    elif args.add_sparse is not None:
        figures = add_sparse(args, sparse, fusion)
    else:
        length = {"max_length": args.max_length} if args.max_length else {}
        encoder = Encoder.from_pretrained(args.encoder, **length).to(device)
        start = time.perf_counter()
        config = BuildConfig(corpus, encode, index_cfg, sparse if args.sparse == "bm25" else None,
                             fusion, overwrite=args.overwrite, use_embeddings=args.use_embeddings,
                             shards=args.shards)
        acc = make_accelerator()  # under torchrun the processes encode a share each
        index = build_index(args.corpus, encoder, args.out, config,
                            accelerator=acc if acc.num_processes > 1 else None)
        if index is None:  # not the first process, which indexes and reports
            return
        seconds = time.perf_counter() - start
        figures = {"count": len(index), "dim": index.manifest["dim"],
                   "index_type": index_cfg.index_type, "encoder": encoder.identity(),
                   "sparse": index.manifest.get("sparse"), "seconds": round(seconds, 2),
                   "passages_per_s": round(len(index) / seconds, 2), "shards": args.shards,
                   "out": args.out}
        shards = f", {args.shards} shards" if args.shards else ""
        print(f"indexed {len(index)} passages (dim {figures['dim']}, {index_cfg.index_type}"
              f"{', + BM25' if index.sparse is not None else ''}{shards}) in {seconds:.1f}s "
              f"-> {args.out}")
    if args.json:
        write_json(args.json, figures)

