"""``ragqa benchmark`` and ``ragqa compare`` as a user runs them, on a tiny RAG model (random weights).

Each run is its own forked process (the ``run_scripts`` fixture, ``conftest.py``). The
weights are random, so the figures are checked for their shape, their consistency with the
per-question predictions (retrieval accuracy recomputed from the retrieved passage ids), regex
answers and determinism, not for quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from generator.warmstart import warm_start_bart
from rag.config import DecodeConfig, RagConfig
from rag.model import RagModel
from retriever.batch_encode import EncodeConfig
from retriever.build import BuildConfig, build_index
from retriever.encoder import Encoder
from retriever.index import DenseIndex
from retriever.metrics import dpr_tokens, token_has_answer

PRELOAD = ["faiss", "rag.benchmark", "rag.compare", "generator.model", "retriever.build",
           "matplotlib.backends.backend_agg", "matplotlib.figure",
           "transformers:AutoConfig,AutoModel,AutoTokenizer,BartForConditionalGeneration,HfArgumentParser"]


def write_question_files(tmp: Path, questions, squad_questions: Path) -> dict[str, Path]:
    """The fixture questions in each supported format; NQ JSONL adds one regex-answer question."""
    nq = tmp / "nq-questions.jsonl"  # not nq.jsonl: the nq run writes its predictions there
    lines = [json.dumps({"question": q, "answer": a}) for q, a, _ in questions]
    lines.append(json.dumps({"question": "Name anything at all?", "answer": [], "patterns": [".*"]}))
    nq.write_text("\n".join(lines) + "\n")
    webq = tmp / "webq-questions.json"  # likewise its report
    webq.write_text(json.dumps([{"qId": f"wq-{i}", "qText": q, "answers": a}
                                for i, (q, a, _) in enumerate(questions)]))
    tsv = tmp / "dpr.tsv"
    tsv.write_text("".join(f"{q}\t{json.dumps(a)}\n" for q, a, _ in questions))
    return {"squad": squad_questions, "nq": nq, "webq": webq, "tsv": tsv}


@pytest.fixture(scope="module")
def runs(run_scripts, tmp_path_factory, tiny_encoder_dir, tiny_encoder_dir_16, corpus_jsonl,
         squad_questions, questions):
    """A tiny RAG and closed-book model, then every scenario run once: ``({name: Run}, tmp)``."""
    tmp = tmp_path_factory.mktemp("bench-scripts")
    encoder = Encoder.from_pretrained(str(tiny_encoder_dir), max_length=64)  # 128 positions
    quiet = BuildConfig(encode=EncodeConfig(progress=False))
    build_index(corpus_jsonl, encoder, tmp / "idx", quiet)
    build_index(corpus_jsonl, Encoder.from_pretrained(str(tiny_encoder_dir_16)), tmp / "idx-16", quiet)
    generator, tokenizer = warm_start_bart(tiny_encoder_dir)
    tiny = dict(max_input_length=64, decode=DecodeConfig(num_beams=2, max_length=8))
    RagModel(encoder, generator, tokenizer, DenseIndex.load(tmp / "idx"),
             RagConfig(k=3, index=str(tmp / "idx"), **tiny)).save_pretrained(tmp / "model")
    RagModel(None, generator, tokenizer, None,
             RagConfig(mode="closed_book", **tiny)).save_pretrained(tmp / "closed")

    files = write_question_files(tmp, questions, squad_questions)
    (tmp / "questions.xml").write_text("<questions/>")
    (tmp / "no-answers.jsonl").write_text(json.dumps({"question": "Who?"}) + "\n")
    (tmp / "empty.jsonl").write_text("")
    (tmp / "bad-pattern.jsonl").write_text(json.dumps({"question": "Who?", "patterns": ["(x"]}) + "\n")

    def bench(name, questions_file, *extra, model="model"):
        return ["ragqa", "benchmark", "--model", tmp / model, "--questions", questions_file,
                "--json", tmp / f"{name}.json", "--predictions", tmp / f"{name}.jsonl",
                "--batch_size", "3", "--no_progress", *extra]

    scenarios = {f"bench_{fmt}": bench(fmt, path) for fmt, path in files.items()}
    scenarios.update({
        "bench_squad_again": bench("squad_again", files["squad"]),  # determinism
        "bench_k1": bench("k1", files["squad"], "--k", "1"),
        "bench_short": bench("short", files["squad"], "--k", "1", "--max_input_length", "32"),
        "bench_k2": bench("k2", files["squad"], "--k", "2"),
        "bench_token": bench("token", files["nq"], "--mode", "token", "--decoding", "greedy",
                             "--limit", "4", "--index", tmp / "idx"),
        "bench_closed": bench("closed", files["squad"], model="closed"),
        "bad_format": bench("bad_format", tmp / "questions.xml"),
        "bad_no_answers": bench("bad_no_answers", tmp / "no-answers.jsonl"),
        "bad_empty": bench("bad_empty", tmp / "empty.jsonl"),
        "bad_pattern": bench("bad_pattern", tmp / "bad-pattern.jsonl"),
        "bad_predictions_dir": ["ragqa", "benchmark", "--model", tmp / "model", "--questions",
                                files["squad"], "--json", tmp / "bad_predictions_dir.json",
                                "--predictions", tmp / "nowhere" / "p.jsonl"],
        "bad_index": bench("bad_index", files["squad"], "--index", tmp / "idx-16"),
        "bad_decoding": bench("bad_decoding", files["squad"], "--mode", "token", "--decoding", "fast"),
        "help_benchmark": ["ragqa", "benchmark", "--help"],
        "help_compare": ["ragqa", "compare", "--help"],
        # compare: a k sweep (1, 2, 3) to a given path, the same sweep to the default path, and
        # runs differing in more than k (a table, no plot; asking for one is an error)
        "compare_sweep": ["ragqa", "compare", tmp / "k1.json", tmp / "k2.json", tmp / "squad.json",
                          "--plot", tmp / "sweep.png"],
        "compare_default_plot": ["ragqa", "compare", tmp / "k2.json", tmp / "k1.json", tmp / "squad.json"],
        "compare_mixed": ["ragqa", "compare", tmp / "squad.json", tmp / "closed.json", tmp / "token.json"],
        "compare_mixed_plot": ["ragqa", "compare", tmp / "squad.json", tmp / "closed.json",
                               "--plot", tmp / "mixed.png"],
        "compare_not_a_report": ["ragqa", "compare", tmp / "squad.jsonl"],
    })
    return run_scripts(scenarios, tmp / "logs", preload=PRELOAD, env={"MPLBACKEND": "Agg"}), tmp


def report(tmp: Path, name: str) -> tuple[dict, list[dict]]:
    metrics = json.loads((tmp / f"{name}.json").read_text())
    rows = [json.loads(line) for line in (tmp / f"{name}.jsonl").read_text().splitlines()]
    return metrics, rows


@pytest.mark.parametrize("fmt,n", [("squad", 8), ("nq", 9), ("webq", 8), ("tsv", 8)])
def test_each_question_format(runs, passages, fmt, n):
    results, tmp = runs
    proc = results[f"bench_{fmt}"]
    assert proc.returncode == 0, proc
    metrics, rows = report(tmp, fmt)
    assert json.loads(proc.stdout) == metrics
    assert {"n", "exact_match", "f1", "top_k_accuracy", "answer_in_passages", "latency_ms",
            "questions_per_s", "config"} <= set(metrics)
    assert metrics["n"] == len(rows) == n
    config = metrics["config"]
    assert {"model", "index", "k", "mode", "decoding", "num_beams", "questions", "limit", "seed",
            "versions"} <= set(config)
    assert (config["k"], config["mode"], config["decoding"], config["num_beams"]) == (
        3, "sequence", "thorough", 2)
    assert config["index"] == str(tmp / "idx")  # the model's own
    assert config["max_input_length"] == 64
    assert set(config["versions"]) == {"torch", "transformers", "faiss"}
    assert 0 <= metrics["latency_ms"]["p50"] <= metrics["latency_ms"]["p95"]
    assert metrics["questions_per_s"] > 0

    for row in rows:
        assert {"question", "answers", "prediction", "em", "f1", "retrieved"} <= set(row)
        assert len(row["retrieved"]) == 3
    assert metrics["exact_match"] == pytest.approx(100 * sum(r["em"] for r in rows) / n)
    assert metrics["f1"] == pytest.approx(100 * sum(r["f1"] for r in rows) / n)
    # retrieval accuracy by DPR's has_answer (the default), recomputed from the retrieved ids (the
    # regex question matches anything)
    assert config["match"] == "dpr"
    tokens = {p["id"]: dpr_tokens(p["text"]) for p in passages}
    hits = [[bool(r.get("patterns")) or token_has_answer(tokens[pid], r["answers"])
             for pid in r["retrieved"]] for r in rows]
    assert set(metrics["top_k_accuracy"]) == {"1", "3"}
    for k in (1, 3):
        assert metrics["top_k_accuracy"][str(k)] == pytest.approx(sum(any(h[:k]) for h in hits) / n)
    assert metrics["answer_in_passages"] == pytest.approx(metrics["top_k_accuracy"]["3"])


def test_overrides_are_applied_and_reported(runs):
    results, tmp = runs
    assert results["bench_short"].returncode == 0, results["bench_short"]
    metrics, rows = report(tmp, "short")
    assert (metrics["config"]["k"], metrics["config"]["max_input_length"]) == (1, 32)
    assert all(len(r["retrieved"]) == 1 for r in rows)


def test_regex_answers_are_scored(runs):
    _, tmp = runs
    _, rows = report(tmp, "nq")
    pattern_rows = [r for r in rows if r.get("patterns")]
    assert len(pattern_rows) == 1 and pattern_rows[0]["em"] == pattern_rows[0]["f1"] == 1.0
    assert all("patterns" not in r for r in rows[:-1])


def test_two_runs_are_identical(runs):
    results, tmp = runs
    assert results["bench_squad_again"].returncode == 0, results["bench_squad_again"]
    first, first_rows = report(tmp, "squad")
    again, again_rows = report(tmp, "squad_again")
    assert (first["exact_match"], first["f1"]) == (again["exact_match"], again["f1"])
    assert first["top_k_accuracy"] == again["top_k_accuracy"]
    assert first_rows == again_rows  # predictions, scores and retrieved ids


def test_token_mode_and_closed_book(runs):
    results, tmp = runs
    for name in ("bench_token", "bench_closed"):
        assert results[name].returncode == 0, results[name]
    token, rows = report(tmp, "token")
    assert token["n"] == len(rows) == 4
    assert (token["config"]["mode"], token["config"]["decoding"], token["config"]["num_beams"],
            token["config"]["limit"]) == ("token", "greedy", 1, 4)
    closed, rows = report(tmp, "closed")
    assert closed["config"]["mode"] == "closed_book" and closed["config"]["index"] is None
    assert closed["top_k_accuracy"] == {} and closed["answer_in_passages"] is None
    assert all(r["retrieved"] == [] for r in rows)


@pytest.mark.parametrize("name,fragments", [
    ("bad_format", ["questions.xml", "unknown question format"]),
    ("bad_no_answers", ["no-answers.jsonl", "no gold answers"]),
    ("bad_empty", ["empty.jsonl"]),
    ("bad_pattern", ["'(x'", "regular expression"]),
    ("bad_predictions_dir", ["nowhere", "does not exist"]),
    ("bad_index", ["dim 16", "dim 32"]),
    ("bad_decoding", ["'fast'", "RAG-Token"]),
    ("compare_mixed_plot", ["--plot", "closed-book"]),
    ("compare_not_a_report", ["squad.jsonl"]),
])
def test_bad_input_is_one_error_line_and_no_output(runs, name, fragments):
    results, tmp = runs
    error = results[name].error_line()
    for fragment in fragments:
        assert fragment in error, error
    leftovers = [p.name for p in tmp.iterdir() if p.name.startswith((name, f".{name}", "mixed"))]
    assert not leftovers and not (tmp / "nowhere").exists()


def test_compare_table_and_k_sweep_plot(runs):
    results, tmp = runs
    sweep = results["compare_sweep"]
    assert sweep.returncode == 0, sweep
    table = [line for line in sweep.stdout.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3
    head = [c.strip() for c in table[0].strip("|").split("|")]
    for column in ("model", "mode", "decoding", "k", "n", "EM", "F1", "top-1", "top-2", "top-3",
                   "answer in passages", "q/s"):
        assert column in head
    assert [row.split("|")[head.index("k") + 1].strip() for row in table[2:]] == ["1", "2", "3"]
    assert (tmp / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    default = results["compare_default_plot"]
    assert default.returncode == 0, default
    assert (tmp / "k2_em_vs_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mixed = results["compare_mixed"]
    assert mixed.returncode == 0, mixed
    assert len([line for line in mixed.stdout.splitlines() if line.startswith("|")]) == 2 + 3
    assert not list(tmp.glob("squad_em_vs_k.png"))


@pytest.mark.parametrize("script", ["benchmark", "compare"])
def test_help(runs, script):
    proc = runs[0][f"help_{script}"]
    assert proc.returncode == 0, proc
    assert "usage:" in proc.stdout and "Example:" in proc.stdout
