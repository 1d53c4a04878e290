"""What only a GPU can show, in one prepared run: each check against the CPU, one PASS/FAIL/SKIP line
each, and a JSON summary.

Checks (the starter, the packaged MiniLM and the embedded corpus; nothing is downloaded):
  faiss_search      flat search on this process's GPU (faiss-gpu) equals the CPU index's, rows
                    and scores, and brute force's scores: ties (duplicated vectors) in row order,
                    k = 1100 (widened past 2048 while settling ties) and k = 2500 (past FAISS's
                    GPU limit: the CPU index answers)
  encoding_{fp32,bf16,fp16}  passage vectors on the device against fp32 on the CPU
  rag_loss_{sequence,token}  RAG NLL on the device equals the CPU's; backward gives finite grads
  greedy_answers    greedy answers on the device equal the CPU's
  finetune_{bf16,fp16}  16 steps of finetune with the copy head under mixed precision, batches
                    prepared by 2 DataLoader workers (the GPU default) forked after CUDA started
  train_retriever_fp16  one epoch of DPR training under fp16
  checkpoint_to_cpu a checkpoint written from the device resumes on the CPU

With --device cpu (CI) the checks that need a GPU are skipped and the rest run on the CPU, in
under a minute. Exit status 1 when a check fails.

    python scripts/gpu_check.py --json runs/gpu_check.json            # on the GPU machine
    python scripts/gpu_check.py --device cpu --json runs/gpu_check.json
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rag.commands.cli import parse, run
from rag.common.atomic import check_output_parent, write_json
from rag.common.device import DeviceConfig
from rag.common.options import option


@dataclass(frozen=True)
class Args:
    json: str | None = option(None, "write the summary (JSON) here")
    only: str = option("", "comma-separated check names to run (default: all)")


class Skip(Exception):
    """A check that cannot run on this machine."""


def faiss_search(device: torch.device) -> str:
    from retriever.index import DenseIndex
    from retriever.index_factory import IndexConfig

    rng = np.random.default_rng(0)
    base = rng.standard_normal((3000, 64)).astype(np.float32)
    vectors = np.concatenate([base, base[:1500]])  # every one of the first 1500 twice: ties
    passages = [{"id": f"p{i}", "title": "", "text": str(i)} for i in range(len(vectors))]
    with tempfile.TemporaryDirectory() as tmp:
        table = _table(passages, Path(tmp))
        identity = {"name": "random", "fingerprint": "0", "dim": 64}
        index = DenseIndex.build(vectors, table, identity, IndexConfig())
        cpu = DenseIndex.build(vectors, table, identity, IndexConfig(use_gpu=False))
        queries = rng.standard_normal((16, 64)).astype(np.float32)
        exact = np.sort(queries.astype(np.float64) @ vectors.T.astype(np.float64), axis=1)[:, ::-1]
        for k in (10, 1100, 2500):
            got_scores, got_rows = index.search_knn(queries, k)
            want_scores, want_rows = cpu.search_knn(queries, k)
            np.testing.assert_allclose(got_scores, exact[:, :k], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)
            assert (got_rows == want_rows).all(), f"k={k}: rows differ from the CPU index's"
        on_gpu = index._gpu_index is not None
        del index, cpu, table
    if device.type == "cuda" and not on_gpu:
        raise AssertionError("faiss-gpu did not clone the index: is faiss-gpu installed?")
    return f"k 10/1100/2500 equal the CPU index, {'GPU clone' if on_gpu else 'CPU index'}"


def _table(rows, folder: Path):
    from retriever.corpus import open_shards, write_arrow

    write_arrow(iter(rows), folder / "passages.arrow")
    return open_shards([folder / "passages.arrow"])


def encoding(dtype: str) -> Callable[[torch.device], str]:
    def check(device: torch.device) -> str:
        from rag.common.jsonl import json_lines
        from rag.default import CONTEXT_ENCODER, CORPUS
        from retriever.batch_encode import EncodeConfig, encode_texts
        from retriever.encoder import Encoder

        if dtype == "fp16" and device.type != "cuda":
            raise Skip("fp16 autocast needs a GPU")
        rows = [row for _, row in json_lines(CORPUS)]
        texts, titles = [r["text"] for r in rows], [r["title"] for r in rows]
        encoder = Encoder.from_pretrained(CONTEXT_ENCODER)
        ref = encode_texts(encoder, texts, titles, EncodeConfig(dtype="fp32", progress=False))
        got = encode_texts(encoder.to(device), texts, titles,
                           EncodeConfig(dtype=dtype, progress=False))
        cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
        bound = 1e-5 if dtype == "fp32" else 2e-3
        assert 1 - cos.min() < bound, f"cosine {cos.min():.6f}"
        return f"min cosine {cos.min():.6f} over {len(texts)} passages"
    return check


def _starter(device: torch.device, **overrides):
    from rag.model import RagModel

    return RagModel.from_pretrained(**overrides).to(device).eval()


QUESTIONS = ["Who designed the Eiffel Tower?", "What is the capital of Australia?",
             "Which planet is known as the Red Planet?", "Who wrote Hamlet?"]
ANSWERS = ["Gustave Eiffel", "Canberra", "Mars", "William Shakespeare"]


def rag_loss(mode: str) -> Callable[[torch.device], str]:
    def check(device: torch.device) -> str:
        cpu = _starter(torch.device("cpu"), mode=mode)
        with torch.no_grad():
            want = cpu.loss(QUESTIONS, ANSWERS)[1]
        model = _starter(device, mode=mode)  # eval mode: no dropout, as the CPU's reference
        loss, nll = model.loss(QUESTIONS, ANSWERS)
        loss.backward()
        torch.testing.assert_close(nll.detach().cpu(), want, rtol=2e-3, atol=2e-3)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), "non-finite gradients"
        return f"NLL {nll.mean().item():.4f} (CPU {want.mean().item():.4f}), {len(grads)} grads"
    return check


def greedy_answers(device: torch.device) -> str:
    from rag.common.jsonl import json_lines
    from rag.default import QUESTIONS as FILE

    questions = [row["question"] for _, row in json_lines(FILE)][:16]
    want = [a.answer for a in _starter(torch.device("cpu")).answer(questions)]
    got = [a.answer for a in _starter(device).answer(questions)]
    differ = [(q, w, g) for q, w, g in zip(questions, want, got, strict=True) if w != g]
    assert not differ, f"{len(differ)} differ, e.g. {differ[0]}"
    return f"{len(questions)} answers equal"


def finetune(precision: str) -> Callable[[torch.device], str]:
    def check(device: torch.device) -> str:
        from rag.common.options import updated
        from rag.common.questions import Question
        from rag.train import FinetuneConfig
        from rag.train import finetune as run_finetune

        if device.type != "cuda":
            raise Skip(f"{precision} training is a GPU check")
        model = _starter(device)
        train = [Question(question=q, answers=(a,)) for q, a in zip(QUESTIONS, ANSWERS, strict=True)]
        config = updated(FinetuneConfig(), epochs=16, batch_size=4, max_steps=16, save_every=8,
                         mixed_precision=precision)
        with tempfile.TemporaryDirectory() as tmp:
            log = run_finetune(model, train * 4, Path(tmp) / "out", config)
            assert (Path(tmp) / "out" / "rag_config.json").is_file()
        assert all(p.isfinite().all() for p in model.generator.parameters()), "non-finite weights"
        return f"16 steps, log {log[-1] if log else '-'}"
    return check


def train_retriever_fp16(device: torch.device) -> str:
    from rag.common.options import updated
    from rag.common.questions import Question
    from retriever.metrics import has_answer
    from retriever.train import TrainConfig, train_dpr

    if device.type != "cuda":
        raise Skip("fp16 training is a GPU check")
    model = _starter(device)
    index = model.index
    texts = index.passages["text"]
    train = []
    for q, a in zip(QUESTIONS, ANSWERS, strict=True):
        row = next((i for i, t in enumerate(texts) if has_answer(t, [a])), None)
        if row is not None:
            train.append(Question(question=q, answers=(a,), positive_ids=(index.passages["id"][row],)))
    config = updated(TrainConfig(), epochs=2, batch_size=2, hard_negatives=1, mixed_precision="fp16")
    logs = train_dpr(model.question_encoder, model.question_encoder, index, train * 4, config)
    assert logs and all(np.isfinite(e["loss"]) for e in logs), logs
    return f"losses {[round(e['loss'], 4) for e in logs]}"


def checkpoint_to_cpu(device: torch.device) -> str:
    from rag.common.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 2).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(3, 8, device=device)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp) / "c", lambda d: d.mkdir(), opt, sched, {"step": 1})
        cpu = torch.nn.Linear(8, 2)
        cpu_opt = torch.optim.AdamW(cpu.parameters(), lr=0.1)
        cpu_sched = torch.optim.lr_scheduler.LambdaLR(cpu_opt, lambda step: 1.0)
        assert load_checkpoint(Path(tmp) / "c", cpu_opt, cpu_sched)["step"] == 1
    got = next(iter(cpu_opt.state.values()))["exp_avg"]
    assert got.device.type == "cpu"
    torch.testing.assert_close(got, next(iter(opt.state.values()))["exp_avg"].cpu())
    return f"saved from {device}, optimizer state on cpu"


CHECKS: dict[str, Callable[[torch.device], str]] = {
    "faiss_search": faiss_search,
    **{f"encoding_{d}": encoding(d) for d in ("fp32", "bf16", "fp16")},
    **{f"rag_loss_{m}": rag_loss(m) for m in ("sequence", "token")},
    "greedy_answers": greedy_answers,
    **{f"finetune_{p}": finetune(p) for p in ("bf16", "fp16")},
    "train_retriever_fp16": train_retriever_fp16,
    "checkpoint_to_cpu": checkpoint_to_cpu,
}


def main() -> None:
    args, where = parse([Args, DeviceConfig], description=__doc__)
    if args.json:
        check_output_parent(args.json)
    names = [n for n in args.only.split(",") if n] or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        from rag.common.errors import UserError

        raise UserError(f"--only: unknown check(s) {', '.join(unknown)} (one of {', '.join(CHECKS)})")
    device = where.resolve()
    results = {}
    for name in names:
        start = time.perf_counter()
        try:
            status, detail = "PASS", CHECKS[name](device)
        except Skip as why:
            status, detail = "SKIP", str(why)
        except Exception as err:  # noqa: BLE001 - every failure is reported, the rest still run
            status, detail = "FAIL", f"{type(err).__name__}: {err}"
            traceback.print_exc(file=sys.stderr)
        seconds = time.perf_counter() - start
        results[name] = {"status": status, "detail": detail, "seconds": round(seconds, 2)}
        print(f"{status} {name} ({seconds:.1f}s): {detail}", flush=True)
    summary = {"device": str(device), "torch": torch.__version__,
               "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(device)
               if device.type == "cuda" else None, "checks": results}
    if args.json:
        write_json(args.json, summary)
    if any(r["status"] == "FAIL" for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    run(main)
