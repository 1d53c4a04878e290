"""scripts/make_starter_generator.py: --help, a run on the tiny BERT, the one-line user error."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from generator.model import load_generator
from rag.commands.cli import run

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_starter_generator.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_starter_generator", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the string annotations through it
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_help(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--help"])
    assert exit_info.value.code == 0
    assert "--decoder_layers" in capsys.readouterr().out


def test_writes_a_loadable_generator(script, tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "starter"
    script.main(["--bert", str(tiny_bert_dir), "--out_dir", str(out), "--decoder_layers", "2",
                 "--cross_attention", "copy_self", "--fp16"])  # fmt: skip
    assert "wrote" in capsys.readouterr().out
    model, _ = load_generator(out)
    assert model.config.decoder_layers == 2 and model.dtype == torch.float32


def test_user_error_is_one_line_and_exit_2(script, tmp_path, capsys):
    missing, out = tmp_path / "missing", tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run(lambda: script.main(["--bert", str(missing), "--out_dir", str(out)]))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: model directory {missing} does not exist"
    ]
    assert not out.exists()
