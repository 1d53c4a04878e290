"""Peak memory of `ragqa eval-retrieval` against the number of questions, measured in one run.

Runs the command once per --limits value, each in a fresh process (with --results and --trec, the
files that used to be held whole), and reports each run's peak RSS (getrusage's ru_maxrss) and
the growth from the smallest to the largest run. Memory should not grow with the questions:
results are streamed to their files, and per question only the first hit's rank is kept.

Example (the numbers in docs/benchmarks.md):
    python scripts/perf_eval_memory.py --index runs/index-l6 \
        --questions ../shared/data/squad-open/train.json --limits 200,5000 --json runs/evalmem.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rag.commands.cli import parse, run
from rag.common.atomic import check_output_parent, write_json
from rag.common.options import POSITIVE, check_fields, option

# one fresh process: the command, then its own peak RSS (KiB on Linux) as the last stderr line
CHILD = ("import resource, sys\nfrom rag.commands import main\ntry:\n    main(sys.argv[1:])\n"
         "finally:\n    print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
         "file=sys.stderr)\n")


@dataclass(frozen=True)
class Args:
    index: str = field(metadata={"help": "index directory"})
    questions: str = field(metadata={"help": "question file (at least max(--limits) questions)"})
    limits: list[int] = option([200, 5000], "question counts to measure, each in its own process",
                               within=POSITIVE)
    json: str | None = option(None, "write the figures (JSON) here")

    def __post_init__(self) -> None:
        check_fields(self)


def peak_rss_mib(argv: list[str]) -> float:
    """Run ``ragqa`` with ``argv`` in a fresh process; its peak RSS in MiB."""
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: ragqa {' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    kib = int(done.stderr.strip().splitlines()[-1].split()[1])
    return kib / 1024


def main() -> None:
    (args,) = parse([Args], description=__doc__)
    if args.json:
        check_output_parent(args.json)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for limit in sorted(set(args.limits)):
            out = Path(tmp)
            argv = ["eval-retrieval", "--index", args.index, "--questions", args.questions,
                    "--limit", str(limit), "--quiet", "--json", str(out / f"m{limit}.json"),
                    "--results", str(out / f"r{limit}.json"), "--trec", str(out / f"t{limit}")]
            rss = peak_rss_mib(argv)
            n = json.loads((out / f"m{limit}.json").read_text())["n"]
            rows.append({"limit": limit, "n": n, "peak_rss_mib": round(rss, 1),
                         "results_mib": round((out / f"r{limit}.json").stat().st_size / 2**20, 1)})
            print(f"{n} questions: peak RSS {rss:.1f} MiB "
                  f"(results file {rows[-1]['results_mib']} MiB)", flush=True)
    growth = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"] - 1
    print(f"growth from {rows[0]['n']} to {rows[-1]['n']} questions: {100 * growth:+.1f}%")
    if args.json:
        write_json(args.json, {"rows": rows, "growth": growth, "index": args.index,
                               "questions": args.questions})


if __name__ == "__main__":
    run(main)
