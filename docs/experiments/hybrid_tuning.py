"""Tune the hybrid retriever on dev: sparse tokenizer, BM25 k1 and b, fusion weight w, k', fusion.

    python docs/experiments/hybrid_tuning.py runs/index-l6 ../shared/data/squad-open/dev.json \
        all-MiniLM-L6-v2 [question_encoder ...] > runs/hybrid-tuning.txt

Everything goes through ``Retriever`` and ``evaluate_retrieval`` (as ragqa eval-retrieval does); the
question vectors are computed once per encoder and reused across settings. The sparse side is
rebuilt in memory for each BM25 setting (the index directory is not changed). Prints one
tab-separated line per setting: part, encoder, tokenizer, k1, b, mode, fusion, w, k', top-1/5/20.

1. tokenizer x (w, k', fusion) at bm25s' default k1 = 1.5, b = 0.75, every encoder;
2. k1 and b, words, first encoder, w = 0.5;
3. w at k1 = 0.9, b = 0.4 (Anserini's defaults, the best of part 2), every encoder.
"""

from __future__ import annotations

import sys

import torch

from rag.common.questions import read_questions
from retriever.encoder import Encoder
from retriever.evaluation import evaluate_retrieval
from retriever.fusion import RetrievalConfig
from retriever.index import DenseIndex
from retriever.search import Retriever
from retriever.sparse import SparseConfig

index_dir, dev_path, *names = sys.argv[1:]
index = DenseIndex.load(index_dir)
dev = read_questions(dev_path)
ctx = Encoder.from_pretrained(index.manifest["encoder"]["name"])
encoders = {name: Encoder.from_pretrained(name).eval() for name in names}
cache: dict[str, dict[str, torch.Tensor]] = {name: {} for name in names}


class Cached(Retriever):
    """The question vectors of each question computed once per encoder."""

    def encode(self, questions, grad=False):
        known = cache[self.name]
        todo = [q for q in questions if q not in known]
        if todo:
            known.update(zip(todo, super().encode(todo), strict=True))
        return torch.stack([known[q] for q in questions])


def hybrid(fusion: str, w: float | None, candidates: int) -> RetrievalConfig:
    changes = {"fusion": fusion, "fusion_weight": w, "candidates": candidates}
    return RetrievalConfig("hybrid", {k: v for k, v in changes.items() if v is not None})


def run(part: str, name: str, config: RetrievalConfig) -> None:
    retriever = Cached(encoders[name], index, config)
    retriever.name = name
    acc = evaluate_retrieval(retriever, dev, (1, 5, 20), progress=False)["top_k_accuracy"]
    s = index.sparse.config
    print(f"{part}\t{name}\t{s.sparse_tokenizer}\t{s.bm25_k1}\t{s.bm25_b}\t{retriever.mode}\t"
          f"{config.fusion_changes.get('fusion', '-')}\t{config.fusion_changes.get('fusion_weight')}\t"
          f"{config.fusion_changes.get('candidates', 0)}\t"
          + "\t".join(f"{100 * acc[k]:.2f}" for k in ("1", "5", "20")), flush=True)


print("part\tencoder\ttokenizer\tk1\tb\tmode\tfusion\tw\tk'\ttop-1\ttop-5\ttop-20")
first = names[0]
for tokenizer in ("words", "wordpiece"):
    index.add_sparse(SparseConfig(tokenizer, 1.5, 0.75), tokenizer=ctx.tokenizer)
    run("1", first, RetrievalConfig("sparse"))
    for name in names:
        if tokenizer == "words":
            run("1", name, RetrievalConfig("dense"))
        for w in (0.1, 0.2, 0.3, 0.5, 0.7, 1.0):
            run("1", name, hybrid("linear", w, 100))
        for k in (20, 50, 200):
            run("1", name, hybrid("linear", 0.3, k))
        run("1", name, hybrid("rrf", None, 100))
for k1, b in ((1.5, 0.75), (0.9, 0.4), (1.2, 0.75), (0.9, 0.75), (2.0, 0.75), (1.5, 0.5), (1.5, 0.9)):
    index.add_sparse(SparseConfig("words", k1, b))
    run("2", first, RetrievalConfig("sparse"))
    run("2", first, hybrid("linear", 0.5, 100))
index.add_sparse(SparseConfig("words", 0.9, 0.4))
for name in names:
    for w in (0.3, 0.4, 0.5, 0.6, 0.7):
        run("3", name, hybrid("linear", w, 100))
