"""Sharded search under torch.distributed, as torchrun starts it: two gloo processes on CPU, each
holding one shard. The oracle is the whole index: every search and an evaluation equal its
results exactly (``shard_worker.py``), and ``ragqa eval-retrieval`` under torchrun reports what one
process reports on the whole index. Bad layouts give the same one-line error on both processes,
and neither waits for the other (every launch has a timeout)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from retriever.build import BuildConfig, build_index
from retriever.encode import EncodeConfig
from retriever.encoder import Encoder
from retriever.evaluation import evaluate_retrieval
from retriever.index import DenseIndex
from retriever.questions import read_questions
from retriever.search import Retriever
from retriever.shards import split_index
from retriever.sparse import SparseConfig
from tests.distributed.test_distributed import torchrun

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, tiny_encoder_dir, corpus_jsonl) -> dict[str, Path]:
    """The whole index (with BM25), its 2 and 3 shards, and 2 shards whose second is unreadable."""
    tmp = tmp_path_factory.mktemp("sharded")
    whole = build_index(corpus_jsonl, Encoder.from_pretrained(str(tiny_encoder_dir)), tmp / "whole",
                        BuildConfig(encode=EncodeConfig(progress=False), sparse=SparseConfig()))
    split_index(whole, tmp / "two", 2)
    split_index(whole, tmp / "three", 3)
    shutil.copytree(tmp / "two", tmp / "broken")
    (tmp / "broken" / "shard-00001-of-00002" / "index.faiss").write_bytes(b"not faiss")
    return {name: tmp / name for name in ("whole", "two", "three", "broken")}


def test_two_processes_search_their_shards_as_one_index(layouts, tiny_encoder_dir,
                                                        squad_questions, tmp_path):
    args = [tiny_encoder_dir, *(layouts[n] for n in ("whole", "two", "three", "broken")),
            squad_questions, tmp_path]
    run = torchrun("shard_worker.py", args, nproc=2, tmp=tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["shard"] for r in reports] == [[0], [1]]
    assert all(r["checks"] == 15 for r in reports)
    assert reports[0]["evaluation"] == reports[1]["evaluation"]
    for r in reports:  # the same line on both: the process count, and the rank that failed
        assert "3 shards need 1 process or a multiple of 3; this job has 2" in r["three"]
        assert r["broken"].startswith("rank 1: ") and "shard-00001-of-00002" in r["broken"]


def test_eval_retrieval_under_torchrun_reports_what_one_process_does(layouts, squad_questions,
                                                                     tmp_path):
    script = ROOT / "scripts" / "eval_retrieval.py"
    two = torchrun(script, ["--index", layouts["two"], "--questions", squad_questions,
                            "--ks", "1,3", "--json", tmp_path / "two.json"], nproc=2, tmp=tmp_path)
    assert two.returncode == 0, two.stderr[-4000:]
    whole = DenseIndex.load(layouts["whole"])  # the same, in this one process, on the whole index
    one = evaluate_retrieval(Retriever(Encoder.from_pretrained(whole.manifest["encoder"]["name"]),
                                       whole), read_questions(squad_questions), [1, 3],
                             progress=False)
    two_metrics = json.loads((tmp_path / "two.json").read_text())
    assert {k: two_metrics[k] for k in one} == one and two_metrics["retrieval"]["mode"] == "hybrid"
    bad = torchrun(script, ["--index", layouts["three"], "--questions", squad_questions,
                            "--json", tmp_path / "bad.json"], nproc=2, tmp=tmp_path)
    # one line per process (their writes may interleave on the shared pipe)
    lines = re.findall(r"error: (.*?\(launch with)", bad.stdout + bad.stderr)
    assert bad.returncode != 0 and len(lines) == 2, bad.stderr[-4000:]
    assert all("3 shards need 1 process or a multiple of 3" in x for x in lines)
    assert not re.search(r'File ".*/(retriever|rag)/', bad.stderr)  # torchrun's report alone
    assert not (tmp_path / "bad.json").exists()

