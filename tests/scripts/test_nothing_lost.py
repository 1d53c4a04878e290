"""Nothing the user owns is lost (rag.common.artefact): ``--overwrite`` replaces only our own
artefact of the kind being written, no output lands on an input, and no two outputs collide.

Every case exits with status 2 and one ``error:`` line naming the path or flag, before any work,
and the whole fixture tree is byte-identical before and after.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from rag.common.artefact import check_output_dir, write_marker
from rag.common.errors import UserError
from rag.config import DecodeConfig, RagConfig
from rag.model import RagModel
from retriever.batch_encode import EncodeConfig
from retriever.build import BuildConfig, build_index
from retriever.encoder import Encoder
from retriever.index import DenseIndex
from retriever.shards import split_index

PRELOAD = ["retriever.build", "retriever.evaluation", "retriever.search", "retriever.train",
           "rag.model", "rag.benchmark", "rag.train",
           "transformers:AutoConfig,AutoModel,AutoTokenizer,BertModel,BertTokenizerFast"]
KINDS = ("idx", "sharded", "model", "qenc", "export", "webapp")  # webapp: a foreign manifest.json


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a digest of its bytes (directories and links marked)."""
    out = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        if p.is_symlink():
            out[key] = "link:" + os.readlink(p)
        elif p.is_file():
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[key] = "dir"
    return out


def cases(d: Path, corpus: Path, questions: Path, encoder: Path) -> dict[str, tuple[list, list]]:
    """``{name: (argv, fragments the error line must hold)}``."""
    def index_onto(target):
        return ["ragqa", "index", "--corpus", corpus, "--encoder", encoder, "--out", d / target,
                "--overwrite"]

    def train_onto(target):
        return ["ragqa", "train-retriever", "--train", questions, "--index", d / "idx", "--out",
                d / target, "--overwrite"]

    def finetune_onto(target):
        return ["ragqa", "finetune", "--train", questions, "--index", d / "idx", "--generator",
                d / "model" / "generator", "--out", d / target, "--overwrite"]

    def export_onto(target):
        return ["ragqa", "export", "--model", d / "model", "--out", d / target,
                "--overwrite"]

    def evaluate(*extra):
        return ["ragqa", "eval-retrieval", "--index", d / "idx", "--questions", questions, *extra]

    out = {}
    for writer, kind, make in (("index", "idx", index_onto), ("train", "qenc", train_onto),
                               ("finetune", "model", finetune_onto),
                               ("export", "export", export_onto)):
        for target in KINDS:
            if target != kind:
                out[f"{writer}_onto_{target}"] = (make(target), [str(d / target)])
    out["split_onto_index"] = (["ragqa", "index", "--split", d / "idx", "--shards", "2", "--out",
                                d / "idx2", "--overwrite"], ["idx2", "not a sharded index"])
    out |= {
        "bench_json_onto_questions": (["ragqa", "benchmark", "--model", d / "model", "--questions",
                                       questions, "--json", questions], ["--json", "--questions"]),
        "eval_json_onto_questions": (evaluate("--json", questions), ["--json", "--questions"]),
        "index_json_onto_corpus": (["ragqa", "index", "--corpus", corpus, "--encoder", encoder,
                                    "--out", d / "new-idx", "--json", corpus], ["--json", "--corpus"]),
        "eval_results_and_trec": (evaluate("--results", d / "r.json", "--trec", d / "r.json"),
                                  ["--results", "--trec"]),
        "eval_json_and_results": (evaluate("--json", d / "e.json", "--results", d / "e.json"),
                                  ["--json", "--results"]),
        "eval_json_through_symlink": (evaluate("--json", d / "link.json"), ["--json", "--questions"]),
        "eval_json_through_dotdot": (evaluate("--json", d / "sub" / ".." / questions.name),
                                     ["--json", "--questions"]),
        "eval_json_into_index": (evaluate("--json", d / "idx" / "eval.json"),
                                 ["--json", "is inside", "--index"]),
        "finetune_out_holds_generator": (["ragqa", "finetune", "--train", questions, "--index", d / "idx",
                                          "--generator", d / "model" / "generator", "--out",
                                          d / "model", "--overwrite"],
                                         ["--out", "holds", "--generator"]),
    }
    return out


@pytest.fixture(scope="module")
def runs(run_scripts, tmp_path_factory, tiny_encoder_dir, corpus_jsonl, squad_questions):
    d = tmp_path_factory.mktemp("nothing-lost")
    encoder = Encoder.from_pretrained(str(tiny_encoder_dir), max_length=64)
    build_index(corpus_jsonl, encoder, d / "idx", BuildConfig(encode=EncodeConfig(progress=False)))
    index = DenseIndex.load(d / "idx")
    split_index(index, d / "sharded", 2)
    DenseIndex.load(d / "idx").save(d / "idx2")  # a second index, for --split onto it
    from generator.warmstart import warm_start_bart

    generator, tokenizer = warm_start_bart(tiny_encoder_dir, d / "bart", cross_attention="copy_self")
    config = RagConfig(k=2, max_input_length=64, decode=DecodeConfig(num_beams=1, max_length=8),
                       index=str(d / "idx"))
    RagModel(encoder, generator, tokenizer, index, config).save_pretrained(d / "model")
    encoder.save_pretrained(d / "qenc")
    (d / "export").mkdir()  # what an export holds besides its marker is not the point here
    (d / "export" / "config.json").write_text("{}")
    write_marker(d / "export", "export")
    (d / "webapp").mkdir()
    (d / "webapp" / "manifest.json").write_text('{"name": "x"}')
    (d / "webapp" / "precious.txt").write_text("p\n")
    # the questions live in the tree too, so that outputs can be aimed at them
    questions = d / "q.json"
    questions.write_bytes(Path(squad_questions).read_bytes())
    corpus = d / "c.jsonl"
    corpus.write_bytes(Path(corpus_jsonl).read_bytes())
    (d / "link.json").symlink_to(questions)
    (d / "sub").mkdir()
    import shutil

    shutil.rmtree(d / "bart")
    all_cases = cases(d, corpus, questions, tiny_encoder_dir)
    before = tree(d)
    logs = tmp_path_factory.mktemp("nothing-lost-logs")
    results = run_scripts({name: argv for name, (argv, _) in all_cases.items()}, logs,
                          preload=PRELOAD, env={"RAGQA_CACHE": str(logs / "cache")})
    return results, all_cases, before, tree(d)


def test_the_tree_is_byte_identical(runs):
    _, _, before, after = runs
    assert after == before


@pytest.mark.parametrize("name", list(cases(Path("d"), Path("c"), Path("q"), Path("e"))))
def test_refused_with_one_line(runs, name):
    results, all_cases, _, _ = runs
    line = results[name].error_line()
    for fragment in all_cases[name][1]:
        assert str(fragment) in line, (name, line)


def test_overwrite_replaces_the_same_kind(tmp_path):
    write_marker(tmp_path, "index")
    check_output_dir(tmp_path, True, "index")  # ours, same kind: allowed
    with pytest.raises(UserError, match="--overwrite"):
        check_output_dir(tmp_path, False, "index")
    with pytest.raises(UserError, match="holds a ragqa index, not a RAG model"):
        check_output_dir(tmp_path, True, "rag-model")
    (tmp_path / "ragqa.json").write_text('{"format": "other", "kind": "index"}')
    with pytest.raises(UserError, match="no ragqa.json of ours"):
        check_output_dir(tmp_path, True, "index")
