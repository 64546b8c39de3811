"""Variance-based sensitivity of the ATT (math §18): hand computations, benchmark identity."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from helpers import make_frame
from matplotlib.collections import PathCollection
from scipy.optimize import brentq

import hierps
from hierps.balance.weightings import weights_result
from hierps.effects.sensitivity_r2 import (
    att_weights,
    benchmark_r2,
    bias_contour,
    sensitivity_r2,
)
from hierps.exceptions import HierpsWarning


@pytest.fixture(scope="module")
def tiny():
    """Two groups with given weights: A (treated 3, 5; controls 1, 2, 4 weighted 1, 2, 1) and
    B (treated 6; controls 2, 3 weighted 3, 1)."""
    frame = pd.DataFrame(
        {
            "school": ["A"] * 5 + ["B"] * 3,
            "z": [1, 1, 0, 0, 0, 1, 0, 0],
            "y": [3.0, 5.0, 1.0, 2.0, 4.0, 6.0, 2.0, 3.0],
            "x1": [0.1, 0.4, -0.3, 0.2, 0.0, 0.5, -0.1, 0.3],
        },
        index=pd.Index([f"u{i}" for i in range(8)], name="id"),
    )
    weights = pd.Series([1, 1, 1, 2, 1, 1, 3, 1], index=frame.index, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        model = hierps.Model(
            frame, treatment="z", group="school", outcome="y", unit_covariates=["x1"]
        )
    return weights_result(model, weights, label="given")


def test_att_weights_by_hand(tiny):
    fit = att_weights(tiny)
    # CATT_A = 4 − (1 + 4 + 4)/4 = 1.75, CATT_B = 6 − (6 + 3)/4 = 3.75; ATT = (2·1.75 + 3.75)/3.
    assert fit.estimate == pytest.approx(7.25 / 3)
    assert fit.treated_mean == pytest.approx(14 / 3)
    # Five controls: 5 · share of the treated · w / group weight sum.
    expected = {1.0: 5 / 6, 2.0: 10 / 6, 4.0: 5 / 6, 3.0: 5 / 12}
    by_outcome = dict(zip(fit.outcome[:3], fit.weights[:3], strict=True))
    for y, w in expected.items():
        if y in by_outcome:
            assert by_outcome[y] == pytest.approx(w)
    assert sorted(fit.weights) == pytest.approx(sorted([5 / 6, 10 / 6, 5 / 6, 15 / 12, 5 / 12]))
    assert fit.weights.mean() == pytest.approx(1.0)


def test_sensitivity_r2_by_hand(tiny):
    w = np.array([5 / 6, 10 / 6, 5 / 6, 15 / 12, 5 / 12])
    y = np.array([1.0, 2.0, 4.0, 2.0, 3.0])
    estimate = 7.25 / 3
    var_w = np.mean((w - 1) ** 2)
    sd_y = np.sqrt(np.mean((y - y.mean()) ** 2))
    table = sensitivity_r2(tiny, rho=[1.0, 0.6])
    assert table.index.name == "rho"
    assert table["var_weights"].iloc[0] == pytest.approx(var_w)
    assert table["sd_outcome"].iloc[0] == pytest.approx(sd_y)

    def bias(r2, rho):
        return rho * np.sqrt(var_w * r2 / (1 - r2)) * sd_y

    # At each ρ the R² makes the bias equal the estimate.
    for rho, r2 in table["r2"].items():
        assert bias(r2, rho) == pytest.approx(estimate)
        assert r2 == pytest.approx(brentq(lambda v, p=rho: bias(v, p) - estimate, 1e-12, 1 - 1e-12))
    # The equal-strength robustness value: ρ² = R².
    rv = table["robustness_value"].iloc[0]
    assert bias(rv, np.sqrt(rv)) == pytest.approx(estimate)
    a = estimate**2 / (var_w * sd_y**2)
    assert rv == pytest.approx((np.sqrt(a**2 + 4 * a) - a) / 2)  # senseweight's closed form
    # A threshold moves the target: at b* the needed bias is estimate − b*.
    shifted = sensitivity_r2(tiny, threshold=1.0)
    assert bias(shifted["r2"].iloc[0], 1.0) == pytest.approx(estimate - 1.0)
    assert shifted["r2"].iloc[0] < table["r2"].iloc[0]


def test_bias_contour_by_hand(tiny):
    table = bias_contour(tiny, r2=[0.0, 0.2, 0.5], rho=[-0.5, 1.0])
    assert table.index.name == "point" and len(table) == 6
    fit = att_weights(tiny)
    row = table[(table["r2"] == 0.5) & (table["rho"] == -0.5)].iloc[0]
    expected = -0.5 * np.sqrt(fit.var_weights) * fit.sd_outcome  # R²/(1−R²) = 1
    assert row["bias"] == pytest.approx(expected)
    assert row["adjusted"] == pytest.approx(fit.estimate - expected)
    np.testing.assert_allclose(table.loc[table["r2"] == 0, "adjusted"], fit.estimate)
    with pytest.raises(ValueError, match="r2"):
        bias_contour(tiny, r2=[1.0])
    with pytest.raises(ValueError, match="rho"):
        sensitivity_r2(tiny, rho=1.5)


@pytest.fixture(scope="module")
def study():
    frame, roles = make_frame(
        seed=11, sizes=(15, 80), n_groups=8, n_unit=2, n_group=1, categorical_levels=3
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        model = hierps.Model(frame, **roles)
        fit = model.fit_map(sigma_beta=0.5)
    return frame, roles, fit


def test_att_weights_reproduce_the_map_att(study):
    _, _, fit = study
    assert att_weights(fit).estimate == pytest.approx(fit.att, rel=1e-12)


def test_benchmark_parameters_reproduce_the_observed_change(study):
    frame, roles, fit = study
    table = benchmark_r2(fit)
    assert list(table.index) == ["x1", "x2", "c1", "v1"]
    assert table.index.name == "covariate"
    # The identity: the bias formula at (R²_k, ρ_k) is the change from leaving k out.
    np.testing.assert_allclose(table["bias"], table["change"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(table["adjusted"], 2 * fit.att - table["estimate_without"])
    assert ((table["r2"] >= 0) & (table["r2"] < 1)).all()
    assert (table["rho"].abs() <= 1).all()
    # The refit without a covariate is the fit of a model that never had it.
    for covariate in ("x1", "c1", "v1"):
        reduced = {
            key: [c for c in value if c != covariate] if isinstance(value, list) else value
            for key, value in roles.items()
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HierpsWarning)
            direct = hierps.Model(frame, **reduced).fit_map(sigma_beta=0.5)
        assert table.at[covariate, "estimate_without"] == pytest.approx(direct.att, rel=1e-7)
    # x1 drives both treatment and outcome in the simulation: the strongest benchmark.
    assert table["bias"].abs().idxmax() == "x1"


def test_benchmarks_need_a_map_result(study, tiny):
    _, _, fit = study
    with pytest.raises(TypeError, match="MapResult"):
        benchmark_r2(tiny)
    with pytest.raises(ValueError, match="not covariates"):
        benchmark_r2(fit, covariates=["nope"])
    assert list(benchmark_r2(fit, covariates="x2").index) == ["x2"]


def test_bias_contour_plot_marks_benchmarks_and_the_zero_contour(study):
    _, _, fit = study
    benchmarks = benchmark_r2(fit)
    fig, ax = hierps.plots.plot_bias_contour(fit, benchmarks=benchmarks)
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    offsets = np.vstack([c.get_offsets() for c in points])
    np.testing.assert_allclose(
        np.sort(offsets[:, 0]), np.sort(benchmarks["r2"].to_numpy()), rtol=1e-12
    )
    assert [t.get_text() for t in ax.texts if t.get_text() in benchmarks.index] == list(
        benchmarks.index
    )
    assert "bold: 0" in ax.get_title(loc="left")
    plt.close(fig)
