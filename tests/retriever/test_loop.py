"""The shared training loop: each rank's share, one update (clipped or not), a resumable epoch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from retriever.loop import make_accelerator, optimizer_step, rank_share, train_epoch


@pytest.mark.parametrize("n, processes", [(10, 1), (10, 3), (7, 4)])
def test_ranks_share_every_example_in_equal_parts(n, processes):
    shares = [rank_share(n, 5, SimpleNamespace(num_processes=processes, process_index=r))
              for r in range(processes)]
    assert len({len(s) for s in shares}) == 1  # padded: every rank runs as many batches
    assert set().union(*shares) == set(range(n))
    one = SimpleNamespace(num_processes=1, process_index=0)
    assert sorted(rank_share(n, 5, one)) == list(range(n)) != rank_share(n, 5, one)
    assert rank_share(n, None, one) == list(range(n))  # unshuffled: the scaling sweep's order


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


def test_epoch_runs_batches_and_resumes():
    model = torch.nn.Linear(2, 1)
    seen, after = [], []

    def batch_loss(indices):
        seen.append(list(indices))
        return model(torch.ones(len(indices), 2)).sum()

    def update(loss):
        loss.backward()

    losses = train_epoch(make_accelerator(), model.eval(), [4, 3, 2, 1, 0], 2, batch_loss, update,
                         first=1, after_batch=lambda done, loss: after.append(done), progress=False)
    assert model.training and seen == [[2, 1], [0]] and after == [2, 3]
    assert len(losses) == 2 and all(isinstance(x, float) for x in losses)


def test_the_process_group_timeout_is_the_configured_one():
    from datetime import timedelta

    from retriever.loop import DIST_TIMEOUT, OptimConfig

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
