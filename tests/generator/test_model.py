"""Loading and (atomically) saving the generator."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from transformers import BartConfig, BartForConditionalGeneration

from generator.model import load_generator, save_generator
from rag.common.errors import UserError


@pytest.fixture(scope="module")
def tiny_bart(bart_tokenizer):
    config = BartConfig(
        vocab_size=len(bart_tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    return BartForConditionalGeneration(config).eval()


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(["the question?", "x"], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch, decoder_input_ids=batch["input_ids"][:, :3]).logits


def test_round_trip(tiny_bart, bart_tokenizer, tmp_path):
    out = save_generator(tiny_bart, bart_tokenizer, tmp_path / "gen")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["gen"]  # no temporary directory left behind
    model, tokenizer = load_generator(out)
    assert model.dtype == torch.float32 and not model.training
    assert torch.equal(_logits(model, tokenizer), _logits(tiny_bart, bart_tokenizer))
    assert model.lm_head.weight.data_ptr() == model.model.shared.weight.data_ptr()


def test_fp16_save(tiny_bart, bart_tokenizer, tmp_path):
    out = save_generator(tiny_bart, bart_tokenizer, tmp_path / "gen", dtype=torch.float16)
    assert tiny_bart.dtype == torch.float32  # the caller's model is untouched
    with safe_open(out / "model.safetensors", "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
        assert "model.shared.weight" in f.keys() and "lm_head.weight" not in f.keys()  # tied: once
    assert dtypes == {"F16"}
    model, tokenizer = load_generator(out)
    assert model.dtype == torch.float32
    torch.testing.assert_close(
        _logits(model, tokenizer), _logits(tiny_bart, bart_tokenizer), atol=1e-2, rtol=1e-2
    )
    assert load_generator(out, dtype="auto")[0].dtype == torch.float16


def test_overwrite(tiny_bart, bart_tokenizer, tmp_path):
    out = tmp_path / "gen"
    save_generator(tiny_bart, bart_tokenizer, out)
    (out / "stale.txt").write_text("from an older save")
    save_generator(tiny_bart, bart_tokenizer, out)  # a model directory may be replaced
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("not a model")
    with pytest.raises(UserError, match="refusing"):
        save_generator(tiny_bart, bart_tokenizer, other)
    assert (other / "keep.txt").exists()


def test_load_errors(tmp_path, tiny_bert_dir):
    with pytest.raises(UserError, match="does not exist"):
        load_generator(tmp_path / "missing")
    (tmp_path / "file.bin").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        load_generator(tmp_path / "file.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_generator(tmp_path / "empty")
    with pytest.raises(UserError, match="expected 'bart'"):
        load_generator(tiny_bert_dir)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot load"):
        load_generator(tmp_path / "broken")
