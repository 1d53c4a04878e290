"""Compare benchmark runs: a markdown table of the reports side by side, and EM against k.

When the runs differ in k alone (a k sweep), exact match and F1 are also plotted against k, to
--plot or by default next to the first report (<first report>_em_vs_k.png).

Example:
    ragqa compare runs/bench-seq-k1.json runs/bench-seq-k5.json runs/bench-seq-k10.json
    ragqa compare runs/bench-*.json --plot runs/em-vs-k.png
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rag.commands.cli import parse
from rag.common.atomic import check_output_parent
from rag.common.errors import UserError
from rag.common.options import option
from rag.compare import load_run, plot_em_vs_k, runs_table, sweep_problem


@dataclass(frozen=True)
class Args:
    plot: str | None = option(
        None, "image of EM against k (k sweeps only); default: next to the first run")


def main() -> None:
    args, paths = parse([Args], description=__doc__, positionals="RUN.json")
    if not paths:
        raise UserError("give one benchmark report or more")
    if args.plot:
        check_output_parent(args.plot)
    runs = [load_run(path) for path in paths]
    problem = sweep_problem(runs)
    if args.plot and problem:
        raise UserError(f"--plot: no EM-against-k plot, {problem}")
    print(runs_table(runs))
    if problem is None:
        first = Path(paths[0])
        out = args.plot or first.with_name(f"{first.stem}_em_vs_k.png")
        plot_em_vs_k(runs, out)
        print(f"\nEM against k: {out}")

