"""``ragqa ask``, ``finetune`` and ``export`` (and scripts/pack_starter.py) as a user runs them, on a
tiny RAG model (random weights).

Each run is its own forked process, with its own stdin (the ``run_scripts`` fixture,
``conftest.py``). A bad input must exit with status 2 and exactly one ``error:`` line, never a
traceback.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from generator.warmstart import warm_start_bart
from rag.config import DecodeConfig, RagConfig
from rag.model import RagModel
from retriever.batch_encode import EncodeConfig
from retriever.build import BuildConfig, build_index
from retriever.encoder import Encoder
from retriever.index import DenseIndex

PRELOAD = ["accelerate", "rag.default", "rag.model", "rag.train", "generator.warmstart",
           "retriever.build", "transformers:AutoConfig,AutoModel,AutoTokenizer,"
           "BartForConditionalGeneration,HfArgumentParser,get_linear_schedule_with_warmup"]


@pytest.fixture(scope="module")
def runs(run_scripts, tmp_path_factory, tiny_encoder_dir, tiny_encoder_dir_16, corpus_jsonl,
         squad_questions):
    """A tiny model directory, then every scenario run once; returns ``({name: Run}, tmp)``."""
    tmp = tmp_path_factory.mktemp("rag-scripts")
    encoder = Encoder.from_pretrained(str(tiny_encoder_dir), max_length=64)  # 128 positions
    quiet = BuildConfig(encode=EncodeConfig(progress=False))
    build_index(corpus_jsonl, encoder, tmp / "idx", quiet)
    # same dimension, other identity (mean pooling), and another dimension
    build_index(corpus_jsonl, Encoder.from_pretrained(str(tiny_encoder_dir), pooling="mean"),
                tmp / "idx-mean", quiet)
    build_index(corpus_jsonl, Encoder.from_pretrained(str(tiny_encoder_dir_16)), tmp / "idx-16",
                quiet)
    generator, tokenizer = warm_start_bart(tiny_encoder_dir, tmp / "bart",
                                           cross_attention="copy_self")
    config = RagConfig(k=3, max_input_length=64, decode=DecodeConfig(num_beams=1, max_length=8),
                       index=str(tmp / "idx"))
    RagModel(encoder, generator, tokenizer, DenseIndex.load(tmp / "idx"), config).save_pretrained(
        tmp / "model")

    hybrid = DenseIndex.load(tmp / "idx")  # the same index with a BM25 side
    hybrid.add_sparse(tokenizer=encoder.tokenizer)
    hybrid.save(tmp / "idx-hyb")

    closed = RagConfig(mode="closed_book", max_input_length=64,
                       decode=DecodeConfig(num_beams=1, max_length=8))
    RagModel(None, generator, tokenizer, None, closed).save_pretrained(tmp / "closed")

    model = tmp / "model"
    q = "What is the capital of France?"
    scenarios = {
        "ask_json": ["ragqa", "ask", q, "--model", model, "--format", "json", "--json",
                     tmp / "asked.json"],
        "ask_plain": ["ragqa", "ask", q, "--model", model],
        "ask_mmap": ["ragqa", "ask", q, "--model", model, "--format", "json", "--mmap"],
        "ask_stdin": ["ragqa", "ask", "--model", model, "--format", "json"],
        "ask_empty": ["ragqa", "ask", "", "--model", model],
        "ask_k_too_large": ["ragqa", "ask", q, "--model", model, "--k", "1000"],
        "ask_other_encoder": ["ragqa", "ask", q, "--model", model, "--index", tmp / "idx-mean"],
        "ask_other_dim": ["ragqa", "ask", q, "--model", model, "--index", tmp / "idx-16"],
        "ask_unknown_flag": ["ragqa", "ask", q, "--model", model, "--kk", "3"],
        "help_ask": ["ragqa", "ask", "--help"],
        "help_finetune": ["ragqa", "finetune", "--help"],
        "finetune": ["ragqa", "finetune", "--train", squad_questions, "--out", tmp / "ft",
                     "--generator", tmp / "bart", "--question_encoder", tiny_encoder_dir,
                     "--index", tmp / "idx", "--max_steps", "1", "--batch_size", "2", "--k", "2",
                     "--max_input_length", "64", "--max_answer_length", "8", "--json", tmp / "ft.json"],
        "ask_finetuned": ["ragqa", "ask", q, "--model", tmp / "ft", "--format", "json"],
        "finetune_copy": ["ragqa", "finetune", "--train", squad_questions, "--out", tmp / "ft-copy",
                          "--generator", tmp / "bart", "--copy_head", "--index", tmp / "idx",
                          "--question_encoder", tiny_encoder_dir, "--max_steps", "2",
                          "--batch_size", "2", "--k", "2", "--max_input_length", "64",
                          "--max_answer_length", "8", "--lr", "1e-3"],
        "ask_copy_spans": ["ragqa", "ask", q, "--model", tmp / "ft-copy", "--format", "json",
                           "--constrain", "spans"],
        "ask_closed_spans": ["ragqa", "ask", q, "--model", tmp / "closed", "--constrain", "spans"],
        "ask_bad_constrain": ["ragqa", "ask", q, "--model", model, "--constrain", "words"],
        "ask_hybrid_no_sparse": ["ragqa", "ask", q, "--model", model, "--retrieval", "hybrid"],
        "ask_rrf": ["ragqa", "ask", q, "--model", model, "--index", tmp / "idx-hyb", "--fusion", "rrf"],
        "ask_sparse": ["ragqa", "ask", q, "--model", model, "--index", tmp / "idx-hyb", "--retrieval",
                       "sparse", "--format", "json"],
        "finetune_bad_weight": ["ragqa", "finetune", "--train", squad_questions, "--out", tmp / "ft-bad",
                                "--index", tmp / "idx-hyb", "--fusion_weight", "inf"],
        "finetune_hybrid": ["ragqa", "finetune", "--train", squad_questions, "--out", tmp / "ft-hyb",
                            "--generator", tmp / "bart", "--question_encoder", tiny_encoder_dir,
                            "--index", tmp / "idx-hyb", "--max_steps", "1", "--batch_size", "2",
                            "--k", "2", "--max_input_length", "64", "--max_answer_length", "8",
                            "--fusion_weight", "0.4", "--candidates", "4"],
        "ask_hybrid": ["ragqa", "ask", q, "--model", tmp / "ft-hyb", "--format", "json"],
        "pack": ["pack_starter.py", "--model", model, "--out", tmp / "packed", "--k", "2",
                 "--question_backbone_from", tiny_encoder_dir, "--constrain", "spans"],
        "pack_too_big": ["pack_starter.py", "--model", model, "--out", tmp / "packed-big",
                         "--question_backbone_from", tiny_encoder_dir, "--max_mb", "0.01"],
        "pack_trained_tower": ["pack_starter.py", "--model", tmp / "ft", "--out",
                               tmp / "packed-ft", "--question_backbone_from", tiny_encoder_dir],
        # transformers' RAG: the tiny model ([CLS] pooling) exported, then used as a checkpoint
        "export": ["ragqa", "export", "--model", model, "--out", tmp / "exported"],
        "ask_transformers": ["ragqa", "ask", q, "--model", tmp / "exported", "--index", tmp / "idx",
                             "--format", "json"],
        "finetune_transformers": ["ragqa", "finetune", "--train", squad_questions, "--out",
                                  tmp / "ft-hf", "--generator", tmp / "exported", "--index",
                                  tmp / "idx", "--max_steps", "1", "--batch_size", "2", "--k", "2",
                                  "--max_input_length", "64", "--max_answer_length", "8"],
        "import_export": ["ragqa", "index", "--corpus", tmp / "exported" / "passages",
                          "--use_embeddings", "--encoder", tiny_encoder_dir, "--out",
                          tmp / "idx-imported", "--no_progress"],
        "export_spans": ["ragqa", "export", "--model", model, "--out", tmp / "exp-spans",
                         "--constrain", "spans"],
        "export_hybrid": ["ragqa", "export", "--model", model, "--index", tmp / "idx-hyb",
                          "--out", tmp / "exp-hybrid"],
        "ask_transformers_no_index": ["ragqa", "ask", q, "--model", tmp / "exported"],
        "help_export_transformers": ["ragqa", "export", "--help"],
    }
    stdin = {"ask_stdin": "What is the capital of France?\n\nWho created Python?\n"}
    return run_scripts(scenarios, tmp / "logs", preload=PRELOAD, stdin=stdin,
                       env={"RAGQA_CACHE": str(tmp / "logs" / "cache")}), tmp


def check_answer(line: str, question: str, k: int) -> None:
    answer = json.loads(line)
    assert set(answer) == {"question", "answer", "score", "passages"}
    assert answer["question"] == question and isinstance(answer["answer"], str)
    assert isinstance(answer["score"], float)
    assert len(answer["passages"]) == k
    for p in answer["passages"]:
        assert set(p) == {"id", "title", "text", "score"}
    scores = [p["score"] for p in answer["passages"]]
    assert scores == sorted(scores, reverse=True)


def test_ask_json(runs):
    proc = runs[0]["ask_json"]
    assert proc.returncode == 0, proc
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc
    check_answer(lines[0], "What is the capital of France?", k=3)
    assert proc.stderr == ""  # a successful ask prints nothing else
    mapped = runs[0]["ask_mmap"]  # the index memory-mapped: the same answer and passages
    assert mapped.returncode == 0 and mapped.stdout == proc.stdout, mapped
    written = json.loads((runs[1] / "asked.json").read_text())  # --json PATH: the same answers
    assert written == [json.loads(lines[0])]


def test_ask_plain_lists_the_passages(runs):
    proc = runs[0]["ask_plain"]
    assert proc.returncode == 0, proc
    lines = proc.stdout.splitlines()
    assert len(lines) == 4 and [line.lstrip()[:3] for line in lines[1:]] == ["[1]", "[2]", "[3]"]


def test_ask_reads_one_question_per_line_from_stdin(runs):
    proc = runs[0]["ask_stdin"]
    assert proc.returncode == 0, proc
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc
    check_answer(lines[0], "What is the capital of France?", k=3)
    check_answer(lines[1], "Who created Python?", k=3)


@pytest.mark.parametrize("name,fragments", [
    ("ask_empty", ["question 0 is empty"]),
    ("ask_k_too_large", ["k=1000", "larger than the index"]),
    ("ask_other_encoder", ["fingerprint"]),
    ("ask_other_dim", ["dim 16", "dim 32"]),
    ("ask_closed_spans", ["constrain 'spans'", "closed_book"]),
    ("ask_bad_constrain", ["--constrain", "'words'", "spans"]),  # refused by the parser
    ("ask_hybrid_no_sparse", ["--retrieval hybrid", "sparse side"]),
    ("ask_rrf", ["rrf", "--fusion linear"]),
    ("finetune_bad_weight", ["--fusion_weight", "inf"]),
    ("export_spans", ["span-constrained", "--constrain none"]),
    ("export_hybrid", ["hybrid retrieval", "--retrieval dense"]),
    ("ask_transformers_no_index", ["exported", "transformers RAG checkpoint", "--index DIR"]),
])
def test_bad_input_is_one_error_line(runs, name, fragments):
    proc = runs[0][name]
    error = proc.error_line()
    for fragment in fragments:
        assert fragment in error, error
    assert proc.stdout == ""


def test_unknown_flag_is_a_usage_error(runs):
    proc = runs[0]["ask_unknown_flag"]
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr and "unrecognized arguments: --kk" in proc.stderr, proc


@pytest.mark.parametrize("script", ["ask", "finetune", "export_transformers"])
def test_help(runs, script):
    proc = runs[0][f"help_{script}"]
    assert proc.returncode == 0, proc
    assert "usage:" in proc.stdout and "Example" in proc.stdout


def test_export_to_transformers_and_back(runs):
    results, tmp = runs
    for name in ("export", "ask_transformers", "finetune_transformers"):
        assert results[name].returncode == 0, results[name]
    out = tmp / "exported"
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "rag" and config["n_docs"] == 3
    assert config["index_name"] == "custom" and config["passages_path"] == str(out / "passages")
    assert (out / "passages.faiss").is_file() and (out / "question_encoder_tokenizer").is_dir()
    # loaded back as a transformers checkpoint: the same passages, scored the same
    ours, back = json.loads(results["ask_json"].stdout), json.loads(results["ask_transformers"].stdout)
    assert [p["id"] for p in back["passages"]] == [p["id"] for p in ours["passages"]]
    assert [p["score"] for p in back["passages"]] == pytest.approx(
        [p["score"] for p in ours["passages"]], abs=1e-4)
    assert "pairing question encoder" in results["ask_transformers"].stderr
    # its RagRetriever passages imported back as an index, without re-encoding
    assert results["import_export"].returncode == 0, results["import_export"]
    imported, original = DenseIndex.load(tmp / "idx-imported"), DenseIndex.load(tmp / "idx")
    assert list(imported.passages["id"]) == list(original.passages["id"])
    rows = np.arange(len(original))
    np.testing.assert_allclose(imported.vectors(rows), original.vectors(rows), atol=1e-6)
    # fine-tuned from it: the DPR question encoder and the BART generator carry on
    saved = json.loads((tmp / "ft-hf" / "question_encoder" / "config.json").read_text())
    assert saved["model_type"] == "dpr"


def test_finetune_writes_a_model_directory(runs):
    results, tmp = runs
    proc = results["finetune"]
    assert proc.returncode == 0, proc
    out = tmp / "ft"
    assert f"model -> {out}" in proc.stdout
    saved = json.loads((out / "rag_config.json").read_text())
    assert saved["index"] == str(tmp / "idx") and saved["k"] == 2 and saved["mode"] == "sequence"
    assert saved["decode"]["max_length"] == 8  # --max_answer_length, the held DecodeConfig's
    logged = json.loads((tmp / "ft.json").read_text())["config"]
    assert logged["optim"]["batch_size"] == 2 and logged["optim"]["lr"] == 3e-5  # finetune's default
    assert "mmap" not in saved["retrieval"]  # how an index is loaded is not the model's
    assert (out / "question_encoder").is_dir() and (out / "generator" / "config.json").is_file()
    assert json.loads((out / "train_log.json").read_text())["steps"] == 1
    assert not (tmp / "ft.checkpoint").exists()
    asked = results["ask_finetuned"]  # the fine-tuned model answers from its own index
    assert asked.returncode == 0, asked
    check_answer(asked.stdout.strip(), "What is the capital of France?", k=2)


def test_finetune_copy_head_then_ask_with_spans(runs):
    results, tmp = runs
    proc = results["finetune_copy"]
    assert proc.returncode == 0, proc
    config = json.loads((tmp / "ft-copy" / "generator" / "config.json").read_text())
    assert config["copy_head"] is True
    asked = results["ask_copy_spans"]
    assert asked.returncode == 0, asked
    answer = json.loads(asked.stdout)
    check_answer(asked.stdout.strip(), "What is the capital of France?", k=2)
    inputs = " ".join(f"{p['title']} / {p['text']} // {answer['question']}".lower()
                      for p in answer["passages"])
    words = answer["answer"].lower().split()
    assert words and all(w.strip(".,;:!?'\"()") in inputs for w in words), answer["answer"]


def test_finetune_and_ask_through_the_hybrid(runs):
    results, tmp = runs
    proc = results["finetune_hybrid"]
    assert proc.returncode == 0, proc
    saved = json.loads((tmp / "ft-hyb" / "rag_config.json").read_text())
    assert saved["retrieval"] == {"retrieval": "", "fusion": "", "fusion_weight": 0.4,
                                  "candidates": 4}
    model = RagModel.from_pretrained(tmp / "ft-hyb")
    assert model.retriever.mode == "hybrid" and model.retriever.fusion.fusion_weight == 0.4
    asked = results["ask_hybrid"]
    assert asked.returncode == 0, asked
    check_answer(asked.stdout.strip(), "What is the capital of France?", k=2)
    sparse = results["ask_sparse"]  # BM25 scores over the question's best: the first is 1
    assert sparse.returncode == 0, sparse
    assert json.loads(sparse.stdout)["passages"][0]["score"] == pytest.approx(1.0)


def test_pack_starter(runs):
    results, tmp = runs
    proc = results["pack"]
    assert proc.returncode == 0, proc
    packed = tmp / "packed"
    saved = json.loads((packed / "rag_config.json").read_text())
    assert saved["index"] == "" and saved["question_encoder"] == ""
    assert saved["k"] == 2 and saved["decode"]["constrain"] == "spans"
    assert not (packed / "question_encoder" / "model.safetensors").exists()
    model = RagModel.from_pretrained(packed, tmp / "idx")
    original = RagModel.from_pretrained(tmp / "model")
    tok = model.question_encoder.tokenize(["What is the capital of France?"])
    torch.testing.assert_close(model.question_encoder(**tok), original.question_encoder(**tok))
    big = results["pack_too_big"]
    assert "more than --max_mb" in big.error_line() and not (tmp / "packed-big").exists()
    assert not list(tmp.glob(".packed-big*"))  # nothing half-written is left
    trained = results["pack_trained_tower"]  # fine-tuned question tower: weights must be stored
    assert "weights differ" in trained.error_line() and not (tmp / "packed-ft").exists()
