"""Training under torch.distributed, as torchrun starts it: two gloo processes on CPU.

DPR training and RAG fine-tuning synchronise: both ranks end with bit-identical weights, equal
(within float tolerance) to one process trained with the same global batch. A question's loss does
not depend on the rest of its batch (RAG's never does; DPR's when every passage is a candidate,
``negatives="corpus"``), and rank r's batch b holds the global batch's questions r, r+2, ...: so
the two runs see the same examples.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from retriever.build import BuildConfig, build_index
from retriever.encode import EncodeConfig
from retriever.encoder import Encoder

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(worker: str, args: list, nproc: int, tmp: Path) -> subprocess.CompletedProcess:
    scratch = tmp / "torchrun-tmp"  # torchrun's own temporary files, removed with tmp
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TMPDIR": str(scratch),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    cmd = [shutil.which("torchrun") or f"{sys.executable} -m torch.distributed.run",
           f"--nproc_per_node={nproc}", f"--master_port={free_port()}", "--master_addr=127.0.0.1",
           str(HERE / worker), *map(str, args)]
    cmd = [*cmd[0].split(), *cmd[1:]]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, tiny_encoder_dir, corpus_jsonl) -> Path:
    out = tmp_path_factory.mktemp("dist") / "index"
    build_index(corpus_jsonl, Encoder.from_pretrained(str(tiny_encoder_dir)), out,
                BuildConfig(encode=EncodeConfig(progress=False)))
    return out


@pytest.fixture(scope="module")
def rag_dir(tmp_path_factory, tiny_encoder_dir, index_dir) -> Path:
    """A tiny RAG model directory (the tiny BERT as question encoder, a BART warm-started from it)."""
    from generator.warmstart import warm_start_bart
    from rag.pipeline import RagConfig, RagModel
    from retriever.index import DenseIndex

    tmp = tmp_path_factory.mktemp("dist-rag")
    generator, tokenizer = warm_start_bart(tiny_encoder_dir, tmp / "bart", cross_attention="copy_self")
    config = RagConfig(k=2, max_input_length=64, max_answer_length=8, num_beams=1,
                       index=str(index_dir))
    RagModel(Encoder.from_pretrained(str(tiny_encoder_dir)), generator, tokenizer,
             DenseIndex.load(index_dir), config).save_pretrained(tmp / "model")
    return tmp / "model"


def two_then_one(worker: str, args: list, global_batch: int, tmp: Path) -> tuple[dict, dict]:
    """Weights after 2 processes (checked bit-identical across ranks) and after 1, same batch."""
    two = torchrun(worker, [*args, tmp, global_batch // 2], nproc=2, tmp=tmp)
    assert two.returncode == 0, two.stderr[-4000:]
    rank0, rank1 = (load_file(str(tmp / f"rank{r}.safetensors")) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key  # bit-identical: gradients were averaged
    one = torchrun(worker, [*args, tmp, global_batch], nproc=1, tmp=tmp)
    assert one.returncode == 0, one.stderr[-4000:]
    return rank0, load_file(str(tmp / "rank0.safetensors"))


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


def test_dpr_training_synchronises_across_two_processes(tiny_encoder_dir, index_dir,
                                                        squad_questions, tmp_path):
    two, one = two_then_one("dpr_worker.py", [tiny_encoder_dir, index_dir, squad_questions], 4,
                            tmp_path)
    from retriever.questions import read_questions

    encoder = Encoder.from_pretrained(str(tiny_encoder_dir)).eval()
    with torch.no_grad():
        tok = encoder.tokenize([q.question for q in read_questions(squad_questions)])
        start = encoder(tok["input_ids"], tok["attention_mask"])
    assert_same_training(two, one, start)


def test_rag_finetuning_synchronises_across_two_processes(rag_dir, index_dir, squad_questions,
                                                          tmp_path):
    from rag.pipeline import RagModel
    from retriever.index import DenseIndex
    from retriever.questions import read_questions
    from retriever.shards import split_index

    two, one = two_then_one("rag_worker.py", [rag_dir, squad_questions], 4, tmp_path)
    # the same on two shards, one per process, searched together: the very same weights
    split_index(DenseIndex.load(index_dir), tmp_path / "shards", 2)
    (tmp_path / "sharded").mkdir()
    sharded = torchrun("rag_worker.py", [rag_dir, squad_questions, tmp_path / "sharded", 2,
                                         tmp_path / "shards"], nproc=2, tmp=tmp_path)
    assert sharded.returncode == 0, sharded.stderr[-4000:]
    for rank in (0, 1):
        weights = load_file(str(tmp_path / "sharded" / f"rank{rank}.safetensors"))
        assert all(torch.equal(weights[key], two[key]) for key in two), rank
    # and the benchmark, the questions shared by the two processes, predicts the same answers
    train = read_questions(squad_questions)
    predictions = [json.loads((d / "predictions-2.json").read_text())
                   for d in (tmp_path, tmp_path / "sharded")]
    assert predictions[0] == predictions[1] and predictions[0][-1] == len(train)
    with torch.no_grad():
        start = RagModel.from_pretrained(rag_dir).eval().loss([q.question for q in train],
                                                              [q.answers[0] for q in train])[1]
    assert_same_training(two, one, start)
