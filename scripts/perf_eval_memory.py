"""Peak memory of `ragqa eval-retrieval` against the number of questions, measured in one run.

Runs the command once per --limits value, each in a fresh process (with --results and --trec, the
files that used to be held whole), and reports each run's peak RSS (getrusage's ru_maxrss), the
peaks of its own memory (RssAnon) and of its mapped files (RssFile), its seconds, and the growth
from the smallest to the largest run. Memory should not grow with the questions:
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
import time
from dataclasses import dataclass, field
from pathlib import Path

from rag.commands.cli import parse, run
from rag.common.atomic import check_output_parent, write_json
from rag.common.options import POSITIVE, check_fields, option

# one fresh process: the command, then as its last stderr line its peak RSS (KiB on Linux), and the
# peaks of its two parts (/proc/self/status, sampled every 10 ms): RssAnon, the process's own
# memory, and RssFile, pages of files it has mapped (the memory-mapped passages and index: the
# kernel's page cache, shared and given back under pressure)
CHILD = """import resource, sys, threading, time
from rag.commands import main
peak = {"RssAnon": 0, "RssFile": 0}
def sample():
    while True:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in peak:
                    peak[key] = max(peak[key], int(value.split()[0]))
        time.sleep(0.01)
threading.Thread(target=sample, daemon=True).start()
try:
    main(sys.argv[1:])
finally:
    print("maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, peak["RssAnon"],
          peak["RssFile"], file=sys.stderr)
"""


@dataclass(frozen=True)
class Args:
    index: str = field(metadata={"help": "index directory"})
    questions: str = field(metadata={"help": "question file (at least max(--limits) questions)"})
    limits: list[int] = option([200, 5000], "question counts to measure, each in its own process",
                               within=POSITIVE)
    json: str | None = option(None, "write the figures (JSON) here")

    def __post_init__(self) -> None:
        check_fields(self)


def peak_rss_mib(argv: list[str]) -> tuple[float, float, float]:
    """Run ``ragqa`` with ``argv`` in a fresh process: its peak RSS, peak RssAnon and peak RssFile,
    in MiB."""
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: ragqa {' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    rss, anon, file = map(int, done.stderr.strip().splitlines()[-1].split()[1:])
    return rss / 1024, anon / 1024, file / 1024


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
            started = time.perf_counter()
            rss, anon, file = peak_rss_mib(argv)
            seconds = time.perf_counter() - started
            n = json.loads((out / f"m{limit}.json").read_text())["n"]
            rows.append({"limit": limit, "n": n, "peak_rss_mib": round(rss, 1),
                         "peak_anon_mib": round(anon, 1), "peak_file_mib": round(file, 1),
                         "seconds": round(seconds, 1),
                         "results_mib": round((out / f"r{limit}.json").stat().st_size / 2**20, 1)})
            print(f"{n} questions: peak RSS {rss:.1f} MiB: own memory (RssAnon) {anon:.1f}, "
                  f"mapped files (RssFile) {file:.1f} (results file {rows[-1]['results_mib']} "
                  f"MiB), {seconds:.1f} s", flush=True)
    growth = {key: rows[-1][key] / rows[0][key] - 1 for key in ("peak_rss_mib", "peak_anon_mib")}
    print(f"growth from {rows[0]['n']} to {rows[-1]['n']} questions: peak RSS "
          f"{100 * growth['peak_rss_mib']:+.1f}%, own memory {100 * growth['peak_anon_mib']:+.1f}%")
    if args.json:
        write_json(args.json, {"rows": rows, "growth": growth["peak_rss_mib"],
                               "growth_anon": growth["peak_anon_mib"], "index": args.index,
                               "questions": args.questions})


if __name__ == "__main__":
    run(main)
