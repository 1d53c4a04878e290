"""gpu_check.py's CPU subset, as CI runs it: every check it can run here passes, the GPU-only ones
say SKIP, and the summary names them all."""

from __future__ import annotations

import json

PRELOAD = ["torch", "transformers:AutoModel,AutoTokenizer,BartForConditionalGeneration"]


def test_the_cpu_subset_passes(run_scripts, tmp_path):
    out = tmp_path / "check.json"
    results = run_scripts({"cpu": ["gpu_check.py", "--device", "cpu", "--json", out]},
                          tmp_path / "logs", preload=PRELOAD,
                          env={"RAGQA_CACHE": str(tmp_path / "cache")})
    assert results["cpu"].returncode == 0, results["cpu"]
    summary = json.loads(out.read_text())
    status = {name: check["status"] for name, check in summary["checks"].items()}
    assert summary["device"] == "cpu"
    gpu_only = {"encoding_fp16", "finetune_bf16", "finetune_fp16", "train_retriever_fp16"}
    assert {n for n, s in status.items() if s == "SKIP"} == gpu_only
    assert all(s == "PASS" for n, s in status.items() if n not in gpu_only), status
    lines = [line.split()[:2] for line in results["cpu"].stdout.splitlines()]
    assert sorted(name for _, name in lines) == sorted(status)


def test_an_unknown_check_is_one_error_line(run_scripts, tmp_path):
    results = run_scripts({"bad": ["gpu_check.py", "--device", "cpu", "--only", "warp_drive"]},
                          tmp_path / "logs", preload=PRELOAD)
    assert results["bad"].returncode == 2
    assert "warp_drive" in results["bad"].error_line()
