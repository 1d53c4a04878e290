"""The copy-augmented BART: a distribution at every step, the copy path's own rules, an exact RAG
marginalisation (against a float64 probability-space brute force), save/load and bad heads."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BartConfig, BartForConditionalGeneration, BertTokenizerFast

from generator.copy import (
    CopyBartForConditionalGeneration,
    copy_logprobs,
    copyable,
    mix,
    mixture_logprobs,
)
from generator.model import load_generator, save_generator
from rag.common.errors import UserError
from rag.config import DecodeConfig
from rag.decode_sequence import rag_sequence_generate
from rag.decode_token import rag_token_generate
from rag.marginal import generator_logits, rag_sequence_nll, rag_token_nll, token_logprobs
from rag.passages import encode_passages
from rag.rescore import hypothesis_logprobs

TINY = dict(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
            decoder_ffn_dim=32, max_position_embeddings=32, init_std=0.3)
B, K, L, T = 3, 2, 10, 6


def tiny_copy(seed: int = 0) -> CopyBartForConditionalGeneration:
    """A random copy generator whose copy head is random too (gate and follow weight included)."""
    torch.manual_seed(seed)
    model = CopyBartForConditionalGeneration.from_bart(BartForConditionalGeneration(BartConfig(**TINY)))
    with torch.no_grad():
        for p in model.copy_head.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    return model.eval()


def batch(model, seed: int = 0):
    """(B, K, L) ids drawn from a small part of the vocabulary (so tokens repeat and many are
    absent), right-padded; (B, K) doc scores; (B, T) labels mixing copyable and absent tokens."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 14, (B, K, L), generator=g)
    lengths = torch.randint(3, L + 1, (B, K, 1), generator=g)
    mask = (torch.arange(L) < lengths).long()
    ids = ids.masked_fill(mask == 0, cfg.pad_token_id)
    labels = torch.randint(4, 20, (B, T), generator=g)
    labels[:, 0] = cfg.decoder_start_token_id
    labels[1, 4] = cfg.eos_token_id
    labels[1, 5] = cfg.pad_token_id
    labels[:, -1] = torch.where(labels[:, -1] == cfg.pad_token_id, labels[:, -1], cfg.eos_token_id)
    return ids, mask, torch.randn(B, K, generator=g), labels


def brute_force_probs(model, ids, mask, labels) -> torch.Tensor:
    """(B, K, T-1) p(y_t | x, z, y_<t) in float64, built in probability space from the model's
    parts: softmax over the vocabulary, pointer softmax summed over positions holding y_t, gate."""
    model = model.double()
    head, cfg = model.copy_head, model.config
    out = torch.zeros(B, K, T - 1, dtype=torch.float64)
    for b in range(B):
        for k in range(K):
            x, m = ids[b, k : k + 1], mask[b, k : k + 1]
            dec = labels[b : b + 1, :-1]
            run = model.model(input_ids=x, attention_mask=m, decoder_input_ids=dec)
            h, e = run.last_hidden_state[0], run.encoder_last_hidden_state[0]  # (T-1, D), (L, D)
            p_vocab = torch.softmax(model.lm_head(h) + model.final_logits_bias[0], dim=-1)
            ok = copyable(cfg, x, m)[0]
            for t in range(T - 1):
                score = (head.query(h[t]) @ head.key(e).T) / h.shape[-1] ** 0.5
                prev = torch.cat([torch.tensor([-1]), x[0, :-1]])
                if dec[0, t] != cfg.decoder_start_token_id:
                    score = score + head.follow * (prev == dec[0, t]).double()
                a = torch.where(ok, torch.exp(score - score[ok].max()), torch.zeros(()))
                a = a / a.sum()
                g = torch.sigmoid(head.gate(torch.cat([h[t], a @ e])))[0]
                y = labels[b, t + 1]
                out[b, k, t] = g * p_vocab[t, y] + (1 - g) * a[x[0] == y].sum()
    model.float()
    return out


def test_every_step_is_a_distribution_and_copy_mass_stays_on_the_input():
    model = tiny_copy()
    ids, mask, _, labels = batch(model)
    out = model(input_ids=ids[:, 0], attention_mask=mask[:, 0], decoder_input_ids=labels[:, :-1])
    torch.testing.assert_close(out.logits.exp().sum(-1), torch.ones(B, T - 1), atol=1e-5, rtol=0)
    p_copy = copy_logprobs(out.pointer_logp, ids[:, 0], TINY["vocab_size"]).exp()  # (B, T-1, V)
    torch.testing.assert_close(p_copy.sum(-1), torch.ones(B, T - 1), atol=1e-5, rtol=0)
    ok = copyable(model.config, ids[:, 0], mask[:, 0])
    for b in range(B):
        present = set(ids[b, 0][ok[b]].tolist())
        absent = [v for v in range(TINY["vocab_size"]) if v not in present]
        assert absent and torch.all(p_copy[b, :, absent] == 0)
        assert torch.all(p_copy[b, :, sorted(present)] > 0)


def test_gate_fixed_at_one_is_plain_bart():
    model = tiny_copy(1)
    with torch.no_grad():
        model.copy_head.gate.weight.zero_()
        model.copy_head.gate.bias.fill_(1e4)
    plain = BartForConditionalGeneration(model.config).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    ids, mask, _, labels = batch(model, 1)
    ours = model(input_ids=ids[:, 0], attention_mask=mask[:, 0], decoder_input_ids=labels[:, :-1])
    ref = plain(input_ids=ids[:, 0], attention_mask=mask[:, 0], decoder_input_ids=labels[:, :-1])
    torch.testing.assert_close(ours.logits, torch.log_softmax(ref.logits, -1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_rag_likelihoods_equal_probability_space_brute_force(seed):
    model = tiny_copy(seed)
    ids, mask, scores, labels = batch(model, seed)
    p = brute_force_probs(model, ids, mask, labels)  # (B, K, T-1)
    real = labels[:, 1:].ne(model.config.pad_token_id)
    p = torch.where(real[:, None, :], p, torch.ones_like(p))
    prior = torch.softmax(scores.double(), dim=1)  # (B, K)
    seq = -torch.log((prior * p.prod(dim=2)).sum(dim=1))  # eq. 1
    tok = -torch.log((prior[:, :, None] * p).sum(dim=1)).sum(dim=1)  # eq. 2
    torch.testing.assert_close(rag_sequence_nll(model, ids, mask, scores, labels).double(), seq,
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(rag_token_nll(model, ids, mask, scores, labels).double(), tok,
                               atol=1e-4, rtol=0)


def test_thorough_scoring_path_equals_teacher_forcing():
    """hypothesis_logprobs (shared first step, no (M, K, T, V) tensor) against the forward."""
    model = tiny_copy(2)
    ids, mask, _, labels = batch(model, 2)
    enc = encode_passages(model, ids, mask)
    q_idx = torch.arange(B)
    ours = hypothesis_logprobs(model, enc, mask, labels, q_idx, ids)  # (B, K, T-1)
    ref = token_logprobs(generator_logits(model, ids, mask, labels), labels[:, 1:],
                         model.config.pad_token_id)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_cached_decoding_scores_equal_teacher_forcing():
    """Greedy RAG-Token with one passage (KV cache, one token per step) scores its output as the
    teacher-forced forward does: the follow feature is right under incremental decoding."""
    model = tiny_copy(3)
    model.generation_config.forced_eos_token_id = None  # a forced EOS is scored 0, not log p
    ids, mask, _, _ = batch(model, 3)
    one = (ids[:, :1], mask[:, :1], torch.zeros(B, 1))
    out = rag_token_generate(model, *one, DecodeConfig(max_length=12))
    seqs = out.sequences[:, 0]
    nll = rag_token_nll(model, *one, seqs)
    torch.testing.assert_close(-nll, out.scores[:, 0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("beams", [1, 3])
def test_generate_search_equals_our_search(beams):
    """With one passage, RAG-Sequence (transformers' generate, its cache argument) and RAG-Token
    (our own search) decode the same distribution: same hypotheses, same order."""
    model = tiny_copy(6)
    model.generation_config.forced_eos_token_id = None
    ids, mask, _, _ = batch(model, 6)
    one = (ids[:, :1], mask[:, :1], torch.zeros(B, 1))
    cfg = DecodeConfig(num_beams=beams, max_length=12, num_return_sequences=beams)
    seq = rag_sequence_generate(model, *one, cfg).sequences
    tok = rag_token_generate(model, *one, cfg).sequences
    width = min(seq.shape[-1], tok.shape[-1])
    assert torch.equal(seq[..., :width], tok[..., :width])


def test_save_load_round_trip(tmp_path):
    model = tiny_copy(4)
    tokenizer = BertTokenizerFast(vocab={f"t{i}": i for i in range(TINY["vocab_size"])},
                                  pad_token="t1", unk_token="t3")
    save_generator(model, tokenizer, tmp_path / "gen")
    loaded, _ = load_generator(tmp_path / "gen")
    assert isinstance(loaded, CopyBartForConditionalGeneration)
    ids, mask, _, labels = batch(model, 4)
    a = model(input_ids=ids[:, 0], attention_mask=mask[:, 0], decoder_input_ids=labels[:, :-1])
    b = loaded(input_ids=ids[:, 0], attention_mask=mask[:, 0], decoder_input_ids=labels[:, :-1])
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    torch.testing.assert_close(a.logits, b.logits, atol=1e-6, rtol=0)
    plain = BartForConditionalGeneration(BartConfig(**TINY))
    save_generator(plain, tokenizer, tmp_path / "plain")
    assert type(load_generator(tmp_path / "plain")[0]) is BartForConditionalGeneration


@pytest.mark.parametrize("damage", ["missing", "shape"])
def test_incomplete_copy_head_is_one_clear_error(tmp_path, damage):
    tokenizer = BertTokenizerFast(vocab={f"t{i}": i for i in range(TINY["vocab_size"])},
                                  pad_token="t1", unk_token="t3")
    save_generator(tiny_copy(5), tokenizer, tmp_path / "gen")
    weights = tmp_path / "gen" / "model.safetensors"
    state = load_file(weights)
    if damage == "missing":
        del state["copy_head.follow"]
    else:
        state["copy_head.query.weight"] = torch.zeros(3, 3)
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"model\.safetensors: the copy head"):
        load_generator(tmp_path / "gen")


def test_sparse_mixture_equals_dense_values_and_gradients():
    """mixture_logprobs writes each input id once: same values and gradients as the dense mix,
    with ids repeated in the input and positions that may not be copied."""
    g = torch.Generator().manual_seed(0)
    N, S, L, V = 2, 3, 7, 12
    ids = torch.randint(3, 8, (N, L), generator=g)  # repeats
    ok = torch.rand(N, L, generator=g) > 0.3
    parts = [torch.randn(N, S, V, generator=g), torch.randn(N, S, L, generator=g),
             torch.randn(N, S, generator=g)]
    weights = torch.randn(N, S, V, generator=g)
    grads = []
    for fn in (lambda z, p, gt: mixture_logprobs(z, p, ids, gt),
               lambda z, p, gt: mix(torch.log_softmax(z, -1), copy_logprobs(p, ids, V), gt)):
        z, p, gt = (t.clone().requires_grad_(True) for t in parts)
        pointer = torch.log_softmax(p.masked_fill(~ok[:, None], -float("inf")), -1)
        out = fn(z, pointer, gt)
        (out * weights).sum().backward()
        grads.append((out.detach(), z.grad, p.grad, gt.grad))
    for ours, dense in zip(*grads, strict=True):
        torch.testing.assert_close(ours, dense, atol=1e-5, rtol=1e-5)


def test_first_positions_equal_brute_force():
    from generator.copy import first_positions

    ids = torch.randint(0, 6, (5, 17), generator=torch.Generator().manual_seed(0))
    want = torch.tensor([[row.tolist().index(v) for v in row.tolist()] for row in ids])
    torch.testing.assert_close(first_positions(ids), want)
