"""Measurements and fitted scaling laws on log-log axes, as in Fang et al. (SIGIR 2024) Figs.

Left panel: contrastive entropy against N (one marker colour per D, the joint law's curve at
each D dashed, the model-size law solid). Right panel: against D (one colour per N, the joint
law dashed, the data-size law solid). Drawn with matplotlib's object API on an Agg canvas, so
no global backend is switched and nothing is shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .fit import FitResult
from .measurements import Measurement, as_arrays


def _panel(ax, x: np.ndarray, group: np.ndarray, cols: dict[str, np.ndarray], cmap, *,
           xlabel: str, group_label: str) -> dict[float, tuple]:
    """Scatter one panel's measurements, one colour per ``group`` value; returns the colours."""
    colours = {}
    values = sorted(set(group.tolist()))
    for i, value in enumerate(values):
        colour = cmap(0.1 + 0.8 * i / max(len(values) - 1, 1))
        mask = group == value
        ax.errorbar(x[mask], cols["loss"][mask], yerr=np.nan_to_num(cols["std"][mask]),
                    fmt="o", color=colour, label=f"{group_label}={value:.3g}", capsize=2)
        colours[value] = colour
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("contrastive entropy (nats)")
    ax.grid(True, which="both", alpha=0.3)
    return colours


def plot_fits(rows: Sequence[Measurement], fits: dict[str, FitResult],
              path: str | Path) -> Path:
    """Write a PNG of the measurements with the fitted curves; returns the path written."""
    # lazy: matplotlib, only to plot
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = as_arrays(list(rows))
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    n_grid = np.geomspace(cols["n"].min() / 1.5, cols["n"].max() * 1.5, 200)
    d_grid = np.geomspace(cols["d"].min() / 1.5, cols["d"].max() * 1.5, 200)
    cmap = matplotlib.colormaps["viridis"]
    by_d = _panel(left, cols["n"], cols["d"], cols, cmap, xlabel="non-embedding parameters N",
                  group_label="D")
    by_n = _panel(right, cols["d"], cols["n"], cols, cmap, xlabel="training pairs D",
                  group_label="N")
    joint = fits.get("joint")
    if joint is not None:
        for d, colour in by_d.items():
            left.plot(n_grid, joint.law.predict(n_grid, d), "--", color=colour, lw=1)
        for n, colour in by_n.items():
            right.plot(d_grid, joint.law.predict(n, d_grid), "--", color=colour, lw=1)
    for ax, kind, grid in ((left, "model", n_grid), (right, "data", d_grid)):
        if kind in fits:
            law = fits[kind]
            ax.plot(grid, law.law.predict(grid), "-", color="black", lw=1.5,
                    label=f"{kind}-size law (R$^2$={law.r2:.3f})")
        ax.legend(fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
