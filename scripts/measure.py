"""Timing and memory readings, the one set every ``perf_*.py`` script uses (they import it from this
directory, as Python puts a script's own directory on its path).

- :class:`Stopwatch`: the wall-clock seconds of one block;
- :func:`median_seconds`: one function, repeated; :func:`alternating`: several, taking turns, so
  that a machine slowing down mid-run slows every contender alike;
- :func:`process_rss`: this process's resident and peak memory, read from ``/proc`` (Linux);
- :class:`ModuleTime`: the part of a block spent inside ``torch.nn.Module`` calls.
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


class ModuleTime:
    """Seconds spent inside ``torch.nn.Module`` calls (the outermost call of each nesting counted
    once) while the block runs: ``with ModuleTime() as inside: work()``, then ``inside.seconds``.
    With the block's own wall time it gives the share of a computation that is the model's own
    forwards, as against the Python and tensor work around them."""

    def __enter__(self) -> ModuleTime:
        from torch.nn.modules import module

        self.seconds, self._depth, self._start = 0.0, 0, 0.0

        def enter(mod, args):
            if self._depth == 0:
                self._start = time.perf_counter()
            self._depth += 1

        def leave(mod, args, out):
            self._depth -= 1
            if self._depth == 0:
                self.seconds += time.perf_counter() - self._start

        self._hooks = [module.register_module_forward_pre_hook(enter),
                       module.register_module_forward_hook(leave)]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
