"""Tune the hybrid retriever on dev: sparse tokenizer, fusion weight w, candidates k', fusion.

    python docs/experiments/hybrid_tuning.py runs/index-l6 ../shared/data/squad-open/dev.json \
        [question_encoder ...] > runs/hybrid-tuning.txt

Everything goes through ``Retriever`` and ``evaluate_retrieval`` (as eval_retrieval.py does); the
question vectors are computed once per encoder and reused across settings. Prints one line per
setting: encoder, tokenizer, mode, fusion, w, k', top-1/5/20.
"""

from __future__ import annotations

import sys

import torch

from retriever.encoder import Encoder
from retriever.evaluation import evaluate_retrieval
from retriever.fusion import RetrievalConfig
from retriever.index import DenseIndex
from retriever.questions import read_questions
from retriever.search import Retriever

index_dir, dev_path, *encoders = sys.argv[1:]
index = DenseIndex.load(index_dir)
dev = read_questions(dev_path)
ctx = Encoder.from_pretrained(index.manifest["encoder"]["name"])
encoders = encoders or [index.manifest["encoder"]["name"]]


class Cached(Retriever):
    """The question vectors of each question computed once."""

    cache: dict[str, torch.Tensor] = {}

    def encode(self, questions, grad=False):
        todo = [q for q in questions if q not in self.cache]
        if todo:
            for q, v in zip(todo, super().encode(todo), strict=True):
                self.cache[q] = v
        return torch.stack([self.cache[q] for q in questions])


def run(encoder, name, tokenizer, config):
    Cached.cache = Cached.cache if run.encoder is encoder else {}
    run.encoder = encoder
    m = evaluate_retrieval(Cached(encoder, index, config), dev, (1, 5, 20), progress=False)
    acc = m["top_k_accuracy"]
    print(f"{name}\t{tokenizer}\t{config.retrieval}\t{config.fusion or '-'}\t{config.fusion_weight}"
          f"\t{config.candidates}\t{100 * acc['1']:.2f}\t{100 * acc['5']:.2f}\t{100 * acc['20']:.2f}",
          flush=True)


run.encoder = None
print("encoder\ttokenizer\tmode\tfusion\tw\tk'\ttop-1\ttop-5\ttop-20")
for tokenizer in ("words", "wordpiece"):
    index.add_sparse(index.sparse.config.__class__(sparse_tokenizer=tokenizer),
                     tokenizer=ctx.tokenizer)
    for name in encoders:
        enc = Encoder.from_pretrained(name).eval()
        if name == encoders[0]:
            run(enc, name, tokenizer, RetrievalConfig("sparse"))
        if tokenizer == "words":
            run(enc, name, tokenizer, RetrievalConfig("dense"))
        for w in (0.1, 0.2, 0.3, 0.5, 0.7, 1.0):
            run(enc, name, tokenizer, RetrievalConfig("hybrid", "linear", w, 100))
        for k in (20, 50, 200):
            run(enc, name, tokenizer, RetrievalConfig("hybrid", "linear", 0.3, k))
        run(enc, name, tokenizer, RetrievalConfig("hybrid", "rrf", None, 100))
