"""Dynamic batching: requests from many clients answered together, in one worker thread.

Requests arrive on the server's event loop as jobs (some questions and the settings to answer
them with). One worker thread owns the model: it takes the oldest job, waits until jobs with the
same settings hold ``max_batch`` questions or ``max_wait_ms`` have passed since that job came,
answers them all in one call, and hands each job its share. Jobs with other settings wait for a
batch of their own, in arrival order. Work that changes the model (adding or removing passages)
runs on the same thread, alone, so it never interleaves with answering or with other writes.

The queue is bounded (``max_queue`` questions waiting): past it :meth:`Batcher.submit` raises
:class:`Busy` at once, so a server under overload answers 503 rather than slowing everyone.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class Busy(Exception):
    """The queue is full; try again later."""


@dataclass(eq=False)
class _Job:
    key: Hashable  # jobs with equal keys may share a batch; None: runs alone (fn)
    items: Sequence
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    fn: Callable | None = None  # exclusive work (writes) instead of a batch
    arrived: float = field(default_factory=time.monotonic)
    cancelled: bool = False


class Batcher:
    """``run(key, items) -> results`` (one result per item, in order) called on batches of
    jobs with the same key; see the module doc."""

    def __init__(self, run: Callable[[Hashable, list], list], max_batch: int = 16,
                 max_wait_ms: float = 10.0, max_queue: int = 256):
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._jobs: deque[_Job] = deque()
        self._waiting = 0  # items queued
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="ragqa-batcher", daemon=True)
        self.batch_count = 0  # batches run (for /v1/info and the tests)
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # questions in the latest ones

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish every job already queued, then end the worker thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()

    async def submit(self, key: Hashable, items: Sequence, timeout: float | None = None) -> list:
        """The results of ``items``, answered in a batch with other jobs of ``key``.

        Raises :class:`Busy` when the queue is full, ``asyncio.TimeoutError`` after ``timeout``
        seconds (the job is dropped if it has not started), and whatever ``run`` raised."""
        return await self._enqueue(_Job(key, list(items), *self._future()), timeout)

    async def call(self, fn: Callable[[], object], timeout: float | None = None):
        """``fn()`` on the worker thread, alone (between batches); its result."""
        return await self._enqueue(_Job(None, [None], *self._future(), fn=fn), timeout)

    def _future(self) -> tuple[asyncio.Future, asyncio.AbstractEventLoop]:
        loop = asyncio.get_running_loop()
        return loop.create_future(), loop

    async def _enqueue(self, job: _Job, timeout: float | None):
        with self._cond:
            if self._stopping:
                raise Busy("shutting down")
            if self._waiting + len(job.items) > self.max_queue:
                raise Busy(f"{self._waiting} questions are waiting")
            self._jobs.append(job)
            self._waiting += len(job.items)
            self._cond.notify_all()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except TimeoutError:
            job.cancelled = True
            raise

    # ------------------------------------------------------------ worker thread
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if not self._jobs:
                    return
                batch = self._take()
            self._execute(batch)

    def _take(self) -> list[_Job]:
        """The next batch (the condition held): the oldest job and, for a batchable one, the jobs
        of its key up to ``max_batch`` items, once there are that many or its wait is over."""
        first = self._jobs[0]
        if first.fn is None:
            deadline = first.arrived + self.max_wait
            while (not self._stopping and self._count(first.key) < self.max_batch
                   and (left := deadline - time.monotonic()) > 0):
                self._cond.wait(left)
        batch, size = [], 0
        for job in list(self._jobs):
            if job.fn is not None or first.fn is not None:
                if job is first:
                    batch = [job]
                    break
                continue
            if job.key != first.key:
                continue
            if batch and size + len(job.items) > self.max_batch:
                break
            batch.append(job)
            size += len(job.items)
        for job in batch:
            self._jobs.remove(job)
            self._waiting -= len(job.items)
        return batch

    def _count(self, key: Hashable) -> int:
        return sum(len(j.items) for j in self._jobs if j.fn is None and j.key == key)

    def _execute(self, batch: list[_Job]) -> None:
        live = [job for job in batch if not job.cancelled]
        if not live:
            return
        try:
            if live[0].fn is not None:
                outcome = [[live[0].fn()]]
            else:
                flat = [item for job in live for item in job.items]
                results = self.run(live[0].key, flat)
                self.batch_count += 1
                self.batch_sizes.append(len(flat))
                starts = list(itertools.accumulate([0] + [len(j.items) for j in live]))
                outcome = [results[a:b] for a, b in itertools.pairwise(starts)]
        except BaseException as err:  # handed to the requests: each answers with it
            for job in live:
                job.loop.call_soon_threadsafe(_settle, job.future, None, err)
            return
        for job, result in zip(live, outcome, strict=True):
            value = result[0] if job.fn is not None else result
            job.loop.call_soon_threadsafe(_settle, job.future, value, None)


def _settle(future: asyncio.Future, value, error: BaseException | None) -> None:
    if future.done():  # its request timed out or went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
