"""sentence-transformers folders load faithfully: every supported pooling mode, Dense layers,
Normalize, query/passage prompts, both config key formats; modules we cannot reproduce are refused;
our saved encoders reload in sentence-transformers with the same embeddings. Tiny models are built
with sentence-transformers itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rag.common.errors import UserError
from retriever.batch_encode import EncodeConfig, encode_texts
from retriever.encoder import Encoder

TEXTS = ["the capital of france is paris", "a river flows into the sea", "short",
         "albert einstein developed the theory of relativity in the early twentieth century"]


def st_model(tiny_encoder_dir, out, pooling, normalize=False, dense=0, prompts=None):
    """A tiny sentence-transformers model, saved to ``out``: ``dense`` Dense layers (the first
    with Tanh, sentence-transformers' default, then Identity and ReLU)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    torch.manual_seed(0)
    word = Transformer(str(tiny_encoder_dir), max_seq_length=64)
    modules = [word, Pooling(word.get_embedding_dimension(), pooling_mode=pooling)]
    sizes = [word.get_embedding_dimension(), 8, 6, 4][: dense + 1]
    activations = [torch.nn.Tanh(), torch.nn.Identity(), torch.nn.ReLU()]
    for a, b, act in zip(sizes[:-1], sizes[1:], activations[:dense], strict=True):
        modules.append(Dense(a, b, activation_function=act))
    if normalize:
        modules.append(Normalize())
    model = SentenceTransformer(modules=modules, device="cpu", prompts=prompts)
    model.save(str(out))
    return model


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "lasttoken"])
@pytest.mark.parametrize("normalize", [False, True])
def test_embeddings_equal_sentence_transformers(tiny_encoder_dir, tmp_path, pooling, normalize):
    st = st_model(tiny_encoder_dir, tmp_path / "st", pooling, normalize)
    ours = Encoder.from_pretrained(str(tmp_path / "st"))
    assert ours.config.pooling == pooling and ours.config.normalize == normalize
    want = st.encode(TEXTS, convert_to_numpy=True, batch_size=2)
    got = encode_texts(ours, TEXTS, config=EncodeConfig(batch_size=3, progress=False))
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_old_and_new_pooling_keys_read_alike(tiny_encoder_dir, tmp_path, pooling):
    st_model(tiny_encoder_dir, tmp_path / "st", pooling)
    config_file = tmp_path / "st" / "1_Pooling" / "config.json"
    old = {"word_embedding_dimension": 32, **{f"pooling_mode_{m}": m == f"{pooling}_tokens" for m in
                                              ("cls_token", "mean_tokens", "max_tokens")}}
    config_file.write_text(json.dumps(old))
    assert Encoder.from_pretrained(str(tmp_path / "st")).config.pooling == pooling
    config_file.write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": pooling}))
    assert Encoder.from_pretrained(str(tmp_path / "st")).config.pooling == pooling


@pytest.mark.parametrize("dense,normalize", [(1, False), (1, True), (3, True)])
def test_dense_layers_equal_sentence_transformers(tiny_encoder_dir, tmp_path, dense, normalize):
    st = st_model(tiny_encoder_dir, tmp_path / "st", "mean", normalize, dense=dense)
    ours = Encoder.from_pretrained(str(tmp_path / "st"))
    assert len(ours.dense) == dense and ours.dim == [8, 6, 4][dense - 1]
    want = st.encode(TEXTS, convert_to_numpy=True, batch_size=2)
    got = encode_texts(ours, TEXTS, config=EncodeConfig(batch_size=3, progress=False))
    np.testing.assert_allclose(got, want, atol=1e-5)
    # saved by us, it reloads alike here and in sentence-transformers
    ours.save_pretrained(tmp_path / "ours")
    again = Encoder.from_pretrained(str(tmp_path / "ours"))
    assert again.fingerprint == ours.fingerprint
    np.testing.assert_allclose(encode_texts(again, TEXTS, config=EncodeConfig(progress=False)),
                               want, atol=1e-5)
    from sentence_transformers import SentenceTransformer

    st_again = SentenceTransformer(str(tmp_path / "ours"), device="cpu")
    np.testing.assert_allclose(st_again.encode(TEXTS, convert_to_numpy=True), want, atol=1e-5)


def test_prompts_are_used_on_each_side(tiny_encoder_dir, tmp_path):
    import torch
    from sentence_transformers import SentenceTransformer

    prompts = {"query": "query: ", "document": "passage: "}
    st = st_model(tiny_encoder_dir, tmp_path / "st", "mean", True, prompts=prompts)
    ours = Encoder.from_pretrained(str(tmp_path / "st")).eval()
    assert (ours.config.query_prompt, ours.config.passage_prompt) == ("query: ", "passage: ")
    questions = encode_texts(ours, TEXTS, config=EncodeConfig(progress=False))
    np.testing.assert_allclose(questions, st.encode(TEXTS, prompt_name="query"), atol=1e-5)
    with torch.no_grad():
        passages = ours(**ours.tokenize(TEXTS, passages=True)).numpy()
    np.testing.assert_allclose(passages, st.encode(TEXTS, prompt_name="document"), atol=1e-5)
    assert not np.allclose(questions, passages, atol=1e-3)  # the prompts make a difference
    # a passage with a title: the prompt opens the first segment
    tok = ours.tokenize(["paris"], titles=["france"])
    assert ours.tokenizer.decode(tok["input_ids"][0], skip_special_tokens=True).startswith("passage")
    assert Encoder.from_pretrained(str(tiny_encoder_dir)).fingerprint != ours.fingerprint
    ours.save_pretrained(tmp_path / "ours")
    again = SentenceTransformer(str(tmp_path / "ours"), device="cpu")
    np.testing.assert_allclose(again.encode(TEXTS, prompt_name="query"), questions, atol=1e-5)
    assert Encoder.from_pretrained(str(tmp_path / "ours")).fingerprint == ours.fingerprint


def test_modules_we_cannot_reproduce_are_refused(tiny_encoder_dir, tmp_path):
    st_model(tiny_encoder_dir, tmp_path / "dense", "mean", dense=1)
    config_file = tmp_path / "dense" / "2_Dense" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "use_residual": True}))
    with pytest.raises(UserError, match="residual Dense"):
        Encoder.from_pretrained(str(tmp_path / "dense"))
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "use_residual": False,
                                       "activation_function": "my.own.Swish"}))
    with pytest.raises(UserError, match="Swish"):
        Encoder.from_pretrained(str(tmp_path / "dense"))
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "out_features": 9,
                                       "activation_function": "torch.nn.modules.activation.Tanh"}))
    with pytest.raises(UserError, match="Dense weights do not match"):
        Encoder.from_pretrained(str(tmp_path / "dense"))
    st_model(tiny_encoder_dir, tmp_path / "two", ("mean", "max"))
    with pytest.raises(UserError, match="pooling"):
        Encoder.from_pretrained(str(tmp_path / "two"))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_our_saved_encoder_reloads_in_sentence_transformers(tiny_encoder_dir, tmp_path, pooling):
    from sentence_transformers import SentenceTransformer

    ours = Encoder.from_pretrained(str(tiny_encoder_dir), pooling=pooling, normalize=True,
                                   max_length=64)
    ours.save_pretrained(tmp_path / "ours")
    st = SentenceTransformer(str(tmp_path / "ours"), device="cpu")
    want = encode_texts(ours, TEXTS, config=EncodeConfig(progress=False))
    np.testing.assert_allclose(st.encode(TEXTS, convert_to_numpy=True), want, atol=1e-5)
