"""What the distributed tests run, in any number of processes: ``worker.py`` runs every part in
each of two torchrun processes, the tests run the training parts again in their own process (the
one-process reference). Dropout is off, so runs can be compared exactly. A training part returns
the trained weights with what they compute (``__outputs__``), for comparison across runs.
"""

from __future__ import annotations

import numpy as np
import torch

from rag.benchmark import BenchmarkConfig, run_benchmark
from rag.common.errors import UserError
from rag.common.options import updated
from rag.common.questions import read_questions
from rag.model import RagModel
from rag.train import FinetuneConfig, finetune
from retriever.encoder import Encoder
from retriever.evaluation import evaluate_retrieval
from retriever.fusion import RetrievalConfig
from retriever.index import DenseIndex
from retriever.search import Retriever
from retriever.shards import load_index
from retriever.train import TrainConfig, train_dpr

QUERIES = ["What is the capital of France?", "largest planet moons", "river sea Africa flows",
           "zzz unknown words only", "Amazon Amazon basin"]


def no_dropout(model: torch.nn.Module) -> None:
    """Dropout modules get p = 0, and so do the rates BART keeps as plain floats."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in ("dropout", "activation_dropout", "attention_dropout", "layerdrop"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


def dpr_part(encoder_dir, index_dir, questions, batch_size: int) -> dict[str, torch.Tensor]:
    """Train the tiny question encoder against a prebuilt index (every passage a candidate, so
    a question's loss does not depend on the rest of its batch); outputs: the questions' vectors."""
    torch.manual_seed(0)
    q_enc, ctx_enc = Encoder.from_pretrained(str(encoder_dir)), Encoder.from_pretrained(str(encoder_dir))
    no_dropout(q_enc)
    config = updated(TrainConfig(), epochs=2, batch_size=batch_size, negatives="corpus", lr=1e-3,
                     warmup_ratio=0.0, seed=0)
    train = read_questions(questions)
    train_dpr(q_enc, ctx_enc, DenseIndex.load(index_dir), train, config)
    q_enc.eval()
    with torch.no_grad():
        tok = q_enc.tokenize([q.question for q in train])
        outputs = q_enc(tok["input_ids"], tok["attention_mask"])
    return {**{k: v.contiguous() for k, v in q_enc.state_dict().items()},
            "__outputs__": outputs.contiguous()}


def rag_part(model_dir, questions, out, batch_size: int, acc, index=None
             ) -> tuple[dict[str, torch.Tensor], list]:
    """Fine-tune the tiny RAG model (question encoder and generator; ``index``, when given,
    replaces the model's own, e.g. a sharded one searched by the processes together, in training
    and in the dev evaluation), then benchmark it with the questions shared among the processes.
    Returns the weights with the questions' NLL as outputs, and the predictions with their count."""
    torch.manual_seed(0)
    model = RagModel.from_pretrained(str(model_dir), None if index is None else str(index))
    no_dropout(model)
    config = updated(FinetuneConfig(), epochs=1, batch_size=batch_size, lr=1e-3,
                     warmup_ratio=0.0, eval_limit=0, seed=0)
    train = read_questions(questions)
    finetune(model, train, str(out), config, dev=train[:3], accelerator=acc)
    model.eval()
    bench = run_benchmark(model, train, BenchmarkConfig(batch_size=3, progress=False))
    predictions = [r["prediction"] for r in bench.predictions] + [bench.metrics["n"]]
    with torch.no_grad():
        outputs = model.loss([q.question for q in train], [q.answers[0] for q in train])[1]
    state = {k: v.clone() for k, v in model.state_dict().items()}  # tied weights: copies
    return {**state, "__outputs__": outputs.contiguous()}, predictions


def _search(encoder, index, mode, questions, k, grad):
    encoder.zero_grad()
    scores, result = Retriever(encoder, index, RetrievalConfig(retrieval=mode)).search(
        questions, k, grad=grad)
    if grad:
        scores.sum().backward()
    grads = [p.grad.clone() for p in encoder.parameters() if p.grad is not None]
    return scores.detach(), result, grads


def _refused(path) -> str:
    try:
        load_index(path)
    except UserError as err:
        return str(err)
    return ""


def search_part(encoder_dir, whole_dir, two_dir, three_dir, broken_dir, questions, rank: int
                ) -> dict:
    """Each process holds one shard of two and asks its own questions (2 on rank 0, 3 on rank
    1): every dense, sparse and hybrid search, with and without gradient, and an evaluation must
    equal the same on the whole index in this process. Then the bad layouts, 3 shards for 2
    processes and a shard only rank 1 cannot read, must raise the same error on both ranks."""
    encoder = Encoder.from_pretrained(str(encoder_dir)).eval()
    whole, sharded = DenseIndex.load(whole_dir), load_index(two_dir)
    mine = QUERIES[:2] if rank == 0 else QUERIES[2:]
    checks = 0
    for mode in ("dense", "sparse", "hybrid"):
        for k in (1, 4, len(whole)):
            for grad in (False, True) if mode != "sparse" else (False,):
                s1, r1, g1 = _search(encoder, whole, mode, mine, k, grad)
                s2, r2, g2 = _search(encoder, sharded, mode, mine, k, grad)
                assert torch.equal(s1, s2), (mode, k, grad, s1, s2)
                assert np.array_equal(r1.rows, r2.rows) and r1.ids == r2.ids, (mode, k, grad)
                assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True)), mode
                checks += 1
    records = read_questions(questions)
    evaluations = [evaluate_retrieval(Retriever(encoder, index), records, [1, 3], batch_size=3,
                                      progress=False) for index in (whole, sharded)]
    assert evaluations[0] == evaluations[1], evaluations
    return {"checks": checks, "evaluation": evaluations[1], "three": _refused(three_dir),
            "broken": _refused(broken_dir), "shard": list(sharded.local)}
