"""torch.distributed as torchrun starts it: two gloo processes on CPU, in one launch
(``worker.py``; each launch costs seconds of imports), with a timeout so nothing can hang.

- DPR training and RAG fine-tuning synchronise: both ranks end with bit-identical weights, equal
  (within float tolerance) to one process, this one, trained with the same global batch. A
  question's loss does not depend on the rest of its batch (RAG's never does; DPR's when every
  passage is a candidate, ``negatives="corpus"``), and rank r's batch b holds the global batch's
  questions r, r+2, ...: so the two runs see the same examples.
- ``finetune --retrieval sparse`` runs its steps on two processes: the question encoder, which BM25
  retrieval never calls, does not train (DDP would wait for its gradients at step 2).
- Sharded search: every search and an evaluation equal the whole index's exactly, and
  ``ragqa eval-retrieval`` reports what one process reports on the whole index. Bad layouts give
  the same one-line error on both processes, and neither waits for the other.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rag.common.loop import make_accelerator
from rag.common.questions import read_questions
from rag.model import RagModel
from retriever.batch_encode import EncodeConfig
from retriever.build import BuildConfig, build_index
from retriever.encoder import Encoder
from retriever.evaluation import evaluate_retrieval
from retriever.index import DenseIndex
from retriever.search import Retriever
from retriever.shards import split_index
from retriever.sparse import SparseConfig
from tests.distributed.parts import dpr_part, rag_part

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def torchrun(worker: str, args: list, nproc: int, tmp: Path) -> subprocess.CompletedProcess:
    scratch = tmp / "torchrun-tmp"  # torchrun's own temporary files, removed with tmp
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TMPDIR": str(scratch),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    cmd = [shutil.which("torchrun") or f"{sys.executable} -m torch.distributed.run",
           f"--nproc_per_node={nproc}", "--standalone", str(HERE / worker), *map(str, args)]
    cmd = [*cmd[0].split(), *cmd[1:]]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_encoder_dir, corpus_jsonl) -> dict[str, Path]:
    """The whole index (with BM25), its 2 and 3 shards, 2 shards whose second is unreadable, and
    a tiny RAG model (the tiny BERT as question encoder, a BART warm-started from it)."""
    from generator.warmstart import warm_start_bart
    from rag.config import DecodeConfig, RagConfig

    tmp = tmp_path_factory.mktemp("dist")
    encoder = Encoder.from_pretrained(str(tiny_encoder_dir))
    whole = build_index(corpus_jsonl, encoder, tmp / "whole",
                        BuildConfig(encode=EncodeConfig(progress=False), sparse=SparseConfig()))
    split_index(whole, tmp / "two", 2)
    split_index(whole, tmp / "three", 3)
    shutil.copytree(tmp / "two", tmp / "broken")
    (tmp / "broken" / "shard-00001-of-00002" / "index.faiss").write_bytes(b"not faiss")
    generator, tokenizer = warm_start_bart(tiny_encoder_dir, tmp / "bart", cross_attention="copy_self")
    config = RagConfig(k=2, max_input_length=64, decode=DecodeConfig(num_beams=1, max_length=8),
                       index=str(tmp / "whole"))
    RagModel(encoder, generator, tokenizer, whole, config).save_pretrained(tmp / "rag")
    return {name: tmp / name for name in ("whole", "two", "three", "broken", "rag")} | {"": tmp}


@pytest.fixture(scope="module")
def job(built, tiny_encoder_dir, squad_questions, tmp_path_factory):
    """The one torchrun job, its output folder, and this process's one-process reference runs."""
    out = tmp_path_factory.mktemp("job")
    run = torchrun("worker.py", [tiny_encoder_dir, built["whole"], built["rag"], built["two"],
                                 built[""], squad_questions, out], nproc=2, tmp=out)
    assert all((out / f"done-{r}").exists() for r in (0, 1)), run.stderr[-4000:]
    reference = {"dpr": dpr_part(tiny_encoder_dir, built["whole"], squad_questions, 4),
                 "rag": rag_part(built["rag"], squad_questions, out / "reference", 4,
                                 make_accelerator())[0]}
    return run, out, reference


def both_ranks(folder: Path) -> dict[str, torch.Tensor]:
    """Rank 0's weights, after checking rank 1's are bit-identical (gradients were averaged)."""
    rank0, rank1 = (load_file(str(folder / f"rank{r}.safetensors")) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    return rank0


def assert_same_training(two: dict, one: dict, start: torch.Tensor) -> None:
    """The same model, judged by what it computes (``__outputs__``). Weights themselves are not
    compared: for a gradient that is zero up to rounding, AdamW's first steps are +-lr whichever
    way the rounding went, so summing gradients in another order moves such weights by up to
    2 lr while changing no output. Outputs (NLLs of about 10) are compared to a relative 1e-4:
    weights that agree to about 1e-6 can still swap two passages whose scores are as close, which
    moves a question's NLL by about 1e-4; ranks that did not average gradients differ by about
    as much as training moved them (over 1e-2)."""
    gap = (two["__outputs__"] - one["__outputs__"]).abs().max().item()
    moved = (one["__outputs__"] - start).abs().max().item()
    assert torch.allclose(two["__outputs__"], one["__outputs__"], rtol=1e-4, atol=1e-4), gap
    assert moved > 1e-2, moved  # it did train


def test_dpr_training_synchronises_across_two_processes(job, tiny_encoder_dir,
                                                        squad_questions):
    _, out, reference = job
    encoder = Encoder.from_pretrained(str(tiny_encoder_dir)).eval()
    with torch.no_grad():
        tok = encoder.tokenize([q.question for q in read_questions(squad_questions)])
        start = encoder(tok["input_ids"], tok["attention_mask"])
    assert_same_training(both_ranks(out / "dpr"), reference["dpr"], start)


def test_rag_finetuning_synchronises_across_two_processes(job, built, squad_questions):
    _, out, reference = job
    two = both_ranks(out / "rag")
    # the same on two shards, one per process, searched together: the very same weights
    sharded = both_ranks(out / "rag-sharded")
    assert all(torch.equal(sharded[key], two[key]) for key in two)
    # and the benchmark, the questions shared by the two processes, predicts the same answers
    train = read_questions(squad_questions)
    predictions = [json.loads((out / d / "predictions.json").read_text())
                   for d in ("rag", "rag-sharded")]
    assert predictions[0] == predictions[1] and predictions[0][-1] == len(train)
    with torch.no_grad():
        start = RagModel.from_pretrained(built["rag"]).eval().loss(
            [q.question for q in train], [q.answers[0] for q in train])[1]
    assert_same_training(two, reference["rag"], start)


def test_two_processes_search_their_shards_as_one_index(job):
    reports = [json.loads((job[1] / "search" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["shard"] for r in reports] == [[0], [1]]
    assert all(r["checks"] == 15 for r in reports)
    assert reports[0]["evaluation"] == reports[1]["evaluation"]
    for r in reports:  # the same line on both: the process count, and the rank that failed
        assert "3 shards need 1 process or a multiple of 3; this job has 2" in r["three"]
        assert r["broken"].startswith("rank 1: ") and "shard-00001-of-00002" in r["broken"]


def test_eval_retrieval_under_torchrun_reports_what_one_process_does(job, built,
                                                                     squad_questions):
    run, out, _ = job
    whole = DenseIndex.load(built["whole"])  # the same, in this one process, on the whole index
    one = evaluate_retrieval(Retriever(Encoder.from_pretrained(whole.manifest["encoder"]["name"]),
                                       whole), read_questions(squad_questions), [1, 3],
                             progress=False)
    two = json.loads((out / "eval.json").read_text())
    assert {k: two[k] for k in one} == one and two["retrieval"]["mode"] == "hybrid"
    # three shards for two processes: one line per process (their writes may interleave on the
    # shared pipe), exit status 2, no traceback of ours, no output written
    lines = re.findall(r"error: (.*?\(launch with)", run.stdout + run.stderr)
    assert run.returncode != 0 and len(lines) == 2, run.stderr[-4000:]
    assert all("3 shards need 1 process or a multiple of 3" in x for x in lines)
    assert not re.search(r'File ".*/(retriever|rag)/', run.stderr)  # torchrun's report alone
    assert not (out / "bad.json").exists()


def test_sparse_finetune_on_two_processes(job):
    _, out, _ = job
    assert [(out / f"sparse-{r}.txt").read_text() for r in (0, 1)] == ["ok", "ok"]
    log = json.loads((out / "sparse-ft" / "train_log.json").read_text())
    assert log["steps"] == 3
