"""The cost of building and running a dense retriever, Z(N, D) (Fang et al., SIGIR 2024).

The paper writes the total cost as Z(N, D) = Z_data * D + Z_train * N + Z_infer * N, with
N non-embedding parameters and D annotated training pairs. Here every coefficient is derived
from explicit inputs (all in :class:`CostModel`, the hardware's in the :class:`GpuPrice` it holds):

- usd_per_flop = gpu_hour_price / (3600 * gpu_flops * utilisation)
- Z_data  = price_per_pair                                           ($ per pair)
- Z_train = 6 * D * train_tokens_per_pair * epochs * usd_per_flop     ($ per parameter)
- Z_infer = 2 * (corpus_size * tokens_per_passage
                 + queries_served * tokens_per_query) * usd_per_flop  ($ per parameter)

Training costs ~6 FLOPs per parameter per token (forward + backward) and inference ~2
(forward only), the usual transformer estimates (Kaplan et al., 2020). The training tokens
grow with D, so **Z_train depends on D**: the paper's "Z_train * N" is this module's
``z_train(D) * N``, i.e. training cost is modelled as proportional to N * D
(``train_usd_per_param_pair * N * D``). Inference covers encoding the corpus once for the
index and encoding every query served over the deployment; it does not depend on D. Set
``corpus_size = queries_served = 0`` to ignore inference, as the paper's first analysis does.

Defaults are assumptions for illustration (A100-class GPU, MS MARCO-like lengths), not the
paper's numbers: change them to your prices.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from rag.common.options import NON_NEGATIVE, POSITIVE, Range, check_fields, option

ArrayLike = float | np.ndarray


@dataclass(frozen=True)
class CostBreakdown:
    """Dollar cost split into its three parts; fields are floats or broadcast float64 arrays."""

    data: ArrayLike  # Z_data * D: annotating the training pairs
    train: ArrayLike  # Z_train(D) * N: fine-tuning the encoder on them
    infer: ArrayLike  # Z_infer * N: encoding the corpus and the served queries

    @property
    def total(self) -> ArrayLike:
        """data + train + infer ($)."""
        return self.data + self.train + self.infer

    def at(self, index: Any) -> CostBreakdown:
        """The breakdown of one grid point (float fields)."""
        return CostBreakdown(*(float(np.asarray(v)[index]) for v in (self.data, self.train,
                                                                     self.infer)))

    def to_dict(self) -> dict[str, float]:
        """``{"data", "train", "infer", "total"}`` as floats (scalar breakdowns only)."""
        return {"data": float(self.data), "train": float(self.train),
                "infer": float(self.infer), "total": float(self.total)}


@dataclass(frozen=True)
class GpuPrice:
    """What a FLOP costs on the hardware that trains the encoder and serves it."""

    gpu_flops: float = option(312e12, "peak FLOP/s of one GPU (A100 bf16 dense tensor cores)",
        within=POSITIVE)
    utilisation: float = option(0.4, "fraction of peak FLOP/s actually achieved (MFU)",
        within=Range(0, 1, low_open=True))
    gpu_hour_price: float = option(2.0, "$ per GPU-hour", within=POSITIVE)

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def usd_per_flop(self) -> float:
        """$ per FLOP actually executed: gpu_hour_price / (3600 gpu_flops utilisation)."""
        return self.gpu_hour_price / (3600.0 * self.gpu_flops * self.utilisation)


@dataclass(frozen=True)
class CostModel:
    """Every input of Z(N, D) = Z_data D + Z_train N + Z_infer N, with illustrative defaults."""

    price_per_pair: float = option(0.6, "$ to annotate one (query, relevant passage) pair",
        within=NON_NEGATIVE)
    gpu: GpuPrice = option(GpuPrice(), "the hardware's price per FLOP")
    tokens_per_query: int = option(32, "query length in tokens, for serving", within=NON_NEGATIVE)
    tokens_per_passage: int = option(128, "passage length in tokens, for indexing the corpus",
        within=NON_NEGATIVE)
    train_tokens_per_pair: int = option(
        288, "tokens encoded per training pair (query + pos + 1 hard neg)", within=NON_NEGATIVE)
    epochs: float = option(3.0, "passes over the D training pairs", within=NON_NEGATIVE)
    corpus_size: int = option(0, "passages encoded once for the index (MS MARCO: 8_841_823)",
        within=NON_NEGATIVE)
    queries_served: float = option(0.0, "queries encoded over the deployment's lifetime", within=NON_NEGATIVE)

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def z_data(self) -> float:
        """Z_data, $ per annotated training pair."""
        return self.price_per_pair

    @property
    def train_usd_per_param_pair(self) -> float:
        """$ per (parameter x training pair): 6 * train_tokens_per_pair * epochs * usd_per_flop."""
        return 6.0 * self.train_tokens_per_pair * self.epochs * self.gpu.usd_per_flop

    def z_train(self, d: ArrayLike) -> ArrayLike:
        """Z_train for D training pairs, $ per parameter (the paper's Z_train at that D)."""
        return self.train_usd_per_param_pair * np.asarray(d, dtype=np.float64)

    @property
    def z_infer(self) -> float:
        """Z_infer, $ per parameter: 2 FLOPs per parameter per corpus or query token."""
        tokens = (self.corpus_size * self.tokens_per_passage
                  + self.queries_served * self.tokens_per_query)
        return 2.0 * tokens * self.gpu.usd_per_flop

    def breakdown(self, n: ArrayLike, d: ArrayLike) -> CostBreakdown:
        """Cost of an N-parameter encoder trained on D pairs; ``n``, ``d`` broadcast (float64)."""
        n = np.asarray(n, dtype=np.float64)
        d = np.asarray(d, dtype=np.float64)
        return CostBreakdown(data=self.z_data * d, train=self.z_train(d) * n,
                             infer=self.z_infer * n)

    def total(self, n: ArrayLike, d: ArrayLike) -> ArrayLike:
        """Z(N, D) in $, broadcast over ``n`` and ``d``."""
        return self.breakdown(n, d).total

    def without_inference(self) -> CostModel:
        """This model with corpus_size = queries_served = 0 (training-side cost only)."""
        return replace(self, corpus_size=0, queries_served=0.0)

    def coefficients(self) -> dict[str, float]:
        """The derived coefficients (for reports): usd_per_flop, z_data, z_infer, z_train/pair."""
        return {"usd_per_flop": self.gpu.usd_per_flop, "z_data": self.z_data,
                "train_usd_per_param_pair": self.train_usd_per_param_pair,
                "z_infer": self.z_infer}
