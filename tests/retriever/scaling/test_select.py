"""Selection against closed forms and brute force; the paper's qualitative conclusion; the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rag.common.errors import UserError
from retriever.scaling import (
    CostModel,
    EncoderSize,
    GridConfig,
    JointLaw,
    load_laws,
    min_cost_for_loss,
    min_loss_for_budget,
    nearest_encoder,
    parse_encoders,
    published_msmarco_path,
)
from retriever.scaling.select import BERT_ENCODERS

TOY = JointLaw(a=1e4, b=1e3, alpha=0.5, beta=1.0, delta=0.1)


def _msmarco() -> JointLaw:
    return load_laws(published_msmarco_path())["joint"]


def test_budget_optimum_matches_closed_form_without_inference():
    # With Z = p D + c N D and no inference, B / D = B (p + c N) / Z, and minimising the joint
    # law's bracket (A/N)^g + B (p + c N) / Z over N (g = alpha / beta) gives
    # N* = (g A^g Z / (B c))^(1 / (1 + g)).
    law, cost = _msmarco(), CostModel()
    g = law.alpha / law.beta
    for budget in (1e4, 1e5):
        sel = min_loss_for_budget(law, cost, budget)
        closed = (g * law.a**g * budget / (law.b * cost.train_usd_per_param_pair)) ** (1 / (1 + g))
        assert sel.optimum.n_params == pytest.approx(closed, rel=0.01)
        assert sel.optimum.cost.total == pytest.approx(budget, rel=1e-9)
        assert not sel.at_grid_edge


def test_budget_optimum_matches_brute_force_on_toy_surface():
    cost = CostModel(corpus_size=1_000_000, queries_served=1e9)
    sel = min_loss_for_budget(TOY, cost, 2e3, grid=GridConfig(n_min=1e3, n_max=1e10))
    n, d = np.meshgrid(np.geomspace(1e3, 1e10, 700), np.geomspace(1, 1e5, 700))  # (D, N)
    loss = np.where(cost.total(n, d) <= 2e3, TOY.predict(n, d), np.inf)
    assert sel.optimum.loss <= loss.min() + 1e-9  # never worse than brute force
    assert sel.optimum.loss == pytest.approx(loss.min(), rel=5e-3)  # brute grid is coarser
    best = np.unravel_index(np.argmin(loss), loss.shape)
    low, high = sel.near_optimal  # the surface is flat in N: compare within the 1% band
    assert low <= n[best] <= high and low <= sel.optimum.n_params <= high


def test_cost_optimum_matches_brute_force_and_is_dual_to_budget():
    cost = CostModel(corpus_size=1_000_000, queries_served=1e9)
    grid = GridConfig(n_min=1e3, n_max=1e10)
    sel = min_cost_for_loss(TOY, cost, 0.5, grid=grid)
    assert sel.optimum.loss == pytest.approx(0.5, rel=1e-9)
    n, d = np.meshgrid(np.geomspace(1e3, 1e10, 700), np.geomspace(1, 1e5, 700))
    total = np.where(TOY.predict(n, d) <= 0.5, cost.total(n, d), np.inf)
    assert sel.optimum.cost.total <= total.min() + 1e-9
    assert sel.optimum.cost.total == pytest.approx(total.min(), rel=5e-3)
    dual = min_loss_for_budget(TOY, cost, sel.optimum.cost.total, grid=grid)
    assert dual.optimum.loss == pytest.approx(0.5, rel=1e-3)
    assert dual.optimum.n_params == pytest.approx(sel.optimum.n_params, rel=0.02)


def test_free_model_size_runs_to_grid_edge():
    cost = CostModel(epochs=0.0)  # no training and no inference cost: bigger is free
    sel = min_loss_for_budget(TOY, cost, 1e3, grid=GridConfig(n_min=1e3, n_max=1e9))
    assert sel.at_grid_edge and sel.optimum.n_params == pytest.approx(1e9)


def test_unreachable_constraints():
    with pytest.raises(UserError, match="irreducible"):
        min_cost_for_loss(TOY, CostModel(), 0.1)
    with pytest.raises(UserError, match="out of reach"):
        min_loss_for_budget(TOY, CostModel(), 0.1)  # 0.1 $ buys no 0.6 $ pair


def test_encoders():
    encoders = parse_encoders(["small=1e7", "base=8.5e7"])
    assert encoders == [EncoderSize("small", 1e7), EncoderSize("base", 8.5e7)]
    assert nearest_encoder(4e7, encoders).name == "base"  # log-nearest: 4e7 / 1e7 > 8.5e7 / 4e7
    with pytest.raises(UserError, match="NAME=N"):
        parse_encoders(["base"])
    sel = min_loss_for_budget(TOY, CostModel(), 1e3, encoders=encoders)
    assert sel.best_encoder.loss >= sel.optimum.loss - 1e-12
    assert {sel.nearest_encoder.name, sel.best_encoder.name} <= {"small", "base"}
    assert json.dumps(sel.to_dict())


BUDGETS = (1e4, 3e4, 1e5)
DEPLOYED = CostModel(corpus_size=8_841_823, queries_served=1e11)  # MS MARCO corpus, 1e11 queries


def test_msmarco_optimal_size_grows_with_budget_without_inference():
    law = _msmarco()
    sizes = [min_loss_for_budget(law, CostModel(), b).optimum.n_params for b in BUDGETS]
    assert sizes == sorted(sizes) and sizes[-1] > 3 * sizes[0]
    largest_bert = max(e.n_params for e in BERT_ENCODERS)
    assert all(n > largest_bert for n in sizes)  # data is the dear part: models run large


def test_msmarco_inference_cost_moves_the_optimum_to_small_encoders():
    law = _msmarco()
    for budget in BUDGETS:
        free = min_loss_for_budget(law, CostModel(), budget).optimum.n_params
        paid = min_loss_for_budget(law, DEPLOYED, budget, encoders=BERT_ENCODERS)
        assert paid.optimum.n_params < free / 100
        assert paid.optimum.cost.infer > 0
    small = min_loss_for_budget(law, DEPLOYED, 1e4, encoders=BERT_ENCODERS)
    assert small.optimum.n_params < 3e7
    assert small.best_encoder.name in ("bert-mini", "bert-small", "bert-medium")


def _script():
    from rag.commands import scale

    return scale


def test_script_select_writes_json(tmp_path, capsys):
    out = tmp_path / "select.json"
    _script().main(["select", "--budgets", "1e4", "--target_losses", "0.2",
                    "--corpus_size", "8841823", "--queries_served", "1e11", "--json", str(out)])
    payload = json.loads(out.read_text())
    assert [s["objective"] for s in payload["selections"]] == ["min_loss", "min_cost"]
    assert payload["selections"][0]["best_encoder"]["name"] == "bert-small"
    assert "N*=" in capsys.readouterr().out
    assert payload["cost_model"]["gpu"]["gpu_flops"] == 312e12


def test_script_select_takes_the_gpu_price_as_options(tmp_path):
    """--gpu_hour_price, a field of the GpuPrice the cost model holds, reaches the cost: doubling
    it doubles usd_per_flop."""
    runs = {}
    for price in ("2.0", "4.0"):
        out = tmp_path / f"select-{price}.json"
        _script().main(["select", "--budgets", "1e4", "--gpu_hour_price", price, "--json", str(out)])
        runs[price] = json.loads(out.read_text())
    assert runs["4.0"]["cost_model"]["gpu"]["gpu_hour_price"] == 4.0
    assert runs["4.0"]["coefficients"]["usd_per_flop"] == pytest.approx(
        2 * runs["2.0"]["coefficients"]["usd_per_flop"])


def test_script_fit_then_select(tmp_path):
    rows = tmp_path / "runs.jsonl"
    law = _msmarco()
    lines = [json.dumps({"name": f"{n:g}-{d:g}", "n_params": n, "n_train_pairs": d,
                         "contrastive_entropy": float(law.predict(n, d))})
             for n in np.geomspace(4e5, 3e8, 5) for d in np.geomspace(1.5e4, 5e5, 4)]
    rows.write_text("\n".join(lines) + "\n")
    script = _script()
    fit_json, png = tmp_path / "fit.json", tmp_path / "fit.png"
    script.main(["fit", "--measurements", str(rows), "--json", str(fit_json), "--plot", str(png),
                 "--holdout"])
    fitted = load_laws(fit_json)["joint"]
    assert fitted.alpha == pytest.approx(law.alpha, abs=0.01)
    assert png.exists() and "holdout" in json.loads(fit_json.read_text())
    script.main(["select", "--fit", str(fit_json), "--budgets", "1e4", "--json",
                 str(tmp_path / "s.json")])
    with pytest.raises(UserError, match="no joint law"):
        fit_json.write_text(json.dumps({"laws": {"model": {"a": 1e4, "alpha": 0.5,
                                                           "delta": 0.0}}}))
        script.main(["select", "--fit", str(fit_json), "--budgets", "1e4"])
    with pytest.raises(UserError, match="expected a command"):
        script.main(["sweeps"])
