"""Bad input across the ``ragqa`` commands, as a careful new user would try it.

Every case must exit with status 2 and exactly one ``error:`` line naming the flag, file or value,
with no traceback, before any work; and the directory the cases point at (an index, a model, a
user's own directory, output places) must hold exactly what it held before.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rag.config import DecodeConfig, RagConfig
from rag.model import RagModel
from retriever.batch_encode import EncodeConfig
from retriever.build import BuildConfig, build_index
from retriever.encoder import Encoder
from retriever.index import DenseIndex

PRELOAD = ["retriever.build", "retriever.evaluation", "retriever.search", "retriever.train",
           "rag.model", "rag.benchmark", "rag.train",
           "transformers:AutoConfig,AutoModel,AutoTokenizer,BertModel,BertTokenizerFast,HfArgumentParser"]


def snapshot(root: Path) -> dict[str, int]:
    """Every path under ``root`` with its size (directories: -1)."""
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1)
            for p in sorted(root.rglob("*"))}


def cases(d: Path, corpus: Path, questions: Path, encoder: Path) -> dict[str, tuple[list, list[str]]]:
    """``{name: (argv, fragments the error line must hold)}``."""
    def build(*extra):
        return ["ragqa", "index", "--corpus", corpus, "--encoder", encoder, "--out", d / "new-idx",
                *extra]

    def build_from(source):
        return ["ragqa", "index", "--corpus", source, "--encoder", encoder, "--out", d / "new-idx"]

    def evaluate(*extra):
        return ["ragqa", "eval-retrieval", "--index", d / "idx", "--questions", questions, *extra]

    def train(*extra):
        return ["ragqa", "train-retriever", "--train", questions, "--index", d / "idx", "--out",
                d / "new-qenc", *extra]

    def finetune(*extra):
        return ["ragqa", "finetune", "--train", questions, "--index", d / "idx", "--out", d / "new-ft",
                "--generator", d / "model" / "generator", *extra]

    def ask(*extra):
        return ["ragqa", "ask", "What is the capital of France?", "--model", d / "model", *extra]

    def ask_model(model):
        return ["ragqa", "ask", "What is the capital of France?", "--model", model, "--index", d / "idx"]

    def bench(*extra):
        return ["ragqa", "benchmark", "--model", d / "model", "--questions", questions, "--json",
                d / "bench.json", *extra]

    return {
        # 1. options, checked before any file is read
        "build_batch_zero": (build("--batch_size", "0"), ["--batch_size", "0"]),
        "build_batch_negative": (build("--batch_size", "-3"), ["--batch_size", "-3"]),
        "build_shard_zero": (build("--shard_size", "0"), ["--shard_size"]),
        "build_max_length_negative": (build("--max_length", "-1"), ["--max_length"]),
        "build_max_length_past_table": (build("--max_length", "1000"), ["--max_length 1000",
                                                                         "position table"]),
        "build_index_type": (build("--index_type", "annoy"), ["--index_type", "annoy"]),
        "build_hnsw_m_zero": (build("--hnsw_m", "0", "--index_type", "hnsw"), ["--hnsw_m"]),
        "build_pq_nbits": (build("--pq_nbits", "20"), ["--pq_nbits", "20"]),
        "build_nprobe_zero": (build("--nprobe", "0"), ["--nprobe"]),
        "build_pq_m_not_dividing": (build("--index_type", "ivfpq", "--pq_m", "5"),
                                    ["--pq_m 5", "dimension 32"]),
        "build_passage_words": (build("--passage_words", "-5"), ["--passage_words"]),
        "build_sparse_kind": (build("--sparse", "bm3"), ["--sparse", "bm3"]),
        "build_bm25_k1": (build("--bm25_k1", "-1"), ["--bm25_k1"]),
        "build_bm25_b": (build("--bm25_b", "1.5"), ["--bm25_b"]),
        "build_sparse_tokenizer": (build("--sparse_tokenizer", "chars"), ["--sparse_tokenizer"]),
        "build_fusion_weight": (build("--fusion_weight", "-1"), ["--fusion_weight"]),
        "build_candidates": (build("--candidates", "0"), ["--candidates"]),
        "build_fusion": (build("--fusion", "max"), ["--fusion", "max"]),
        "eval_batch_zero": (evaluate("--batch_size", "0"), ["--batch_size"]),
        "eval_limit_negative": (evaluate("--limit", "-1"), ["--limit", "-1"]),
        "eval_ks_text": (evaluate("--ks", "1,x"), ["--ks", "'x'"]),  # the value at fault
        "eval_ks_zero": (evaluate("--ks", "0,1"), ["positive"]),
        "eval_retrieval_kind": (evaluate("--retrieval", "bm25"), ["--retrieval", "bm25"]),
        "train_batch_zero": (train("--batch_size", "0"), ["--batch_size"]),
        "train_lr_nan": (train("--lr", "nan"), ["--lr", "nan"]),
        "train_lr_negative": (train("--lr=-1e-5"), ["--lr", "-1e-05"]),
        "train_epochs_negative": (train("--epochs", "-1"), ["--epochs"]),
        "train_warmup": (train("--warmup_ratio", "2"), ["--warmup_ratio"]),
        "train_negatives": (train("--negatives", "random"), ["--negatives", "random"]),
        "train_limit_negative": (train("--train_limit", "-5"), ["--train_limit"]),
        "train_precision": (train("--mixed_precision", "fp8"), ["--mixed_precision", "fp8"]),
        "finetune_batch_zero": (finetune("--batch_size", "0"), ["--batch_size"]),
        "finetune_lr_inf": (finetune("--lr", "inf"), ["--lr", "inf"]),
        "finetune_save_every_zero": (finetune("--save_every", "0"), ["--save_every"]),
        "finetune_answer_length": (finetune("--max_answer_length", "1"), ["--max_answer_length"]),
        "finetune_beams_zero": (finetune("--num_beams", "0"), ["--num_beams"]),
        "finetune_save_dtype": (finetune("--save_dtype", "int8"), ["--save_dtype", "int8"]),
        "finetune_smoothing": (finetune("--label_smoothing", "1.0"), ["--label_smoothing"]),
        "finetune_limit_negative": (finetune("--train_limit", "-1"), ["--train_limit"]),
        "finetune_input_length": (finetune("--max_input_length", "0"), ["--max_input_length"]),
        "finetune_answer_tokens_zero": (finetune("--max_answer_tokens", "0"),
                                        ["--max_answer_tokens", "0"]),
        "finetune_span_head_no_copy": (finetune("--span_head"), ["--span_head", "--copy_head"]),
        "finetune_reader_span_no_head": (finetune("--reader", "span"), ["--reader span",
                                                                         "span head"]),
        "ask_batch_zero": (ask("--batch_size", "0"), ["--batch_size"]),
        "ask_answer_tokens_zero": (ask("--max_answer_tokens", "0"), ["--max_answer_tokens"]),
        "ask_reader_span_no_head": (ask_model(d / "model") + ["--reader", "span"],
                                    ["--reader span", "span head"]),
        "bench_reader_span_no_head": (bench("--reader", "span"), ["--reader span", "span head"]),
        "ask_k_negative": (ask("--k", "-1"), ["--k", "-1"]),
        "bench_batch_zero": (bench("--batch_size", "0"), ["batch_size"]),
        "bench_fusion_nan": (bench("--fusion_weight", "nan"), ["--fusion_weight", "nan"]),
        "bench_match": (bench("--match", "exact"), ["match", "exact"]),
        "eval_match": (evaluate("--match", "exact"), ["--match", "exact"]),
        "export_constrain": (["ragqa", "export", "--model", d / "model", "--out",
                              d / "new-export", "--constrain", "words"], ["--constrain", "words"]),
        "export_out_user_dir": (["ragqa", "export", "--model", d / "model", "--out",
                                 d / "user", "--overwrite"], ["user", "is not a ragqa"]),
        "build_corpus_plain_dir": (build_from(d / "user"), ["user", "save_to_disk"]),
        # 2. outputs, checked before any work
        "build_json_missing_dir": (build("--json", d / "nowhere" / "b.json"), ["nowhere"]),
        "build_json_is_dir": (build("--json", d / "user"), ["user", "is a directory"]),
        "eval_json_missing_dir": (evaluate("--json", d / "nowhere" / "e.json"), ["nowhere"]),
        "bench_json_is_dir": (["ragqa", "benchmark", "--model", d / "model", "--questions", questions,
                               "--json", d / "user"], ["user", "is a directory"]),
        "finetune_out_is_file": (["ragqa", "finetune", "--train", questions, "--index", d / "idx",
                                  "--out", d / "user" / "keep.txt"], ["keep.txt", "not a directory"]),
        # 4. nothing a user owns is deleted: not ours, or ours without --overwrite
        "build_overwrite_user_dir": (["ragqa", "index", "--corpus", corpus, "--encoder", encoder,
                                      "--out", d / "user", "--overwrite"],
                                     ["user", "is not a ragqa"]),
        "build_existing_index": (["ragqa", "index", "--corpus", corpus, "--encoder", encoder,
                                  "--out", d / "idx"], ["idx", "--overwrite"]),
        "finetune_out_user_dir": (["ragqa", "finetune", "--train", questions, "--index", d / "idx",
                                   "--out", d / "user"], ["user", "is not a ragqa"]),
        "finetune_out_existing_model": (["ragqa", "finetune", "--train", questions, "--index", d / "idx",
                                         "--out", d / "model"], ["model", "--overwrite"]),
        "train_out_user_dir": (["ragqa", "train-retriever", "--train", questions, "--index", d / "idx",
                                "--out", d / "user", "--overwrite"], ["user", "is not a ragqa"]),
        "train_out_existing_index": (["ragqa", "train-retriever", "--train", questions, "--index",
                                      d / "idx", "--out", d / "idx"], ["--out", "is --index"]),
        "train_index_next_to_out_is_users": (["ragqa", "train-retriever", "--train", questions, "--corpus",
                                              corpus, "--out", d / "q", "--overwrite"],
                                             ["q.index", "is not a ragqa"]),
        # 3. environment and file errors
        "eval_questions_is_dir": (["ragqa", "eval-retrieval", "--index", d / "idx", "--questions",
                                   d / "user"], ["user"]),
        "eval_corrupt_faiss": (["ragqa", "eval-retrieval", "--index", d / "bad-faiss", "--questions",
                                questions], ["bad-faiss/index.faiss", "not a readable FAISS index"]),
        "eval_truncated_arrow": (["ragqa", "eval-retrieval", "--index", d / "bad-arrow", "--questions",
                                  questions], ["bad-arrow", "Arrow"]),
        "eval_corrupt_removed": (["ragqa", "eval-retrieval", "--index", d / "bad-removed", "--questions",
                                  questions], ["removed.npy"]),
        "eval_manifest_escapes": (["ragqa", "eval-retrieval", "--index", d / "escapes", "--questions",
                                   questions], ["manifest.json", "points outside"]),
        "ask_config_not_json": (ask_model(d / "bad-json"), ["bad-json/rag_config.json"]),
        "ask_config_wrong_type": (ask_model(d / "bad-type"), ["bad-type/rag_config.json", "type"]),
        "ask_config_bad_mode": (ask_model(d / "bad-mode"), ["bad-mode/rag_config.json", "mode"]),
        "compare_wrong_type": (["ragqa", "compare", d / "reports" / "typed.json"],
                               ["typed.json", "'exact_match'", "wrong type"]),
        "compare_wrong_nested_type": (["ragqa", "compare", d / "reports" / "nested.json"],
                                      ["nested.json", "'top_k_accuracy'"]),
        "compare_not_json": (["ragqa", "compare", d / "reports" / "garbage.json"], ["garbage.json", "JSON"]),
        "scale_select_grid": (["ragqa", "scale", "select", "--budgets", "1e4", "--n_min", "1e9",
                               "--n_max", "1e6"], ["--n_max", "--n_min"]),
        "scale_sweep_keep": (["ragqa", "scale", "sweep", "--corpus", corpus, "--train", questions,
                              "--dev", questions, "--out", d / "sweep.jsonl", "--keep", "last"],
                             ["--keep", "last"]),
        "bench_retriever_k_zero": (["perf_retriever.py", "--k", "0"], ["--k", "0"]),
        "bench_rag_beams_zero": (["perf_rag.py", "--num_beams", "0"], ["--num_beams", "0"]),
        "scale_fit_not_json": (["ragqa", "scale", "select", "--fit", d / "reports" / "garbage.json",
                                "--budgets", "1e4"], ["garbage.json", "JSON"]),
        "scale_fit_not_a_fit": (["ragqa", "scale", "select", "--fit", d / "reports" / "typed.json",
                                 "--budgets", "1e4"], ["typed.json", "laws"]),
        "ask_stdin_not_utf8": (["ragqa", "ask", "--model", d / "model"], ["standard input", "UTF-8"]),
    }


@pytest.fixture(scope="module")
def bad_runs(run_scripts, tmp_path_factory, tiny_encoder_dir, corpus_jsonl, squad_questions):
    d = tmp_path_factory.mktemp("bad-input")
    encoder = Encoder.from_pretrained(str(tiny_encoder_dir), max_length=64)
    build_index(corpus_jsonl, encoder, d / "idx", BuildConfig(encode=EncodeConfig(progress=False)))
    from generator.warmstart import warm_start_bart

    generator, tokenizer = warm_start_bart(tiny_encoder_dir, d / "bart", cross_attention="copy_self")
    config = RagConfig(k=2, max_input_length=64, decode=DecodeConfig(num_beams=1, max_length=8),
                       index=str(d / "idx"))
    RagModel(encoder, generator, tokenizer, DenseIndex.load(d / "idx"), config).save_pretrained(
        d / "model")
    shutil.rmtree(d / "bart")
    damaged = {"bad-faiss": ("idx", "index.faiss", lambda f: f.write_bytes(b"garbage" * 10)),
               "bad-arrow": ("idx", "passages/00000.arrow", lambda f: f.write_bytes(f.read_bytes()[:99])),
               "bad-removed": ("idx", "removed.npy", lambda f: f.write_bytes(b"\x93NUMPY junk")),
               "escapes": ("idx", "manifest.json", lambda f: f.write_text(f.read_text().replace(
                   '"passages/00000.arrow"', '"../idx/passages/00000.arrow"'))),
               "bad-json": ("model", "rag_config.json", lambda f: f.write_text("{not json")),
               "bad-type": ("model", "rag_config.json", lambda f: f.write_text(
                   f.read_text().replace('"k": 2', '"k": "two"'))),
               "bad-mode": ("model", "rag_config.json", lambda f: f.write_text(
                   f.read_text().replace('"mode": "sequence"', '"mode": "both"')))}
    for name, (source, part, damage) in damaged.items():
        shutil.copytree(d / source, d / name)
        damage(d / name / part)
    reports = d / "reports"
    reports.mkdir()
    base = '"n": 5, "f1": 3.0, "answer_in_passages": null, "config": {"k": 3}'
    (reports / "typed.json").write_text('{"exact_match": "high", "top_k_accuracy": {}, ' + base + "}")
    (reports / "nested.json").write_text('{"exact_match": 1.0, "top_k_accuracy": [1], ' + base + "}")
    (reports / "garbage.json").write_text("{oops")
    for name in ("user", "q.index"):  # a user's own directories, which nothing may replace
        (d / name).mkdir()
        (d / name / "keep.txt").write_text("mine\n")
    all_cases = cases(d, corpus_jsonl, squad_questions, tiny_encoder_dir)
    before = snapshot(d)
    logs = tmp_path_factory.mktemp("bad-input-logs")
    results = run_scripts({name: argv for name, (argv, _) in all_cases.items()}, logs,
                          preload=PRELOAD, stdin={"ask_stdin_not_utf8": b"caf\xe9?\n"},
                          env={"RAGQA_CACHE": str(logs / "cache")})
    return results, all_cases, before, snapshot(d)


def test_nothing_is_written_moved_or_deleted(bad_runs):
    _, _, before, after = bad_runs
    assert after == before


def test_at_least_sixty_cases(bad_runs):
    assert len(bad_runs[1]) >= 60


@pytest.mark.parametrize("name", list(cases(Path("d"), Path("c"), Path("q"), Path("e"))))
def test_bad_input_is_one_error_line(bad_runs, name):
    results, all_cases, _, _ = bad_runs
    line = results[name].error_line()
    for fragment in all_cases[name][1]:
        assert fragment in line, (name, line)
