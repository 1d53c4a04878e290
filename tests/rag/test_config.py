"""rag_config.json: written and read back, the files of older versions read too, and bad ones
refused by file name."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from rag.common.errors import UserError
from rag.common.options import updated
from rag.config import DecodeConfig, RagConfig, read_config, write_config
from retriever.fusion import FusionConfig, RetrievalConfig

CONFIG = RagConfig(mode="token", k=3, decode=DecodeConfig(num_beams=2, max_length=9,
                                                         length_penalty=0.5, constrain="spans"),
                   score_scale=5.0, index="idx")


def test_a_written_config_reads_back_equal(tmp_path):
    write_config(tmp_path, CONFIG, RetrievalConfig("hybrid", {"fusion_weight": 0.0}, mmap=True))
    config, retrieval = read_config(tmp_path)
    assert config == CONFIG and retrieval == RetrievalConfig("hybrid", {"fusion_weight": 0.0})
    saved = json.loads((tmp_path / "rag_config.json").read_text())
    assert saved["decode"]["max_length"] == 9
    # the file's format: a fusion setting left to the index is "", null or 0; mmap is not saved
    assert saved["retrieval"] == {"retrieval": "hybrid", "fusion": "", "fusion_weight": 0.0,
                                  "candidates": 0}


@pytest.mark.parametrize("retrieval, want", [
    ({}, RetrievalConfig()),
    ({"retrieval": "", "fusion": "", "fusion_weight": None, "candidates": 0}, RetrievalConfig()),
    ({"retrieval": "sparse", "fusion": "rrf", "fusion_weight": 0.0, "candidates": 20},
     RetrievalConfig("sparse", {"fusion": "rrf", "fusion_weight": 0.0, "candidates": 20})),
    ({"fusion_weight": 0.3}, RetrievalConfig(fusion_changes={"fusion_weight": 0.3})),
])
def test_saved_retrieval_settings_left_to_the_index_read_as_the_index_s(tmp_path, retrieval, want):
    (tmp_path / "rag_config.json").write_text(json.dumps({**asdict(CONFIG), "retrieval": retrieval}))
    assert read_config(tmp_path)[1] == want


@pytest.mark.parametrize("retrieval", [{"candidates": -1}, {"fusion": "max"}, {"beams": 2}, [1]])
def test_bad_retrieval_settings_are_refused_naming_the_file(tmp_path, retrieval):
    (tmp_path / "rag_config.json").write_text(json.dumps({**asdict(CONFIG), "retrieval": retrieval}))
    with pytest.raises(UserError, match="rag_config.json: bad retrieval settings"):
        read_config(tmp_path)


def test_a_saved_retrieval_config_changed_by_name_keeps_the_rest():
    saved = RetrievalConfig("dense", {"candidates": 7})
    assert updated(saved, fusion_weight=0.3, mmap=True) == RetrievalConfig(
        "dense", {"candidates": 7, "fusion_weight": 0.3}, mmap=True)
    assert updated(saved, retrieval="").fusion_config({"fusion": "rrf"}) == FusionConfig(
        "rrf", candidates=7)
    with pytest.raises(UserError, match="--candidates"):
        updated(saved, candidates=0)


def test_an_older_flat_config_reads_into_decode(tmp_path):
    """Before RagConfig held a DecodeConfig, the search settings stood beside the others, the
    answer length as max_answer_length, the score scale as doc_score_scale; other search settings
    were the defaults."""
    old = {k: v for k, v in asdict(CONFIG).items() if k not in ("decode", "score_scale")}
    old.update(num_beams=2, max_answer_length=9, constrain="spans", doc_score_scale=5.0)
    (tmp_path / "rag_config.json").write_text(json.dumps(old))
    config, _ = read_config(tmp_path)
    assert config.decode == DecodeConfig(num_beams=2, max_length=9, constrain="spans")
    assert (config.mode, config.k, config.score_scale, config.index) == ("token", 3, 5.0, "idx")


def test_changes_may_name_search_settings_as_fields(tmp_path):
    write_config(tmp_path, CONFIG, RetrievalConfig())
    config, _ = read_config(tmp_path, num_beams=1, constrain="none", max_answer_length=5, k=2)
    assert config.decode == DecodeConfig(num_beams=1, max_length=5, length_penalty=0.5)
    assert config.k == 2


@pytest.mark.parametrize("decode, fragment", [
    ({"num_beams": 0}, "--num_beams"),
    ({"max_length": 2}, "at least 3"),
    ({"constrain": "words"}, "--constrain"),
    ({"beams": 2}, "wrong type"),
    ("four beams", "not a valid RAG config"),
])
def test_bad_search_settings_are_refused_naming_the_file(tmp_path, decode, fragment):
    saved = {**asdict(CONFIG), "decode": decode}
    (tmp_path / "rag_config.json").write_text(json.dumps(saved))
    with pytest.raises(UserError, match=fragment) as err:
        read_config(tmp_path)
    assert "rag_config.json" in str(err.value)
