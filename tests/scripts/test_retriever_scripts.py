"""``ragqa index``, ``ragqa eval-retrieval`` and ``ragqa train-retriever`` as a user runs them.

Each run is its own forked process (the ``run_scripts`` fixture, ``conftest.py``). A bad
input must exit with status 2 and one ``error:`` line, never a traceback.
"""

from __future__ import annotations

import json
import shutil

import pytest

from retriever.batch_encode import EncodeConfig
from retriever.build import BuildConfig, build_index
from retriever.encoder import Encoder
from retriever.sparse import SparseConfig

COMMANDS = ["index", "eval-retrieval", "train-retriever"]
PRELOAD = ["retriever.build", "retriever.evaluation", "retriever.search", "retriever.train",
           "transformers:AutoConfig,AutoModel,AutoTokenizer,BertModel,BertTokenizerFast,HfArgumentParser"]


@pytest.fixture(scope="module")
def runs(run_scripts, tmp_path_factory, tiny_encoder_dir, tiny_encoder_dir_16, corpus_tsv,
         squad_questions, dpr_pair_dirs, passages):
    """Run every scenario once, in order; returns ``({name: Run}, the scenarios' directory)``."""
    tmp = tmp_path_factory.mktemp("scripts")
    # an index built in-process, for the eval failures
    lib_idx = tmp / "lib-idx"
    build_index(corpus_tsv, Encoder.from_pretrained(str(tiny_encoder_dir)), lib_idx,
                BuildConfig(encode=EncodeConfig(progress=False)))
    lib_hyb = tmp / "lib-hyb"  # ... and one with a BM25 side
    build_index(corpus_tsv, Encoder.from_pretrained(str(tiny_encoder_dir)), lib_hyb,
                BuildConfig(encode=EncodeConfig(progress=False), sparse=SparseConfig()))
    no_vocab = tmp / "no-vocab"
    shutil.copytree(lib_hyb, no_vocab)
    (no_vocab / "sparse" / "vocab.index.json").unlink()
    gains_sparse = tmp / "gains-sparse"
    shutil.copytree(lib_idx, gains_sparse)
    no_manifest = tmp / "no-manifest"
    shutil.copytree(lib_idx, no_manifest)
    (no_manifest / "manifest.json").unlink()
    non_utf8 = tmp / "non-utf8.tsv"
    non_utf8.write_bytes(b"id\ttext\ttitle\n1\tok\tT\n2\tcaf\xe9\tT\n")
    duplicates = tmp / "dup.tsv"
    duplicates.write_text("id\ttext\ttitle\n1\tone\tT\n2\ttwo\tT\n1\tthree\tT\n")

    def build(corpus, out):
        return ["ragqa", "index", "--corpus", corpus, "--encoder", tiny_encoder_dir, "--out", out,
                "--no_progress"]

    def evaluate(index, *extra):
        return ["ragqa", "eval-retrieval", "--index", index, "--questions", squad_questions, *extra]

    scenarios = {
        "build_missing_corpus": build(tmp / "nope.tsv", tmp / "out-build_missing_corpus"),
        "build_non_utf8": build(non_utf8, tmp / "out-build_non_utf8"),
        "build_duplicates": build(duplicates, tmp / "out-build_duplicates"),
        "build_bad_dtype": [*build(corpus_tsv, tmp / "out-build_bad_dtype"), "--dtype", "fp8"],
        "eval_k_too_large": evaluate(lib_idx, "--ks", "1,1000"),
        "eval_no_manifest": evaluate(no_manifest, "--ks", "1,2"),
        "eval_other_dim": evaluate(lib_idx, "--ks", "1,2", "--question_encoder", tiny_encoder_dir_16),
        "eval_hybrid_no_sparse": evaluate(lib_idx, "--ks", "1,2", "--retrieval", "hybrid"),
        "eval_negative_weight": evaluate(lib_hyb, "--ks", "1,2", "--fusion_weight", "-0.5"),
        "eval_nan_weight": evaluate(lib_hyb, "--ks", "1,2", "--fusion_weight", "nan"),
        "eval_candidates_below_k": evaluate(lib_hyb, "--ks", "1,5", "--candidates", "2"),
        "eval_missing_sparse_file": evaluate(no_vocab, "--ks", "1,2"),
        "build_add_sparse_and_corpus": ["ragqa", "index", "--add_sparse", lib_idx, "--corpus",
                                        corpus_tsv],
        "train_hybrid_no_sparse": ["ragqa", "train-retriever", "--train", squad_questions, "--index",
                                   lib_idx, "--out", tmp / "out-train_hybrid_no_sparse", "--hybrid",
                                   "--epochs", "1", "--batch_size", "4"],
        **{f"help_{c}": ["ragqa", c, "--help"] for c in COMMANDS},
    }
    idx = tmp / "idx"
    # the happy path, end to end (with a non-default --max_length on purpose)
    scenarios["build"] = [*build(corpus_tsv, idx), "--max_length", "64", "--json", tmp / "build.json"]
    scenarios["eval"] = evaluate(idx, "--ks", "1,2", "--json", tmp / "eval.json", "--results",
                                 tmp / "retrieved.json", "--trec", tmp / "run.trec")
    scenarios["eval_mmap"] = evaluate(idx, "--ks", "1,2", "--mmap", "--json", tmp / "eval-mmap.json")
    # a question encoder trained against the index's (frozen) context encoder is accepted by it
    scenarios["train"] = ["ragqa", "train-retriever", "--train", squad_questions, "--index", idx,
                          "--out", tmp / "qenc", "--epochs", "1", "--batch_size", "4",
                          "--hard_negatives", "0", "--json", tmp / "train.json"]
    scenarios["eval_trained"] = evaluate(idx, "--ks", "1", "--question_encoder", tmp / "qenc")
    scenarios["train_lexical"] = ["ragqa", "train-retriever", "--train", squad_questions, "--index", idx,
                                  "--dev", squad_questions, "--dev_ks", "1,2", "--out", tmp / "qenc-lex",
                                  "--epochs", "1",
                                  "--batch_size", "4", "--negatives", "corpus", "--lexical_head",
                                  "--pseudo_queries", "1", "--json", tmp / "train-lex.json"]
    scenarios["eval_lexical"] = evaluate(idx, "--ks", "1", "--question_encoder", tmp / "qenc-lex")
    # hybrid: built with a BM25 side, or given one afterwards; evaluated and trained through it
    scenarios["build_hybrid"] = [*build(corpus_tsv, tmp / "idx-hyb"), "--sparse", "bm25"]
    scenarios["add_sparse"] = ["ragqa", "index", "--add_sparse", gains_sparse, "--fusion_weight",
                               "0.25", "--json", tmp / "add-sparse.json"]
    for mode in ("dense", "sparse", "hybrid"):
        scenarios[f"eval_{mode}"] = evaluate(tmp / "idx-hyb", "--ks", "1,2", "--retrieval", mode)
    scenarios["eval_default"] = evaluate(gains_sparse, "--ks", "1,2")
    scenarios["train_hybrid"] = ["ragqa", "train-retriever", "--train", squad_questions, "--index",
                                 tmp / "idx-hyb", "--dev", squad_questions, "--dev_ks", "1",
                                 "--out", tmp / "qenc-hyb", "--epochs", "1", "--batch_size", "4",
                                 "--negatives", "corpus", "--hybrid", "--json", tmp / "train-hyb.json"]
    # sharded: built in shards, or split afterwards; evaluated as the whole index is
    scenarios["eval_hybrid_json"] = evaluate(tmp / "idx-hyb", "--ks", "1,2", "--json",
                                             tmp / "eval-hyb.json")
    scenarios["build_shards"] = [*build(corpus_tsv, tmp / "idx-sh"), "--sparse", "bm25",
                                 "--shards", "2", "--json", tmp / "build-sh.json"]
    scenarios["eval_shards"] = evaluate(tmp / "idx-sh", "--ks", "1,2", "--json", tmp / "eval-sh.json")
    scenarios["split"] = ["ragqa", "index", "--split", tmp / "idx-hyb", "--shards", "3", "--out",
                          tmp / "idx-split"]
    scenarios["eval_split"] = evaluate(tmp / "idx-split", "--ks", "1,2", "--json",
                                       tmp / "eval-split.json")
    scenarios["build_too_many_shards"] = [*build(corpus_tsv, tmp / "out-too-many"), "--shards", "9"]
    scenarios["split_no_shards"] = ["ragqa", "index", "--split", tmp / "idx-hyb", "--out",
                                    tmp / "out-split-none"]
    scenarios["train_sharded"] = ["ragqa", "train-retriever", "--train", squad_questions, "--index",
                                  tmp / "idx-sh", "--out", tmp / "out-train-sharded"]
    # a corpus from the datasets ecosystem: Parquet
    from datasets import Dataset

    Dataset.from_list(passages).to_parquet(str(tmp / "corpus.parquet"))
    scenarios["build_parquet"] = [*build(tmp / "corpus.parquet", tmp / "idx-parquet"), "--json",
                                  tmp / "build-parquet.json"]
    # DPR's twins: the index built with the context encoder, searched with the question encoder
    scenarios["build_dpr"] = ["ragqa", "index", "--corpus", corpus_tsv, "--encoder", dpr_pair_dirs[0],
                              "--out", tmp / "idx-dpr", "--no_progress"]
    scenarios["eval_dpr"] = evaluate(tmp / "idx-dpr", "--ks", "1,2", "--question_encoder",
                                     dpr_pair_dirs[1], "--json", tmp / "eval-dpr.json")
    return run_scripts(scenarios, tmp / "logs", preload=PRELOAD), tmp


def test_build_then_eval(runs):
    results, tmp = runs
    build, evaluation = results["build"], results["eval"]
    assert build.returncode == 0, build
    assert evaluation.returncode == 0, evaluation
    assert not (tmp / "idx.encoding").exists()
    figures = json.loads((tmp / "build.json").read_text())
    assert figures["count"] == 8 and figures["dim"] == 32 and figures["index_type"] == "flat"

    metrics = json.loads((tmp / "eval.json").read_text())
    assert set(metrics) == {"n", "top_k_accuracy", "gold_recall", "mrr", "retrieval", "match"}
    assert metrics["match"] == "dpr"
    assert metrics["retrieval"]["mode"] == "dense"
    assert metrics["n"] == 8
    for figures_by_k in (metrics["top_k_accuracy"], metrics["gold_recall"]):
        assert set(figures_by_k) == {"1", "2"}
        assert all(0 <= v <= 1 for v in figures_by_k.values())
        assert figures_by_k["1"] <= figures_by_k["2"]
    assert 0 <= metrics["mrr"] <= 1
    assert json.loads(evaluation.stdout) == metrics


def test_sharded_indexes_evaluate_as_the_whole_index(runs):
    results, tmp = runs
    for name in ("eval_hybrid_json", "build_shards", "eval_shards", "split", "eval_split"):
        assert results[name].returncode == 0, results[name]
    assert json.loads((tmp / "build-sh.json").read_text())["shards"] == 2
    assert sorted(p.name for p in (tmp / "idx-split").iterdir()) == [
        "ragqa.json", "shard-00000-of-00003", "shard-00001-of-00003", "shard-00002-of-00003",
        "shards.json"]
    whole = json.loads((tmp / "eval-hyb.json").read_text())
    assert whole["retrieval"]["mode"] == "hybrid"
    for name in ("eval-sh.json", "eval-split.json"):
        assert json.loads((tmp / name).read_text()) == whole, name


def test_bad_shard_requests_get_one_line(runs):
    results, tmp = runs
    expect = {"build_too_many_shards": "--shards 9: must be between 1 and the 8 passages",
              "split_no_shards": "--split INDEX takes --shards N",
              "train_sharded": "a sharded index, which this needs whole"}
    for name, message in expect.items():
        run = results[name]
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1 and message in lines[0], (name, run.stderr)
    assert not any(tmp.glob("out-too-many*")) and not (tmp / "out-split-none").exists()
    assert not (tmp / "out-train-sharded").exists()


def test_eval_with_a_memory_mapped_index_reports_the_same(runs):
    results, tmp = runs
    assert results["eval_mmap"].returncode == 0, results["eval_mmap"]
    assert (json.loads((tmp / "eval-mmap.json").read_text())
            == json.loads((tmp / "eval.json").read_text()))


def test_eval_writes_dpr_results_and_a_trec_run(runs):
    results, tmp = runs
    assert results["eval"].returncode == 0, results["eval"]
    metrics = json.loads((tmp / "eval.json").read_text())
    records = json.loads((tmp / "retrieved.json").read_text())
    assert len(records) == metrics["n"] == 8
    for r in records:
        assert set(r) == {"question", "answers", "ctxs"} and len(r["ctxs"]) == 2
        assert all(set(c) == {"id", "title", "text", "score", "has_answer"} for c in r["ctxs"])
        assert [c["score"] for c in r["ctxs"]] == sorted((c["score"] for c in r["ctxs"]), reverse=True)
    for k in (1, 2):  # top-k accuracy recomputed from the file's has_answer equals the report's
        hits = sum(any(c["has_answer"] for c in r["ctxs"][:k]) for r in records)
        assert hits / len(records) == pytest.approx(metrics["top_k_accuracy"][str(k)])
    lines = (tmp / "run.trec").read_text().splitlines()
    assert len(lines) == 16
    qid, q0, docid, rank, score, run = lines[1].split()
    assert q0 == "Q0" and rank == "2" and run == "ragqa" and docid == records[0]["ctxs"][1]["id"]
    assert float(score) == pytest.approx(records[0]["ctxs"][1]["score"], abs=1e-6)


def test_train_then_eval_with_the_trained_question_encoder(runs):
    results, tmp = runs
    train, evaluation = results["train"], results["eval_trained"]
    assert train.returncode == 0, train
    saved = json.loads((tmp / "qenc" / "ragqa_encoder.json").read_text())
    manifest = json.loads((tmp / "idx" / "manifest.json").read_text())
    assert saved["paired_context_fingerprint"] == manifest["encoder"]["fingerprint"]
    assert saved["fingerprint"] != manifest["encoder"]["fingerprint"]  # it did train
    logged = json.loads((tmp / "train.json").read_text())
    assert len(logged["epochs"]) == 1
    assert logged["config"]["optim"]["lr"] == 2e-5  # train_retriever's default, DPR's
    assert evaluation.returncode == 0, evaluation
    assert json.loads(evaluation.stdout)["n"] == 8


def test_train_with_a_lexical_head_then_eval(runs):
    results, tmp = runs
    train, evaluation = results["train_lexical"], results["eval_lexical"]
    assert train.returncode == 0, train
    assert json.loads((tmp / "qenc-lex" / "ragqa_encoder.json").read_text())["lexical_head"]
    assert (tmp / "qenc-lex" / "lexical_head.safetensors").is_file()
    epochs = json.loads((tmp / "train-lex.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1] and epochs[0]["loss"] is None
    assert "epoch 0: lexical head fitted" in train.stdout
    assert evaluation.returncode == 0, evaluation
    assert json.loads(evaluation.stdout)["n"] == 8


def test_build_from_parquet(runs, passages):
    results, tmp = runs
    assert results["build_parquet"].returncode == 0, results["build_parquet"]
    assert json.loads((tmp / "build-parquet.json").read_text())["count"] == len(passages)
    from retriever.index import DenseIndex

    assert list(DenseIndex.load(tmp / "idx-parquet").passages["id"]) == [p["id"] for p in passages]


def test_dpr_pair_build_then_eval(runs, dpr_pair_dirs):
    results, tmp = runs
    for name in ("build_dpr", "eval_dpr"):
        assert results[name].returncode == 0, results[name]
    notices = [line for line in results["eval_dpr"].stderr.splitlines() if "pairing" in line]
    assert len(notices) == 1 and "as asked" in notices[0], results["eval_dpr"]
    assert json.loads((tmp / "eval-dpr.json").read_text())["n"] == 8


def test_hybrid_build_eval_and_train(runs):
    results, tmp = runs
    for name in ("build_hybrid", "add_sparse", "eval_dense", "eval_sparse", "eval_hybrid",
                 "eval_default", "train_hybrid"):
        assert results[name].returncode == 0, results[name]
    assert (tmp / "idx-hyb" / "sparse" / "params.index.json").is_file()
    assert "+ BM25" in results["build_hybrid"].stdout
    manifest = json.loads((tmp / "gains-sparse" / "manifest.json").read_text())
    assert manifest["fusion"]["fusion_weight"] == 0.25 and manifest["sparse"]["rows"] == 8
    assert json.loads((tmp / "add-sparse.json").read_text())["sparse_bytes"] > 0
    modes = {m: json.loads(results[f"eval_{m}"].stdout) for m in ("dense", "sparse", "hybrid")}
    for mode, metrics in modes.items():
        assert metrics["retrieval"]["mode"] == mode and metrics["n"] == 8
    assert json.loads(results["eval_default"].stdout)["retrieval"] == {
        "mode": "hybrid", "fusion": "linear", "fusion_weight": 0.25, "candidates": 100}
    # BM25 on these questions written from their passages finds the gold passage first
    assert modes["sparse"]["gold_recall"]["1"] == 1.0
    epochs = json.loads((tmp / "train-hyb.json").read_text())["epochs"]
    assert len(epochs) == 1 and epochs[0]["loss"] > 0 and "dev" in epochs[0]


@pytest.mark.parametrize("name,fragments", [
    ("build_missing_corpus", ["nope.tsv", "no such file"]),
    ("build_non_utf8", ["non-utf8.tsv", "line 3", "UTF-8"]),
    ("build_duplicates", ["dup.tsv", "line 4", "duplicate passage id '1'"]),
    ("build_bad_dtype", ["--dtype", "'fp8'", "'bf16'"]),  # refused by the parser, choices named
    ("eval_k_too_large", ["k=1000", "larger than the index"]),
    ("eval_no_manifest", ["no-manifest", "manifest.json"]),
    ("eval_other_dim", ["dim 16", "dim 32"]),
    ("eval_hybrid_no_sparse", ["--retrieval hybrid", "sparse side", "--add_sparse"]),
    ("eval_negative_weight", ["--fusion_weight", "-0.5"]),
    ("eval_nan_weight", ["--fusion_weight", "nan"]),
    ("eval_candidates_below_k", ["--candidates 2", "k=5"]),
    ("eval_missing_sparse_file", ["no-vocab", "vocab.index.json"]),
    ("build_add_sparse_and_corpus", ["--add_sparse", "--corpus"]),
    ("train_hybrid_no_sparse", ["--hybrid", "sparse side"]),
])
def test_bad_input_is_one_error_line(runs, name, fragments):
    results, tmp = runs
    error = results[name].error_line()
    for fragment in fragments:
        assert fragment in error, error
    if name.startswith("build_"):  # a failed build leaves neither <out> nor <out>.encoding
        assert not (tmp / f"out-{name}").exists()
        assert not (tmp / f"out-{name}.encoding").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_help(runs, command):
    proc = runs[0][f"help_{command}"]
    assert proc.returncode == 0, proc
    assert "usage:" in proc.stdout and "Example:" in proc.stdout
