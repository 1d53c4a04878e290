"""Scaling laws for dense retrieval (Fang et al., SIGIR 2024, "Scaling Laws For Dense Retrieval").

Modules, one per concept:

- :mod:`.entropy`: contrastive entropy, the continuous metric the laws are fitted to.
- :mod:`.laws`: the model-size, data-size and joint laws, and the non-embedding parameter count.
- :mod:`.measurements`: reading measurement rows (JSON lines or CSV).
- :mod:`.fit`: robust least-squares fitting, R^2, standard errors, hold-out check.
- :mod:`.plot`: measurements with fitted curves on log axes.
- :mod:`.cost`: the cost model Z(N, D) = Z_data D + Z_train N + Z_infer N.
- :mod:`.select`: the cheapest (N, D) for a target loss and the best (N, D) for a budget.
- :mod:`.sweep`: measurement rows from truncated encoders (first l layers) trained on D pairs.

Nothing here imports torch or matplotlib at import time; those are imported where needed.
The names below are imported on first use (``rag.common.lazy``).
"""

from __future__ import annotations

from rag.common.lazy import lazy_exports

_MODULES = {
    "retriever.scaling.cost": ["CostBreakdown", "CostModel", "GpuPrice"],
    "retriever.scaling.entropy": ["contrastive_entropy", "negative_pool_indices",
                                  "pair_contrastive_entropy", "sample_negative_indices"],
    "retriever.scaling.fit": ["FitConfig", "FitResult", "HoldoutResult", "fit_data_size_law",
                              "fit_joint_law", "fit_measurements", "fit_model_size_law",
                              "holdout_largest_n"],
    "retriever.scaling.laws": ["DataSizeLaw", "JointLaw", "ModelSizeLaw",
                               "count_non_embedding_params", "data_size_law", "joint_law",
                               "load_laws", "model_size_law", "published_msmarco_path", "save_laws"],
    "retriever.scaling.measurements": ["Measurement", "read_measurements"],
    "retriever.scaling.select": ["Choice", "EncoderSize", "GridConfig", "Selection",
                                 "min_cost_for_loss", "min_loss_for_budget", "nearest_encoder",
                                 "parse_encoders"],
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
