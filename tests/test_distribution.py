"""Weighted KS and eCDF balance: against scipy on unweighted data, against replication for
integer weights, and against a direct evaluation of the two eCDFs."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import make_frame
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ks_2samp

import hierps
from hierps.balance.distribution import distribution_balance, ecdf_differences
from hierps.exceptions import HierpsWarning


def scipy_ks(a: np.ndarray, b: np.ndarray) -> float:
    """SciPy's two-sample KS statistic (its p-value, unused, warns on tiny samples)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ks_2samp(a, b).statistic)


def direct(x_t: np.ndarray, x_c: np.ndarray, w_c: np.ndarray) -> tuple[float, float]:
    """Both eCDFs evaluated at every distinct pooled value."""
    points = np.unique(np.r_[x_t, x_c])
    f_t = np.searchsorted(np.sort(x_t), points, side="right") / len(x_t)
    order = np.argsort(x_c)
    cum = np.r_[0.0, np.cumsum(w_c[order])] / w_c.sum()
    f_c = cum[np.searchsorted(x_c[order], points, side="right")]
    gaps = np.abs(f_t - f_c)
    return float(gaps.max()), float(gaps.mean())


samples = st.lists(st.integers(-5, 5).map(float) | st.floats(-10, 10), min_size=1, max_size=40)


@settings(max_examples=100, deadline=None)
@given(x_t=samples, x_c=samples)
def test_unweighted_ks_is_scipys(x_t, x_c):
    x_t, x_c = np.array(x_t), np.array(x_c)
    values = np.r_[x_t, x_c]
    treated = np.r_[np.ones(len(x_t), bool), np.zeros(len(x_c), bool)]
    ks, mean = ecdf_differences(values, treated, np.ones(len(values)))
    assert ks[0] == pytest.approx(scipy_ks(x_t, x_c), abs=1e-12)
    assert mean[0] == pytest.approx(direct(x_t, x_c, np.ones(len(x_c)))[1], abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_integer_weights_equal_replication(data):
    x_t = np.array(data.draw(samples))
    x_c = np.array(data.draw(samples))
    w = np.array(data.draw(st.lists(st.integers(1, 4), min_size=len(x_c), max_size=len(x_c))))
    values = np.r_[x_t, x_c]
    treated = np.r_[np.ones(len(x_t), bool), np.zeros(len(x_c), bool)]
    ks, mean = ecdf_differences(values, treated, np.r_[np.zeros(len(x_t)), w].astype(float))
    replicated = np.repeat(x_c, w)
    assert ks[0] == pytest.approx(scipy_ks(x_t, replicated), abs=1e-12)
    assert mean[0] == pytest.approx(direct(x_t, replicated, np.ones(len(replicated)))[1], abs=1e-12)


def test_groups_are_separate_and_empty_arms_are_nan():
    rng = np.random.default_rng(0)
    codes = np.repeat([0, 1, 2], 30)
    values = rng.normal(size=90)
    treated = rng.random(90) < 0.4
    treated[60:] = False  # group 2 has no treated units
    weights = rng.gamma(2.0, size=90)
    ks, mean = ecdf_differences(values, treated, weights, codes, 3)
    for j in (0, 1):
        rows = codes == j
        t, c = rows & treated, rows & ~treated
        assert (ks[j], mean[j]) == pytest.approx(direct(values[t], values[c], weights[c]))
    assert np.isnan(ks[2]) and np.isnan(mean[2])


def test_distribution_balance_of_a_fit():
    frame, roles = make_frame(seed=1, sizes=(15, 80), n_groups=5, n_unit=2, n_group=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        fit = hierps.Model(frame, **roles).fit_map(sigma_beta=5.0)
    table = distribution_balance(fit)
    design = fit.design
    global_rows = table[table["scope"] == "global"]
    assert list(global_rows["covariate"]) == ["x1", "x2", "v1"]
    assert len(table) == 3 + design.n_groups * 2
    t = design.treatment == 1
    w = fit.weights.to_numpy()
    x = frame["x1"].to_numpy()
    row = global_rows.set_index("covariate").loc["x1"]
    assert row["ks_before"] == pytest.approx(scipy_ks(x[t], x[~t]))
    assert (row["ks_after"], row["ecdf_mean_after"]) == pytest.approx(direct(x[t], x[~t], w[~t]))
    groups = table[(table["scope"] == "group") & (table["covariate"] == "x2")].set_index("group")
    x = frame["x2"].to_numpy()
    for j, label in enumerate(design.groups):
        rows = design.group_codes == j
        expected = direct(x[rows & t], x[rows & ~t], w[rows & ~t])
        assert (groups.loc[label, "ks_after"], groups.loc[label, "ecdf_mean_after"]) == (
            pytest.approx(expected)
        )
    # Weighting that balances means also brings the distributions closer, on the whole.
    within = table[table["scope"] == "group"]
    assert within["ks_after"].mean() < within["ks_before"].mean()
    # Equal weights reproduce the unweighted statistics.
    plain = distribution_balance(SimpleNamespace(design=design, weights=np.ones(design.n_units)))
    np.testing.assert_allclose(plain["ks_after"], plain["ks_before"])
    with pytest.raises(TypeError, match="design"):
        distribution_balance(object())
