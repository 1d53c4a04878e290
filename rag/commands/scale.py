"""Dense-retrieval scaling laws (Fang et al., SIGIR 2024): fit them, then plan with them.

Commands (each has --help):

  fit      fit L(N), L(D) and L(N, D) to measurement rows (JSON lines or CSV):
             ragqa scale fit --measurements runs.jsonl --json fit.json --plot fit.png
  select   cheapest (N, D) for a target contrastive entropy and/or best (N, D) for a budget,
           from a fit JSON (default: the shipped MS MARCO coefficients):
             ragqa scale select --budgets 1e4 1e5 --target_losses 0.1
             ragqa scale select --budgets 1e4 --corpus_size 8841823 \\
                 --queries_served 1e11
  sweep    train truncated all-MiniLM-L6-v2 encoders (first l layers) on D pairs and append one
           measurement row per (l, D) to a JSON-lines file (resumable):
             ragqa scale sweep --corpus corpus.tsv --train train.json \\
                 --dev dev.json --out runs.jsonl --layers 1,2,3 --train_sizes 500,4000
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rag.commands.cli import parse
from rag.common.atomic import check_output_parent, write_json
from rag.common.errors import UserError
from rag.common.options import option
from retriever.scaling import (
    CostModel,
    FitConfig,
    GridConfig,
    Selection,
    fit_measurements,
    holdout_largest_n,
    load_laws,
    min_cost_for_loss,
    min_loss_for_budget,
    parse_encoders,
    published_msmarco_path,
    read_measurements,
    save_laws,
)
from retriever.scaling.plot import plot_fits
from retriever.scaling.select import BERT_ENCODERS
from retriever.scaling.sweep import SweepConfig, load_sweep_data, run_sweep


@dataclass(frozen=True)
class FitArgs:
    """Inputs and outputs of ``ragqa scale fit``."""

    measurements: str = field(metadata={"help": "JSON lines or CSV: name, n_params, n_train_pairs, "
                                            "contrastive_entropy, ..."})
    json: str = option("", "write the fitted laws here (the file `ragqa scale select --fit` reads)")
    plot: str = option("", "write a PNG of the measurements and fitted curves here")
    holdout: bool = option(False, "also refit without the largest N and report its prediction error")


@dataclass(frozen=True)
class SelectArgs:
    """Inputs and outputs of ``ragqa scale select``."""

    fit: str = option("", "fit JSON with a joint law; empty: shipped MS MARCO (Fang et al. 2024)")
    budgets: list[float] = option([], "$ budgets: lowest-loss (N, D) for each")
    target_losses: list[float] = option([], "nats: cheapest (N, D) for each")
    encoders: list[str] = option(
        [f"{e.name}={e.n_params:g}" for e in BERT_ENCODERS], "available encoders as NAME=N "
        "(non-embedding parameters)")
    json: str = option("", "write the selections here")


@dataclass(frozen=True)
class SweepArgs:
    """Inputs and outputs of ``ragqa scale sweep``."""

    corpus: str = field(metadata={"help": "passages (TSV, JSON lines or SQuAD JSON)"})
    train: str = field(metadata={"help": "SQuAD-style training questions (each with its gold context)"})
    dev: str = field(metadata={"help": "SQuAD-style evaluation questions"})
    out: str = field(metadata={"help": "JSON-lines measurement rows, appended as each (l, D) finishes"})
    layers: list[int] = option([1, 2, 3, 4, 5, 6], "encoder depths l")
    train_sizes: list[int] = option([4000], "training-set sizes D")


def fit_command(argv: Sequence[str]) -> None:
    """``ragqa scale fit``: fit the laws, print them, optionally write JSON / PNG / hold-out."""
    args, config = parse([FitArgs, FitConfig], argv,
                         description="ragqa scale fit: fit the scaling laws to measurement rows.")
    for path in (args.json, args.plot):
        if path:  # before the fit: a file that cannot be written is refused at once
            check_output_parent(path)
    rows = read_measurements(args.measurements)
    fits = fit_measurements(rows, config)
    print(f"{len(rows)} measurements from {args.measurements}")
    for kind, result in fits.items():
        params = "  ".join(f"{k}={v:.4g}±{result.stderr[k]:.2g}"
                           for k, v in asdict(result.law).items())
        print(f"{kind:>5} law: {params}  R^2={result.r2:.4f}  RMSE={result.rmse:.4g}"
              f"  n={result.n_points}")
    extra = {}
    if args.holdout:
        held = holdout_largest_n(rows, kind="model" if "model" in fits else "joint",
                                 config=config)
        extra["holdout"] = held.to_dict()
        print(f"hold-out ({held.kind} law, N={held.n_params:.3g}): predicted "
              f"{', '.join(f'{v:.4f}' for v in held.predicted)} vs observed "
              f"{', '.join(f'{v:.4f}' for v in held.observed)}  "
              f"(mean abs error {held.abs_error:.4f}, {100 * held.rel_error:.1f}%)")
    if args.json:
        save_laws(args.json, {k: r.to_dict() for k, r in fits.items()},
                  source=str(args.measurements), config=asdict(config), **extra)
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {plot_fits(rows, fits, args.plot)}")


def _format(sel: Selection, tol: float) -> str:
    """One table row: the optimum, then the nearest and best listed encoders."""
    opt, cost = sel.optimum, sel.optimum.cost
    edge = " (grid edge)" if sel.at_grid_edge else ""
    low, high = sel.near_optimal
    line = (f"{sel.constraint:>10.4g} | N*={opt.n_params:9.3g}{edge} D*={opt.n_train_pairs:9.3g}"
            f" L*={opt.loss:.4f} | $ data {cost.data:9.4g} train {cost.train:9.4g}"
            f" infer {cost.infer:9.4g} total {cost.total:9.4g}"
            f"\n{'':>10} |   within {100 * tol:g}% of optimum: N in [{low:.3g}, {high:.3g}]")
    for label, enc in (("nearest", sel.nearest_encoder), ("best", sel.best_encoder)):
        if enc is not None and enc.feasible:
            line += (f"\n{'':>10} |   {label:>7}: {enc.name} (N={enc.n_params:.3g})"
                     f" D={enc.n_train_pairs:.3g} L={enc.loss:.4f} ${enc.cost.total:.4g}")
        elif enc is not None:
            line += f"\n{'':>10} |   {label:>7}: {enc.name} cannot meet the constraint"
    return line


def select_command(argv: Sequence[str]) -> None:
    """``ragqa scale select``: answer each budget / target loss with the joint law."""
    args, cost, grid = parse([SelectArgs, CostModel, GridConfig], argv,
                             description="ragqa scale select: choose encoder size N and pairs D.")
    if not args.budgets and not args.target_losses:
        raise UserError("give --budgets and/or --target_losses")
    if args.json:
        check_output_parent(args.json)
    fit_path = Path(args.fit) if args.fit else published_msmarco_path()
    law = load_laws(fit_path).get("joint")
    if law is None:
        raise UserError(f"{fit_path}: no joint law; fit one from a grid of (N, D) runs")
    encoders = parse_encoders(args.encoders)
    coef = cost.coefficients()
    print(f"joint law from {fit_path}: " + " ".join(f"{k}={v:g}" for k, v in asdict(law).items()))
    print(f"cost: Z_data=${coef['z_data']:g}/pair  train=${coef['train_usd_per_param_pair']:.3g}"
          f"/(param*pair)  Z_infer=${coef['z_infer']:.3g}/param  "
          f"(corpus {cost.corpus_size:,} passages, {cost.queries_served:g} queries served)")
    selections = [min_loss_for_budget(law, cost, b, grid=grid, encoders=encoders)
                  for b in args.budgets]
    selections += [min_cost_for_loss(law, cost, t, grid=grid, encoders=encoders)
                   for t in args.target_losses]
    for title, objective in (("budget $", "min_loss"), ("target L", "min_cost")):
        rows = [_format(s, grid.tolerance) for s in selections if s.objective == objective]
        if rows:
            print(f"{title:>10} | optimum on N in [{grid.n_min:g}, {grid.n_max:g}]")
            print("\n".join(rows))
    if args.json:
        write_json(args.json, {"fit": str(fit_path), "joint_law": asdict(law),
                                "cost_model": asdict(cost), "coefficients": coef,
                                "grid": asdict(grid),
                                "selections": [s.to_dict() for s in selections]})
        print(f"wrote {args.json}")


def sweep_command(argv: Sequence[str]) -> None:
    """``ragqa scale sweep``: train and measure each (l, D) not yet in --out, printing each row."""
    from rag.common.device import resolve_device  # lazy: torch; fit and select run without it

    args, config = parse([SweepArgs, SweepConfig], argv,
                         description="ragqa scale sweep: measure truncated encoders for the laws.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = resolve_device("auto")  # under torchrun: the local rank's GPU
    data = load_sweep_data(args.corpus, args.train, args.dev, config)
    rows = run_sweep(data, args.layers, args.train_sizes, args.out, config, device=device)
    for row in rows:
        print(f"{row['name']}: N={row['n_params']} D={row['n_train_pairs']} "
              f"CE={row['contrastive_entropy']:.4f}±{row['ce_std']:.4f}")
    print(f"{len(rows)} new rows in {args.out}")


COMMANDS = {"fit": fit_command, "select": select_command, "sweep": sweep_command}


def main(argv: Sequence[str] | None = None) -> None:
    """Dispatch ``ragqa scale COMMAND ...`` to the command's parser."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    if not argv or argv[0] not in COMMANDS:
        got = repr(argv[0]) if argv else "nothing"
        raise UserError(f"expected a command, one of {', '.join(COMMANDS)}; got {got} (--help)")
    COMMANDS[argv[0]](argv[1:])

