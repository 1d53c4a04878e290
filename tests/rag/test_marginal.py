"""RAG likelihoods against transformers' RAG losses, plain BART, and a probability-space oracle."""

from __future__ import annotations

import copy

import pytest
import torch

from rag import prefix_tree
from rag.marginal import rag_loss, rag_sequence_nll, rag_token_nll
from rag.passages import encode_passages
from rag.rescore import hypothesis_logprobs

B, L, T = 4, 12, 9


def make_labels(generator, seed: int = 0, bos_first: bool = False) -> torch.Tensor:
    """(B, T) labels: start symbol, random tokens, EOS, right padding of varied length.

    Without ``bos_first``, row 2 has a single target token, which exercises transformers' handling
    of the doc prior; with it, every row's first target is BOS (transformers decides whether to
    skip it for the whole batch, we per row: the two agree when all rows start with BOS).
    """
    cfg = generator.config
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(4, cfg.vocab_size, (B, T), generator=g)
    labels[:, 0] = cfg.decoder_start_token_id
    if bos_first:
        labels[:, 1] = cfg.bos_token_id
    for row, length in enumerate([T, 6, 3 if bos_first else 2, 4]):
        labels[row, length - 1] = cfg.eos_token_id
        labels[row, length:] = cfg.pad_token_id
    return labels


def hf_loss(model, ids, mask, doc_scores, labels, **kwargs) -> torch.Tensor:
    """Per-question loss of a transformers RAG model, (B,)."""
    b, k, length = ids.shape
    return model(context_input_ids=ids.view(b * k, length),
                 context_attention_mask=mask.view(b * k, length), doc_scores=doc_scores,
                 labels=labels, n_docs=k, reduce_loss=False, **kwargs).loss


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
@pytest.mark.parametrize("K", [1, 3, 5])
@pytest.mark.parametrize("exclude_bos_score", [False, True])
def test_rag_sequence_matches_transformers(tiny_bart, hf_rag, rag_batch, K, epsilon,
                                           exclude_bos_score):
    ids, mask, scores = rag_batch(B, K, L, seed=K)
    labels = make_labels(tiny_bart, seed=K, bos_first=exclude_bos_score)
    ref = hf_loss(hf_rag("sequence", K, epsilon), ids, mask, scores, labels,
                  exclude_bos_score=exclude_bos_score)
    ours = rag_sequence_nll(tiny_bart, ids, mask, scores, labels, epsilon=epsilon,
                            exclude_bos_score=exclude_bos_score)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
@pytest.mark.parametrize("K", [1, 3, 5])
def test_rag_token_matches_transformers(tiny_bart, hf_rag, rag_batch, K, epsilon):
    ids, mask, scores = rag_batch(B, K, L, seed=10 + K)
    labels = make_labels(tiny_bart, seed=10 + K)
    ref = hf_loss(hf_rag("token", K, epsilon), ids, mask, scores, labels)
    ours = rag_token_nll(tiny_bart, ids, mask, scores, labels, epsilon=epsilon)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["sequence", "token"])
def test_gradients_reach_doc_scores_as_in_transformers(tiny_bart, hf_rag, rag_batch, mode):
    ids, mask, scores = rag_batch(B, 3, L, seed=3)
    labels = make_labels(tiny_bart, seed=3)
    ours_scores = scores.clone().requires_grad_(True)
    ref_scores = scores.clone().requires_grad_(True)
    rag_loss(mode, tiny_bart, ids, mask, ours_scores, labels, epsilon=0.1)[0].backward()
    tiny_bart.zero_grad(set_to_none=True)
    hf_loss(hf_rag(mode, 3, 0.1), ids, mask, ref_scores, labels).mean().backward()
    tiny_bart.zero_grad(set_to_none=True)
    assert ours_scores.grad.abs().sum() > 0
    torch.testing.assert_close(ours_scores.grad, ref_scores.grad, atol=1e-6, rtol=1e-4)


def bart_token_logprobs(generator, ids, mask, labels) -> torch.Tensor:
    """(B, K, T-1) log p(labels[:, t+1] | passage, labels[:, :t+1]) from plain BART calls, float64,
    one passage at a time; 0 at padded targets."""
    out = []
    for k in range(ids.shape[1]):
        logits = generator(input_ids=ids[:, k], attention_mask=mask[:, k],
                           decoder_input_ids=labels[:, :-1]).logits.double()
        logp = logits.log_softmax(-1).gather(2, labels[:, 1:, None])[..., 0]
        out.append(logp.masked_fill(labels[:, 1:] == generator.config.pad_token_id, 0.0))
    return torch.stack(out, dim=1)


def test_rag_sequence_with_one_passage_is_plain_bart(tiny_bart, rag_batch):
    ids, mask, scores = rag_batch(B, 1, L, seed=7)
    labels = make_labels(tiny_bart, seed=7)
    with torch.no_grad():
        bart = bart_token_logprobs(tiny_bart, ids, mask, labels)[:, 0].sum(1)  # (B,)
        ours = -rag_sequence_nll(tiny_bart, ids, mask, 100 * scores, labels)
        token = -rag_token_nll(tiny_bart, ids, mask, scores, labels)
    torch.testing.assert_close(ours.double(), bart, atol=1e-4, rtol=0)
    torch.testing.assert_close(token.double(), bart, atol=1e-4, rtol=0)


def test_likelihoods_match_probability_space_oracle(tiny_bart, rag_batch):
    """Eqs. 1-2 summed in probability space, in float64, from per-passage BART calls."""
    ids, mask, scores = rag_batch(B, 4, L, seed=8)
    labels = make_labels(tiny_bart, seed=8)
    labels[2, 2] = 50  # two real targets, so the doc prior is counted (see sequence_log_marginal)
    labels[2, 3] = tiny_bart.config.eos_token_id
    with torch.no_grad():
        tok = bart_token_logprobs(tiny_bart, ids, mask, labels)  # (B, K, T-1)
        prior = scores.double().softmax(1)  # (B, K)
        seq_oracle = (prior * tok.sum(2).exp()).sum(1).log()
        real = labels[:, 1:] != tiny_bart.config.pad_token_id
        token_oracle = ((prior[:, :, None] * tok.exp()).sum(1).log() * real).sum(1)
        seq = -rag_sequence_nll(tiny_bart, ids, mask, scores, labels)
        token = -rag_token_nll(tiny_bart, ids, mask, scores, labels)
    torch.testing.assert_close(seq.double(), seq_oracle, atol=1e-4, rtol=0)
    torch.testing.assert_close(token.double(), token_oracle, atol=1e-4, rtol=0)
    assert not torch.allclose(seq, token, atol=1e-3)  # the two models really differ


def test_rag_loss_dispatches_and_checks_its_inputs(tiny_bart, rag_batch):
    ids, mask, scores = rag_batch(B, 3, L, seed=9)
    labels = make_labels(tiny_bart, seed=9)
    with torch.no_grad():
        for mode, fn in [("sequence", rag_sequence_nll), ("token", rag_token_nll)]:
            mean, nll = rag_loss(mode, tiny_bart, ids, mask, scores, labels, epsilon=0.1)
            torch.testing.assert_close(nll, fn(tiny_bart, ids, mask, scores, labels, epsilon=0.1))
            torch.testing.assert_close(mean, nll.mean())
    with pytest.raises(ValueError, match="mode"):
        rag_loss("tokens", tiny_bart, ids, mask, scores, labels)
    with pytest.raises(ValueError, match="exclude_bos_score"):
        rag_loss("token", tiny_bart, ids, mask, scores, labels, exclude_bos_score=True)
    with pytest.raises(ValueError, match="doc_scores"):
        rag_loss("sequence", tiny_bart, ids, mask, scores[:, :2], labels)
    with pytest.raises(ValueError, match=r"\(B, K, L\)"):
        rag_loss("sequence", tiny_bart, ids[:, 0], mask[:, 0], scores, labels)


@pytest.mark.parametrize("packed_tokens,attention", [(256, "sdpa"), (5, "sdpa"), (12, "sdpa"),
                                                     (256, "eager")])
def test_hypothesis_logprobs_match_teacher_forcing(tiny_bart, rag_batch, monkeypatch,
                                                   packed_tokens, attention):
    """Shared prefixes are normalised once; a real token equal to the pad id is masked as a target
    (as transformers masks it) without losing the normaliser its prefix-mates need. Hypotheses
    packed into one decoder pass, one per pass (5 tokens) or two (12 tokens: passes after the
    first reuse the cross-attention cache) score alike, with either attention implementation
    (the tree mask is built for each)."""
    monkeypatch.setattr(prefix_tree, "_TREE_TOKENS", packed_tokens)
    if attention != "sdpa":
        tiny_bart = copy.deepcopy(tiny_bart)
        tiny_bart.set_attn_implementation(attention)
    K = 3
    ids, mask, _ = rag_batch(2, K, L, seed=11)
    pad = tiny_bart.config.pad_token_id
    hyps = torch.tensor([[2, 5, pad, 7, 2, pad],  # owns prefix (2, 5), whose target is padding
                         [2, 5, 6, 7, 2, pad],  # same prefix, real target
                         [2, 5, 6, 8, 9, 2],
                         [2, 5, 6, 7, 2, pad],  # row 1 again, for another question
                         [2, 2, pad, pad, pad, pad]])
    q_idx = torch.tensor([0, 0, 0, 1, 1])
    with torch.no_grad():
        got = hypothesis_logprobs(tiny_bart, encode_passages(tiny_bart, ids, mask), mask, hyps,
                                  q_idx)
        for m, q in enumerate(q_idx.tolist()):
            expected = bart_token_logprobs(tiny_bart, ids[q : q + 1], mask[q : q + 1],
                                           hyps[m : m + 1])[0]  # (K, T-1)
            torch.testing.assert_close(got[m].double(), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("left_padded", [False, True])
def test_encoder_states_buckets_equal_one_padded_pass(tiny_bart, left_padded):
    """Length buckets give the padded pass's states where attended, zeros past each bucket,
    the same gradients, and really run in several trimmed calls."""
    import torch

    from rag.passages import encoder_states

    g = torch.Generator().manual_seed(3)
    N, L = 12, 40
    lengths = torch.tensor([40, 5, 9, 33, 12, 7, 20, 6, 8, 11, 10, 4])
    ids = torch.randint(4, 100, (N, L), generator=g)
    mask = (torch.arange(L) < lengths[:, None]).long()  # (N, L) right-padded
    if left_padded:  # only the leading columns are padding: no trailing column to trim
        mask = mask.flip(1)
    ids = ids.masked_fill(mask == 0, tiny_bart.config.pad_token_id)
    encoder = tiny_bart.get_encoder()
    calls = []
    hook = encoder.register_forward_hook(lambda m, a, kw, out: calls.append(kw["input_ids"].shape),
                                         with_kwargs=True)
    try:
        got = encoder_states(tiny_bart, ids, mask)
    finally:
        hook.remove()
    want = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()[:, :, None]
    torch.testing.assert_close(got * keep, want * keep, atol=1e-5, rtol=1e-5)
    if left_padded:
        assert len(calls) == 1
    else:
        assert len(calls) > 1 and max(shape[1] for shape in calls[:-1]) < L
        assert got[lengths.argmin(), lengths.max() - 1 :].abs().max() == 0  # past its bucket
        weight = encoder.layers[0].fc1.weight
        (grad_got,) = torch.autograd.grad((got * keep).square().sum(), weight)
        (grad_want,) = torch.autograd.grad((want * keep).square().sum(), weight)
        torch.testing.assert_close(grad_got, grad_want, atol=1e-4, rtol=1e-4)


def test_prefix_tree_has_one_node_per_distinct_prefix():
    """The tree's nodes are exactly the distinct (question, prefix) pairs of the alive positions
    (a brute force over tuples), each node's ancestors are the nodes of its shorter prefixes, and
    parents sit before children."""
    g = torch.Generator().manual_seed(3)
    M, T1, B = 24, 6, 3
    inputs = torch.randint(0, 3, (M, T1), generator=g)  # a small alphabet: many shared prefixes
    inputs[:, 0] = 2
    q_idx = torch.sort(torch.randint(0, B, (M,), generator=g))[0]
    lengths = torch.randint(1, T1 + 1, (M,), generator=g)
    alive = torch.arange(T1)[None, :] < lengths[:, None]
    tree = prefix_tree._Tree.plan(inputs, q_idx, alive, B)
    want = {(int(q_idx[m]), tuple(inputs[m, : t + 1].tolist()))
            for m in range(M) for t in range(int(lengths[m]))}
    assert len(tree.node_m) == len(want)
    assert tree.groups == 1
    ids, depth, ancestors = tree.rows(0, pad=9)
    for m in range(M):
        b = int(q_idx[m])
        for t in range(int(lengths[m])):
            s = int(tree.slot[m, t])
            assert ids[b, s] == inputs[m, t] and depth[b, s] == t
            above = {int(tree.slot[m, u]) for u in range(t + 1)}
            assert set(ancestors[b, s].nonzero()[:, 0].tolist()) == above
            assert max(above) == s  # ancestors come first
