"""Joint fine-tuning on tiny models: the loss goes down, and a killed run resumes where it stopped."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import rag.train as rag_train
from rag.common.checkpoint import checkpoint_dir, resume_dir
from rag.common.errors import UserError
from rag.common.options import updated
from rag.common.questions import Question, dev_subset
from rag.model import RagModel
from rag.train import (
    FinetuneConfig,
    answer_window,
    dev_exact_match,
    finetune,
    gold_examples,
)
from retriever.index import DenseIndex
from retriever.shards import load_index, split_index


@pytest.fixture
def train(questions) -> list[Question]:
    """The eight fixture questions with their answers."""
    return [Question(question=q, answers=tuple(a), id=gold) for q, a, gold in questions]


def batch_loss(model: RagModel, train: list[Question]) -> float:
    model.eval()
    with torch.no_grad():
        return model.loss([q.question for q in train], [q.answers[0] for q in train])[0].item()


def test_a_few_steps_lower_the_training_loss(make_rag, train, tmp_path):
    model = make_rag("sequence")
    before = batch_loss(model, train)
    config = updated(FinetuneConfig(), epochs=6, batch_size=8, lr=1e-2, warmup_ratio=0.0,
                     save_every=100)
    finetune(model, train, tmp_path / "out", config)
    after = batch_loss(model, train)
    assert after < 0.8 * before, (before, after)
    assert (tmp_path / "out" / "rag_config.json").is_file()
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())
    assert log["steps"] == 6
    assert not checkpoint_dir(tmp_path / "out").exists()


def test_dev_exact_match_counts_the_answers_that_match(make_rag, train):
    """Percent of questions answered exactly: three whose gold answer is what the model says (in
    other words: up to SQuAD normalisation) and one it cannot say, over batches of 2."""
    model = make_rag("token").eval()
    said = [a.answer for a in model.answer([q.question for q in train[:3]])]
    dev = [replace(q, answers=(f"The {s.upper()} ",)) for q, s in zip(train, said, strict=False)]
    dev.append(replace(train[3], answers=("no model says this",)))
    model.train()
    assert dev_exact_match(model, dev, batch_size=2) == 75.0
    assert model.training  # restored


@pytest.mark.parametrize("kind", ["closed_book", "dense", "sharded"])
def test_dev_exact_match_shares_the_questions_out_only_with_a_collective_index(
        kind, make_rag, train, rag_index_dir, tmp_path, monkeypatch):
    """A collective (sharded) index is searched by every process together, so each answers its
    share of the dev questions and the scores are gathered; a model with a dense index, or none,
    answers them all. The world is faked: this process is rank 0 of 2."""
    calls = []
    monkeypatch.setattr(rag_train, "share", lambda n: calls.append(("share", n)) or range(0, n, 2))
    monkeypatch.setattr(rag_train, "gather_shares",
                        lambda scores, n: calls.append(("gather", len(scores), n)) or scores)
    model = make_rag("closed_book" if kind == "closed_book" else "token")
    if kind == "sharded":
        split_index(DenseIndex.load(rag_index_dir), tmp_path / "sharded", 2)
        model = RagModel(model.question_encoder, model.generator, model.tokenizer,
                         load_index(tmp_path / "sharded"), model.config)
    dev_exact_match(model, train[:5], batch_size=2)
    assert calls == ([("share", 5), ("gather", 3, 5)] if kind == "sharded" else [])


def test_dev_subset_draws_across_the_file_and_keeps_its_order():
    dev = [Question(question=f"q{i}", answers=("a",), id=str(i)) for i in range(100)]
    first = dev_subset(dev, 10, "first")
    drawn = dev_subset(dev, 10, "random", seed=3)
    assert [q.id for q in first] == [str(i) for i in range(10)]
    ids = [int(q.id) for q in drawn]
    assert len(set(ids)) == 10 and ids == sorted(ids) and max(ids) >= 10
    assert drawn == dev_subset(dev, 10, "random", seed=3)  # seeded
    assert dev_subset(dev, 0) == dev and dev_subset(dev, 500) == dev
    with pytest.raises(UserError, match="eval_sample"):
        FinetuneConfig(eval_sample="last")


class Crash(RuntimeError):
    pass


def count_calls(model: RagModel, crash_after: int | None = None) -> list[int]:
    """Patch ``model.forward`` to count training calls (and raise after ``crash_after`` of them)."""
    calls = []
    forward = model.forward

    def counted(*args, batch=None):
        if crash_after is not None and len(calls) >= crash_after:
            raise Crash("killed")
        calls.append(len(batch.questions if batch is not None else args[0]))
        return forward(*args, batch=batch)

    model.forward = counted
    return calls


def test_killed_run_resumes_from_its_checkpoint(make_rag, train, tmp_path, rag_index_dir):
    out = tmp_path / "run" / "model"
    ckpt = checkpoint_dir(out)
    config = updated(FinetuneConfig(), max_steps=4, batch_size=2, lr=1e-3, save_every=1)
    model = make_rag("sequence")
    calls = count_calls(model, crash_after=2)
    with pytest.raises(Crash):
        finetune(model, train, out, config)
    assert len(calls) == 2
    assert json.loads((ckpt / "state.json").read_text())["step"] == 2
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers  # no half-written temporary or old checkpoint directories
    state = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert state["state"]  # Adam moments of the two steps taken
    torch.load(ckpt / "scheduler.pt", weights_only=True)

    assert resume_dir(out) == ckpt / "model"
    resumed = RagModel.from_pretrained(resume_dir(out))
    calls = count_calls(resumed)
    finetune(resumed, train, out, config)
    assert len(calls) == 2  # batches 3 and 4 only
    assert json.loads((out / "train_log.json").read_text())["steps"] == 4
    assert not ckpt.exists() and resume_dir(out) is None
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]
    final = RagModel.from_pretrained(out)  # a model directory, paired with the index
    assert final.config.index == str(rag_index_dir)
    assert final.question_encoder.fingerprint != final.index.manifest["encoder"]["fingerprint"]

    # the resumed run equals an uninterrupted one bit for bit (dropout draws included)
    assert any(getattr(m, "p", 0) > 0 for m in final.modules() if isinstance(m, torch.nn.Dropout)) \
        or final.generator.config.dropout > 0
    whole = tmp_path / "whole" / "model"
    finetune(make_rag("sequence"), train, whole, config)
    want = RagModel.from_pretrained(whole).state_dict()
    got = final.state_dict()
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def test_a_resume_with_other_settings_is_refused_naming_them(make_rag, train, tmp_path):
    out = tmp_path / "model"
    config = updated(FinetuneConfig(), max_steps=4, batch_size=2, lr=1e-3, save_every=1)
    model = make_rag("sequence")
    count_calls(model, crash_after=2)
    with pytest.raises(Crash):
        finetune(model, train, out, config)
    before = (checkpoint_dir(out) / "state.json").read_text()
    for changed, names in ((updated(config, lr=2e-3), ["--lr"]),
                           (updated(config, batch_size=4, seed=3), ["--batch_size", "--seed"])):
        resumed = RagModel.from_pretrained(resume_dir(out))
        with pytest.raises(UserError, match="other settings") as err:
            finetune(resumed, train, out, changed)
        assert all(name in str(err.value) for name in names), str(err.value)
        assert "--epochs" not in str(err.value)
    fewer = RagModel.from_pretrained(resume_dir(out))
    with pytest.raises(UserError, match="--data"):  # other training questions
        finetune(fewer, train[:6], out, config)
    # changing how it is evaluated or saved is no other run
    finetune(RagModel.from_pretrained(resume_dir(out)), train, out,
             updated(config, eval_limit=3, save_every=2))
    assert json.loads(before)["settings"]["lr"] == 1e-3


def test_schedule_ends_with_the_epochs_when_max_steps_is_larger(make_rag, train, tmp_path):
    """max_steps only caps the run: the linear decay must reach zero at the last epoch's end."""
    out = tmp_path / "model"
    config = updated(FinetuneConfig(), epochs=1, max_steps=100, batch_size=2, lr=1e-3,
                     warmup_ratio=0.0, save_every=1)
    model = make_rag("token")
    count_calls(model, crash_after=2)
    with pytest.raises(Crash):
        finetune(model, train, out, config)
    sched = torch.load(checkpoint_dir(out) / "scheduler.pt", weights_only=True)
    assert sched["_last_lr"] == pytest.approx([1e-3 * (4 - 2) / 4])  # 8 questions: 4 steps in all


def test_answer_window_cuts_whole_words_around_the_first_answer():
    text = "The Nile flows north through Egypt. It is long. Egypt is dry."
    assert answer_window(text, "Egypt", 6) == "through Egypt. It is"  # cuts widen to words
    assert answer_window(text, "Egypt", 0) == "Egypt."
    assert answer_window(text, "The", 3) == "The Nile"
    assert answer_window(text, "Amazon", 10) is None


def test_random_windows_move_the_answer_around():
    import random

    text = " ".join(f"w{i:02d}" for i in range(40))  # 40 words of 3 characters
    rng = random.Random(0)
    windows = [answer_window(text, "w20", 12, rng) for _ in range(200)]
    assert all("w20" in w and len(w) <= 3 + 2 * 12 + 2 * 3 for w in windows)
    places = {w.split().index("w20") for w in windows}  # words before the answer
    assert places == {0, 1, 2, 3, 4, 5, 6}  # 0 to 24 characters on the left, widened to words
    assert answer_window(text, "w20", 12) == "w17 w18 w19 w20 w21 w22 w23"  # centred


def test_reader_windows_are_drawn_again_each_epoch(make_rag, train):
    model = make_rag("sequence")
    gold = _gold_questions(model, train)
    first, again, other = (gold_examples(gold, model, 10, seed) for seed in (1, 1, 2))
    assert first == again
    assert [e[2] for e in first] != [e[2] for e in other]
    assert all(e[1] in e[2][1] for e in other)
    with pytest.raises(UserError, match="gold_position"):
        FinetuneConfig(gold_position="left")


def _gold_questions(model: RagModel, train: list[Question]) -> list[Question]:
    """The fixture questions with their gold passage's text as SQuAD's ``context``."""
    text_of = dict(zip(model.index.passages["id"], model.index.passages["text"], strict=True))
    return [Question(q.question, q.answers, q.id, gold_context=text_of[q.id]) for q in train]


def test_gold_examples_take_titles_from_the_index(make_rag, train):
    model = make_rag("sequence")
    gold = _gold_questions(model, train)
    title_of = dict(zip(model.index.passages["id"], model.index.passages["title"], strict=True))
    no_context = Question("Where?", ("x",), "none")
    examples = gold_examples([*gold, no_context], model, 1000)
    assert [e[0] for e in examples] == [q.question for q in gold if q.answers[0] in q.gold_context]
    for (question, answer, (title, window)), q in zip(examples, gold, strict=False):
        assert question == q.question and answer == q.answers[0]
        assert title == title_of[q.id] and answer in window
    with pytest.raises(UserError, match="gold_window"):
        gold_examples([no_context], model, 10)


def test_loss_on_a_given_passage_is_the_generators_nll(make_rag, train):
    """With one given passage p(z|x) = 1: the loss is the BART NLL of the answer on that input."""
    from generator.inputs import build_generator_inputs

    model = make_rag("sequence")
    q, a = train[0].question, train[0].answers[0]
    passage = ("Some Title", "A short passage about nothing in particular.")
    _, nll = model.loss([q], [a], [passage])
    enc = build_generator_inputs(model.tokenizer, [q], [[passage[0]]], [[passage[1]]],
                                 model.config.max_input_length, pad_to_max_length=False)
    labels = model.labels([a])  # (1, T) start symbol first
    with torch.no_grad():
        logits = model.generator(input_ids=enc["input_ids"][:, 0],
                                 attention_mask=enc["attention_mask"][:, 0],
                                 decoder_input_ids=labels[:, :-1]).logits
    want = torch.nn.functional.cross_entropy(logits[0], labels[0, 1:], reduction="sum")
    assert nll.item() == pytest.approx(want.item(), rel=1e-5)


def test_reader_warm_up_trains_the_generator_only(make_rag, train, tmp_path):
    model = make_rag("sequence")
    gold = _gold_questions(model, train)
    q_before = {k: v.clone() for k, v in model.question_encoder.state_dict().items()}
    examples = gold_examples(gold, model, 1000)

    def gold_loss() -> float:
        model.eval()
        with torch.no_grad():
            return model.loss([e[0] for e in examples], [e[1] for e in examples],
                              [e[2] for e in examples])[0].item()

    before = gold_loss()
    config = updated(FinetuneConfig(), epochs=6, batch_size=8, lr=1e-2, warmup_ratio=0.0,
                     gold_window=1000)
    finetune(model, gold, tmp_path / "out", config)
    assert gold_loss() < 0.8 * before
    after = model.question_encoder.state_dict()
    assert all(torch.equal(after[k], v) for k, v in q_before.items())


@pytest.mark.parametrize("gold_window", [0, 1000])
def test_loader_workers_train_the_same_weights(make_rag, train, tmp_path, gold_window):
    """Batches prepared by 2 DataLoader workers (the gold passages, their pointer and span
    targets with a copy generator and a span head; or the labels, retrieval staying in the step)
    train the same weights, bit for bit, as batches prepared in the step, and count the same
    answers found in no passage."""
    from generator.copy import CopyBartForConditionalGeneration

    def run(workers: int) -> RagModel:
        model = make_rag("sequence")
        torch.manual_seed(0)
        model.generator = CopyBartForConditionalGeneration.from_bart(model.generator)
        model.generator.add_span_head()
        config = updated(FinetuneConfig(), epochs=2, batch_size=3, lr=1e-3, save_every=100,
                         gold_window=gold_window, loader_workers=workers)
        finetune(model, _gold_questions(model, train) if gold_window else train,
                 tmp_path / f"out-{workers}-{gold_window}", config)
        return model

    inline, ahead = run(0), run(2)
    want, got = inline.state_dict(), ahead.state_dict()
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    assert ahead.span_stats == inline.span_stats and inline.span_stats["answers"] > 0
    assert ahead.pointer_stats == inline.pointer_stats

