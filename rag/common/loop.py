"""The one training loop, under accelerate: how a trainer steps (:class:`OptimConfig`), the
accelerator that joins the processes, each process's share of an epoch's examples, the batches
prepared ahead of the step (a ``DataLoader``), one optimiser update, and the run itself
(:func:`train_loop`): progress counted in optimizer updates, checkpoints, evaluation hooks.

RAG fine-tuning (``rag.train``), DPR training (``retriever.train``) and the scaling sweep
(``retriever.scaling.sweep``) all train through :func:`train_loop`.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch

from rag.common.options import FRACTION, NON_NEGATIVE, POSITIVE, check_fields, option
from rag.common.progress import progress_bar

from .checkpoint import rng_states, save_checkpoint

# minutes a collective waits (make_accelerator); reading and indexing DPR's 21M-passage Wikipedia
# on one process, while the others wait, takes about an hour
DIST_TIMEOUT = 180


# OptimConfig's fields that do not change the weights a run trains: a resume may change them
NOT_SHAPING = ("dist_timeout", "loader_workers", "prefetch")


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
    loader_workers: int | None = option(
        None, "processes preparing batches (tokenising, targets, BM25) ahead of the step: torch "
        "DataLoader workers; default 2 on a GPU, 0 (prepared in the step's own process) on CPU",
        within=NON_NEGATIVE)
    prefetch: int = option(2, "batches each loader worker prepares ahead", within=POSITIVE)
    dist_timeout: int = option(
        DIST_TIMEOUT, "under torch.distributed: minutes a process waits for the others (while the "
        "first one reads a corpus, builds an index or evaluates) before the job is stopped",
        within=POSITIVE)

    def __post_init__(self) -> None:
        check_fields(self)

    def optimizer(self, params, updates: int):
        """AdamW over ``params`` (tensors, or groups with settings of their own) and its schedule
        over a run of ``updates`` optimiser updates: ``(optimizer, scheduler)``."""
        from transformers import get_linear_schedule_with_warmup  # lazy: transformers, to train only

        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return opt, get_linear_schedule_with_warmup(opt, int(self.warmup_ratio * updates), updates)

    def workers(self) -> int:
        """DataLoader workers: ``loader_workers``, or by default 2 with CUDA and 0 without."""
        if self.loader_workers is not None:
            return self.loader_workers
        return 2 if torch.cuda.is_available() else 0

    def updates(self, examples: int, processes: int, max_steps: int = 0) -> int:
        """The optimizer updates of a run over ``examples`` (a run's one schedule length): each
        process's batches of an epoch (:func:`rank_share`), times the epochs, over the
        accumulation steps; at most ``max_steps`` when it is set."""
        total = math.ceil(examples / (self.batch_size * processes)) * self.epochs // self.grad_accum
        return max(1, min(total, max_steps) if max_steps else total)

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
    from accelerate import Accelerator, InitProcessGroupKwargs  # lazy: accelerate, when a command runs

    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                       cpu=not torch.cuda.is_available(), kwargs_handlers=[
                           InitProcessGroupKwargs(timeout=timedelta(minutes=dist_timeout))])


def rank_share(n: int, seed: int | None, acc) -> list[int]:
    """This process's examples of an epoch: the ``n`` shuffled by ``seed`` (in order when it is
    None), padded by cycling through them to a multiple of the process count (as
    ``DistributedSampler`` does), then every ``num_processes``-th from this rank's. Every rank gets
    as many examples, so as many batches of the same sizes: no rank waits forever for another's
    gradients, and the mean over ranks of their batch means is the mean over the global batch."""
    order = list(range(n))
    if seed is not None:
        random.Random(seed).shuffle(order)
    order += [order[i % n] for i in range((-n) % acc.num_processes)]  # cycled: n may be < P
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


class _PreparedBatches(torch.utils.data.Dataset):
    """Batch ``b`` of an epoch, prepared: ``prepare`` of its examples (a DataLoader's dataset)."""

    def __init__(self, items: Sequence, chunks: list[list[int]], prepare: Callable[[list], Any]):
        self.items, self.chunks, self.prepare = items, chunks, prepare

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, b: int):
        return self.prepare([self.items[i] for i in self.chunks[b]])


def _as_is(batch):
    return batch


def prepared_batches(items: Sequence, order: Sequence[int], batch_size: int, first: int,
                     prepare: Callable[[list], Any], workers: int = 0, prefetch: int = 2
                     ) -> Iterable:
    """``prepare(examples)`` of each batch of ``items`` in ``order`` (batches of ``batch_size``),
    from batch ``first`` on. With ``workers`` they are prepared ahead, ``prefetch`` per worker, by
    a DataLoader's worker processes while the step runs. ``prepare`` draws no random numbers, and
    the loader has a generator of its own (it would otherwise draw its workers' seed from torch's
    global one, which dropout uses): the same batches, the same weights, either way."""
    chunks = [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)][first:]
    dataset = _PreparedBatches(items, chunks, prepare)
    if not workers:
        return (dataset[b] for b in range(len(dataset)))
    # fast tokenizers' own threads would deadlock in forked workers: they warn, then turn them off
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, collate_fn=_as_is, num_workers=workers, prefetch_factor=prefetch,
        generator=torch.Generator().manual_seed(0))


@dataclass
class Saving:
    """Where and how :func:`train_loop` checkpoints (``rag.common.checkpoint``): the directory,
    ``save_model(dir)``, the optimizer and scheduler, files of the trainer's own (name -> text),
    and every how many optimizer updates."""

    path: Path
    save_model: Callable[[Path], None]
    opt: Any
    sched: Any
    every: int
    extra: dict[str, str] | None = None


def new_progress(settings: dict) -> dict:
    """The one progress schema (a checkpoint's ``state.json``): optimizer updates done (``step``),
    epochs done, batches done in the current epoch, the current epoch's summed batch losses, the
    evaluation log, and the settings that shaped the run (``rag.common.checkpoint``)."""
    return {"step": 0, "epoch": 0, "batch": 0, "loss_sum": 0.0, "log": [], "settings": settings}


def train_loop(acc, module: torch.nn.Module, state: dict, optim: OptimConfig,
               data: Callable[[int], Sequence], prepare: Callable[[list], Any],
               batch_loss: Callable[[Any], torch.Tensor],
               update: Callable[[torch.Tensor], None], *, seed: int | None = 0,
               max_steps: int = 0, saving: Saving | None = None,
               after_update: Callable[[dict], None] | None = None,
               after_epoch: Callable[[dict, float], None] | None = None, desc: str = "training",
               progress: bool = True) -> dict:
    """Train ``module`` from ``state`` (:func:`new_progress`, or a checkpoint's) to the end of
    ``optim.epochs`` epochs, or ``max_steps`` optimizer updates when it is set; returns ``state``.

    Epoch e's examples are ``data(e)``, this process's share (:func:`rank_share`, shuffled by
    ``seed + e``; in order when ``seed`` is None) in batches of ``optim.batch_size``, each
    ``prepare``-d (:func:`prepared_batches`, ``optim.workers()`` workers) then run as
    ``update(batch_loss(prepared))`` under ``acc.accumulate(module)``. After each optimizer
    update: ``after_update(state)`` (e.g. evaluation), then a checkpoint every ``saving.every``
    updates. After each epoch: ``after_epoch(state, the epoch's mean batch loss)``.
    """
    total = optim.updates(len(data(state["epoch"])), acc.num_processes, max_steps)
    bar = progress_bar(total=total, initial=state["step"], desc=desc, enabled=progress)
    module.train()

    def done() -> bool:
        return state["epoch"] >= optim.epochs or bool(max_steps and state["step"] >= max_steps)

    while not done():
        items = data(state["epoch"])
        mine = rank_share(len(items), None if seed is None else seed + state["epoch"], acc)
        for batch in prepared_batches(items, mine, optim.batch_size, state["batch"], prepare,
                                      optim.workers(), optim.prefetch):
            with acc.accumulate(module):
                loss = batch_loss(batch)
                update(loss)
            state["batch"] += 1
            state["loss_sum"] += loss.item()
            if not acc.sync_gradients:
                continue
            state["step"] += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=state["epoch"] + 1)
            if after_update is not None:
                after_update(state)
            if saving is not None and state["step"] % saving.every == 0:
                rng = rng_states()  # collective: every process's random state
                if acc.is_main_process:
                    save_checkpoint(saving.path, saving.save_model, saving.opt, saving.sched,
                                    state, saving.extra, rng=rng)
            if done():
                break
        else:
            mean = state["loss_sum"] / max(1, math.ceil(len(mine) / optim.batch_size))
            state.update(epoch=state["epoch"] + 1, batch=0, loss_sum=0.0)
            if after_epoch is not None:
                after_epoch(state, mean)
    bar.close()
    return state
