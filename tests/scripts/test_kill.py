"""Killed with SIGKILL mid-run and run again with the same command: the result equals an
uninterrupted run, bit for bit on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

from rag.common.loop import new_progress
from rag.model import RagModel
from retriever.batch_encode import EncodeConfig
from retriever.build import BuildConfig, build_index
from retriever.encoder import Encoder
from retriever.index import DenseIndex

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def ragqa(*args) -> list[str]:
    """The command line ``ragqa ARGS...``, in this interpreter (the console script's entry point)."""
    return [sys.executable, "-c", "from rag.commands import main; main()", *map(str, args)]


def kill_when(cmd: list[str], ready, timeout: float = 300) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds; fail if it ends first."""
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    start = time.monotonic()
    while not ready():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() - start < timeout
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def run_ok(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run ``cmd`` to the end; it must succeed."""
    done = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def progress(state, key: str) -> int:
    """``key`` of a checkpoint's state.json (-1 while there is none, or it is being replaced)."""
    try:
        return json.loads(state.read_text())[key]
    except (ValueError, OSError):
        return -1


def assert_same_tensors(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def test_finetune_killed_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_encoder_dir,
                                                                 corpus_jsonl, squad_questions):
    from generator.warmstart import warm_start_bart

    encoder = Encoder.from_pretrained(str(tiny_encoder_dir), max_length=64)
    build_index(corpus_jsonl, encoder, tmp_path / "idx", BuildConfig(encode=EncodeConfig(progress=False)))
    warm_start_bart(tiny_encoder_dir, tmp_path / "bart", cross_attention="copy_self")

    def command(out):
        return ragqa("finetune", "--train", squad_questions, "--index", tmp_path / "idx",
                     "--question_encoder", tiny_encoder_dir, "--generator", tmp_path / "bart",
                     "--out", out, "--epochs", "30", "--max_steps", "60", "--batch_size", "2",
                     "--save_every", "1", "--k", "2", "--max_input_length", "64",
                     "--max_answer_length", "8", "--lr", "1e-3")

    state = tmp_path / "killed.checkpoint" / "state.json"
    kill_when(command(tmp_path / "killed"), lambda: 3 <= progress(state, "step") < 50)
    assert not (tmp_path / "killed").exists()
    assert json.loads(state.read_text()).keys() == new_progress({}).keys()  # the one schema
    assert "resuming from" in run_ok(command(tmp_path / "killed")).stderr
    run_ok(command(tmp_path / "whole"))
    assert_same_tensors(RagModel.from_pretrained(tmp_path / "killed").state_dict(),
                        RagModel.from_pretrained(tmp_path / "whole").state_dict())
    assert not (tmp_path / "killed.checkpoint").exists()
    DenseIndex.load(tmp_path / "idx")  # untouched and loadable


def test_train_retriever_killed_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_encoder_dir,
                                                                        corpus_jsonl,
                                                                        squad_questions):
    from safetensors.torch import load_file

    encoder = Encoder.from_pretrained(str(tiny_encoder_dir), max_length=64)
    build_index(corpus_jsonl, encoder, tmp_path / "idx", BuildConfig(encode=EncodeConfig(progress=False)))

    def command(out):  # the lexical head and pseudo-questions: every saved part is exercised
        return ragqa("train-retriever", "--train", squad_questions, "--index", tmp_path / "idx",
                     "--out", out, "--epochs", "40", "--batch_size", "2", "--save_every", "1",
                     "--negatives", "corpus", "--lexical_head", "--pseudo_queries", "1",
                     "--lr", "1e-3")

    state = tmp_path / "killed.checkpoint" / "state.json"
    kill_when(command(tmp_path / "killed"), lambda: 1 <= progress(state, "epoch") < 30)
    saved = json.loads(state.read_text())  # the one schema, counted in updates as finetune's
    assert saved.keys() == new_progress({}).keys() and saved["step"] >= saved["epoch"]
    assert "resuming from" in run_ok(command(tmp_path / "killed")).stderr
    run_ok(command(tmp_path / "whole"))
    for name in ("model.safetensors", "lexical_head.safetensors"):
        assert_same_tensors(load_file(tmp_path / "killed" / name), load_file(tmp_path / "whole" / name))
    assert not (tmp_path / "killed.checkpoint").exists()


def test_build_index_killed_then_rerun_equals_an_uninterrupted_build(tmp_path, tiny_encoder_dir,
                                                                      passages):
    import numpy as np

    corpus = tmp_path / "corpus.tsv"
    rows = [f"{i}-{p['id']}\t{p['text']} ({i})\t{p['title']}\n"
            for i in range(1500) for p in passages]  # 12,000 passages
    corpus.write_text("id\ttext\ttitle\n" + "".join(rows))

    def command(out):
        return ragqa("index", "--corpus", corpus, "--encoder", tiny_encoder_dir, "--out",
                     out, "--shard_size", "256", "--batch_size", "16", "--no_progress")

    work = tmp_path / "killed.encoding"
    kill_when(command(tmp_path / "killed"), lambda: len(list(work.glob("shard-*.npy"))) >= 2)
    assert not (tmp_path / "killed").exists()
    for out in ("killed", "whole"):
        stderr = run_ok(command(tmp_path / out)).stderr
        assert ("resuming" in stderr) == (out == "killed")  # the rerun kept the shards on disk
    got, want = DenseIndex.load(tmp_path / "killed"), DenseIndex.load(tmp_path / "whole")
    n = len(want)
    assert len(got) == n
    vectors = [index.vectors(np.arange(n)) for index in (got, want)]
    np.testing.assert_array_equal(*vectors)
    queries = vectors[1][:20]
    assert got.search(queries, 5).ids == want.search(queries, 5).ids
    assert not work.exists()
