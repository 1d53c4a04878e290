"""perf_rag.py as a user runs it, on a tiny random generator: what must hold whatever the machine
is that our decoders give transformers' sequences and our training loss transformers' loss, with
the search settings of the held DecodeConfig (a length penalty, a minimum length) passed to both."""

from __future__ import annotations

import json

import pytest

PRELOAD = ["torch", "transformers:BartConfig,BartForConditionalGeneration,HfArgumentParser"]
TINY = ["--vocab_size", "300", "--d_model", "32", "--layers", "1", "--heads", "2", "--ffn_dim", "64",
        "--questions", "2", "--passages", "2", "--context_length", "16", "--repeats", "1",
        "--target_length", "4", "--max_length", "7", "--loader_steps", "1", "--loader_batch", "2"]


@pytest.fixture(scope="module")
def runs(run_scripts, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("perf-rag")
    scenarios = {
        "tiny": ["perf_rag.py", *TINY, "--length_penalty", "0.5", "--min_length", "3",
                 "--json", tmp / "tiny.json"],
        "constrained": ["perf_rag.py", *TINY, "--constrain", "spans"],
    }
    return run_scripts(scenarios, tmp / "logs", preload=PRELOAD,
                       env={"RAGQA_CACHE": str(tmp / "cache")}), tmp


def test_ours_equal_transformers_under_the_given_search(runs):
    results, tmp = runs
    assert results["tiny"].returncode == 0, results["tiny"]
    report = json.loads((tmp / "tiny.json").read_text())
    assert report["args"]["decode"]["length_penalty"] == 0.5  # the search that was compared
    assert report["sequence_identical"] is True and report["token_identical"] is True
    assert report["sequence_loss_abs_diff"] < 1e-4 and report["token_loss_abs_diff"] < 1e-4
    assert report["sequence_mean_len"] >= 3 - 1  # min_length counts the start symbol
    assert "identical=True" in results["tiny"].stdout
    # the starter's reader steps, batches prepared in the step or by a DataLoader worker
    assert report["loader_same_losses"] is True
    assert report["loader_inline_s_per_step"] > 0 and report["loader_worker_s_per_step"] > 0
    assert 0 < report["loader_prepare_s_per_step"] < report["loader_inline_s_per_step"]


def test_a_search_transformers_cannot_run_is_refused(runs):
    results, _ = runs
    assert results["constrained"].returncode == 2
    assert "--constrain" in results["constrained"].error_line()
