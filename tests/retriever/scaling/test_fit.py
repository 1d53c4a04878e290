"""Fitting recovers the parameters that generated synthetic data; measurement files; hold-out."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from rag.common.errors import UserError
from retriever.scaling import (
    DataSizeLaw,
    JointLaw,
    Measurement,
    ModelSizeLaw,
    fit_data_size_law,
    fit_joint_law,
    fit_measurements,
    fit_model_size_law,
    holdout_largest_n,
    read_measurements,
)
from retriever.scaling.plot import plot_fits

MODEL = ModelSizeLaw(a=3.22e4, alpha=0.53, delta=0.04)
DATA = DataSizeLaw(b=2e3, beta=0.7, delta=0.1)
JOINT = JointLaw(a=3.22e4, b=1e4, alpha=0.56, beta=1.31, delta=0.04)


def _noisy(y: np.ndarray, rel: float, seed: int) -> np.ndarray:
    return y * (1 + rel * np.random.default_rng(seed).standard_normal(y.shape))


def test_model_size_fit_recovers_parameters():
    n = np.geomspace(4e5, 3e8, 9)
    fit = fit_model_size_law(n, _noisy(MODEL.predict(n), 0.005, 0))
    assert fit.law.alpha == pytest.approx(MODEL.alpha, abs=0.05)
    assert fit.law.delta == pytest.approx(MODEL.delta, abs=0.01)
    assert np.log10(fit.law.a) == pytest.approx(np.log10(MODEL.a), abs=0.5)
    assert fit.r2 > 0.999
    assert all(0 < se < np.inf for se in fit.stderr.values())
    n_new = np.geomspace(4e5, 1e9, 5)
    np.testing.assert_allclose(fit.law.predict(n_new), MODEL.predict(n_new), rtol=0.03)


def test_data_size_fit_recovers_parameters():
    d = np.geomspace(1e3, 1e6, 9)
    fit = fit_data_size_law(d, _noisy(DATA.predict(d), 0.005, 1))
    assert fit.law.beta == pytest.approx(DATA.beta, abs=0.05)
    assert fit.law.delta == pytest.approx(DATA.delta, abs=0.01)
    assert fit.r2 > 0.999


def test_joint_fit_recovers_parameters():
    n, d = (g.ravel() for g in np.meshgrid(np.geomspace(4e5, 1e8, 5), np.geomspace(1.5e4, 5e5, 5)))
    fit = fit_joint_law(n, d, _noisy(JOINT.predict(n, d), 0.005, 2))
    assert fit.law.alpha == pytest.approx(JOINT.alpha, abs=0.05)
    assert fit.law.beta == pytest.approx(JOINT.beta, abs=0.1)
    assert fit.law.delta == pytest.approx(JOINT.delta, abs=0.01)
    assert fit.r2 > 0.999
    assert set(fit.stderr) == {"a", "b", "alpha", "beta", "delta"}


def test_exact_data_gives_exact_fit_and_outlier_is_tolerated():
    n = np.geomspace(4e5, 3e8, 9)
    y = MODEL.predict(n)
    exact = fit_model_size_law(n, y)
    assert exact.law.alpha == pytest.approx(MODEL.alpha, rel=1e-3)
    assert exact.r2 == pytest.approx(1.0, abs=1e-9)
    y_bad = y.copy()
    y_bad[4] *= 1.5  # one badly trained run
    robust = fit_model_size_law(n, y_bad)
    assert robust.law.alpha == pytest.approx(MODEL.alpha, abs=0.05)


def test_too_few_points():
    with pytest.raises(UserError, match="at least 3"):
        fit_model_size_law([1e6, 1e7], [0.2, 0.1])


def _grid_rows(seed: int = 3) -> list[Measurement]:
    rows = []
    rng = np.random.default_rng(seed)
    for n in np.geomspace(4e5, 3e8, 6):
        for d in np.geomspace(1.5e4, 5e5, 4):
            loss = float(JOINT.predict(n, d)) * (1 + 0.003 * rng.standard_normal())
            rows.append(Measurement(f"n{n:.0f}-d{d:.0f}", float(n), float(d), loss, 0.002))
    return rows


def _write(tmp_path, rows: list[Measurement], kind: str):
    path = tmp_path / f"runs.{kind}"
    cols = ["name", "n_params", "n_train_pairs", "contrastive_entropy", "ce_std"]
    records = [{c: getattr(r, c) for c in cols} for r in rows]
    if kind == "jsonl":
        path.write_text("".join(json.dumps(rec) + "\n" for rec in records))
    else:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=cols)
            writer.writeheader()
            writer.writerows(records)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_read_and_fit_measurements(tmp_path, kind):
    rows = read_measurements(_write(tmp_path, _grid_rows(), kind))
    assert len(rows) == 24 and rows[0].ce_std == pytest.approx(0.002)
    fits = fit_measurements(rows)
    assert set(fits) == {"model", "data", "joint"}
    assert fits["joint"].law.alpha == pytest.approx(JOINT.alpha, abs=0.05)
    assert all(f.r2 > 0.99 for f in fits.values())


@pytest.mark.parametrize("kind, line, match", [
    ("csv", "b,abc,1e5,0.3,", "n_params must be a number"),
    ("csv", "b,1e6,1e5,,", "missing contrastive_entropy"),
    ("csv", "b,1e6,-5,0.3,", "n_train_pairs must be a finite positive"),
    ("jsonl", '{"name": "b", "n_params": 1e6, "n_train_pairs": 1e5', "invalid JSON"),
    ("jsonl", '{"name": "b", "n_params": 1e6, "n_train_pairs": 1e5, '
              '"contrastive_entropy": "nan"}', "finite"),
    ("jsonl", '[1, 2]', "expected a JSON object"),
])
def test_bad_rows_name_file_and_row(tmp_path, kind, line, match):
    path = tmp_path / f"bad.{kind}"
    good = {"csv": "a,1e6,1e5,0.3,0.01",
            "jsonl": '{"name": "a", "n_params": 1e6, "n_train_pairs": 1e5, '
                     '"contrastive_entropy": 0.3}'}[kind]
    header = "name,n_params,n_train_pairs,contrastive_entropy,ce_std\n" if kind == "csv" else ""
    path.write_text(f"{header}{good}\n{line}\n")
    with pytest.raises(UserError, match=match) as err:
        read_measurements(path)
    assert "bad." in str(err.value) and "row 2" in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_measurements(tmp_path / "missing.csv")
    (tmp_path / "runs.txt").write_text("x")
    with pytest.raises(UserError, match="extension"):
        read_measurements(tmp_path / "runs.txt")
    (tmp_path / "empty.csv").write_text("name,n_params\n")
    with pytest.raises(UserError, match="lacks column"):
        read_measurements(tmp_path / "empty.csv")


def test_holdout_predicts_the_largest_model():
    rows = _grid_rows()
    held = holdout_largest_n(rows)
    assert held.kind == "model" and held.n_params == pytest.approx(3e8)
    assert held.rel_error < 0.05
    joint = holdout_largest_n(rows, kind="joint")
    assert len(joint.names) == 4 and joint.rel_error < 0.05
    assert json.dumps(joint.to_dict())


def test_plot_writes_png(tmp_path):
    rows = _grid_rows()
    path = plot_fits(rows, fit_measurements(rows), tmp_path / "plots" / "fit.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
