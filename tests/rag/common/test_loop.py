"""The one training loop: each rank's share, one update (clipped or not), updates counted and the
schedule's length, resuming, batches prepared by loader workers."""

from __future__ import annotations

import copy
import os
from types import SimpleNamespace

import pytest
import torch

from rag.common.loop import (
    OptimConfig,
    make_accelerator,
    new_progress,
    optimizer_step,
    prepared_batches,
    rank_share,
    train_loop,
)


@pytest.mark.parametrize("n, processes", [(10, 1), (10, 3), (7, 4)])
def test_ranks_share_every_example_in_equal_parts(n, processes):
    shares = [rank_share(n, 5, SimpleNamespace(num_processes=processes, process_index=r))
              for r in range(processes)]
    assert len({len(s) for s in shares}) == 1  # padded: every rank runs as many batches
    assert set().union(*shares) == set(range(n))
    one = SimpleNamespace(num_processes=1, process_index=0)
    assert sorted(rank_share(n, 5, one)) == list(range(n)) != rank_share(n, 5, one)
    assert rank_share(n, None, one) == list(range(n))  # unshuffled: the scaling sweep's order


@pytest.mark.parametrize("n, processes", [(1, 4), (3, 8)])
def test_fewer_examples_than_processes_still_give_every_rank_one_share(n, processes):
    """Padding cycles through the examples: with 1 example and 4 processes every rank gets it
    (repeating only the first n left ranks empty, and their collectives waiting)."""
    shares = [rank_share(n, 5, SimpleNamespace(num_processes=processes, process_index=r))
              for r in range(processes)]
    assert {len(s) for s in shares} == {1}
    assert set().union(*shares) == set(range(n))


def _step(max_grad_norm):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    before = model.weight.detach().clone()
    loss = 100 * model(torch.ones(2, 3)).sum()
    optimizer_step(make_accelerator(), loss, list(model.parameters()), opt, sched, max_grad_norm)
    assert all(p.grad is None for p in model.parameters())  # zeroed for the next batch
    return (before - model.weight.detach()).norm().item()


def test_update_clips_unless_told_not_to():
    assert _step(None) == pytest.approx(200 * 3 ** 0.5)  # the gradient, 200 per weight, whole
    assert _step(1.0) < 1.0 + 1e-4  # weight and bias together clipped to norm 1


def _run(state, optim, saved=None, crash_at=None, every=1, max_steps=0, prepare=None):
    """Train a small dropout model through train_loop on 10 examples; returns (model, batches
    seen, updates hooked)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 1))
    if saved:
        model.load_state_dict(saved["model"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    if saved:
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        torch.set_rng_state(saved["rng"])
    acc = make_accelerator(grad_accum=optim.grad_accum)
    seen, updates = [], []

    def batch_loss(batch):
        seen.append([int(x) for x in batch[:, 0]])
        if crash_at is not None and len(seen) > crash_at:
            raise KeyboardInterrupt
        return model(batch).pow(2).mean()

    def after_update(state):
        updates.append(state["step"])
        if saved is not None and state["step"] % every == 0:
            saved.update(model={k: v.clone() for k, v in model.state_dict().items()},
                         opt=copy.deepcopy(opt.state_dict()), sched=sched.state_dict(),
                         rng=torch.get_rng_state(), state=copy.deepcopy(state))

    data = [torch.tensor([float(i), 1.0]) for i in range(10)]
    try:
        train_loop(acc, model, state, optim, lambda epoch: data, prepare or torch.stack,
                   batch_loss, lambda loss: optimizer_step(acc, loss, list(model.parameters()),
                                                           opt, sched, 1.0),
                   seed=3, max_steps=max_steps, after_update=after_update, progress=False)
    except KeyboardInterrupt:
        pass
    return model, seen, updates


@pytest.mark.parametrize("accum", [1, 2])
def test_the_loop_counts_updates_and_its_schedule_length_is_what_it_runs(accum):
    optim = OptimConfig(epochs=3, batch_size=3, grad_accum=accum)
    state = new_progress({})
    _, seen, updates = _run(state, optim)
    assert len(seen) == 3 * 4  # ceil(10 / 3) batches an epoch, all of each epoch's examples
    assert sorted(sum(seen[:4], [])) == list(range(10)) != sum(seen[:4], [])  # shuffled
    assert sum(seen[:4], []) != sum(seen[4:8], [])  # shuffled again each epoch
    assert updates == list(range(1, len(updates) + 1)) and state["step"] == len(updates)
    assert optim.updates(10, 1) == len(updates) == 12 // accum
    assert (state["epoch"], state["batch"]) == (3, 0)
    _, _, capped = _run(new_progress({}), optim, max_steps=5)
    assert capped == [1, 2, 3, 4, 5] and optim.updates(10, 1, max_steps=5) == 5


def test_a_run_resumed_from_its_state_equals_an_uninterrupted_one():
    optim = OptimConfig(epochs=2, batch_size=3)
    whole, seen_whole, _ = _run(new_progress({}), optim)
    saved: dict = {}
    _run(new_progress({}), optim, saved=saved, crash_at=5, every=2)  # dies in batch 6
    assert saved["state"]["step"] == 4  # the last "checkpoint"
    resumed, seen_rest, _ = _run(saved["state"], optim, saved=saved)
    assert seen_rest == seen_whole[4:]  # from batch 5 on, as the whole run saw them
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_loader_workers_prepare_ahead_and_change_nothing():
    """Batches prepared in 2 worker processes: the same batches, the same dropout draws (the
    loader's own generator, not torch's), so the same weights as preparing in the step."""
    inline, seen_inline, _ = _run(new_progress({}), OptimConfig(epochs=2, batch_size=3,
                                                                loader_workers=0))
    workers, seen_workers, _ = _run(new_progress({}), OptimConfig(epochs=2, batch_size=3,
                                                                  loader_workers=2, prefetch=2),
                                    prepare=torch.stack)
    assert seen_workers == seen_inline
    for a, b in zip(inline.parameters(), workers.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_loader_prepares_in_workers_without_touching_torchs_random_state():
    rng = torch.get_rng_state()
    pids = list(prepared_batches(list(range(6)), [5, 4, 3, 2, 1, 0], 2, 1,
                                 lambda rows: (os.getpid(), rows), workers=2))
    assert [rows for _, rows in pids] == [[3, 2], [1, 0]]  # from batch 1 on, in order
    assert os.getpid() not in {pid for pid, _ in pids}
    assert torch.equal(torch.get_rng_state(), rng)


def test_workers_default_to_two_on_a_gpu_and_none_on_cpu(monkeypatch):
    assert OptimConfig(loader_workers=3).workers() == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert OptimConfig().workers() == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert OptimConfig().workers() == 2


def test_the_process_group_timeout_is_the_configured_one():
    from datetime import timedelta

    from rag.common.loop import DIST_TIMEOUT, OptimConfig

    assert DIST_TIMEOUT >= 60  # NCCL's own 10 minutes stop jobs that read a large corpus first
    acc = OptimConfig(dist_timeout=7).accelerator()
    assert acc.init_handler.timeout == timedelta(minutes=7)


@pytest.mark.parametrize("skipped", [False, True])
def test_the_schedule_does_not_move_on_a_skipped_fp16_step(skipped):
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    # what accelerate's fp16 scaler reports after inf gradients: the optimizer did not step
    acc = SimpleNamespace(backward=lambda loss: loss.backward(), sync_gradients=True,
                          clip_grad_norm_=lambda *a: None, optimizer_step_was_skipped=skipped)
    optimizer_step(acc, model(torch.ones(1, 3)).sum(), list(model.parameters()), opt, sched, 1.0)
    assert sched.last_epoch == (0 if skipped else 1)
