"""Shared tiny fixtures, built once per session: a random tiny BERT encoder, a corpus, questions.

The tiny encoder is a 2-layer, 2-head BERT with hidden size 32 and a WordPiece vocabulary made of
the words of the fixtures below, so that tokenisation is meaningful (few ``[UNK]``s) while a forward
pass costs microseconds. Its weights are random (seeded): retrieval *quality* is only tested with the
real all-MiniLM-L6-v2 (``tests/retriever/test_minilm.py``).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
import torch

# Eight short passages with distinct topics; ``python`` holds double quotes (csv quoting) and
# ``amazon`` a run of spaces (SQuAD reader collapses whitespace).
PASSAGES = [
    {"id": "paris", "title": "Paris",
     "text": "Paris is the capital and largest city of France, on the river Seine."},
    {"id": "nile", "title": "Nile",
     "text": "The Nile is a major river in northeast Africa that flows into the Mediterranean Sea."},
    {"id": "einstein", "title": "Albert Einstein",
     "text": "Albert Einstein was a physicist who developed the theory of relativity."},
    {"id": "everest", "title": "Mount Everest",
     "text": "Mount Everest is the highest mountain above sea level, in the Himalayas."},
    {"id": "python", "title": "Python",
     "text": 'Python is a programming language created by Guido van Rossum; it prints "hello, world".'},
    {"id": "jupiter", "title": "Jupiter",
     "text": "Jupiter is the largest planet in the Solar System and has dozens of moons."},
    {"id": "amazon", "title": "Amazon rainforest",
     "text": "The Amazon rainforest covers most of the Amazon basin of South America."},
    {"id": "apollo", "title": "Apollo 11",
     "text": "Apollo 11 landed the first humans on the Moon in July 1969."},
]

# (question, answers, id of the gold passage)
QUESTIONS = [
    ("What is the capital of France?", ["Paris"], "paris"),
    ("Which river flows into the Mediterranean Sea?", ["Nile", "the Nile"], "nile"),
    ("Who developed the theory of relativity?", ["Albert Einstein", "Einstein"], "einstein"),
    ("What is the highest mountain above sea level?", ["Mount Everest"], "everest"),
    ("Who created the Python programming language?", ["Guido van Rossum"], "python"),
    ("What is the largest planet in the Solar System?", ["Jupiter"], "jupiter"),
    ("Which rainforest covers the Amazon basin?", ["Amazon rainforest"], "amazon"),
    ("When did Apollo 11 land on the Moon?", ["July 1969", "1969"], "apollo"),
]



def pytest_configure(config):
    # Tiny indexes gain nothing from OpenMP threads, and on a busy machine faiss's spinning worker
    # threads turn a 0.05 s IVF-PQ build into seconds.
    import faiss

    faiss.omp_set_num_threads(1)


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789")
PUNCT = list(".,;:?!'\"()-")
EXTRA_WORDS = "a an the of in on is was who what which when where how many word".split()


def vocab_words() -> list[str]:
    """WordPiece vocabulary: specials, single characters, ``##`` pieces, fixture words (lowercase)."""
    text = " ".join([p["title"] + " " + p["text"] for p in PASSAGES] + [q for q, _, _ in QUESTIONS])
    words = sorted(set(re.findall(r"[a-z0-9]+", text.lower())) | set(EXTRA_WORDS))
    seen = set(SPECIALS + CHARS + PUNCT)
    words = [w for w in words if w not in seen]
    return SPECIALS + CHARS + PUNCT + ["##" + c for c in CHARS] + words


def make_tiny_bert(out_dir: Path, hidden: int = 32, seed: int = 0) -> Path:
    """Save a random tiny BERT (2 layers, 2 heads) and its WordPiece tokenizer in ``out_dir``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = vocab_words()
    (out_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 ignores ``vocab_file=`` in the constructor (it takes ``vocab=``);
    # from_pretrained reads vocab.txt under both 4.x and 5.x.
    tokenizer = BertTokenizerFast.from_pretrained(str(out_dir))
    assert tokenizer.vocab_size == len(vocab)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=2 * hidden,
                        max_position_embeddings=128)
    BertModel(config).eval().save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """Directory of a tiny random BERT (hidden 32) that ``Encoder.from_pretrained`` loads."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), hidden=32, seed=0)


@pytest.fixture(scope="session")
def tiny_encoder_dir_16(tmp_path_factory) -> Path:
    """Another tiny BERT, of hidden size (and so embedding dimension) 16."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-16"), hidden=16, seed=1)


@pytest.fixture(scope="session")
def dpr_pair_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """A DPR twin pair, saved as transformers saves ``facebook/dpr-*``: a random tiny
    ``DPRContextEncoder`` and ``DPRQuestionEncoder`` (hidden 32, different weights), with the
    fixtures' WordPiece tokenizer. Returns (context dir, question dir)."""
    import transformers
    from transformers import BertTokenizerFast, DPRConfig

    bert = make_tiny_bert(tmp_path_factory.mktemp("dpr-vocab"), hidden=32, seed=5)
    tokenizer = BertTokenizerFast.from_pretrained(str(bert))
    # a wide initialisation, so that random towers still tell texts apart
    config = DPRConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                       initializer_range=0.5)
    dirs = []
    for seed, name in ((6, "DPRContextEncoder"), (7, "DPRQuestionEncoder")):
        out = tmp_path_factory.mktemp(name)
        torch.manual_seed(seed)
        getattr(transformers, name)(config).eval().save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        dirs.append(out)
    return dirs[0], dirs[1]


@pytest.fixture(scope="session", autouse=True)
def no_temporary_leftovers(tmp_path_factory):
    """Every temporary file or directory the library and the scripts make is removed: the session
    sends them to a directory of its own (pytest's own stay where they are) and checks at the end
    that it is empty."""
    import gc
    import os
    import shutil

    tmp_path_factory.getbasetemp()
    root = tempfile.mkdtemp(prefix="ragqa-tests-tmp-")
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = os.environ["TMPDIR"] = root
    yield Path(root)
    gc.collect()
    # torch's compiler keeps its own cache there (torchinductor_<user>): not ours to remove
    leftovers = sorted(n for n in os.listdir(root) if not n.startswith("torchinductor_"))
    tempfile.tempdir = saved[0]
    if saved[1] is None:
        del os.environ["TMPDIR"]
    else:
        os.environ["TMPDIR"] = saved[1]
    shutil.rmtree(root, ignore_errors=True)
    assert not leftovers, f"left in the temporary directory: {leftovers}"


@pytest.fixture
def private_tempdir(tmp_path_factory, monkeypatch) -> Path:
    """Send the library's own temporary files (default Arrow paths, added shards) under pytest's tmp."""
    path = tmp_path_factory.mktemp("tempfiles")
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


@pytest.fixture(scope="session")
def passages() -> list[dict]:
    """The corpus as rows ``{"id", "title", "text"}`` (fresh copies)."""
    return [dict(p) for p in PASSAGES]


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("corpus")


def _tsv_field(value: str) -> str:
    """Quote as csv does: wrap in double quotes, double the ones inside."""
    return '"' + value.replace('"', '""') + '"'


@pytest.fixture(scope="session")
def corpus_tsv(corpus_dir) -> Path:
    """DPR's passage TSV: header ``id<TAB>text<TAB>title``, texts quoted as csv does."""
    lines = ["id\ttext\ttitle"]
    lines += [f"{p['id']}\t{_tsv_field(p['text'])}\t{p['title']}" for p in PASSAGES]
    path = corpus_dir / "corpus.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def corpus_jsonl(corpus_dir) -> Path:
    path = corpus_dir / "corpus.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PASSAGES), encoding="utf-8")
    return path


def squad_json(with_questions: bool) -> dict:
    """SQuAD v1.1 JSON: one article per passage (title with underscores), one paragraph each."""
    qas = {gold: (q, answers) for q, answers, gold in QUESTIONS}
    data = []
    for p in PASSAGES:
        para = {"context": p["text"].replace(" ", "  ", 1) if p["id"] == "amazon" else p["text"]}
        if with_questions:
            q, answers = qas[p["id"]]
            para["qas"] = [{"id": f"q-{p['id']}", "question": q,
                            "answers": [{"text": a, "answer_start": 0} for a in answers]}]
        data.append({"title": p["title"].replace(" ", "_"), "paragraphs": [para]})
    return {"version": "1.1", "data": data}


@pytest.fixture(scope="session")
def corpus_squad(corpus_dir) -> Path:
    """The corpus as SQuAD JSON paragraphs (ids ``"{article}-{paragraph}"``)."""
    path = corpus_dir / "corpus-squad.json"
    path.write_text(json.dumps(squad_json(with_questions=False)), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def squad_questions(corpus_dir) -> Path:
    """SQuAD v1.1 question file over the tiny corpus: one question per paragraph."""
    path = corpus_dir / "questions-squad.json"
    path.write_text(json.dumps(squad_json(with_questions=True)), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def questions() -> list[tuple[str, list[str], str]]:
    """``(question, answers, gold passage id)`` triples matching :func:`squad_questions`."""
    return list(QUESTIONS)
