"""Fitting the scaling laws of :mod:`.laws` to measurements (Fang et al., SIGIR 2024).

Fits use ``scipy.optimize.least_squares`` on residuals L_pred - L_obs (optionally divided by
the measured ``ce_std``), with a robust loss (``soft_l1`` by default) so that one badly trained
run does not drag the curve. Scales A and B are fitted as log A and log B (they span many
orders of magnitude and must stay positive); exponents and delta are fitted directly, within
bounds 0 <= delta <= min(L_obs). Several starting points are tried and the lowest robust cost
wins. Standard errors come from the Gauss-Newton covariance s^2 (J^T J)^-1 of the
(non-robust, weighted if asked) residuals at the optimum, with J taken numerically in the
natural parameters.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.optimize import least_squares

from rag.common.errors import UserError
from rag.common.options import POSITIVE, check_fields, option

from .laws import (
    DataSizeLaw,
    JointLaw,
    Law,
    ModelSizeLaw,
    data_size_law,
    joint_law,
    law_to_dict,
    model_size_law,
)
from .measurements import Measurement, as_arrays

logger = logging.getLogger(__name__)

_LOG_SCALE_BOUNDS = (-50.0, 120.0)  # bounds on log A, log B (natural log)
_ALPHA_BOUNDS = (1e-3, 5.0)
_BETA_BOUNDS = (1e-2, 5.0)


@dataclass(frozen=True)
class FitConfig:
    """How the laws are fitted."""

    loss: Literal["linear", "soft_l1", "huber", "cauchy", "arctan"] = option(
        "soft_l1", "scipy least_squares loss")
    f_scale: float = option(
        0.02, "residual scale (nats, or sigmas if weighted) where robust loss bends", within=POSITIVE)
    weighted: bool = option(False, "divide residuals by each row's ce_std (rows without one get 1)")
    max_nfev: int = option(5000, "function evaluations per start", within=POSITIVE)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class FitResult:
    """A fitted law with its goodness of fit."""

    law: Law  # the fitted law (ModelSizeLaw, DataSizeLaw or JointLaw)
    r2: float  # 1 - SS_res / SS_tot on the unweighted losses
    rmse: float  # root-mean-square residual (nats)
    stderr: dict[str, float] = field(default_factory=dict)  # parameter -> standard error
    n_points: int = 0  # measurements used

    def to_dict(self) -> dict[str, Any]:
        """Parameters plus ``r2``, ``rmse``, ``stderr`` and ``n_points``, JSON-ready."""
        return {**law_to_dict(self.law), "r2": self.r2, "rmse": self.rmse,
                "stderr": dict(self.stderr), "n_points": self.n_points}


Predict = Callable[[np.ndarray], np.ndarray]  # natural parameters -> predicted losses


def _jacobian(fun: Predict, params: np.ndarray) -> np.ndarray:
    """Central-difference Jacobian of ``fun`` at ``params``: (points, parameters)."""
    cols = []
    for i, value in enumerate(params):
        step = 1e-6 * max(abs(value), 1e-6)
        hi, lo = params.copy(), params.copy()
        hi[i] += step
        lo[i] -= step
        cols.append((fun(hi) - fun(lo)) / (2 * step))
    return np.stack(cols, axis=1)


def _stderr(fun: Predict, params: np.ndarray, residuals: np.ndarray,
            weights: np.ndarray) -> np.ndarray:
    """Standard errors sqrt(diag(s^2 (J^T J)^-1)) of the weighted residuals r / w.

    J is column-normalised before the (pseudo-)inverse, for conditioning.
    """
    n_points, n_params = len(residuals), len(params)
    if n_points <= n_params:
        return np.full(n_params, np.nan)
    jac = _jacobian(fun, params) / weights[:, None]
    residuals = residuals / weights
    norms = np.linalg.norm(jac, axis=0)
    norms[norms == 0] = 1.0
    scaled = jac / norms
    cov = np.linalg.pinv(scaled.T @ scaled) / np.outer(norms, norms)
    s2 = float(residuals @ residuals) / (n_points - n_params)
    return np.sqrt(np.clip(np.diag(cov) * s2, 0.0, None))


def _solve(
    predict: Callable[[np.ndarray], np.ndarray],
    y: np.ndarray,
    weights: np.ndarray,
    starts: Sequence[np.ndarray],
    bounds: tuple[np.ndarray, np.ndarray],
    log_mask: np.ndarray,
    config: FitConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-start robust least squares; returns (natural params, plain residuals)."""

    def natural(theta: np.ndarray) -> np.ndarray:
        return np.where(log_mask, np.exp(theta), theta)

    def residuals(theta: np.ndarray) -> np.ndarray:
        return (predict(natural(theta)) - y) / weights

    lower, upper = bounds
    span = upper - lower
    best = None
    for start in starts:
        x0 = np.clip(start, lower + 1e-6 * span, upper - 1e-6 * span)
        sol = least_squares(residuals, x0, bounds=(lower, upper), loss=config.loss,
                            f_scale=config.f_scale, x_scale="jac", max_nfev=config.max_nfev)
        if np.all(np.isfinite(sol.fun)) and (best is None or sol.cost < best.cost):
            best = sol
    if best is None:
        raise UserError("scaling-law fit failed from every starting point (non-finite residuals)")
    params = natural(best.x)
    return params, predict(params) - y


def _finish(law: Law, names: Sequence[str], predict: Predict, params: np.ndarray,
            y: np.ndarray, resid: np.ndarray, weights: np.ndarray) -> FitResult:
    """Package a solution: R^2, RMSE and standard errors of the natural parameters."""
    ss_tot = float(((y - y.mean()) ** 2).sum())
    ss_res = float(resid @ resid)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    stderr = _stderr(predict, params, resid, weights)
    return FitResult(law=law, r2=r2, rmse=float(np.sqrt(ss_res / len(y))),
                     stderr={k: float(v) for k, v in zip(names, stderr, strict=True)},
                     n_points=len(y))


def _prepare(y: Any, sigma: Any, n_params: int, config: FitConfig) -> tuple[np.ndarray, ...]:
    """Validated float64 losses, residual weights and the delta upper bound."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) < n_params:
        raise UserError(f"need at least {n_params} measurements to fit {n_params} parameters, "
                        f"got {len(y)}")
    weights = np.ones_like(y)
    if config.weighted and sigma is not None:
        sigma = np.asarray(sigma, dtype=np.float64)
        weights = np.where(np.isfinite(sigma) & (sigma > 0), sigma, 1.0)
    return y, weights, max(float(y.min()), 1e-12)


def _single_starts(x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Starts (log scale, exponent, delta) matching the median point for several exponents."""
    log_x, y_mid = float(np.median(np.log(x))), float(np.median(y))
    starts = []
    for exponent, frac in itertools.product((0.25, 0.5, 1.0, 2.0), (0.1, 0.5, 0.9)):
        delta = frac * float(y.min())
        log_scale = log_x + np.log(max(y_mid - delta, 1e-3 * y_mid, 1e-12)) / exponent
        starts.append(np.array([log_scale, exponent, delta]))
    return starts


def _fit_single(x: Any, y: Any, sigma: Any, config: FitConfig, law_type: type,
                names: tuple[str, str, str], law_fn: Callable[..., np.ndarray]) -> FitResult:
    """Fit (scale / x)^exponent + delta: the shared body of the model- and data-size fits."""
    y, weights, delta_max = _prepare(y, sigma, 3, config)
    x = np.asarray(x, dtype=np.float64)

    def predict(p: np.ndarray) -> np.ndarray:
        return law_fn(x, *p)

    bounds = (np.array([_LOG_SCALE_BOUNDS[0], _ALPHA_BOUNDS[0], 0.0]),
              np.array([_LOG_SCALE_BOUNDS[1], _ALPHA_BOUNDS[1], delta_max]))
    params, resid = _solve(predict, y, weights, _single_starts(x, y), bounds,
                           np.array([True, False, False]), config)
    return _finish(law_type(*map(float, params)), names, predict, params, y, resid, weights)


def fit_model_size_law(n: Any, loss: Any, *, sigma: Any = None,
                       config: FitConfig = FitConfig()) -> FitResult:
    """Fit L(N) = (A / N)^alpha + delta_N (Fang et al., 2024, model-size law).

    ``n``: (K,) non-embedding parameter counts; ``loss``: (K,) contrastive entropies;
    ``sigma``: optional (K,) standard deviations used when ``config.weighted``.
    Returns a :class:`FitResult` holding a :class:`ModelSizeLaw`.
    """
    return _fit_single(n, loss, sigma, config, ModelSizeLaw, ("a", "alpha", "delta"),
                       model_size_law)


def fit_data_size_law(d: Any, loss: Any, *, sigma: Any = None,
                      config: FitConfig = FitConfig()) -> FitResult:
    """Fit L(D) = (B / D)^beta + delta_D (Fang et al., 2024, data-size law).

    ``d``: (K,) training-pair counts; otherwise as :func:`fit_model_size_law`.
    Returns a :class:`FitResult` holding a :class:`DataSizeLaw`.
    """
    return _fit_single(d, loss, sigma, config, DataSizeLaw, ("b", "beta", "delta"),
                       data_size_law)


def _joint_starts(n: np.ndarray, d: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Starts (log A, log B, alpha, beta, delta) splitting the median bracket evenly."""
    log_n, log_d = float(np.median(np.log(n))), float(np.median(np.log(d)))
    y_mid = float(np.median(y))
    starts = []
    for alpha, beta, frac in itertools.product((0.3, 0.6, 1.2), (0.5, 1.0, 2.0), (0.1, 0.5)):
        delta = frac * float(y.min())
        half = 0.5 * max(y_mid - delta, 1e-3 * y_mid, 1e-12) ** (1.0 / beta)
        starts.append(np.array([log_n + beta / alpha * np.log(half), log_d + np.log(half),
                                alpha, beta, delta]))
    return starts


def fit_joint_law(n: Any, d: Any, loss: Any, *, sigma: Any = None,
                  config: FitConfig = FitConfig()) -> FitResult:
    """Fit L(N, D) = [(A / N)^(alpha/beta) + B / D]^beta + delta (Fang et al., 2024, joint law).

    ``n``, ``d``, ``loss``: (K,) arrays, one entry per trained encoder. Needs at least 5 rows;
    at least two distinct N and two distinct D are needed to identify the law.
    Returns a :class:`FitResult` holding a :class:`JointLaw`.
    """
    y, weights, delta_max = _prepare(loss, sigma, 5, config)
    n = np.asarray(n, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)

    def predict(p: np.ndarray) -> np.ndarray:
        return joint_law(n, d, *p)

    lo, hi = _LOG_SCALE_BOUNDS
    bounds = (np.array([lo, lo, _ALPHA_BOUNDS[0], _BETA_BOUNDS[0], 0.0]),
              np.array([hi, hi, _ALPHA_BOUNDS[1], _BETA_BOUNDS[1], delta_max]))
    params, resid = _solve(predict, y, weights, _joint_starts(n, d, y), bounds,
                           np.array([True, True, False, False, False]), config)
    return _finish(JointLaw(*map(float, params)), ("a", "b", "alpha", "beta", "delta"), predict,
                   params, y, resid, weights)


def _model_rows(rows: Sequence[Measurement]) -> list[Measurement]:
    """Rows trained on the largest D: the model-size law is fitted at fixed (full) data."""
    top = max(r.n_train_pairs for r in rows)
    return [r for r in rows if np.isclose(r.n_train_pairs, top)]


def _data_rows(rows: Sequence[Measurement]) -> list[Measurement]:
    """Rows of the largest N: the data-size law is fitted at fixed model size."""
    top = max(r.n_params for r in rows)
    return [r for r in rows if np.isclose(r.n_params, top)]


def fit_measurements(rows: Sequence[Measurement],
                     config: FitConfig = FitConfig()) -> dict[str, FitResult]:
    """Fit every law the rows support; returns ``{"model"|"data"|"joint": FitResult}``.

    - model-size law: rows at the largest D, when they hold >= 3 distinct N;
    - data-size law: rows at the largest N, when they hold >= 3 distinct D;
    - joint law: all rows, when they hold >= 2 distinct N, >= 2 distinct D and >= 6 rows.

    Raises :class:`UserError` when the rows support none of them.
    """
    fits: dict[str, FitResult] = {}
    model_rows, data_rows = _model_rows(rows), _data_rows(rows)
    if len({r.n_params for r in model_rows}) >= 3:
        cols = as_arrays(model_rows)
        fits["model"] = fit_model_size_law(cols["n"], cols["loss"], sigma=cols["std"],
                                           config=config)
    if len({r.n_train_pairs for r in data_rows}) >= 3:
        cols = as_arrays(data_rows)
        fits["data"] = fit_data_size_law(cols["d"], cols["loss"], sigma=cols["std"],
                                         config=config)
    cols = as_arrays(list(rows))
    if len(set(cols["n"])) >= 2 and len(set(cols["d"])) >= 2 and len(rows) >= 6:
        fits["joint"] = fit_joint_law(cols["n"], cols["d"], cols["loss"], sigma=cols["std"],
                                      config=config)
    if not fits:
        raise UserError("too few measurements: need >= 3 model sizes at one training-set size, "
                        ">= 3 training-set sizes for one model, or a >= 2 x 2 grid of 6+ rows")
    for kind, result in fits.items():
        logger.info("fitted %s law: %s (R^2 %.4f)", kind, law_to_dict(result.law), result.r2)
    return fits


@dataclass(frozen=True)
class HoldoutResult:
    """Predictions for the largest encoder from a law fitted without it."""

    kind: str  # "model" or "joint"
    names: tuple[str, ...]  # held-out rows
    n_params: float  # their N (the largest)
    observed: tuple[float, ...]  # measured contrastive entropy
    predicted: tuple[float, ...]  # law's prediction
    fit: FitResult  # the law fitted on the remaining rows

    @property
    def abs_error(self) -> float:
        """Mean |predicted - observed| (nats)."""
        return float(np.mean(np.abs(np.subtract(self.predicted, self.observed))))

    @property
    def rel_error(self) -> float:
        """Mean |predicted - observed| / observed."""
        obs = np.asarray(self.observed)
        return float(np.mean(np.abs(np.asarray(self.predicted) - obs) / obs))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary including the fit on the remaining rows."""
        return {"kind": self.kind, "names": list(self.names), "n_params": self.n_params,
                "observed": list(self.observed), "predicted": list(self.predicted),
                "abs_error": self.abs_error, "rel_error": self.rel_error,
                "fit": self.fit.to_dict()}


def holdout_largest_n(rows: Sequence[Measurement], *, kind: str = "model",
                      config: FitConfig = FitConfig()) -> HoldoutResult:
    """Fit without the largest N, predict it, and report the error (an extrapolation check).

    ``kind="model"`` uses the rows at the largest D and the model-size law; ``kind="joint"``
    uses all rows and the joint law, predicting every held-out row at its own D.
    """
    if kind not in ("model", "joint"):
        raise UserError(f"hold-out law must be 'model' or 'joint', got {kind!r}")
    pool = _model_rows(rows) if kind == "model" else list(rows)
    top = max(r.n_params for r in pool)
    held = [r for r in pool if np.isclose(r.n_params, top)]
    kept = as_arrays([r for r in pool if not np.isclose(r.n_params, top)])
    if len(set(kept["n"])) < (3 if kind == "model" else 2):
        raise UserError(f"hold-out needs more model sizes below the largest N ({top:.3g})")
    if kind == "model":
        fit = fit_model_size_law(kept["n"], kept["loss"], sigma=kept["std"], config=config)
        predicted = fit.law.predict(np.array([r.n_params for r in held]))
    else:
        fit = fit_joint_law(kept["n"], kept["d"], kept["loss"], sigma=kept["std"], config=config)
        predicted = fit.law.predict(np.array([r.n_params for r in held]),
                                    np.array([r.n_train_pairs for r in held]))
    return HoldoutResult(kind=kind, names=tuple(r.name for r in held), n_params=top,
                         observed=tuple(r.contrastive_entropy for r in held),
                         predicted=tuple(float(v) for v in predicted), fit=fit)
