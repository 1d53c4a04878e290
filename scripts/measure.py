"""Timing and memory readings, the one set every ``perf_*.py`` script uses (they import it from this
directory, as Python puts a script's own directory on its path).

- :class:`Stopwatch`: the wall-clock seconds of one block;
- :func:`median_seconds`: one function, repeated; :func:`alternating`: several, taking turns, so
  that a machine slowing down mid-run slows every contender alike;
- :func:`process_rss`: this process's resident and peak memory, read from ``/proc`` (Linux).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

MiB = 2**20


class Stopwatch:
    """Wall-clock seconds since it was made (``watch = Stopwatch()``; ``watch.seconds`` so far), or
    of one block (``with Stopwatch() as watch: work()``, then ``watch.seconds``)."""

    def __init__(self) -> None:
        self._start, self._end = time.perf_counter(), None

    def __enter__(self) -> Stopwatch:
        self._start, self._end = time.perf_counter(), None  # the block's own start
        return self

    def __exit__(self, *exc) -> None:
        self._end = time.perf_counter()

    @property
    def seconds(self) -> float:
        return (self._end if self._end is not None else time.perf_counter()) - self._start


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        with Stopwatch() as watch:
            fn()
        times.append(watch.seconds)
    return statistics.median(times)


def alternating(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per contender over ``repeats`` rounds in which each runs once in turn, after
    one warm-up call each."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            with Stopwatch() as watch:
                fn()
            times[name].append(watch.seconds)
    return {name: statistics.median(ts) for name, ts in times.items()}


def process_rss() -> dict[str, int]:
    """This process's resident memory now (``VmRSS``) and at its highest (``VmHWM``), in bytes."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}
