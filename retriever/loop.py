"""The training loop the trainers share, under accelerate: how they step (:class:`OptimConfig`), the
accelerator that joins the processes, each process's share of an epoch's examples, one optimiser
update, and one epoch of batches.

DPR training (``retriever.train``) and the scaling sweep (``retriever.scaling.sweep``) run their
epochs through :func:`train_epoch`; RAG fine-tuning (``rag.train``) steps with
:func:`rank_share` and :func:`optimizer_step`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import torch

from rag.common.options import FRACTION, NON_NEGATIVE, POSITIVE, check_fields, option
from rag.common.progress import progress_bar

# minutes a collective waits (make_accelerator); reading and indexing DPR's 21M-passage Wikipedia
# on one process, while the others wait, takes about an hour
DIST_TIMEOUT = 180


@dataclass(frozen=True)
class OptimConfig:
    """How a trainer steps: batches, AdamW with linear warm-up then linear decay, gradient clipping
    and precision. Each trainer holds one with defaults of its own (``retriever.train.TrainConfig``
    DPR's, ``rag.train.FinetuneConfig`` RAG's); on the command line its fields are options of
    their own (``--lr``)."""

    epochs: int = option(1, "passes over the training questions", within=NON_NEGATIVE)
    batch_size: int = option(8, "questions per step (per process)", within=POSITIVE)
    lr: float = option(3e-5, "AdamW peak learning rate", within=POSITIVE)
    weight_decay: float = option(0.0, "AdamW weight decay", within=NON_NEGATIVE)
    warmup_ratio: float = option(0.1, "fraction of updates with linear warm-up, then linear decay",
        within=FRACTION)
    grad_accum: int = option(1, "gradient accumulation steps", within=POSITIVE)
    max_grad_norm: float = option(1.0, "gradient clipping: the largest gradient norm", within=POSITIVE)
    mixed_precision: Literal["no", "fp16", "bf16"] = option("no", 'accelerate: "no", "fp16" or "bf16"')
    dist_timeout: int = option(
        DIST_TIMEOUT, "under torch.distributed: minutes a process waits for the others (while the "
        "first one reads a corpus, builds an index or evaluates) before the job is stopped",
        within=POSITIVE)

    def __post_init__(self) -> None:
        check_fields(self)

    def optimizer(self, params, updates: int):
        """AdamW over ``params`` (tensors, or groups with settings of their own) and its schedule
        over a run of ``updates`` optimiser updates: ``(optimizer, scheduler)``."""
        from transformers import get_linear_schedule_with_warmup

        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return opt, get_linear_schedule_with_warmup(opt, int(self.warmup_ratio * updates), updates)

    def accelerator(self):
        """:func:`make_accelerator` with this precision and accumulation."""
        return make_accelerator(self.mixed_precision, self.grad_accum, self.dist_timeout)


def make_accelerator(mixed_precision: str = "no", grad_accum: int = 1,
                     dist_timeout: int = DIST_TIMEOUT):
    """accelerate's ``Accelerator`` for our trainers. On a machine without CUDA it is told so
    (``cpu=True``): only then does accelerate join the processes that torchrun or
    ``accelerate launch`` started (gloo); without it each would train alone, unsynchronised.

    ``dist_timeout`` (minutes) is how long a collective waits: NCCL's default of 10 minutes
    stops a job whose first process reads a large corpus or builds an index while the others
    wait at a barrier."""
    from accelerate import Accelerator, InitProcessGroupKwargs

    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                       cpu=not torch.cuda.is_available(), kwargs_handlers=[
                           InitProcessGroupKwargs(timeout=timedelta(minutes=dist_timeout))])


def rank_share(n: int, seed: int | None, acc) -> list[int]:
    """This process's examples of an epoch: the ``n`` shuffled by ``seed`` (in order when it is
    None), padded by repeating the first few to a multiple of the process count (as
    ``DistributedSampler`` does), then every ``num_processes``-th from this rank's. Every rank gets
    as many examples, so as many batches of the same sizes: no rank waits forever for another's
    gradients, and the mean over ranks of their batch means is the mean over the global batch."""
    order = list(range(n))
    if seed is not None:
        random.Random(seed).shuffle(order)
    order += order[: (-n) % acc.num_processes]
    return order[acc.process_index :: acc.num_processes]


def optimizer_step(acc, loss: torch.Tensor, params, opt, sched, max_grad_norm: float | None
                   ) -> None:
    """Backward, clip to ``max_grad_norm`` (when gradients sync; None: never), step and zero: one
    accelerate update, all trainers.

    ``sched`` is *not* accelerate-prepared: a prepared scheduler steps once per process at every
    update, so its schedule would depend on the number of processes. Ours count updates (their
    totals already divide by the process count) and step once per update."""
    acc.backward(loss)
    if acc.sync_gradients and max_grad_norm is not None:
        acc.clip_grad_norm_(params, max_grad_norm)
    opt.step()
    # an fp16 step the gradient scaler skipped (inf/nan gradients) is no update: the schedule
    # counts updates, so it does not move either
    if acc.sync_gradients and not acc.optimizer_step_was_skipped:
        sched.step()
    opt.zero_grad()


def train_epoch(acc, module: torch.nn.Module, order: Sequence[int], batch_size: int,
                batch_loss: Callable[[Sequence[int]], torch.Tensor],
                update: Callable[[torch.Tensor], None], first: int = 0,
                after_batch: Callable[[int, float], None] | None = None, desc: str = "epoch",
                progress: bool = True) -> list[float]:
    """One epoch of training ``module``: the examples ``order`` (indices, from :func:`rank_share`)
    in batches of ``batch_size``, from batch ``first`` on (a resumed epoch starts past 0).

    Each batch runs ``update(batch_loss(indices))`` under ``acc.accumulate(module)``, then
    ``after_batch(batches done, loss)`` (the caller's bookkeeping: running loss, checkpoints).
    Returns the losses of the batches run, as floats.
    """
    module.train()
    starts = range(0, len(order), batch_size)
    bar = progress_bar(starts, desc=desc, initial=first, enabled=progress)
    losses = []
    for b in range(first, len(starts)):
        with acc.accumulate(module):
            loss = batch_loss(order[starts[b] : starts[b] + batch_size])
            update(loss)
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if after_batch is not None:
            after_batch(b + 1, losses[-1])
    bar.close()
    return losses
