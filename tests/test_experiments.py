"""docs/experiments/*.py, the scripts behind figures of docs/benchmarks.md and docs/scaling.md, still
run against the library: each once on the tiny fixtures, offline, its output checked for shape
only (the figures need the real data and models)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

from retriever.batch_encode import EncodeConfig
from retriever.build import BuildConfig, build_index
from retriever.encoder import Encoder
from retriever.index import DenseIndex

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "docs" / "experiments").glob("*.py"))


@pytest.fixture(scope="module")
def data(tmp_path_factory, passages, squad_questions, tiny_encoder_dir):
    """A folder as ``../shared/data/squad-open`` is laid out, small: corpus.tsv (the fixture
    passages and 24 others, so that top-20 and the negative pools are defined), train.json and
    dev.json (the fixture SQuAD questions); and an index of that corpus built with the tiny
    encoder."""
    out = tmp_path_factory.mktemp("experiments")
    extra = [{"id": f"{p['id']}-{i}", "title": p["title"], "text": f"{p['text']} Note {i}."}
             for i in range(3) for p in passages]
    quoted = ['"' + p["text"].replace('"', '""') + '"' for p in passages + extra]  # as csv quotes
    lines = [f"{p['id']}\t{text}\t{p['title']}" for p, text in zip(passages + extra, quoted, strict=True)]
    (out / "corpus.tsv").write_text("\n".join(["id\ttext\ttitle", *lines]) + "\n")
    for name in ("train.json", "dev.json"):
        (out / name).write_text(squad_questions.read_text())
    encoder = Encoder.from_pretrained(str(tiny_encoder_dir), max_length=64)
    build_index(out / "corpus.tsv", encoder, out / "idx", BuildConfig(encode=EncodeConfig(progress=False)))
    return out


def run(name: str, args: list, monkeypatch, capsys) -> list[str]:
    """Run docs/experiments/<name>.py with ``args`` as ``python`` runs it; its lines of output."""
    monkeypatch.setattr(sys, "argv", [name, *map(str, args)])
    runpy.run_path(str(ROOT / "docs" / "experiments" / f"{name}.py"), run_name="__main__")
    return capsys.readouterr().out.splitlines()


def test_every_experiment_is_smoke_tested():
    assert EXPERIMENTS == sorted(name[len("test_"):] for name in globals()
                                 if name.startswith("test_") and name[5:] in EXPERIMENTS)


def test_hybrid_tuning(data, tiny_encoder_dir, monkeypatch, capsys):
    lines = run("hybrid_tuning", [data / "idx", data / "dev.json", tiny_encoder_dir], monkeypatch, capsys)
    header, *rows = [line.split("\t") for line in lines]
    assert header[-3:] == ["top-1", "top-5", "top-20"] and len(rows) == 2 * 12 - 1 + 7 * 2 + 5
    assert {row[0] for row in rows} == {"1", "2", "3"}
    assert all(0 <= float(x) <= 100 for row in rows for x in row[-3:])


def test_lexical_ceiling(data, monkeypatch, capsys):
    lines = run("lexical_ceiling", [data / "idx", data / "dev.json"], monkeypatch, capsys)
    reports = [json.loads(line) for line in lines]
    assert len(reports) == 2 + 3 + 3
    assert all(set(r["top_k_accuracy"]) == {"1", "5", "20"} for r in reports)


def test_reader_oracle(data, tiny_encoder_dir, tmp_path, monkeypatch, capsys):
    from generator.warmstart import warm_start_bart
    from rag.config import DecodeConfig, RagConfig
    from rag.model import RagModel

    generator, tokenizer = warm_start_bart(tiny_encoder_dir, tmp_path / "bart", cross_attention="copy_self")
    config = RagConfig(k=2, max_input_length=64, decode=DecodeConfig(num_beams=1, max_length=8),
                       index=str(data / "idx"))
    encoder = Encoder.from_pretrained(str(tiny_encoder_dir), max_length=64)
    RagModel(encoder, generator, tokenizer, DenseIndex.load(data / "idx"), config).save_pretrained(
        tmp_path / "model")
    lines = run("reader_oracle", [tmp_path / "model", data / "idx", "0", "30:centred", "30:random",
                                  "--n", "8", "--dev", data / "dev.json"], monkeypatch, capsys)
    assert len(lines) == 3 and all(line.endswith(" on 8") for line in lines), lines


def test_wise_ft(data, tiny_encoder_dir, tmp_path, monkeypatch, capsys):
    index = DenseIndex.load(data / "idx")
    trained = Encoder.from_pretrained(str(tiny_encoder_dir), max_length=64)
    with torch.no_grad():  # stands in for training: other weights, trained against the index
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))
    trained.save_pretrained(tmp_path / "qenc",
                            paired_context_fingerprint=index.manifest["encoder"]["fingerprint"])
    lines = run("wise_ft", [data / "idx", tmp_path / "qenc", 0, 0.5, 1, "--dev", data / "dev.json"],
                monkeypatch, capsys)
    reports = [json.loads(line) for line in lines]
    assert [r["alpha"] for r in reports] == [0, 0.5, 1]
    assert all(set(r["top_k_accuracy"]) == {"1", "5", "20"} for r in reports)


def test_zeroshot_family(data, tiny_encoder_dir, monkeypatch, capsys):
    lines = run("zeroshot_family", ["first", "first_and_last", "--data", data, "--model", tiny_encoder_dir,
                                    "--negatives", 4, "--max_length", 64], monkeypatch, capsys)
    assert [line.split()[:2] for line in lines] == [["first", "l=1"], ["first", "l=2"],
                                                   ["first_and_last", "l=1"], ["first_and_last", "l=2"]]
