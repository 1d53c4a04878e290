"""The span reader (rag.span_reader): its marginal against float64 brute force, its loss, and the
span head inside RagModel (training, batched answers, save/load, refusals)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from generator.copy import CopyBartForConditionalGeneration
from rag.common.errors import UserError
from rag.common.qa_metrics import normalize_answer
from rag.model import RagModel
from rag.span_reader import read_answers, span_nll

WORDS = ["the", "Nile", "river", "Paris", "a", "Nile.", "Seine", "The"]


def _synthetic(seed: int, B: int = 2, K: int = 3, M: int = 3, n_words: int = 7):
    """Random span log-probs over word tokens of passages that repeat a few words, so that many
    spans share a normalised text ("the Nile", "Nile.", "Nile" all read "nile")."""
    g = torch.Generator().manual_seed(seed)
    strings, offsets = [], []
    L = n_words + 1  # a leading special token
    for _ in range(B):
        row_s, row_o = [], []
        for _ in range(K):
            words = [WORDS[int(i)] for i in torch.randint(len(WORDS), (n_words,), generator=g)]
            text, offs = "", [[0, 0]]
            for w in words:
                text += ("" if not text else " ")
                offs.append([len(text), len(text) + len(w)])
                text += w
            row_s.append(text)
            row_o.append(offs)
        strings.append(row_s)
        offsets.append(row_o)
    allowed = torch.ones(B, K, L, dtype=torch.bool)
    allowed[:, :, 0] = False
    scores = torch.randn(B, K, L, M, generator=g) * 2
    band = allowed[..., None] & torch.ones(B, K, L, M, dtype=torch.bool)
    for m in range(M):
        band[:, :, L - m :, m] = False  # past the row's end
    scores = scores.masked_fill(~band, -math.inf)
    logp = scores - torch.logsumexp(scores.flatten(2), dim=2)[..., None, None]
    doc = torch.log_softmax(torch.randn(B, K, generator=g), dim=1)
    return logp, doc, torch.tensor(offsets), strings


def _brute_marginal(logp, doc, offsets, strings, w):
    """{b: {normalised text: log sum_z p(z|x)^w sum_spans p(span|x,z)}} in float64."""
    B, K, L, M = logp.shape
    out = {}
    for b in range(B):
        sums: dict[str, float] = {}
        for k in range(K):
            for i in range(L):
                for m in range(M):
                    lp = logp[b, k, i, m].item()
                    if lp == -math.inf:
                        continue
                    a, e = offsets[b, k, i, 0].item(), offsets[b, k, i + m, 1].item()
                    key = normalize_answer(strings[b][k][a:e])
                    if key:
                        sums[key] = sums.get(key, 0.0) + math.exp(w * doc[b, k].item() + lp)
        out[b] = {key: math.log(v) for key, v in sums.items()}
    return out


@pytest.mark.parametrize(("seed", "w"), [(0, 1.0), (1, 1.0), (2, 0.5), (3, 0.0)])
def test_marginal_equals_brute_force_over_all_spans_and_passages(seed, w):
    logp, doc, offsets, strings = _synthetic(seed)
    B, K, L, M = logp.shape
    found = read_answers(logp, doc, offsets, strings, top=L * M, doc_weight=w)
    brute = _brute_marginal(logp, doc, offsets, strings, w)
    for b in range(B):
        best = max(brute[b], key=brute[b].__getitem__)
        assert normalize_answer(found[b].text) == best
        assert found[b].score == pytest.approx(brute[b][best], abs=1e-9)


def test_identical_answers_in_two_passages_are_summed():
    strings = [["Nile river", "the Nile"]]
    offsets = torch.tensor([[[[0, 0], [0, 4], [5, 10]], [[0, 0], [0, 3], [4, 8]]]])
    logp = torch.full((1, 2, 3, 2), -math.inf)
    # passage 0: "Nile" 0.4, "river" 0.6; passage 1: "the Nile" 0.4, "the" 0.6 (normalises to "")
    logp[0, 0, 1, 0], logp[0, 0, 2, 0] = math.log(0.4), math.log(0.6)
    logp[0, 1, 1, 1], logp[0, 1, 1, 0] = math.log(0.4), math.log(0.6)
    doc = torch.log(torch.tensor([[0.5, 0.5]]))
    (answer,) = read_answers(logp, doc, offsets, strings)
    # "river" has the best single span (0.3) but "Nile" sums to 0.5 * 0.4 + 0.5 * 0.4 = 0.4
    assert normalize_answer(answer.text) == "nile"
    assert answer.score == pytest.approx(math.log(0.4))
    assert answer.spans == [(0, 4), (0, 8)]


def test_span_nll_is_the_gold_marginal_and_skips_absent_answers():
    logp, doc, offsets, strings = _synthetic(4, B=2, K=2)
    gold = torch.zeros(logp.shape, dtype=torch.bool)
    gold[0, 0, 1, 0] = gold[0, 1, 2, 1] = True  # question 1 has no gold span anywhere
    nll, found = span_nll(logp, doc, gold)
    expected = -math.log(math.exp(doc[0, 0].item() + logp[0, 0, 1, 0].item())
                         + math.exp(doc[0, 1].item() + logp[0, 1, 2, 1].item()))
    assert nll[0].item() == pytest.approx(expected, abs=1e-5)
    assert found.tolist() == [True, False] and nll[1].item() == 0.0


def test_an_absent_answer_sends_no_nan_gradient_into_the_retriever():
    """Trained jointly, p(z|x) has a gradient: a question whose answer is in none of its passages
    must give it 0, not the nan of log 0 (which took the question encoder's weights to nan)."""
    logp, doc, _, _ = _synthetic(4, B=2, K=2)
    logp.requires_grad_(True)
    doc = doc.expand(2, 2).clone().requires_grad_(True)
    gold = torch.zeros(logp.shape, dtype=torch.bool)
    gold[0, 0, 1, 0] = True  # question 1 found nowhere
    nll, _ = span_nll(logp, doc, gold)
    nll.sum().backward()
    assert torch.isfinite(doc.grad).all() and torch.isfinite(logp.grad).all()
    assert doc.grad[1].abs().sum() == 0 and logp.grad[1].abs().sum() == 0
    assert doc.grad[0].abs().sum() > 0


# ------------------------------------------------------------------- inside RagModel, tiny model
@pytest.fixture
def span_rag(make_rag):
    """``span_rag(**config)``: the tiny RAG model with a copy generator and a fresh span head."""

    def make(**overrides) -> RagModel:
        model = make_rag("sequence", **overrides)
        torch.manual_seed(0)
        model.generator = CopyBartForConditionalGeneration.from_bart(model.generator)
        model.generator.add_span_head()
        return model.eval()

    return make


QUESTIONS = ["what is the capital of france?", "who wrote hamlet?", "what is paris?"]


def test_batched_span_answers_equal_one_at_a_time(span_rag):
    model = span_rag(reader="span", max_answer_tokens=4)
    together = model.answer(QUESTIONS)
    for q, batched in zip(QUESTIONS, together, strict=True):
        alone = model.answer(q)
        assert alone.answer == batched.answer
        assert alone.score == pytest.approx(batched.score, abs=1e-4)
        assert [p["id"] for p in alone.passages] == [p["id"] for p in batched.passages]
    for a in together:  # each passage holding the answer (normalised) carries its offsets
        held = [p["text"][p["answer_start"] : p["answer_end"]] for p in a.passages
                if "answer_start" in p]
        assert a.answer in held
        assert {normalize_answer(t) for t in held} == {normalize_answer(a.answer)}


def test_span_loss_trains_the_head_and_counts_absent_answers(span_rag):
    model = span_rag()
    passages = [("France", "paris is the capital of france."), ("Hamlet", "a play by someone.")]
    loss, nll = model.loss(QUESTIONS[:2], ["paris", "shakespeare"], passages)
    assert model.span_stats == {"answers": 2, "not_found": 1}
    loss.backward()
    assert model.generator.span_head.proj.weight.grad.abs().sum() > 0
    without = span_rag(span_weight=0.0)
    loss0, nll0 = without.loss(QUESTIONS[:2], ["paris", "shakespeare"], passages)
    torch.testing.assert_close(nll, nll0)  # the reported NLL is the RAG NLL alone
    assert loss.item() > loss0.item() + 1e-3


def test_save_load_keeps_the_head(span_rag, rag_index_dir, tmp_path):
    model = span_rag(reader="span")
    model.save_pretrained(tmp_path / "m")
    loaded = RagModel.from_pretrained(tmp_path / "m", str(rag_index_dir)).eval()
    assert loaded.config.reader == "span"
    torch.testing.assert_close(loaded.generator.span_head.proj.weight,
                               model.generator.span_head.proj.weight)
    before, after = model.answer(QUESTIONS), loaded.answer(QUESTIONS)
    assert [a.answer for a in before] == [a.answer for a in after]


def test_reader_span_without_a_head_is_refused_before_the_index(make_rag, tmp_path):
    model = make_rag("sequence")
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(UserError, match="--reader span needs a generator with a span head"):
        RagModel.from_pretrained(tmp_path / "m", str(tmp_path / "no-such-index"), reader="span")
    model.config = replace(model.config, reader="span")
    with pytest.raises(UserError, match="span head"):
        model.answer(QUESTIONS[0])


def test_bad_span_settings_are_refused(make_rag):
    with pytest.raises(UserError, match="--max_answer_tokens"):
        make_rag("sequence", max_answer_tokens=0)
    with pytest.raises(UserError, match="closed_book"):
        make_rag("closed_book", reader="span")
