"""Encode a passage corpus with a (frozen) context encoder and write a FAISS index directory.

Example:
    python scripts/build_index.py --corpus ../shared/data/squad-open/corpus.tsv \\
        --encoder all-MiniLM-L6-v2 --out runs/index-l6
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from retriever.build import BuildConfig, build_index
from retriever.cli import parse, run, write_json
from retriever.corpus import CorpusConfig
from retriever.encode import EncodeConfig
from retriever.encoder import Encoder
from retriever.index import IndexConfig


@dataclass(frozen=True)
class Args:
    corpus: str = field(metadata={"help": "passages: DPR TSV (id, text, title), JSONL or SQuAD JSON"})
    out: str = field(metadata={"help": "index directory to write (atomically)"})
    encoder: str = "all-MiniLM-L6-v2"  # context encoder: hub id, local directory or packaged name
    max_length: int = 256  # tokens per passage (title + text)
    overwrite: bool = False  # replace an existing index directory
    json: str | None = None  # write figures (count, dim, seconds, passages/s) to this JSON file


def main() -> None:
    args, corpus, encode, index_cfg = parse(
        [Args, CorpusConfig, EncodeConfig, IndexConfig], description=__doc__)
    encoder = Encoder.from_pretrained(args.encoder, max_length=args.max_length)
    start = time.perf_counter()
    index = build_index(args.corpus, encoder, args.out,
                        BuildConfig(corpus, encode, index_cfg, overwrite=args.overwrite))
    seconds = time.perf_counter() - start
    figures = {"count": len(index), "dim": index.manifest["dim"], "index_type": index_cfg.index_type,
               "encoder": encoder.identity(), "seconds": round(seconds, 2),
               "passages_per_s": round(len(index) / seconds, 2), "out": args.out}
    print(f"indexed {len(index)} passages (dim {figures['dim']}, {index_cfg.index_type}) "
          f"in {seconds:.1f}s -> {args.out}")
    if args.json:
        write_json(args.json, figures)


if __name__ == "__main__":
    run(main)
