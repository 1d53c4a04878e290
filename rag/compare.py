"""Benchmark reports side by side: a markdown table, and exact match against k for a k sweep.

The reports are the JSON files ``ragqa benchmark`` writes (:mod:`rag.benchmark`). Runs form a
*k sweep* when their settings differ in k alone: the device, batch size and library versions may
differ too, since they do not change what is answered.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from rag.common.atomic import atomic_file
from rag.common.errors import UserError, is_number
from rag.common.jsonl import load_json

REQUIRED = ("n", "exact_match", "f1", "top_k_accuracy", "answer_in_passages", "config")
NOT_SETTINGS = ("k", "device", "batch_size", "versions")  # may differ within a k sweep

Run = tuple[str, dict]  # (name shown in the table, report)


def load_run(path: str | os.PathLike) -> Run:
    """Read one benchmark report; :class:`UserError` when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    report = load_json(path)
    missing = [key for key in REQUIRED if key not in report] if isinstance(report, dict) else REQUIRED
    if missing:
        raise UserError(f"{path}: not a benchmark report (no {', '.join(missing)}); "
                        "write one with ragqa benchmark")
    _check_types(path, report)
    return path.stem, report


def _check_types(path: Path, report: dict) -> None:
    """Refuse a report whose fields have the wrong type (naming the first such field)."""
    top = report["top_k_accuracy"]
    checks = [
        ("n", isinstance(report["n"], int) and not isinstance(report["n"], bool)),
        ("exact_match", is_number(report["exact_match"], finite=False)),
        ("f1", is_number(report["f1"], finite=False)),
        ("top_k_accuracy", isinstance(top, dict) and all(
            str(k).isdigit() and is_number(v, finite=False) for k, v in top.items())),
        ("answer_in_passages", report["answer_in_passages"] is None
         or is_number(report["answer_in_passages"], finite=False)),
        ("config", isinstance(report["config"], dict)),
        ("questions_per_s", report.get("questions_per_s") is None
         or is_number(report.get("questions_per_s"), finite=False)),
    ]
    for key, ok in checks:
        if not ok:
            raise UserError(f"{path}: field {key!r} has the wrong type ({report.get(key)!r})")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.1f}"


def _cell(value: object) -> str:
    return "-" if value is None else str(value).replace("|", "\\|")


def runs_table(runs: Sequence[Run]) -> str:
    """A markdown table, one row per run: settings, EM, F1 (percent), top-k accuracy for every k
    any run reports, answer-in-passages (percent) and questions per second."""
    ks = sorted({int(k) for _, r in runs for k in r["top_k_accuracy"]})
    head = ["run", "model", "mode", "decoding", "k", "n", "EM", "F1",
            *[f"top-{k}" for k in ks], "answer in passages", "q/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for name, r in runs:
        cfg, qps = r["config"], r.get("questions_per_s")
        cells = [name, cfg.get("model"), cfg.get("mode"), cfg.get("decoding"), cfg.get("k"), r["n"],
                 f"{r['exact_match']:.1f}", f"{r['f1']:.1f}",
                 *[_pct(r["top_k_accuracy"].get(str(k))) for k in ks],
                 _pct(r["answer_in_passages"]), "-" if qps is None else f"{qps:.2f}"]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def sweep_problem(runs: Sequence[Run]) -> str | None:
    """Why the runs are not a k sweep (None when they are: two or more runs, distinct k values,
    every other setting equal)."""
    if len(runs) < 2:
        return "a k sweep needs two runs or more"
    ks = [r["config"].get("k") for _, r in runs]
    if None in ks:
        return "closed-book runs have no k"
    if len(set(ks)) != len(ks):
        return f"runs share a k value ({sorted(ks)})"
    settings = [{key: v for key, v in r["config"].items() if key not in NOT_SETTINGS} for _, r in runs]
    differ = sorted({key for s in settings for key in s if any(t.get(key) != s.get(key) for t in settings)})
    if differ:
        return f"runs differ in more than k: {', '.join(differ)}"
    return None


def plot_em_vs_k(runs: Sequence[Run], out: str | os.PathLike) -> None:
    """Plot exact match and F1 (percent) against k and save the figure (any format matplotlib
    writes, from the suffix of ``out``) atomically."""
    # lazy: matplotlib, only when the runs are a k sweep to plot
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out)
    points = sorted((r["config"]["k"], r["exact_match"], r["f1"]) for _, r in runs)
    fig = Figure(figsize=(5, 3.5))
    canvas = FigureCanvasAgg(fig)  # no pyplot: no global figure state, no backend switching
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in canvas.get_supported_filetypes():
        raise UserError(f"{out}: unknown image format {out.suffix!r} (use .png, .pdf or .svg)")
    ax = fig.add_subplot()
    ks = [k for k, _, _ in points]
    ax.plot(ks, [em for _, em, _ in points], marker="o", label="EM")
    ax.plot(ks, [f1 for _, _, f1 in points], marker="s", linestyle="--", label="F1")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (passages retrieved)")
    ax.set_ylabel("percent")
    ax.set_ylim(0, min(105.0, max(5.0, *(max(em, f1) for _, em, f1 in points)) * 1.1))
    cfg = runs[0][1]["config"]
    ax.set_title(f"{Path(str(cfg.get('model'))).name}: {cfg.get('mode')}, {cfg.get('decoding')}")
    ax.legend()
    fig.tight_layout()
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format=fmt)
