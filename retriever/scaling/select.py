"""Choosing encoder size N and training-set size D with the joint law and a cost model.

Two questions from Fang et al. (SIGIR 2024), both answered on a log-spaced grid of N where,
at each N, the best D has a closed form:

- **cheapest plan for a target loss**: inverting the joint law,
  D(N) = B / [(L* - delta)^(1/beta) - (A/N)^(alpha/beta)], then minimise Z(N, D(N));
- **best plan for a budget**: spending the budget exactly, Z = Z_data D + c N D + Z_infer N
  with c the training $ per parameter-pair, gives D(N) = (Z - Z_infer N) / (Z_data + c N);
  then minimise L(N, D(N)).

Each answer reports the optimum's predicted loss and cost breakdown, whether it sits on the
grid edge (widen the grid, or read it as "at least / at most"), the band of N whose objective
is within ``tolerance`` of the optimum (the optimum is often flat over decades of N), and the
user's encoders (name, N) nearest to it and best for the same objective.

Glossary: N non-embedding parameters, D training pairs, L contrastive entropy (nats),
Z cost ($), G grid points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rag.common.errors import UserError, require
from rag.common.options import NON_NEGATIVE, POSITIVE, Range, check_fields, option

from .cost import CostBreakdown, CostModel
from .laws import JointLaw


@dataclass(frozen=True)
class GridConfig:
    """The log-spaced grid of encoder sizes searched."""

    n_min: float = option(1e5, "smallest N (non-embedding parameters) considered", within=POSITIVE)
    n_max: float = option(1e12, "largest N considered", within=POSITIVE)
    points: int = option(2801, "grid points, log-spaced (400 per decade by default)",
                         within=Range(2, integer=True))
    min_pairs: float = option(1.0, "fewest training pairs a plan may use", within=POSITIVE)
    tolerance: float = option(0.01, "near-optimal band: N whose objective is within this fraction",
        within=NON_NEGATIVE)

    def __post_init__(self) -> None:
        check_fields(self)
        require(self.n_max > self.n_min, "n_max", self.n_max, f"must be larger than --n_min {self.n_min}")


@dataclass(frozen=True)
class EncoderSize:
    """An available encoder: a name and its non-embedding parameter count."""

    name: str  # e.g. "bert-base"
    n_params: float  # N


# Google's BERT miniatures and BERT base/large, N without the pooler (DPR uses [CLS] directly).
BERT_ENCODERS = (
    EncoderSize("bert-tiny", 396_800),
    EncoderSize("bert-mini", 3_159_552),
    EncoderSize("bert-small", 12_610_560),
    EncoderSize("bert-medium", 25_220_096),
    EncoderSize("bert-base", 85_056_000),
    EncoderSize("bert-large", 302_311_424),
)


@dataclass(frozen=True)
class Choice:
    """One plan: an encoder size, a training-set size, and what the law and cost model say."""

    n_params: float  # N
    n_train_pairs: float  # D (inf when no finite D reaches the target)
    loss: float  # predicted contrastive entropy L(N, D), nats
    cost: CostBreakdown  # $ split into data / train / infer
    name: str | None = None  # encoder name when the plan is for a listed encoder

    @property
    def feasible(self) -> bool:
        """Whether the plan meets its constraint with finite D and cost."""
        return bool(np.isfinite(self.n_train_pairs) and np.isfinite(self.cost.total))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; non-finite numbers become None."""
        def clean(x: float) -> float | None:
            return float(x) if np.isfinite(x) else None

        return {"name": self.name, "n_params": self.n_params,
                "n_train_pairs": clean(self.n_train_pairs), "loss": clean(self.loss),
                "cost": {k: clean(v) for k, v in self.cost.to_dict().items()},
                "feasible": self.feasible}


@dataclass(frozen=True)
class Selection:
    """The answer to one selection question."""

    objective: str  # "min_cost" (for a target loss) or "min_loss" (for a budget)
    constraint: float  # the target loss (nats) or the budget ($)
    optimum: Choice  # best plan on the grid
    at_grid_edge: bool  # optimum at n_min or n_max: the true optimum may lie beyond
    near_optimal: tuple[float, float]  # (lowest, highest) N within grid.tolerance of optimum
    nearest_encoder: Choice | None = None  # listed encoder nearest in log N, with its own D
    best_encoder: Choice | None = None  # listed encoder best for the same objective

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"objective": self.objective, "constraint": self.constraint,
                "optimum": self.optimum.to_dict(), "at_grid_edge": self.at_grid_edge,
                "near_optimal": list(self.near_optimal),
                "nearest_encoder": self.nearest_encoder and self.nearest_encoder.to_dict(),
                "best_encoder": self.best_encoder and self.best_encoder.to_dict()}


def parse_encoders(specs: Sequence[str]) -> list[EncoderSize]:
    """Parse ``"name=N"`` strings (N may use exponent notation, e.g. ``bert-base=8.5e7``)."""
    encoders = []
    for spec in specs:
        name, sep, value = spec.partition("=")
        try:
            n_params = float(value)
        except ValueError:
            n_params = float("nan")
        if not sep or not name or not np.isfinite(n_params) or n_params <= 0:
            raise UserError(f"encoder {spec!r}: expected NAME=N with N > 0, e.g. bert-base=8.5e7")
        encoders.append(EncoderSize(name, n_params))
    return encoders


def nearest_encoder(n_params: float, encoders: Sequence[EncoderSize]) -> EncoderSize:
    """The encoder whose N is nearest ``n_params`` on a log scale."""
    if not encoders:
        raise UserError("no encoders given")
    return min(encoders, key=lambda enc: abs(np.log(enc.n_params) - np.log(n_params)))


def _plan_for_loss(law: JointLaw, cost: CostModel, n: np.ndarray, target: float,
                   min_pairs: float) -> tuple[np.ndarray, np.ndarray]:
    """(D, objective=total cost) at each N for reaching ``target``; cost inf where impossible."""
    d = np.maximum(law.pairs_for_loss(n, target), min_pairs)  # (G,)
    with np.errstate(invalid="ignore"):
        total = np.where(np.isfinite(d), cost.total(n, np.where(np.isfinite(d), d, 0.0)), np.inf)
    return d, total


def _plan_for_budget(law: JointLaw, cost: CostModel, n: np.ndarray, budget: float,
                     min_pairs: float) -> tuple[np.ndarray, np.ndarray]:
    """(D, objective=loss) at each N spending exactly ``budget``; loss inf where unaffordable."""
    per_pair = cost.z_data + cost.train_usd_per_param_pair * n  # (G,) $ per extra pair
    left = budget - cost.z_infer * n  # (G,) $ left after inference
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(per_pair > 0, left / np.where(per_pair > 0, per_pair, 1.0), np.inf)
    d = np.where(left >= 0, d, -np.inf)
    feasible = d >= min_pairs
    loss = np.where(feasible, law.predict(n, np.where(feasible, d, 1.0)), np.inf)
    return np.where(feasible, d, np.nan), loss


def _choice(law: JointLaw, cost: CostModel, n: float, d: float, name: str | None) -> Choice:
    """A plan evaluated: predicted loss and cost breakdown at (n, d)."""
    if not np.isfinite(d):
        nan = float("nan")
        return Choice(n, float("inf"), nan, CostBreakdown(nan, nan, nan), name)
    return Choice(n, float(d), float(law.predict(n, d)), cost.breakdown(n, d).at(()), name)


def _select(objective: str, constraint: float, law: JointLaw, cost: CostModel,
            grid: GridConfig, encoders: Sequence[EncoderSize]) -> Selection:
    """Shared body: evaluate the plan on the grid and for each encoder, keep the minimum."""
    plan = _plan_for_loss if objective == "min_cost" else _plan_for_budget
    n = np.geomspace(grid.n_min, grid.n_max, grid.points)  # (G,)
    d, value = plan(law, cost, n, constraint, grid.min_pairs)
    if not np.isfinite(value).any():
        what = "target loss" if objective == "min_cost" else "budget"
        raise UserError(f"{what} {constraint:g} is out of reach for every N in "
                        f"[{grid.n_min:g}, {grid.n_max:g}]")
    best = int(np.argmin(value))
    optimum = _choice(law, cost, float(n[best]), float(d[best]), None)
    band = n[value <= value[best] * (1.0 + grid.tolerance)]
    choices = []
    for enc in encoders:
        enc_d, enc_value = plan(law, cost, np.array([enc.n_params]), constraint, grid.min_pairs)
        choices.append((float(enc_value[0]), _choice(law, cost, enc.n_params,
                                                     float(enc_d[0]), enc.name)))
    nearest = best_enc = None
    if encoders:
        near = nearest_encoder(optimum.n_params, encoders)
        nearest = next(c for _, c in choices if c.name == near.name)
        value_best, best_enc = min(choices, key=lambda vc: vc[0])
        best_enc = best_enc if np.isfinite(value_best) else None
    return Selection(objective, float(constraint), optimum, best in (0, len(n) - 1),
                     (float(band.min()), float(band.max())), nearest, best_enc)


def min_cost_for_loss(law: JointLaw, cost: CostModel, target: float, *,
                      grid: GridConfig = GridConfig(),
                      encoders: Sequence[EncoderSize] = ()) -> Selection:
    """The (N, D) reaching contrastive entropy ``target`` at the least cost Z(N, D).

    Raises :class:`UserError` if no N on the grid can reach ``target`` (e.g. target <= delta).
    """
    if target <= law.delta:
        raise UserError(f"target loss {target:g} is at or below the law's irreducible "
                        f"delta {law.delta:g}: no finite model and data reach it")
    return _select("min_cost", target, law, cost, grid, encoders)


def min_loss_for_budget(law: JointLaw, cost: CostModel, budget: float, *,
                        grid: GridConfig = GridConfig(),
                        encoders: Sequence[EncoderSize] = ()) -> Selection:
    """The (N, D) with the lowest predicted contrastive entropy whose cost Z(N, D) = ``budget``.

    Raises :class:`UserError` if the budget cannot buy ``grid.min_pairs`` pairs at any N.
    """
    if not budget > 0:
        raise UserError(f"budget must be positive, got {budget:g}")
    return _select("min_loss", budget, law, cost, grid, encoders)
