"""BERT -> BART warm start: the BART encoder must reproduce BERT exactly (oracle: BertModel)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, BartForConditionalGeneration, BertModel

from generator.model import apply_layer_norm_eps, load_generator
from generator.warmstart import POSITION_OFFSET, warm_start_bart
from rag.common.errors import UserError

SENTENCES = ["who wrote hamlet? the capital of france is paris.", "paris", "what is 42?"]


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    return warm_start_bart(tiny_bert_dir)


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return warm_start_bart(minilm_dir)


def _bert(path) -> BertModel:
    return BertModel.from_pretrained(path, dtype=torch.float32).eval()


def _batch(tokenizer):
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert not batch["attention_mask"].all()  # the batch must exercise padding
    return batch


def _logits(model, tokenizer) -> torch.Tensor:
    batch = _batch(tokenizer)
    decoder_input_ids = batch["input_ids"][:, :5]
    with torch.no_grad():
        return model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=decoder_input_ids,
        ).logits


@pytest.mark.parametrize(
    ("warm", "bert_dir"), [("tiny", "tiny_bert_dir"), ("minilm", "minilm_dir")]
)
def test_encoder_reproduces_bert(request, warm, bert_dir):
    model, tokenizer = request.getfixturevalue(warm)
    bert = _bert(request.getfixturevalue(bert_dir))
    batch = _batch(tokenizer)
    with torch.no_grad():
        expected = bert(**batch).last_hidden_state  # (B, L, D)
        got = model.get_encoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state  # (B, L, D)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)
    # padded rows are never read downstream; they agree less tightly (rounding in their softmax)
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)


def test_encoder_layers_take_berts_first_layers(tiny_bert_dir, bert_tokenizer):
    model, _ = warm_start_bart(tiny_bert_dir, encoder_layers=2, decoder_layers=1)
    batch = _batch(bert_tokenizer)
    with torch.no_grad():
        expected = _bert(tiny_bert_dir)(**batch, output_hidden_states=True).hidden_states[2]
        got = model.get_encoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


def test_config_follows_bert(tiny, tiny_bert_dir):
    model, tokenizer = tiny
    bert_config = _bert(tiny_bert_dir).config
    c = model.config
    assert (c.d_model, c.encoder_layers, c.decoder_layers) == (32, 3, 3)
    assert c.encoder_attention_heads == c.decoder_attention_heads == 4
    assert c.encoder_ffn_dim == c.decoder_ffn_dim == 64
    assert c.activation_function == "gelu" and c.scale_embedding is False
    assert c.max_position_embeddings == bert_config.max_position_embeddings
    assert c.vocab_size == bert_config.vocab_size == len(tokenizer)
    assert c.layer_norm_eps == bert_config.layer_norm_eps
    assert c.pad_token_id == tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("[PAD]")
    assert c.bos_token_id == tokenizer.bos_token_id == tokenizer.cls_token_id
    assert c.eos_token_id == tokenizer.eos_token_id == tokenizer.sep_token_id
    assert c.decoder_start_token_id == c.forced_eos_token_id == tokenizer.sep_token_id
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == bert_config.layer_norm_eps for m in norms)


def test_decoder_embeddings_and_layers_come_from_bert(tiny_bert_dir):
    model, _ = warm_start_bart(tiny_bert_dir, decoder_layers=2)
    bert = _bert(tiny_bert_dir).state_dict()
    decoder = model.model.decoder
    assert len(decoder.layers) == 2
    pos = (
        bert["embeddings.position_embeddings.weight"]
        + bert["embeddings.token_type_embeddings.weight"][0]
    )
    assert torch.equal(decoder.embed_positions.weight[POSITION_OFFSET:], pos)
    assert torch.equal(model.model.encoder.embed_positions.weight[POSITION_OFFSET:], pos)
    assert not decoder.embed_positions.weight[:POSITION_OFFSET].any()
    assert torch.equal(decoder.layernorm_embedding.bias, bert["embeddings.LayerNorm.bias"])
    for i, layer in enumerate(decoder.layers):
        bert_layer = f"encoder.layer.{i}."
        pairs = [
            (layer.self_attn.q_proj.weight, "attention.self.query.weight"),
            (layer.self_attn.v_proj.bias, "attention.self.value.bias"),
            (layer.self_attn.out_proj.weight, "attention.output.dense.weight"),
            (layer.self_attn_layer_norm.weight, "attention.output.LayerNorm.weight"),
            (layer.fc1.weight, "intermediate.dense.weight"),
            (layer.fc2.bias, "output.dense.bias"),
            (layer.final_layer_norm.bias, "output.LayerNorm.bias"),
        ]
        for ours, key in pairs:
            assert torch.equal(ours, bert[bert_layer + key]), key


def test_cross_attention_random_is_seeded(tiny, tiny_bert_dir):
    model, _ = tiny
    again, _ = warm_start_bart(tiny_bert_dir, seed=0)
    other, _ = warm_start_bart(tiny_bert_dir, seed=1)
    for a, b, c in zip(model.model.decoder.layers, again.model.decoder.layers,
                       other.model.decoder.layers, strict=True):  # fmt: skip
        assert torch.equal(a.encoder_attn.k_proj.weight, b.encoder_attn.k_proj.weight)
        assert not torch.equal(a.encoder_attn.k_proj.weight, c.encoder_attn.k_proj.weight)
        assert not torch.equal(a.encoder_attn.k_proj.weight, a.self_attn.k_proj.weight)
        assert not a.encoder_attn.out_proj.bias.any()
        assert torch.equal(a.encoder_attn_layer_norm.weight, torch.ones(32))
        assert abs(a.encoder_attn.q_proj.weight.std().item() - model.config.init_std) < 0.01


def test_cross_attention_copy_self(tiny_bert_dir):
    model, _ = warm_start_bart(tiny_bert_dir, cross_attention="copy_self")
    for layer in model.model.decoder.layers:
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            self_proj, cross = getattr(layer.self_attn, name), getattr(layer.encoder_attn, name)
            assert torch.equal(self_proj.weight, cross.weight)
            assert torch.equal(self_proj.bias, cross.bias)
        assert torch.equal(layer.self_attn_layer_norm.weight, layer.encoder_attn_layer_norm.weight)


def test_lm_head_tied(tiny):
    model, _ = tiny
    shared = model.model.shared.weight
    assert model.lm_head.weight.data_ptr() == shared.data_ptr()
    assert model.model.encoder.embed_tokens.weight.data_ptr() == shared.data_ptr()
    assert not model.final_logits_bias.any()


def test_save_load_round_trip(tiny_bert_dir, tmp_path):
    out = tmp_path / "bart"
    model, tokenizer = warm_start_bart(tiny_bert_dir, out)
    expected = _logits(model, tokenizer)

    loaded, loaded_tokenizer = load_generator(out)
    assert torch.equal(_logits(loaded, loaded_tokenizer), expected)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.shared.weight.data_ptr()

    # an ordinary BART directory: plain transformers classes load it without missing keys
    plain, info = BartForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    plain_tokenizer = AutoTokenizer.from_pretrained(out)
    assert plain_tokenizer(SENTENCES)["input_ids"] == tokenizer(SENTENCES)["input_ids"]
    assert (plain_tokenizer.bos_token, plain_tokenizer.eos_token) == ("[CLS]", "[SEP]")
    # plain BART uses eps=1e-5 in its layer norms: close, and identical once BERT's eps is applied
    torch.testing.assert_close(_logits(plain, plain_tokenizer), expected, atol=0.05, rtol=0.05)
    assert torch.equal(_logits(apply_layer_norm_eps(plain), plain_tokenizer), expected)


def test_generate_runs(tiny):
    model, tokenizer = tiny
    batch = tokenizer(["who wrote hamlet?"], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=4, do_sample=False, num_beams=1)
    assert out.shape[0] == 1 and 2 <= out.shape[1] <= 5
    assert out[0, 0] == tokenizer.sep_token_id  # decoding starts from eos, as in BART


def test_errors(tiny_bert_dir, tmp_path):
    with pytest.raises(UserError, match="out of range"):
        warm_start_bart(tiny_bert_dir, decoder_layers=4)
    with pytest.raises(UserError, match="out of range"):
        warm_start_bart(tiny_bert_dir, encoder_layers=0)
    with pytest.raises(UserError, match="cross_attention"):
        warm_start_bart(tiny_bert_dir, cross_attention="zeros")
    with pytest.raises(UserError, match="does not exist"):
        warm_start_bart(tmp_path / "missing")
    bart_dir = tmp_path / "bart"
    warm_start_bart(tiny_bert_dir, bart_dir, decoder_layers=1)
    with pytest.raises(UserError, match="expected a BERT"):
        warm_start_bart(bart_dir)
