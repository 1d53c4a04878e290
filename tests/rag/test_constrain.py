"""Span-constrained decoding: outputs are always passage stretches, batched equals one at a time."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration

from generator.copy import CopyBartForConditionalGeneration, copyable
from rag.common.errors import UserError
from rag.config import DecodeConfig, RagConfig
from rag.constrain import span_allowed
from rag.decode_sequence import rag_sequence_generate
from rag.decode_token import rag_token_generate

TINY = dict(vocab_size=30, d_model=16, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
            decoder_ffn_dim=32, max_position_embeddings=32, init_std=0.5)


def random_model(seed: int, copy: bool):
    torch.manual_seed(seed)
    model = BartForConditionalGeneration(BartConfig(**TINY))
    with torch.no_grad():  # EOS likelier so that outputs end at varied lengths
        model.final_logits_bias[0, model.config.eos_token_id] = 1.0
    if copy:
        model = CopyBartForConditionalGeneration.from_bart(model)
    model.generation_config.forced_eos_token_id = None
    return model.eval()


def random_passages(seed: int, B: int = 3, K: int = 2, L: int = 9):
    """Ids from a small alphabet (so stretches repeat and branch), padded; scores (B, K)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 10, (B, K, L), generator=g)
    lengths = torch.randint(2, L + 1, (B, K, 1), generator=g)
    mask = (torch.arange(L) < lengths).long()
    return ids.masked_fill(mask == 0, 1), mask, torch.randn(B, K, generator=g)


def stretches(ids: torch.Tensor, mask: torch.Tensor) -> set[tuple[int, ...]]:
    """Every non-empty contiguous stretch of the attended tokens."""
    seq = ids[mask.bool()].tolist()
    return {tuple(seq[i:j]) for i in range(len(seq)) for j in range(i + 1, len(seq) + 1)}


def answer_tokens(seq: torch.Tensor, eos: int, pad: int) -> tuple[int, ...]:
    body = seq[1:].tolist()  # after the decoder start symbol
    return tuple(t for t in body if t not in (eos, pad))


def decode(model, ids, mask, scores, mode, beams, fast=False):
    cfg = DecodeConfig(num_beams=beams, max_length=7, constrain="spans",
                       num_return_sequences=beams)
    if mode == "token":
        return rag_token_generate(model, ids, mask, scores, cfg)
    return rag_sequence_generate(model, ids, mask, scores, cfg, fast=fast)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("copy", [False, True])
def test_outputs_are_always_passage_stretches(seed, copy):
    model = random_model(seed, copy)
    ids, mask, scores = random_passages(seed)
    eos, pad = model.config.eos_token_id, model.config.pad_token_id
    for mode, beams, fast in [("token", 1, False), ("token", 3, False), ("sequence", 1, False),
                              ("sequence", 3, False), ("sequence", 2, True)]:
        out = decode(model, ids, mask, scores, mode, beams, fast)
        for b in range(ids.shape[0]):
            allowed = set().union(*(stretches(ids[b, k], mask[b, k]) for k in range(ids.shape[1])))
            for r in range(out.sequences.shape[1]):
                seq = out.sequences[b, r]
                tokens = answer_tokens(seq, eos, pad)
                assert tokens in allowed, (mode, beams, b, seq.tolist())
                assert eos in seq[1:].tolist() or len(seq) == 7  # ended by EOS, or by the cap


@pytest.mark.parametrize("mode,beams", [("token", 1), ("token", 3), ("sequence", 1),
                                        ("sequence", 2)])
def test_batched_equals_one_question_at_a_time(mode, beams):
    model = random_model(7, copy=True)
    ids, mask, scores = random_passages(7, B=4)
    batched = decode(model, ids, mask, scores, mode, beams)
    for b in range(4):
        alone = decode(model, ids[b : b + 1], mask[b : b + 1], scores[b : b + 1], mode, beams)
        T = alone.sequences.shape[-1]
        assert torch.equal(batched.sequences[b, :, :T], alone.sequences[0])
        assert torch.all(batched.sequences[b, :, T:] == model.config.pad_token_id)
        torch.testing.assert_close(batched.scores[b], alone.scores[0], atol=1e-4, rtol=0)


def test_span_allowed_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    R, L, V = 5, 8, 12
    ids = torch.randint(3, 8, (R, L), generator=g)
    ok = torch.rand(R, L, generator=g) > 0.15
    eos = torch.tensor([2])
    for t in range(4):
        for prefix in itertools.islice(itertools.product(range(3, 8), repeat=t), 40):
            pre = torch.tensor([prefix] * R, dtype=torch.long).view(R, t)
            got = span_allowed(ids, ok, pre, eos, V)
            for r in range(R):
                seq = [int(x) if o else None for x, o in zip(ids[r], ok[r], strict=True)]
                want = {seq[i + t] for i in range(L - t)
                        if seq[i + t] is not None and all(seq[i + j] == prefix[j] for j in range(t))}
                if t > 0 or not want:
                    want.add(2)
                assert set(got[r].nonzero()[:, 0].tolist()) == want, (r, prefix)


def test_copyable_excludes_specials_and_padding():
    cfg = BartConfig(**TINY)
    ids = torch.tensor([[cfg.bos_token_id, 5, 6, cfg.eos_token_id, cfg.pad_token_id]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    assert copyable(cfg, ids, mask).tolist() == [[False, True, True, False, False]]


def test_spans_without_passages_is_refused():
    with pytest.raises(UserError, match="closed_book"):
        RagConfig(mode="closed_book", decode=DecodeConfig(constrain="spans"))
    with pytest.raises(UserError, match="constrain"):
        DecodeConfig(constrain="words")
