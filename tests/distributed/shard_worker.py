"""One process of a sharded search (launched by ``torchrun`` from ``test_shards.py``): each rank
holds one shard of two and asks its own questions (2 on rank 0, 3 on rank 1); every dense, sparse
and hybrid search, with and without gradient, and an evaluation must equal the same on the whole
index in this process. Then the bad layouts: 3 shards for 2 processes, and a shard that only rank
1 cannot read, must raise the same error on both ranks. Writes ``<out>/rank<RANK>.json``.

    torchrun --nproc_per_node 2 shard_worker.py ENCODER WHOLE TWO THREE BROKEN QUESTIONS OUT
"""

import json
import os
import sys

import numpy as np
import torch

from retriever.encoder import Encoder
from retriever.errors import UserError
from retriever.evaluation import evaluate_retrieval
from retriever.fusion import RetrievalConfig
from retriever.index import DenseIndex
from retriever.questions import read_questions
from retriever.search import Retriever
from retriever.shards import load_index
from retriever.train import make_accelerator

QUERIES = ["What is the capital of France?", "largest planet moons", "river sea Africa flows",
           "zzz unknown words only", "Amazon Amazon basin"]


def search(encoder, index, mode, questions, k, grad):
    encoder.zero_grad()
    retriever = Retriever(encoder, index, RetrievalConfig(retrieval=mode))
    scores, result = retriever.search(questions, k, grad=grad)
    if grad:
        scores.sum().backward()
    grads = [p.grad.clone() for p in encoder.parameters() if p.grad is not None]
    return scores.detach(), result, grads


def refused(path) -> str:
    try:
        load_index(path)
    except UserError as err:
        return str(err)
    return ""


def main(encoder_dir, whole_dir, two_dir, three_dir, broken_dir, questions, out) -> None:
    acc = make_accelerator()
    rank = acc.process_index
    encoder = Encoder.from_pretrained(encoder_dir).eval()
    whole, sharded = DenseIndex.load(whole_dir), load_index(two_dir)
    assert list(sharded.local) == [rank], sharded.local  # one shard per process
    mine = QUERIES[:2] if rank == 0 else QUERIES[2:]
    checks = 0
    for mode in ("dense", "sparse", "hybrid"):
        for k in (1, 4, len(whole)):
            for grad in (False, True) if mode != "sparse" else (False,):
                s1, r1, g1 = search(encoder, whole, mode, mine, k, grad)
                s2, r2, g2 = search(encoder, sharded, mode, mine, k, grad)
                assert torch.equal(s1, s2), (mode, k, grad, s1, s2)
                assert np.array_equal(r1.rows, r2.rows) and r1.ids == r2.ids, (mode, k, grad)
                assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True)), mode
                checks += 1
    records = read_questions(questions)
    evaluations = [evaluate_retrieval(Retriever(encoder, index), records, [1, 3], batch_size=3,
                                      progress=False) for index in (whole, sharded)]
    assert evaluations[0] == evaluations[1], evaluations
    report = {"checks": checks, "evaluation": evaluations[1], "three": refused(three_dir),
              "broken": refused(broken_dir), "shard": list(sharded.local)}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
