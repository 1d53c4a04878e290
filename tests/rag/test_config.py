"""rag_config.json: written and read back, the files of older versions read too, and bad ones
refused by file name."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from rag.common.errors import UserError
from rag.config import DecodeConfig, RagConfig, read_config, write_config
from retriever.fusion import RetrievalConfig

CONFIG = RagConfig(mode="token", k=3, decode=DecodeConfig(num_beams=2, max_length=9,
                                                         length_penalty=0.5, constrain="spans"),
                   score_scale=5.0, index="idx")


def test_a_written_config_reads_back_equal(tmp_path):
    write_config(tmp_path, CONFIG, RetrievalConfig(retrieval="hybrid"))
    config, retrieval = read_config(tmp_path)
    assert config == CONFIG and retrieval.retrieval == "hybrid"
    assert json.loads((tmp_path / "rag_config.json").read_text())["decode"]["max_length"] == 9


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


def test_overrides_may_name_search_settings_as_fields(tmp_path):
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
