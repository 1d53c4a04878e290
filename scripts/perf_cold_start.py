"""Cold start of ``ragqa ask``: wall time from process start to the printed answer, against a bare
``python -c "import torch, transformers, faiss"``, taking turns, median of ``--runs`` each.

Each ``ask`` run must print the same answer (the script says if not). ``--phases`` adds one
in-process reading of where the time goes: imports, the model's load, the first answer and a
second one (what a warm process would pay).

Example:
    python scripts/perf_cold_start.py --runs 3 --json runs/cold_start.json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass

from measure import Stopwatch  # this directory: the perf scripts' one set of timers

from rag.commands.cli import parse, run
from rag.common.atomic import check_output_parent, write_json
from rag.common.options import POSITIVE, check_fields, option

BARE = "import torch, transformers, faiss"
PHASES = """
import json, sys, time
t0 = time.perf_counter()
import torch, transformers, faiss
t1 = time.perf_counter()
from rag.loading import load_model
t2 = time.perf_counter()
model, _ = load_model({model!r}, {index!r})
t3 = time.perf_counter()
first = model.answer([{question!r}])[0].answer
t4 = time.perf_counter()
model.answer([{question!r}])
t5 = time.perf_counter()
print(json.dumps({{"bare_imports": t1 - t0, "our_imports": t2 - t1, "load": t3 - t2,
                  "first_answer": t4 - t3, "second_answer": t5 - t4, "answer": first}}))
"""


@dataclass(frozen=True)
class Args:
    question: str = option("What is the capital of Australia?", "the question ask answers")
    model: str | None = option(None, "model directory (default: the starter)")
    index: str | None = option(None, "index directory (default: the model's, or the starter's)")
    runs: int = option(3, "runs of each, taking turns; the median is reported", within=POSITIVE)
    phases: bool = option(True, "also time the phases in one process")
    json: str | None = option(None, "write all figures here")

    def __post_init__(self) -> None:
        check_fields(self)


def _ask_command(args: Args) -> list[str]:
    """``ragqa ask`` as the console script runs it (``rag.commands.main``)."""
    command = [sys.executable, "-c", "from rag.commands import main; main()", "ask", args.question]
    for flag, value in (("--model", args.model), ("--index", args.index)):
        if value is not None:
            command += [flag, value]
    return command


def _timed(command: list[str]) -> tuple[float, str]:
    with Stopwatch() as watch:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"error: {' '.join(command[:3])} ... exited {done.returncode}: "
                         f"{done.stderr.strip().splitlines()[-1:]}")
    return watch.seconds, done.stdout


def main() -> None:
    (args,) = parse([Args], description=__doc__)
    if args.json:
        check_output_parent(args.json)
    env_note = f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    times: dict[str, list[float]] = {"bare": [], "ask": []}
    outputs = set()
    _timed([sys.executable, "-c", BARE])  # warm the page cache for both, untimed
    outputs.add(_timed(_ask_command(args))[1])
    for _ in range(args.runs):
        times["bare"].append(_timed([sys.executable, "-c", BARE])[0])
        seconds, out = _timed(_ask_command(args))
        times["ask"].append(seconds)
        outputs.add(out)
    bare, ask = (statistics.median(times[k]) for k in ("bare", "ask"))
    figures = {"bare_s": times["bare"], "ask_s": times["ask"], "bare_median_s": bare,
               "ask_median_s": ask, "ratio": ask / bare, "same_output": len(outputs) == 1,
               "answer": sorted(outputs)[0].splitlines()[0] if outputs else ""}
    print(f"{env_note}, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"bare import torch, transformers, faiss: median {bare:.2f}s  "
          f"({', '.join(f'{t:.2f}' for t in times['bare'])})")
    print(f"ragqa ask: median {ask:.2f}s  ({', '.join(f'{t:.2f}' for t in times['ask'])})  "
          f"ratio {ask / bare:.2f}x (goal <= 1.6x)  same output every run={figures['same_output']}")
    if args.phases:
        code = PHASES.format(model=args.model, index=args.index, question=args.question)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True)
        phases = json.loads(done.stdout.strip().splitlines()[-1])
        figures["phases_s"] = phases
        print("in one process: " + "  ".join(f"{k} {v:.2f}s" for k, v in phases.items()
                                              if k != "answer"))
    if args.json:
        write_json(args.json, {"args": asdict(args), **figures})


if __name__ == "__main__":
    run(main)
