"""Encoder: pooling against hand computations, DPR checkpoints, save/load, identity (fingerprint)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rag.common.errors import UserError
from retriever.encoder import CONFIG_NAME, Encoder

TEXTS = ["What is the capital of France?", "Paris", "the theory of relativity was developed by Einstein"]


def embed(enc: Encoder, texts=TEXTS) -> torch.Tensor:
    tok = enc.tokenize(texts)
    with torch.no_grad():
        return enc(tok["input_ids"], tok["attention_mask"])


@pytest.mark.parametrize("overrides", [{}, {"pooling": "mean", "normalize": True, "projection_dim": 8}])
def test_save_load_round_trip(tiny_encoder_dir, tmp_path, overrides):
    enc = Encoder.from_pretrained(str(tiny_encoder_dir), **overrides).eval()
    enc.paired_context_fingerprint = "abc"
    enc.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / CONFIG_NAME).is_file()
    again = Encoder.from_pretrained(str(tmp_path / "saved")).eval()
    assert again.config == enc.config
    assert again.dim == enc.dim == (overrides.get("projection_dim") or 32)
    assert again.paired_context_fingerprint == "abc"
    assert again.fingerprint == enc.fingerprint
    torch.testing.assert_close(embed(again), embed(enc), rtol=0, atol=0)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_save_replaces_existing_directory(tiny_encoder_dir, tmp_path):
    enc = Encoder.from_pretrained(str(tiny_encoder_dir))
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "stale.txt").write_text("old")
    enc.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / "stale.txt").exists()
    assert Encoder.from_pretrained(str(tmp_path / "saved")).fingerprint == enc.fingerprint


def test_cls_pooling_is_first_token(tiny_encoder_dir):
    enc = Encoder.from_pretrained(str(tiny_encoder_dir)).eval()
    assert enc.config.pooling == "cls"
    tok = enc.tokenize(TEXTS)
    with torch.no_grad():
        states = enc.backbone(input_ids=tok["input_ids"],
                              attention_mask=tok["attention_mask"]).last_hidden_state
    torch.testing.assert_close(embed(enc), states[:, 0])


def test_mean_pooling_equals_manual_masked_mean(tiny_encoder_dir):
    enc = Encoder.from_pretrained(str(tiny_encoder_dir), pooling="mean").eval()
    tok = enc.tokenize(TEXTS)
    mask = tok["attention_mask"]
    assert (mask == 0).any()  # texts of different lengths: padding must be left out
    with torch.no_grad():
        states = enc.backbone(input_ids=tok["input_ids"], attention_mask=mask).last_hidden_state
    expected = []
    for i in range(len(TEXTS)):
        real = [states[i, t] for t in range(mask.shape[1]) if mask[i, t] == 1]
        expected.append(sum(real) / len(real))
    torch.testing.assert_close(embed(enc), torch.stack(expected))


def test_normalize_gives_unit_norm(tiny_encoder_dir):
    plain = embed(Encoder.from_pretrained(str(tiny_encoder_dir), pooling="mean").eval())
    unit = embed(Encoder.from_pretrained(str(tiny_encoder_dir), pooling="mean", normalize=True).eval())
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(len(TEXTS)))
    assert not torch.allclose(plain.norm(dim=-1), torch.ones(len(TEXTS)))
    torch.testing.assert_close(unit, plain / plain.norm(dim=-1, keepdim=True))


def test_passages_are_tokenised_as_title_sep_text(tiny_encoder_dir):
    enc = Encoder.from_pretrained(str(tiny_encoder_dir))
    ids = enc.tokenize(["the river seine"], ["paris"])["input_ids"][0].tolist()
    tok = enc.tokenizer
    assert ids == ([tok.cls_token_id] + tok.convert_tokens_to_ids(["paris"]) + [tok.sep_token_id]
                   + tok.convert_tokens_to_ids(["the", "river", "seine"]) + [tok.sep_token_id])


def test_max_length_truncates(tiny_encoder_dir):
    enc = Encoder.from_pretrained(str(tiny_encoder_dir), max_length=5)
    assert enc.tokenize([" ".join(["paris"] * 50)])["input_ids"].shape == (1, 5)


@pytest.mark.parametrize("model_cls,projection_dim", [
    ("DPRQuestionEncoder", 0), ("DPRQuestionEncoder", 16), ("DPRContextEncoder", 0)])
def test_dpr_checkpoint_uses_pooler_output(tiny_encoder_dir, tmp_path, model_cls, projection_dim):
    import transformers
    from transformers import AutoTokenizer, DPRConfig

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_encoder_dir))
    config = DPRConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                       projection_dim=projection_dim)
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config).eval()
    model.save_pretrained(str(tmp_path / "dpr"))
    tokenizer.save_pretrained(str(tmp_path / "dpr"))

    enc = Encoder.from_pretrained(str(tmp_path / "dpr")).eval()
    assert enc.config.pooling == "pooler"
    assert type(enc.backbone).__name__ == model_cls
    assert enc.dim == (projection_dim or 32)
    tok = enc.tokenize(TEXTS)
    with torch.no_grad():
        expected = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).pooler_output
    assert expected.shape == (len(TEXTS), enc.dim)
    torch.testing.assert_close(embed(enc), expected, rtol=0, atol=0)


def test_fingerprint_is_weight_identity(tiny_encoder_dir, tiny_encoder_dir_16, tmp_path):
    a = Encoder.from_pretrained(str(tiny_encoder_dir))
    b = Encoder.from_pretrained(str(tiny_encoder_dir))
    assert a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 16
    assert Encoder.from_pretrained(str(tiny_encoder_dir_16)).fingerprint != a.fingerprint
    assert Encoder.from_pretrained(str(tiny_encoder_dir), pooling="mean").fingerprint != a.fingerprint

    before = b.fingerprint
    with torch.no_grad():
        b.backbone.encoder.layer[1].output.dense.weight[0, 0] += 1e-3
    assert b.fingerprint == before  # cached until told the weights changed
    b.refresh_fingerprint()
    assert b.fingerprint != before
    b.save_pretrained(tmp_path / "changed")
    assert Encoder.from_pretrained(str(tmp_path / "changed")).fingerprint == b.fingerprint


def test_fingerprint_ignores_max_length(tiny_encoder_dir):
    # max_length is a tokenisation setting: an index built with --max_length 128 must accept the
    # same encoder loaded with its default max_length as a question encoder.
    a = Encoder.from_pretrained(str(tiny_encoder_dir))
    b = Encoder.from_pretrained(str(tiny_encoder_dir), max_length=64)
    assert a.fingerprint == b.fingerprint
    # the default 256 is cut to the tiny BERT's 128 positions; asking for more is refused
    assert a.identity()["max_length"] == 128 and b.identity()["max_length"] == 64
    with pytest.raises(UserError, match="--max_length 300 .*position table \\(128"):
        Encoder.from_pretrained(str(tiny_encoder_dir), max_length=300)


def test_identity_records_what_an_index_needs(tiny_encoder_dir):
    enc = Encoder.from_pretrained(str(tiny_encoder_dir))
    ident = enc.identity()
    assert ident["name"] == str(tiny_encoder_dir)
    assert ident["dim"] == 32 and ident["fingerprint"] == enc.fingerprint
    assert ident["pooling"] == "cls" and ident["normalize"] is False


def test_bad_inputs(tiny_encoder_dir, tmp_path):
    with pytest.raises(UserError, match="pooling"):
        Encoder.from_pretrained(str(tiny_encoder_dir), pooling="weighted")
    with pytest.raises(UserError, match="does not exist"):
        Encoder.from_pretrained(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="cannot load encoder"):
        Encoder.from_pretrained(str(tmp_path / "empty"))


def test_embeddings_are_deterministic_numbers(tiny_encoder_dir):
    e = embed(Encoder.from_pretrained(str(tiny_encoder_dir)).eval()).numpy()
    assert e.dtype == np.float32 and np.isfinite(e).all() and e.shape == (len(TEXTS), 32)


def test_backbone_stored_as_a_reference(tiny_encoder_dir, tmp_path):
    """An unchanged tower with a lexical head is stored as head + reference, and loads the same."""
    enc = Encoder.from_pretrained(str(tiny_encoder_dir))
    head = enc.add_lexical_head()
    with torch.no_grad():
        head.weight.normal_()
    enc.save_pretrained(tmp_path / "ref", backbone_from=str(tiny_encoder_dir))
    assert not (tmp_path / "ref" / "model.safetensors").exists()
    loaded = Encoder.from_pretrained(str(tmp_path / "ref"))
    tok = enc.tokenize(["what is the capital of france", "who wrote hamlet"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**tok), enc(**tok), atol=0, rtol=0)
    assert loaded.fingerprint == enc.fingerprint
    enc.save_pretrained(tmp_path / "half", half=True)  # the tower rounded to float16 still counts
    Encoder.from_pretrained(str(tmp_path / "half")).save_pretrained(
        tmp_path / "ref-half", backbone_from=str(tiny_encoder_dir))
    assert not (tmp_path / "ref-half" / "model.safetensors").exists()
    with torch.no_grad():  # a trained tower cannot be stored as a reference
        next(enc.backbone.parameters()).add_(1.0)
    with pytest.raises(UserError, match="weights differ"):
        enc.save_pretrained(tmp_path / "changed", backbone_from=str(tiny_encoder_dir))
    assert not (tmp_path / "changed").exists()
