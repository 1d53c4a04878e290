"""The dense-retrieval scaling laws of Fang et al. (SIGIR 2024) and the parameter count they use.

Glossary: N non-embedding parameters of the encoder, D number of annotated training pairs,
L contrastive entropy (nats, see :mod:`.entropy`).

- model-size law  L(N)    = (A / N)^alpha + delta_N
- data-size law   L(D)    = (B / D)^beta + delta_D
- joint law       L(N, D) = [(A / N)^(alpha / beta) + B / D]^beta + delta

The joint law reduces to the model-size law as D -> inf and to the data-size law as N -> inf.
Powers are computed as ``exp(alpha * (log A - log N))`` so that huge or tiny N never overflows.
Laws are stored as JSON (``{"laws": {"model": {...}, "data": {...}, "joint": {...}}}``), the
format :func:`save_laws` writes and :func:`load_laws` reads; extra keys (R^2, standard errors,
notes) are kept in the file and ignored here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, astuple, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.common.atomic import write_json
from rag.common.errors import UserError

if TYPE_CHECKING:
    import torch

ArrayLike = float | np.ndarray

LAW_KINDS = ("model", "data", "joint")


def _power(scale: float, size: ArrayLike, exponent: float) -> np.ndarray:
    """``(scale / size) ** exponent`` evaluated in log space; float64 array shaped like ``size``."""
    size = np.asarray(size, dtype=np.float64)
    return np.exp(exponent * (np.log(scale) - np.log(size)))


def model_size_law(n: ArrayLike, a: float, alpha: float, delta: float) -> np.ndarray:
    """L(N) = (A / N)^alpha + delta_N, Fang et al. (2024), model-size scaling law.

    Returns float64 contrastive entropy shaped like ``n`` (non-embedding parameters).
    """
    return _power(a, n, alpha) + delta


def data_size_law(d: ArrayLike, b: float, beta: float, delta: float) -> np.ndarray:
    """L(D) = (B / D)^beta + delta_D, Fang et al. (2024), data-size scaling law.

    Returns float64 contrastive entropy shaped like ``d`` (number of training pairs).
    """
    return _power(b, d, beta) + delta


def joint_law(
    n: ArrayLike, d: ArrayLike, a: float, b: float, alpha: float, beta: float, delta: float
) -> np.ndarray:
    """L(N, D) = [(A / N)^(alpha / beta) + B / D]^beta + delta, Fang et al. (2024), joint law.

    ``n`` and ``d`` broadcast against each other; returns float64 contrastive entropy.
    """
    bracket = _power(a, n, alpha / beta) + _power(b, d, 1.0)
    return np.exp(beta * np.log(bracket)) + delta


class _OneVariableLaw:
    """The model-size and data-size laws: L(x) = (scale / x)^exponent + delta, their fields being
    (scale, exponent, delta) in that order."""

    def predict(self, x: ArrayLike) -> np.ndarray:
        """Contrastive entropy at ``x`` (N or D; float64, shaped like ``x``)."""
        scale, exponent, delta = astuple(self)
        return _power(scale, x, exponent) + delta


@dataclass(frozen=True)
class ModelSizeLaw(_OneVariableLaw):
    """A fitted model-size law L(N) = (A / N)^alpha + delta (:func:`model_size_law`)."""

    a: float  # A, in non-embedding parameters
    alpha: float  # exponent on N
    delta: float  # irreducible contrastive entropy (nats) at infinite N
    kind = "model"


@dataclass(frozen=True)
class DataSizeLaw(_OneVariableLaw):
    """A fitted data-size law L(D) = (B / D)^beta + delta (:func:`data_size_law`), N -> inf."""

    b: float  # B, in training pairs
    beta: float  # exponent on D
    delta: float  # irreducible contrastive entropy (nats) at infinite D
    kind = "data"


@dataclass(frozen=True)
class JointLaw:
    """A fitted joint law L(N, D) = [(A / N)^(alpha / beta) + B / D]^beta + delta."""

    a: float  # A, in non-embedding parameters
    b: float  # B, in training pairs
    alpha: float  # exponent on N once D -> inf
    beta: float  # exponent on D once N -> inf
    delta: float  # irreducible contrastive entropy (nats)

    kind = "joint"

    def predict(self, n: ArrayLike, d: ArrayLike) -> np.ndarray:
        """Contrastive entropy at (``n``, ``d``), broadcast; float64."""
        return joint_law(n, d, self.a, self.b, self.alpha, self.beta, self.delta)

    def pairs_for_loss(self, n: ArrayLike, target: float) -> np.ndarray:
        """Training pairs D at which an N-parameter encoder reaches ``target`` (the law inverted).

        From the joint law, B / D = (target - delta)^(1/beta) - (A / N)^(alpha/beta). Returns
        float64 shaped like ``n``, ``inf`` where the target is out of reach at that N (the model
        term alone already exceeds it) or ``target <= delta``.
        """
        n = np.asarray(n, dtype=np.float64)
        if target <= self.delta:
            return np.full(n.shape, np.inf)
        model_term = _power(self.a, n, self.alpha / self.beta)
        room = (target - self.delta) ** (1.0 / self.beta) - model_term
        with np.errstate(divide="ignore"):
            return np.where(room > 0, self.b / np.where(room > 0, room, 1.0), np.inf)


Law = ModelSizeLaw | DataSizeLaw | JointLaw
_LAW_TYPES: dict[str, type] = {"model": ModelSizeLaw, "data": DataSizeLaw, "joint": JointLaw}


def law_to_dict(law: Law) -> dict[str, float]:
    """The law's parameters as a plain dict (JSON-ready)."""
    return {key: float(value) for key, value in asdict(law).items()}


def law_from_dict(kind: str, values: dict[str, Any], *, where: str = "") -> Law:
    """Build a law of ``kind`` from a dict holding its parameters (extra keys ignored).

    Raises :class:`UserError` naming ``where`` when a parameter is missing or not a number.
    """
    cls = _LAW_TYPES[kind]
    params = {}
    for field in fields(cls):
        value = values.get(field.name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            raise UserError(f"{where}: law {kind!r} needs a finite number {field.name!r}, "
                            f"got {value!r}")
        params[field.name] = float(value)
    if any(params[key] <= 0 for key in ("a", "b", "alpha", "beta") if key in params):
        raise UserError(f"{where}: law {kind!r} needs positive scales and exponents, got {params}")
    return cls(**params)


def load_laws(path: str | Path) -> dict[str, Law]:
    """Read the laws in a fit JSON file (as written by :func:`save_laws` or ``ragqa scale fit``).

    Returns ``{kind: law}`` for each of ``model``, ``data``, ``joint`` present. Raises
    :class:`UserError` naming the file when it is missing, not JSON, or holds no law.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise UserError(f"{path}: fit file not found") from err
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from err
    laws = payload.get("laws") if isinstance(payload, dict) else None
    if not isinstance(laws, dict) or not any(k in laws for k in LAW_KINDS):
        raise UserError(f"{path}: expected an object with 'laws' holding any of {LAW_KINDS}")
    return {
        kind: law_from_dict(kind, laws[kind], where=f"{path}")
        for kind in LAW_KINDS
        if isinstance(laws.get(kind), dict)
    }


def save_laws(path: str | Path, entries: dict[str, dict[str, Any]], **meta: Any) -> Path:
    """Write ``{"laws": entries, **meta}`` as JSON (atomically; a missing directory is a
    :class:`UserError`); entries hold law parameters and extras."""
    write_json(path, {**meta, "laws": entries})
    return Path(path)


def published_msmarco_path() -> Path:
    """Path of the shipped MS MARCO coefficients (``msmarco_fang2024.json``, see its notes)."""
    return Path(str(resources.files("retriever.scaling") / "msmarco_fang2024.json"))


def count_non_embedding_params(model: torch.nn.Module) -> int:
    """Number of parameters N outside embedding tables, the N of the scaling laws.

    Following Fang et al. (2024) (and Kaplan et al., 2020), N excludes every parameter owned by
    an ``nn.Embedding`` / ``nn.EmbeddingBag`` module: for BERT that is the token, position and
    token-type tables. Everything else counts, including the embedding LayerNorm and a pooler if
    the model has one. Parameters shared between modules (tied output heads) are counted once,
    and a head tied to the token table is excluded with it.
    """
    import torch  # lazy: the laws' fit and selection run without torch (package doc)

    embedding_types = (torch.nn.Embedding, torch.nn.EmbeddingBag)
    excluded = {
        id(param)
        for module in model.modules()
        if isinstance(module, embedding_types)
        for param in module.parameters(recurse=False)
    }
    seen: set[int] = set()
    total = 0
    for param in model.parameters():  # parameters() already de-duplicates shared tensors
        if id(param) in excluded or id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
    return total
