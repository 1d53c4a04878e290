"""sentence-transformers folders load faithfully: every supported pooling mode, Normalize, both
config key formats; modules we cannot reproduce are refused; our saved encoders reload in
sentence-transformers with the same embeddings. Tiny models are built with sentence-transformers
itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retriever.encode import EncodeConfig, encode_texts
from retriever.encoder import Encoder
from retriever.errors import UserError

TEXTS = ["the capital of france is paris", "a river flows into the sea", "short",
         "albert einstein developed the theory of relativity in the early twentieth century"]


def st_model(tiny_encoder_dir, out, pooling, normalize=False, dense=False):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    word = Transformer(str(tiny_encoder_dir), max_seq_length=64)
    modules = [word, Pooling(word.get_embedding_dimension(), pooling_mode=pooling)]
    if dense:
        modules.append(Dense(word.get_embedding_dimension(), 8))
    if normalize:
        modules.append(Normalize())
    model = SentenceTransformer(modules=modules, device="cpu")
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


def test_modules_we_cannot_reproduce_are_refused(tiny_encoder_dir, tmp_path):
    st_model(tiny_encoder_dir, tmp_path / "dense", "mean", dense=True)
    with pytest.raises(UserError, match="Dense"):
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
