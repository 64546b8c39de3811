"""Propensity overlap by group: planted separation is flagged, a well-mixed group is not."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import hand_built_posterior, make_frame
from scipy.special import expit

import hierps
from hierps.balance.overlap import ALL_GROUPS, linear_predictor, overlap
from hierps.exceptions import HierpsWarning


def planted_frame(seed: int = 0) -> pd.DataFrame:
    """Three groups of 200: 'mixed' (treatment independent of x), 'separated' (treated have
    x > 1, controls x < -1) and 'mild' (a moderate dependence)."""
    rng = np.random.default_rng(seed)
    frames = []
    for name in ("mixed", "separated", "mild"):
        x = rng.normal(size=200)
        if name == "mixed":
            z = rng.random(200) < 0.4
        elif name == "separated":
            x = np.r_[rng.uniform(1.5, 3.0, 60), rng.uniform(-3.0, -1.5, 140)]
            z = np.r_[np.ones(60, bool), np.zeros(140, bool)]
        else:
            z = rng.random(200) < expit(0.5 * x - 0.4)
        frames.append(
            pd.DataFrame(
                {"school": name, "x": x, "z": z.astype(int), "y": x + rng.normal(size=200)}
            )
        )
    return pd.concat(frames, ignore_index=True)


def fit_of(frame: pd.DataFrame, **scales):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        model = hierps.Model(
            frame, treatment="z", group="school", outcome="y", unit_covariates=["x"]
        )
        return model.fit_map(**scales)


@pytest.fixture(scope="module")
def planted_fit():
    return fit_of(planted_frame(), sigma_beta=3.0)


def test_separated_group_is_flagged_and_mixed_is_not(planted_fit):
    table = overlap(planted_fit)
    assert list(table.index) == ["mild", "mixed", "separated", ALL_GROUPS]
    assert table.index.name == "group"
    assert table.loc["separated", "limited_overlap"]
    assert table.loc["separated", "share_outside"] > 0.5
    assert "outside control range" in table.loc["separated", "reasons"]
    assert not table.loc["mixed", "limited_overlap"]
    assert table.loc["mixed", "share_outside"] <= 0.05
    assert table.loc["mixed", "reasons"] == ""
    assert table.loc[ALL_GROUPS, "n_treated"] == planted_fit.design.treatment.sum()
    # Quantiles are ordered within each arm.
    for arm in ("treated", "control"):
        q = table[[f"{arm}_{k}" for k in ("min", "q10", "median", "q90", "max")]].to_numpy()
        assert np.all(np.diff(q, axis=1) >= 0)


def test_propensity_is_the_one_the_weights_imply(planted_fit):
    eta = linear_predictor(planted_fit)
    assert eta.shape == (1, planted_fit.design.n_units)
    control = planted_fit.design.treatment == 0
    weights = planted_fit.weights.to_numpy()[control]
    np.testing.assert_allclose(np.exp(eta[0, control]), weights, rtol=1e-10)
    # The control propensity range reported is that of π = w / (1 + w).
    table = overlap(planted_fit)
    codes = planted_fit.design.group_codes[control]
    for j, label in enumerate(planted_fit.design.groups):
        pi = weights[codes == j] / (1 + weights[codes == j])
        assert table.loc[label, "control_max"] == pytest.approx(pi.max(), rel=1e-10)
        assert table.loc[label, "control_min"] == pytest.approx(pi.min(), rel=1e-10)


def test_ess_and_weight_share_match_the_fit(planted_fit):
    table = overlap(planted_fit)
    ess = planted_fit.group_ess
    np.testing.assert_allclose(table.loc[ess.index, "ess"], ess, rtol=1e-10)
    np.testing.assert_allclose(
        table.loc[ess.index, "ess_ratio"], ess / table.loc[ess.index, "n_control"], rtol=1e-10
    )
    assert table.loc[ALL_GROUPS, "ess"] == pytest.approx(planted_fit.ess, rel=1e-10)
    assert np.all((table["max_weight_share"] > 0) & (table["max_weight_share"] <= 1))


def test_thresholds_are_adjustable(planted_fit):
    lax = overlap(planted_fit, max_outside_share=1, min_ess_ratio=0, max_weight_share=1, min_ess=0)
    assert not lax["limited_overlap"].any()
    strict = overlap(planted_fit, min_ess_ratio=1.0)
    assert strict.loc["mixed", "limited_overlap"]
    assert "ESS/n" in strict.loc["mixed", "reasons"]
    assert strict.attrs["min_ess_ratio"] == 1.0
    with pytest.raises(ValueError, match="max_outside_share"):
        overlap(planted_fit, max_outside_share=1.5)
    with pytest.raises(ValueError, match="min_ess"):
        overlap(planted_fit, min_ess=-1)


def test_group_without_controls_is_flagged():
    frame, roles = make_frame(seed=4, sizes=(20, 30), n_groups=4, n_unit=1, n_group=0)
    first = frame["school"] == frame["school"].iloc[0]
    frame.loc[first, "z"] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        fit = hierps.Model(frame, **roles).fit_map()
    table = overlap(fit)
    label = frame["school"].iloc[0]
    assert table.loc[label, "limited_overlap"]
    assert table.loc[label, "reasons"] == "no controls"
    assert table.loc[label, "share_outside"] == 1.0


def test_posterior_result_uses_posterior_mean_propensities(planted_fit):
    post = hand_built_posterior(planted_fit, draws=30, spread=0.05)
    eta = linear_predictor(post)
    assert eta.shape == (60, planted_fit.design.n_units)
    table = overlap(post)
    assert table.attrs["draws"] == 60
    assert "posterior-mean" in table.attrs["propensity"]
    assert table.loc["separated", "limited_overlap"]
    assert not table.loc["mixed", "limited_overlap"]
    treated = planted_fit.design.treatment == 1
    mean_pi = expit(eta).mean(axis=0)
    assert table.loc[ALL_GROUPS, "treated_median"] == pytest.approx(np.median(mean_pi[treated]))
