"""Several weightings in one balance table and one love plot."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from helpers import make_frame

import hierps
from hierps.balance.table import balance_table
from hierps.balance.weightings import BalanceComparison, weights_result
from hierps.exceptions import HierpsWarning
from hierps.plots import plot_love


def logistic_ipw(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """ATT weights of a plain pooled logistic regression, fitted by Newton's method."""
    x = np.column_stack([np.ones(len(frame)), frame[columns].to_numpy()])
    z = frame["z"].to_numpy()
    b = np.zeros(x.shape[1])
    for _ in range(30):
        p = 1 / (1 + np.exp(-x @ b))
        b += np.linalg.solve(x.T @ (x * (p * (1 - p))[:, None]), x.T @ (z - p))
    return np.where(z == 1, 1.0, p / (1 - p))


@pytest.fixture(scope="module")
def study():
    frame, roles = make_frame(seed=7, sizes=(10, 60), n_groups=7, n_unit=2, n_group=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        model = hierps.Model(frame, **roles)
        fits = {
            "MAP σβ=1": model.fit_map(sigma_beta=1.0),
            "MAP σβ=0.1": model.fit_map(sigma_beta=0.1),
        }
    return frame, model, fits


def _weightings(study):
    frame, model, fits = study
    ipw = logistic_ipw(frame, ["x1", "x2", "v1"])
    return {"unweighted": None, **fits, "logistic IPW": (model, ipw)}, ipw


def test_dict_form_equals_the_single_tables_row_by_row(study):
    _frame, model, fits = study
    weightings, ipw = _weightings(study)
    comparison = balance_table(weightings)
    assert isinstance(comparison, BalanceComparison)
    assert comparison.weightings == list(weightings)
    singles = {label: balance_table(fit) for label, fit in fits.items()}
    singles["logistic IPW"] = balance_table(weights_result(model, ipw, label="logistic IPW"))
    for label, single in singles.items():
        for name in ("global_", "by_group", "across_groups", "ess"):
            stacked = getattr(comparison, name)
            part = stacked[stacked["weighting"] == label].drop(columns="weighting")
            pd.testing.assert_frame_equal(
                part.reset_index(drop=True), getattr(single, name).reset_index(drop=True)
            )
    assert singles["logistic IPW"].weights == "logistic IPW"


def test_unweighted_entry_is_the_balance_before_weighting(study):
    weightings, _ = _weightings(study)
    comparison = balance_table(weightings)
    unweighted = comparison.global_[comparison.global_["weighting"] == "unweighted"]
    np.testing.assert_allclose(unweighted["smd_after"], unweighted["smd_before"])
    map_rows = comparison.global_[comparison.global_["weighting"] == "MAP σβ=1"]
    np.testing.assert_allclose(unweighted["smd_after"], map_rows["smd_before"])
    ess = comparison.ess.set_index(["weighting", "scope"]).loc[("unweighted", "global"), "ess"]
    assert ess == pytest.approx(int((study[1].design.treatment == 0).sum()))


def test_wide_and_summary_read_the_stacked_tables(study):
    weightings, _ = _weightings(study)
    comparison = balance_table(weightings)
    wide = comparison.wide("smd_after")
    assert list(wide.columns) == list(weightings)
    assert wide.index.name == "covariate"
    single = balance_table(weightings["MAP σβ=0.1"]).global_.set_index("covariate")
    np.testing.assert_allclose(wide["MAP σβ=0.1"], single["smd_after"].loc[wide.index])
    by_group = comparison.wide("smd_after", scope="by_group")
    assert by_group.index.names == ["group", "covariate"]
    summary = comparison.summary()
    assert summary.index.name == "weighting"
    # The MAP weights balance the global means exactly; the raw sample does not.
    assert summary.at["MAP σβ=1", "max_abs_smd"] < 0.02 < summary.at["unweighted", "max_abs_smd"]
    assert "MAP σβ=0.1" in str(comparison)


def test_love_plot_draws_one_marker_series_per_weighting(study):
    weightings, _ = _weightings(study)
    comparison = balance_table(weightings)
    fig, ax = plot_love(weightings)
    n_covariates = len(comparison.wide())
    # Per weighting: the global |SMD| of every covariate and the worst group of unit covariates.
    points = [c for c in ax.collections if len(c.get_offsets())]
    assert len(points) == 2 * len(weightings)
    assert sum(len(c.get_offsets()) for c in points[:2]) == n_covariates + 2
    first = np.sort(np.asarray(points[0].get_offsets())[:, 0])
    np.testing.assert_allclose(first, np.sort(comparison.wide("smd_after")["unweighted"].abs()))
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert labels[: len(weightings)] == list(weightings)
    plt.close(fig)


def test_bad_weightings_name_the_entry(study):
    _frame, model, fits = study
    with pytest.raises(ValueError, match="at least one"):
        balance_table({"unweighted": None})
    with pytest.raises(ValueError, match="one weight per unit"):
        balance_table({"bad": (model, np.ones(3))})
    with pytest.raises(ValueError, match="non-negative"):
        weights_result(model, -np.ones(model.design.n_units))
    with pytest.raises(TypeError, match="weightings\\['odd'\\]"):
        balance_table({"odd": object()})
    other, roles = make_frame(seed=8, sizes=(10, 60), n_groups=7, n_unit=2, n_group=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        elsewhere = hierps.Model(other, **roles).fit_map()
    with pytest.raises(ValueError, match="weightings\\['other'\\]"):
        balance_table({"MAP": fits["MAP σβ=1"], "other": elsewhere})


def test_series_weights_align_on_the_index(study):
    frame, model, _ = study
    weights = pd.Series(np.linspace(0.5, 2.0, len(frame)), index=frame.index)
    shuffled = weights.sample(frac=1.0, random_state=0)
    wrapped = weights_result(model, shuffled)
    np.testing.assert_allclose(wrapped.weights.to_numpy(), weights.to_numpy())
    with pytest.raises(ValueError, match="units of the design have no weight"):
        weights_result(model, weights.iloc[1:])
