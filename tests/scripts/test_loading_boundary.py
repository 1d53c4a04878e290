"""The loading boundary (rag.common.errors.loading) and the last tracebacks, as a user meets them:
a pickle planted where weights belong, a generator given as a question encoder, a sparse side
linked from outside its index, bad bytes on standard input. Each is one ``error:`` line naming
the file or flag, exit status 2; no planted payload ever runs; the fixture tree is unchanged."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from rag.config import DecodeConfig, RagConfig
from rag.model import RagModel
from retriever.batch_encode import EncodeConfig
from retriever.build import BuildConfig, build_index
from retriever.encoder import Encoder
from retriever.index import DenseIndex
from retriever.sparse import SparseConfig

from .test_nothing_lost import tree

PRELOAD = ["retriever.build", "retriever.evaluation", "retriever.search", "rag.model", "rag.train",
           "transformers:AutoConfig,AutoModel,AutoTokenizer,BertModel,BertTokenizerFast"]


class Payload:
    """What a malicious pickle carries: unpickling it would create ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(weights_dir: Path, marker: Path) -> None:
    """Replace the directory's safetensors weights with a pickle of :class:`Payload`."""
    (weights_dir / "model.safetensors").unlink()
    torch.save({"weight": Payload(marker)}, weights_dir / "pytorch_model.bin")


@pytest.fixture(scope="module")
def runs(run_scripts, tmp_path_factory, tiny_encoder_dir, corpus_jsonl, squad_questions):
    d = tmp_path_factory.mktemp("boundary")
    marker = tmp_path_factory.mktemp("boundary-marker") / "payload-ran"
    encoder = Encoder.from_pretrained(str(tiny_encoder_dir), max_length=64)
    build_index(corpus_jsonl, encoder, d / "idx", BuildConfig(
        encode=EncodeConfig(progress=False), sparse=SparseConfig()))
    from generator.warmstart import warm_start_bart

    generator, tokenizer = warm_start_bart(tiny_encoder_dir, d / "bart", cross_attention="copy_self")
    config = RagConfig(k=2, max_input_length=64, decode=DecodeConfig(num_beams=1, max_length=8),
                       index=str(d / "idx"))
    RagModel(encoder, generator, tokenizer, DenseIndex.load(d / "idx"), config).save_pretrained(
        d / "model")
    shutil.rmtree(d / "bart")
    for name, part in (("pickled-generator", "generator"), ("pickled-qenc", "question_encoder")):
        shutil.copytree(d / "model", d / name)
        plant(d / name / part, marker)
    shutil.copytree(tiny_encoder_dir, d / "pickled-encoder")
    plant(d / "pickled-encoder", marker)
    shutil.copytree(d / "idx", d / "idx-pickled-encoder")
    manifest = json.loads((d / "idx" / "manifest.json").read_text())
    manifest["encoder"]["name"] = str(d / "pickled-encoder")
    (d / "idx-pickled-encoder" / "manifest.json").write_text(json.dumps(manifest))
    shutil.copytree(d / "idx", d / "idx-linked-sparse")
    shutil.move(d / "idx-linked-sparse" / "sparse", d / "elsewhere-sparse")
    (d / "idx-linked-sparse" / "sparse").symlink_to(d / "elsewhere-sparse")
    ckpt = d / "ft.checkpoint"  # a finetune checkpoint whose optimizer state is a pickle
    shutil.copytree(d / "model", ckpt / "model")
    (ckpt / "state.json").write_text(json.dumps({"step": 1, "epoch": 0, "batch": 1, "log": []}))
    torch.save({"state": Payload(marker)}, ckpt / "optimizer.pt")
    shutil.copy(ckpt / "optimizer.pt", ckpt / "scheduler.pt")
    questions = squad_questions

    def ask(model, *extra):
        return ["ragqa", "ask", "Who wrote Hamlet?", "--model", d / model, "--index", d / "idx", *extra]

    cases = {
        "pickled_generator": (ask("pickled-generator"), ["generator/pytorch_model.bin"]),
        "pickled_question_encoder": (ask("pickled-qenc"), ["question_encoder/pytorch_model.bin"]),
        "pickled_encoder_in_manifest": (["ragqa", "eval-retrieval", "--index", d / "idx-pickled-encoder",
                                         "--questions", questions],
                                        ["pickled-encoder/pytorch_model.bin"]),
        "pickled_optimizer_state": (["ragqa", "finetune", "--train", questions, "--index", d / "idx",
                                     "--generator", d / "model" / "generator", "--out", d / "ft",
                                     "--k", "2", "--max_input_length", "64"],
                                    ["ft.checkpoint/optimizer.pt"]),
        "generator_as_question_encoder": (["ragqa", "eval-retrieval", "--index", d / "idx", "--questions",
                                           questions, "--question_encoder",
                                           d / "model" / "generator"],
                                          ["model/generator", "not an encoder"]),
        "sparse_linked_from_outside": (["ragqa", "eval-retrieval", "--index", d / "idx-linked-sparse",
                                        "--questions", questions],
                                       ["idx-linked-sparse", "outside"]),
        "stdin_not_utf8_with_index": (["ragqa", "ask", "--index", d / "idx"], ["standard input",
                                                                         "UTF-8"]),
    }
    before = tree(d)
    logs = tmp_path_factory.mktemp("boundary-logs")
    results = run_scripts({name: argv for name, (argv, _) in cases.items()}, logs, preload=PRELOAD,
                          stdin={"stdin_not_utf8_with_index": b"caf\xe9?\n"},
                          env={"RAGQA_CACHE": str(logs / "cache")})
    return results, cases, before, tree(d), marker


NAMES = ["pickled_generator", "pickled_question_encoder", "pickled_encoder_in_manifest",
         "pickled_optimizer_state", "generator_as_question_encoder", "sparse_linked_from_outside",
         "stdin_not_utf8_with_index"]


@pytest.mark.parametrize("name", NAMES)
def test_one_error_line(runs, name):
    results, cases, _, _, _ = runs
    line = results[name].error_line()
    for fragment in cases[name][1]:
        assert fragment in line, (name, line)


def test_no_payload_ran_and_nothing_changed(runs):
    _, cases, before, after, marker = runs
    assert sorted(cases) == sorted(NAMES)
    assert not marker.exists()
    assert after == before
