"""RAG decoding against transformers' RAG ``generate`` on shared weights, and a brute-force oracle
for RAG-Sequence fast decoding."""

from __future__ import annotations

import pytest
import torch

from rag.common.errors import UserError
from rag.config import DecodeConfig
from rag.decode_sequence import rag_sequence_generate
from rag.decode_token import rag_token_generate

B, L = 4, 12
SETTINGS = [  # (num_beams, extra DecodeConfig fields)
    (1, {}),
    (1, {"min_length": 5, "max_length": 10}),
    (4, {}),
    (4, {"min_length": 5, "max_length": 10}),
    (4, {"early_stopping": True, "length_penalty": 0.5}),
    (4, {"num_return_sequences": 2}),
]


def hf_generate(model, ids, mask, scores, config: DecodeConfig, **kwargs):
    b, k, length = ids.shape
    with torch.no_grad():
        return model.generate(context_input_ids=ids.view(b * k, length),
                              context_attention_mask=mask.view(b * k, length), doc_scores=scores,
                              n_docs=k, num_return_sequences=config.num_return_sequences,
                              **config.generate_kwargs(), **kwargs)


def flat(sequences: torch.Tensor) -> torch.Tensor:
    return sequences.flatten(0, 1)  # (B, R, T) -> (B*R, T), transformers' layout


@pytest.mark.parametrize("K", [1, 3, 5])
@pytest.mark.parametrize("num_beams, extra", SETTINGS)
def test_rag_token_matches_transformers(tiny_bart, hf_rag, rag_batch, K, num_beams, extra):
    ids, mask, scores = rag_batch(B, K, L, seed=K)
    config = DecodeConfig(**{"num_beams": num_beams, "max_length": 12, **extra})
    ref = hf_generate(hf_rag("token", K), ids, mask, scores, config)
    out = rag_token_generate(tiny_bart, ids, mask, scores, config)
    assert torch.equal(flat(out.sequences), ref)
    assert out.scores.shape == out.sequences.shape[:2]


@pytest.mark.parametrize("K", [1, 3, 5])
@pytest.mark.parametrize("num_beams, extra", SETTINGS)
def test_rag_sequence_thorough_matches_transformers(tiny_bart, hf_rag, rag_batch, K, num_beams,
                                                    extra):
    ids, mask, scores = rag_batch(B, K, L, seed=20 + K)
    config = DecodeConfig(**{"num_beams": num_beams, "max_length": 12, **extra})
    ref = hf_generate(hf_rag("sequence", K), ids, mask, scores, config)
    # transformers' RAG-Sequence beam search ignores the context mask (see attend_to_padding)
    out = rag_sequence_generate(tiny_bart, ids, mask, scores, config, attend_to_padding=True)
    assert torch.equal(flat(out.sequences), ref)


def test_outputs_vary_in_length(tiny_bart, rag_batch):
    """Guard for the fixtures: equality tests mean little if every answer has the same length."""
    ids, mask, scores = rag_batch(B, 3, L, seed=3)
    out = rag_sequence_generate(tiny_bart, ids, mask, scores, DecodeConfig(num_beams=4))
    lengths = out.sequences[:, 0, 1:].ne(tiny_bart.config.pad_token_id).sum(1)
    assert len(set(lengths.tolist())) > 1


def test_rag_sequence_on_unpadded_inputs_matches_transformers_by_default(tiny_bart, hf_rag,
                                                                         rag_batch):
    ids, mask, scores = rag_batch(B, 3, L, padded=False, seed=4)
    config = DecodeConfig(num_beams=4)
    out = rag_sequence_generate(tiny_bart, ids, mask, scores, config)
    assert torch.equal(flat(out.sequences), hf_generate(hf_rag("sequence", 3), ids, mask, scores,
                                                        config))


def test_rag_sequence_scores_are_transformers_marginal_likelihoods(tiny_bart, hf_rag, rag_batch):
    """Thorough scores are -loss of the returned answers, as RagSequenceForGeneration ranks them."""
    K = 3
    ids, mask, scores = rag_batch(B, K, L, seed=5)
    out = rag_sequence_generate(tiny_bart, ids, mask, scores,
                                DecodeConfig(num_beams=4, num_return_sequences=2))
    model = hf_rag("sequence", K)
    for b in range(B):
        with torch.no_grad():
            loss = model(context_input_ids=ids[b].repeat(2, 1),
                         context_attention_mask=mask[b].repeat(2, 1),
                         doc_scores=scores[b : b + 1].repeat(2, 1), labels=out.sequences[b],
                         n_docs=K, exclude_bos_score=True, reduce_loss=False).loss
        torch.testing.assert_close(out.scores[b], -loss, atol=1e-4, rtol=0)
    assert (out.scores[:, 0] >= out.scores[:, 1]).all()


@pytest.mark.parametrize("num_beams", [1, 4])
def test_rag_token_scores_match_transformers(tiny_bart, hf_rag, rag_batch, num_beams):
    ids, mask, scores = rag_batch(B, 3, L, seed=6)
    config = DecodeConfig(num_beams=num_beams)
    ref = hf_generate(hf_rag("token", 3), ids, mask, scores, config, return_dict_in_generate=True,
                      output_scores=True)
    out = rag_token_generate(tiny_bart, ids, mask, scores, config)
    if num_beams > 1:
        expected = ref.sequences_scores
    else:  # greedy: the sum of the processed scores of the chosen tokens before EOS/padding
        steps = torch.stack(ref.scores, dim=1)  # (B, S, V)
        chosen = steps.gather(2, ref.sequences[:, 1:, None])[..., 0]
        expected = chosen.masked_fill(ref.sequences[:, 1:] == tiny_bart.config.pad_token_id,
                                      0.0).sum(1)
    torch.testing.assert_close(out.scores[:, 0], expected, atol=1e-5, rtol=1e-5)


def test_batched_decoding_equals_one_question_at_a_time(tiny_bart, rag_batch):
    ids, mask, scores = rag_batch(B, 3, L, seed=7)
    config = DecodeConfig(num_beams=4)
    for decode in (rag_token_generate, rag_sequence_generate):
        batch = decode(tiny_bart, ids, mask, scores, config)
        for b in range(B):
            one = decode(tiny_bart, ids[b : b + 1], mask[b : b + 1], scores[b : b + 1], config)
            T = one.sequences.shape[-1]
            assert torch.equal(batch.sequences[b, :, :T], one.sequences[0])
            assert batch.sequences[b, :, T:].eq(tiny_bart.config.pad_token_id).all()
            torch.testing.assert_close(batch.scores[b], one.scores[0], atol=1e-4, rtol=0)


def teacher_forced_logprobs(generator, ids, mask, hyp: torch.Tensor) -> torch.Tensor:
    """(T-1,) log p(hyp[t+1] | passage, hyp[:t+1]) from one plain BART call; 0 at padding."""
    logits = generator(input_ids=ids[None], attention_mask=mask[None],
                       decoder_input_ids=hyp[None, :-1]).logits[0]
    logp = logits.log_softmax(-1).gather(1, hyp[1:, None])[:, 0]
    return logp.masked_fill(hyp[1:] == generator.config.pad_token_id, 0.0)


def strip(row: list[int], pad: int) -> tuple[int, ...]:
    """The hypothesis without its trailing padding (beams of different passages differ in width)."""
    while row and row[-1] == pad:
        row = row[:-1]
    return tuple(row)


def fast_oracle(generator, ids, mask, scores, num_beams: int):
    """RAG-Sequence fast decoding for one question, by hand: beam search each passage on its own,
    score each hypothesis under the passages whose beam produced it, marginalise, take the best.
    Scoring follows transformers' rules, as thorough decoding does (BOS skipped when every
    hypothesis starts with it; the prior is booked on the second target)."""
    cfg = generator.config
    beams = []
    for k in range(ids.shape[0]):
        out = generator.generate(ids[k : k + 1], attention_mask=mask[k : k + 1],
                                 num_beams=num_beams, num_return_sequences=num_beams,
                                 max_length=20)
        beams.append([strip(row, cfg.pad_token_id) for row in out.tolist()])
    hyps = list(dict.fromkeys(h for beam in beams for h in beam))
    skip_bos = all(h[1] == cfg.bos_token_id for h in hyps)
    prior = scores.log_softmax(0)
    best = None
    for h in hyps:
        terms = []
        for k, beam in enumerate(beams):
            if h not in beam:
                continue  # fast decoding: p(y|x,z) = 0
            logp = teacher_forced_logprobs(generator, ids[k], mask[k], torch.tensor(h))
            seq = logp[1:].sum() + (0.0 if skip_bos else logp[0])
            has_second = len(h) > 2 and h[2] != cfg.pad_token_id
            terms.append(seq + (prior[k] if has_second else 0.0))
        score = torch.logsumexp(torch.stack(terms), 0)
        if best is None or score > best[1]:
            best = (h, score)
    return best


@pytest.mark.parametrize("num_beams", [1, 3])
def test_rag_sequence_fast_matches_brute_force(tiny_bart, rag_batch, num_beams):
    K = 4
    ids, mask, scores = rag_batch(B, K, L, seed=8)
    out = rag_sequence_generate(tiny_bart, ids, mask, scores, DecodeConfig(num_beams=num_beams),
                                fast=True)
    with torch.no_grad():
        for b in range(B):
            hyp, score = fast_oracle(tiny_bart, ids[b], mask[b], scores[b], num_beams)
            got = out.sequences[b, 0]
            assert got[: len(hyp)].tolist() == list(hyp)
            assert got[len(hyp) :].eq(tiny_bart.config.pad_token_id).all()
            torch.testing.assert_close(out.scores[b, 0], score, atol=1e-4, rtol=0)


def test_fast_equals_thorough_with_one_passage(tiny_bart, rag_batch):
    ids, mask, scores = rag_batch(B, 1, L, seed=9)
    config = DecodeConfig(num_beams=4, num_return_sequences=3)
    fast = rag_sequence_generate(tiny_bart, ids, mask, scores, config, fast=True)
    thorough = rag_sequence_generate(tiny_bart, ids, mask, scores, config)
    assert torch.equal(fast.sequences, thorough.sequences)
    torch.testing.assert_close(fast.scores, thorough.scores, atol=1e-4, rtol=0)


def test_returned_hypotheses_are_distinct_and_config_is_checked(tiny_bart, rag_batch):
    ids, mask, scores = rag_batch(2, 3, L, seed=10)
    out = rag_sequence_generate(tiny_bart, ids, mask, scores,
                                DecodeConfig(num_beams=4, num_return_sequences=4))
    for b in range(2):
        assert len({tuple(row) for row in out.sequences[b].tolist()}) == 4
    with pytest.raises(UserError, match="num_return_sequences"):
        DecodeConfig(num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="doc_scores"):
        rag_token_generate(tiny_bart, ids, mask, scores[:, :2])


@pytest.mark.parametrize("generator", ["bart", "bart-eager", "copy"])
def test_grouped_beam_step_equals_the_ordinary_forward(tiny_bart, rag_batch, monkeypatch,
                                                       generator):
    """RAG-Token beam search with the passages' cross-attention grouped (beams as queries of one
    row per passage) gives the sequences and scores of the ordinary per-row forward, for BART with
    either attention implementation and for the copy generator; and it is really taken."""
    import copy

    from rag import decode_token, grouped_step
    from tests.generator.test_copy import batch, tiny_copy

    if generator == "copy":
        model = tiny_copy(5)
        ids, mask, scores, _ = batch(model, 5)
    else:
        model = copy.deepcopy(tiny_bart)
        if generator == "bart-eager":
            model.set_attn_implementation("eager")
        ids, mask, scores = rag_batch(B, 3, L, seed=5)
    config = DecodeConfig(num_beams=3, num_return_sequences=2, max_length=9)
    steps = []
    real = grouped_step.GroupedStep.hidden
    monkeypatch.setattr(grouped_step.GroupedStep, "hidden",
                        lambda self, inputs: steps.append(1) or real(self, inputs))
    grouped = rag_token_generate(model, ids, mask, scores, config)
    assert steps, "the grouped step was not used"
    monkeypatch.setattr(decode_token, "can_group", lambda generator: False)
    plain = rag_token_generate(model, ids, mask, scores, config)
    assert torch.equal(grouped.sequences, plain.sequences)
    torch.testing.assert_close(grouped.scores, plain.scores, atol=1e-5, rtol=0)
