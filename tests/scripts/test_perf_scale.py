"""perf_scale.py as a user runs it, on a tiny setting: an 8-passage "real" index made with a
tiny random DPR context encoder (the tiny BERT's vectors are all nearly one), a corpus of 2000
vectors, the 8 fixture questions as queries.

The figures are checked for what must hold whatever the machine: exact search has recall 1, the
real vectors sit where the passage table says, the ground truth is the brute-force top-k, IVF-PQ
is smaller than flat; then a second run reuses the cached corpus, and bad options are refused
before any work.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from retriever.batch_encode import EncodeConfig
from retriever.build import BuildConfig, build_index
from retriever.encoder import Encoder
from retriever.index import DenseIndex

PRELOAD = ["faiss", "retriever.index", "retriever.search", "rag.common.questions",
           "transformers:AutoConfig,AutoModel,AutoTokenizer,HfArgumentParser"]
N, K = 2000, 5


@pytest.fixture(scope="module")
def runs(run_scripts, tmp_path_factory, dpr_pair_dirs, corpus_jsonl, squad_questions):
    tmp = tmp_path_factory.mktemp("bench-scale")
    encoder = Encoder.from_pretrained(str(dpr_pair_dirs[0]), max_length=64)
    build_index(corpus_jsonl, encoder, tmp / "real", BuildConfig(encode=EncodeConfig(progress=False)))
    common = ["--real_index", tmp / "real", "--questions", squad_questions, "--queries", "8",
              "--k", str(K), "--sizes", str(N), "--work", tmp / "work"]
    tiny = ["--pq_m", "4", "8", "--hnsw_ef", "16", "64", "--nprobe", "2", "64",
            "--single_queries", "4"]
    bad = ["perf_scale.py", "--real_index", tmp / "real", "--questions", squad_questions,
           "--queries", "8", "--pq_m", "4", "--work", tmp / "bad-work", "--sizes"]
    scenarios = {
        "tiny": ["perf_scale.py", *common, *tiny, "--json", tmp / "tiny.json"],
        "again": ["perf_scale.py", *common, "--types", "flat", "--json", tmp / "again.json"],
        "bad_type": [*bad, "1000", "--types", "flat", "lsh"],
        "bad_size": [*bad, "1000", "5"],  # fewer vectors than the 8 real passages
        "bad_index": [*bad, "1000", "--real_index", tmp / "nowhere"],
        "bad_pq_m": [*bad, "1000", "--pq_m", "5"],  # does not divide 32
        "help": ["perf_scale.py", "--help"],
    }
    return run_scripts(scenarios, tmp / "logs", preload=PRELOAD), tmp


def test_figures_are_sane(runs):
    results, tmp = runs
    assert results["tiny"].returncode == 0, results["tiny"]
    report = json.loads((tmp / "tiny.json").read_text())
    rows = {r["index"]: r for r in report["runs"][str(N)]["indexes"]}
    assert list(rows) == ["flat", "hnsw", "ivfpq-m4", "ivfpq-m8"]
    flat = rows["flat"]
    assert flat["search"] == [{"setting": "exact", "qps_batch": flat["search"][0]["qps_batch"],
                               f"recall_at_{K}": 1.0, f"real_recall_at_{K}": 1.0}]
    assert flat["index_bytes"] >= N * 32 * 4 and flat["bytes_per_vector"] >= 32 * 4
    for name in ("ivfpq-m4", "ivfpq-m8"):
        assert rows[name]["index_bytes"] < flat["index_bytes"] / 2
    assert rows["ivfpq-m4"]["index_bytes"] < rows["ivfpq-m8"]["index_bytes"]
    assert [s["setting"] for s in rows["hnsw"]["search"]] == ["efSearch=16", "efSearch=64"]
    assert [s["setting"] for s in rows["ivfpq-m8"]["search"]] == ["nprobe=2", "nprobe=64"]
    for row in rows.values():
        assert row["build_s"] >= 0 and row["dir_bytes"] > row["index_bytes"]
        assert set(row["rss_mib"]) == {"ram", "mmap"}
        for s in row["search"]:
            assert s["qps_batch"] > 0 and 0 <= s[f"recall_at_{K}"] <= 1
            assert (s.get("qps_single", 1) > 0) and (("qps_single" in s) == (row is not flat))
    assert rows["ivfpq-m8"]["nlist"] <= N // 39
    assert len(report["targets"]) == 2 and all(t.startswith(("PASS", "MISS")) for t in report["targets"])
    out = results["tiny"].stdout
    assert "efSearch=64" in out and "nprobe=64" in out and report["targets"][0] in out
    assert not list((tmp / "work" / f"n{N}").glob("index-*"))  # measured, then removed


def test_corpus_holds_the_real_vectors_and_truth_is_exact(runs):
    results, tmp = runs
    assert results["tiny"].returncode == 0, results["tiny"]
    work = tmp / "work" / f"n{N}"
    vectors = np.load(work / "vectors.npy")
    ids = Dataset.from_file(str(work / "passages.arrow"))["id"]
    assert vectors.shape == (N, 32) and vectors.dtype == np.float32 and len(ids) == N
    real = DenseIndex.load(tmp / "real")
    real_ids = list(real.passages["id"])
    rows = [i for i, pid in enumerate(ids) if not pid.startswith("synthetic-")]
    assert sorted(ids[i] for i in rows) == sorted(real_ids)
    assert len(rows) == 8 and max(rows) - min(rows) > N // 4  # spread out, not bunched
    np.testing.assert_array_equal(vectors[rows], real.vectors(np.array(
        [real_ids.index(ids[i]) for i in rows])))
    norms = np.linalg.norm(vectors, axis=1)  # the real ones all have one length: so do the others
    assert np.ptp(norms[rows]) < 1e-3 * norms[rows].mean()
    np.testing.assert_allclose(norms, norms[rows].mean(), rtol=1e-4)
    assert np.std(vectors, axis=0).min() > 0  # distractors are not copies of the real rows
    queries = np.load(tmp / "work" / "queries.npy")
    truth = np.load(work / f"truth-k{K}.npy")
    scores = queries @ vectors.T  # (Q, N)
    assert truth.shape == (8, K) and all(len(set(t)) == K for t in truth)
    np.testing.assert_allclose(np.take_along_axis(scores, truth, 1),
                               -np.sort(-scores, axis=1)[:, :K], rtol=1e-5)  # the top k, best first


def test_second_run_reuses_the_corpus(runs):
    results, tmp = runs
    assert results["again"].returncode == 0, results["again"]
    assert results["again"].stderr.count("reusing") == 4  # queries, vectors, passages, truth
    first = json.loads((tmp / "tiny.json").read_text())["runs"][str(N)]["indexes"][0]
    again = json.loads((tmp / "again.json").read_text())["runs"][str(N)]["indexes"]
    assert [r["index"] for r in again] == ["flat"]
    assert again[0]["index_bytes"] == first["index_bytes"]
    assert again[0]["search"][0][f"recall_at_{K}"] == 1.0


@pytest.mark.parametrize("name,message", [
    ("bad_type", "--types"), ("bad_size", "--sizes"), ("bad_index", "nowhere"),
    ("bad_pq_m", "--pq_m")])
def test_bad_input_is_refused_before_any_work(runs, name, message):
    results, tmp = runs
    assert message in results[name].error_line()
    assert not (tmp / "bad-work").exists()


def test_help_explains(runs):
    results, _ = runs
    assert results["help"].returncode == 0, results["help"]
    for words in ("--real_index", "--hnsw_max", "recall@k", "MEASUREMENTS", "PASS/MISS"):
        assert words in results["help"].stdout


def search(qps: float, recall: float, name: str = "x") -> dict:
    return {"setting": name, "qps_batch": qps, "recall_at_10": recall}


def test_targets_pass_and_miss():
    script = Path(__file__).resolve().parents[2] / "scripts" / "perf_scale.py"
    sys.path.insert(0, str(script.parent))  # as python SCRIPT does: its folder's modules import
    try:
        targets = runpy.run_path(str(script), run_name="perf_scale")["targets"]
    finally:
        sys.path.remove(str(script.parent))

    def report(hnsw: list[tuple[float, float]], ivfpq_bytes: int, ivfpq_recall: float) -> dict:
        return {"runs": {"1000": {"indexes": [
            {"index": "flat", "index_bytes": 800, "search": [search(10.0, 1.0, "exact")]},
            {"index": "hnsw", "search": [search(q, r, f"efSearch={i}") for i, (q, r) in enumerate(hnsw)]},
            {"index": "ivfpq-m48", "index_bytes": ivfpq_bytes, "search": [search(1e4, ivfpq_recall)]},
            {"index": "ivfpq-m96", "skipped": "not built"}]}}}

    good = targets(report([(500.0, 0.9), (150.0, 0.96)], 100, 0.9), 10)
    assert [line[:4] for line in good] == ["PASS", "PASS"]
    assert "15 x flat's (hnsw efSearch=1" in good[0] and "0.125 x flat's (ivfpq-m48 x" in good[1]
    slow = targets(report([(500.0, 0.9), (90.0, 0.99)], 101, 0.95), 10)  # 9x; just over 1/8
    assert [line[:4] for line in slow] == ["MISS", "MISS"]
    low = targets(report([(500.0, 0.94)], 10, 0.89), 10)
    assert all(line.startswith("MISS") and line.endswith("no setting reaches that recall") for line in low)
    flat_only = report([], 10, 0.89)
    flat_only["runs"]["1000"]["indexes"] = flat_only["runs"]["1000"]["indexes"][:1]
    assert all(line.startswith("n/a") and line.endswith("not measured in this run")
               for line in targets(flat_only, 10))
