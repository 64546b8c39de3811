"""Outcome models and augmentation: the residual estimator by hand, draw pairing, Bambi fits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers import make_frame, quietly

import hierps
from hierps.effects.outcome import (
    _default_spec,
    _formula_name,
    augment_map,
    augmented_effects,
    fit_outcome_model,
    pair_draws,
)
from hierps.exceptions import DataError

COEFFICIENTS = {"x1": 1.5, "x2": -1.0, "v1": 0.5}
INTERCEPT = 2.0


def linear_study(seed: int = 5, n_groups: int = 12, all_treated_group: bool = False):
    """A multilevel frame whose outcome is linear: m(x) = 2 + 1.5 x1 − x2 + 0.5 v1 (+ u_j)."""
    frame, roles = make_frame(seed=seed, sizes=(15, 45), n_groups=n_groups, n_unit=2, n_group=1)
    rng = np.random.default_rng(seed)
    mean = INTERCEPT + sum(value * frame[name] for name, value in COEFFICIENTS.items())
    codes = frame["school"].str[1:].astype(int).to_numpy()
    effect = (1.0 + 0.5 * frame["v1"]) * frame["z"]
    frame["y"] = (
        mean + 0.3 * rng.normal(size=n_groups)[codes] + effect + rng.normal(size=len(frame))
    )
    frame.index = [f"u{i}" for i in range(len(frame))]
    if all_treated_group:
        frame.loc[frame["school"] == "s001", "z"] = 1
    return frame, roles, mean.to_numpy()


@pytest.fixture(scope="module")
def linear_map():
    frame, roles, mean = linear_study(n_groups=6)
    model = hierps.Model(frame, **roles)
    return model, quietly(model.fit_map, sigma_beta=0.5), mean


def hand_catt(design, weights, m):
    """τ_j = mean_T(Y − m) − Σ_C w (Y − m) / Σ_C w, one group at a time."""
    residual = design.outcome - m
    treated = design.treatment == 1
    catt = np.empty(design.n_groups)
    for j in range(design.n_groups):
        in_group = design.group_codes == j
        t, c = in_group & treated, in_group & ~treated
        catt[j] = residual[t].mean() - np.sum(weights[c] * residual[c]) / weights[c].sum()
    att = np.sum(catt * design.treated_per_group) / design.treated_per_group.sum()
    return catt, att


# --------------------------------------------------------------------------------------------
# The augmented estimator (no sampling)
# --------------------------------------------------------------------------------------------


def test_augmented_catt_of_map_weights_is_the_hand_formula(linear_map):
    model, fit, mean = linear_map
    design, weights = model.design, fit.weights.to_numpy()
    draws = np.stack([mean, mean + 0.3, mean - 0.2 * model.design.unit_matrix[:, 0]])
    effects = augmented_effects(design, fit.weights, draws)
    assert effects["catt"].shape == (3, design.n_groups)
    for s, m in enumerate(draws):
        catt, att = hand_catt(design, weights, m)
        np.testing.assert_allclose(effects["catt"][s], catt, rtol=1e-12)
        np.testing.assert_allclose(effects["att"][s], att, rtol=1e-12)
    # A constant shift of m cancels between the arms: draws 0 and 1 agree.
    np.testing.assert_allclose(effects["catt"][1], effects["catt"][0], rtol=1e-10)

    predictions = xr.DataArray(draws, dims=("sample", "obs"), coords={"obs": list(design.index)})
    table = augment_map(fit, predictions)
    np.testing.assert_allclose(table["mean"], effects["catt"].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(table["sd"], effects["catt"].std(axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(table["lower"], np.quantile(effects["catt"], 0.05, axis=0))
    np.testing.assert_allclose(table["upper"], np.quantile(effects["catt"], 0.95, axis=0))
    np.testing.assert_allclose(table["weighted"], fit.catt["estimate"])
    assert table.attrs["att"]["mean"] == pytest.approx(effects["att"].mean())
    assert table.attrs["att"]["weighted"] == pytest.approx(fit.att)
    assert list(table.index) == list(design.groups)


def test_augmentation_with_the_true_mean_removes_the_bias_of_poor_weights():
    # Strong confounding by x, and weights that only match the treated count per group
    # (tiny prior scales on every slope): weighting alone leaves most of the x imbalance.
    rng = np.random.default_rng(11)
    n_groups, size, tau = 5, 300, 2.0
    codes = np.repeat(np.arange(n_groups), size)
    x = rng.normal(size=len(codes))
    z = (rng.random(len(codes)) < 1 / (1 + np.exp(-1.5 * x))).astype(int)
    m = 3.0 * x
    frame = pd.DataFrame(
        {"x": x, "z": z, "school": codes, "y": m + tau * z + 0.5 * rng.normal(size=len(codes))}
    )
    model = hierps.Model(frame, treatment="z", group="school", outcome="y", unit_covariates=["x"])
    fit = quietly(model.fit_map, sigma_beta=1e-4, sigma_mu_beta=1e-4)

    weighted = fit.catt["estimate"].to_numpy()
    effects = augmented_effects(model.design, fit.weights, m)
    assert abs(fit.att - tau) > 1.0
    assert abs(effects["att"][0] - tau) < 0.1
    assert np.all(np.abs(effects["catt"][0] - tau) < np.abs(weighted - tau))
    assert np.all(np.abs(effects["catt"][0] - tau) < 0.25)


def test_pair_draws_pairs_equal_counts_and_cycles_the_shorter_side():
    for n_propensity, n_outcome in [(4, 4), (3, 5), (5, 2), (1, 4)]:
        propensity, outcome = pair_draws(n_propensity, n_outcome)
        total = max(n_propensity, n_outcome)
        np.testing.assert_array_equal(propensity, np.arange(total) % n_propensity)
        np.testing.assert_array_equal(outcome, np.arange(total) % n_outcome)
    with pytest.raises(ValueError, match="at least one draw"):
        pair_draws(0, 3)


def test_per_draw_weights_and_predictions_pair_by_index(linear_map):
    model, fit, mean = linear_map
    design = model.design
    rng = np.random.default_rng(0)
    weights = fit.weights.to_numpy() * rng.gamma(5.0, 0.2, size=(3, design.n_units))
    predictions = mean + 0.1 * rng.normal(size=(5, design.n_units))
    effects = augmented_effects(design, weights, predictions)
    assert effects["catt"].shape == (5, design.n_groups)
    assert effects["att"].shape == (5,)
    assert effects["control_weight"].shape == effects["treated_weight"].shape == (5, 6)
    np.testing.assert_array_equal(effects["propensity_draw"], [0, 1, 2, 0, 1])
    for s in range(5):
        catt, att = hand_catt(design, weights[s % 3], predictions[s])
        np.testing.assert_allclose(effects["catt"][s], catt, rtol=1e-12)
        np.testing.assert_allclose(effects["att"][s], att, rtol=1e-12)

    # (chain, draw, obs) DataArrays in another row order give the same draws, chain-major.
    order = rng.permutation(design.n_units)
    as_array = xr.DataArray(
        predictions[:4, order].reshape(2, 2, -1),
        dims=("chain", "draw", "obs"),
        coords={"obs": list(design.index[order])},
    )
    same = augmented_effects(design, weights[:1], as_array)
    np.testing.assert_allclose(
        same["catt"], augmented_effects(design, weights[0], predictions[:4])["catt"]
    )

    bootstrap = rng.dirichlet(np.ones(design.n_units), size=3) * design.n_units
    with_bootstrap = augmented_effects(design, weights, predictions, treated_weights=bootstrap)
    assert with_bootstrap["catt"].shape == (5, 6)
    with pytest.raises(ValueError, match="must pair one to one"):
        augmented_effects(design, weights, predictions, treated_weights=bootstrap[:2])
    with pytest.raises(ValueError, match="shape"):
        augmented_effects(design, weights, predictions[:, :-1])


def test_groups_without_controls_stay_nan():
    frame, roles, mean = linear_study(n_groups=6, all_treated_group=True)
    model = quietly(hierps.Model, frame, **roles)
    fit = quietly(model.fit_map, sigma_beta=0.5)
    effects = augmented_effects(model.design, fit.weights, mean)
    estimable = np.isfinite(effects["catt"][0])
    assert list(model.design.groups[~estimable]) == ["s001"]
    assert np.isfinite(effects["att"][0])
    table = augment_map(fit, xr.DataArray(mean[None], dims=("sample", "obs")))
    assert table.loc["s001", ["mean", "sd", "lower", "upper"]].isna().all()


# --------------------------------------------------------------------------------------------
# Model construction (no sampling)
# --------------------------------------------------------------------------------------------


def test_formula_names_are_valid_and_distinct():
    taken: set[str] = set()
    names = [_formula_name(name, taken) for name in ["C1[4]", "C1_4_", "1x", "a b", "class", ""]]
    assert names == ["C1_4_", "C1_4__2", "x_1x", "a_b", "x_class", "x_"]


def test_default_formula_drops_a_reference_level_and_maps_names_back():
    frame, roles = make_frame(seed=2, sizes=(10, 30), n_groups=5, n_unit=2, categorical_levels=3)
    model = hierps.Model(frame, **roles)
    formula, data, terms, group = _default_spec(model.design)
    assert formula == "y ~ x1 + x2 + c1_b_ + c1_c_ + v1 + v2 + (1 | school)"
    assert terms == {
        "x1": "x1",
        "x2": "x2",
        "c1_b_": "c1[b]",
        "c1_c_": "c1[c]",
        "v1": "v1",
        "v2": "v2",
    }
    assert group == "school"
    np.testing.assert_allclose(data["c1_b_"], model.design.unit_frame()["c1[b]"])
    np.testing.assert_allclose(
        data["v1"], model.design.group_frame()["v1"].iloc[model.design.group_codes]
    )
    assert list(data["school"]) == list(frame["school"])


@pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")  # Bambi on str columns
def test_bad_arguments_are_named(linear_map):
    model, _, _ = linear_map
    with pytest.raises(ValueError, match="family='gamma'"):
        fit_outcome_model(model.design, family="gamma")
    with pytest.raises(ValueError, match="sampler='numpyro'"):
        fit_outcome_model(model.design, sampler="numpyro")
    with pytest.raises(ValueError, match="needs data="):
        fit_outcome_model(model.design, formula="y ~ x1")
    with pytest.raises(ValueError, match="only used with a user formula"):
        fit_outcome_model(model.design, data=model.data)
    with pytest.raises(DataError, match="lacks 3 rows"):
        fit_outcome_model(model.design, formula="y ~ x1", data=model.data.iloc[3:])
    with pytest.raises(DataError, match="response is 'x2'"):
        fit_outcome_model(model.design, formula="x2 ~ x1 + (1 | school)", data=model.data)
    no_outcome = hierps.Model(model.data, treatment="z", group="school", unit_covariates=["x1"])
    with pytest.raises(ValueError, match="no outcome"):
        fit_outcome_model(no_outcome.design)
    with pytest.raises(TypeError, match="MapResult"):
        augment_map(model, model)


# --------------------------------------------------------------------------------------------
# Fitted outcome models
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    frame, roles, mean = linear_study(n_groups=12, all_treated_group=True)
    model = quietly(hierps.Model, frame, **roles)
    outcome = fit_outcome_model(
        model.design, draws=300, tune=300, chains=2, random_seed=3, progressbar=False
    )
    return model, outcome, mean


@pytest.mark.slow
def test_outcome_model_recovers_linear_coefficients(fitted):
    model, outcome, _ = fitted
    table = outcome.coefficients(original_scale=True)
    for name, truth in COEFFICIENTS.items():
        assert abs(table.loc[name, "mean"] - truth) < 4 * table.loc[name, "sd"]
    assert (table.loc[list(COEFFICIENTS), "sd"] < 0.5).all()
    # With weak priors the unit-level slopes are those of least squares with group dummies.
    controls = model.data[model.design.treatment == 0]
    dummies = pd.get_dummies(controls["school"], dtype=float)
    x = np.column_stack([controls[["x1", "x2"]], dummies])
    least_squares = np.linalg.lstsq(x, controls["y"], rcond=None)[0][:2]
    np.testing.assert_allclose(table.loc[["x1", "x2"], "mean"], least_squares, atol=0.05)
    assert (table["lower"] < table["upper"]).all()


@pytest.mark.slow
def test_predictions_cover_every_unit_on_the_design_index(fitted):
    model, outcome, mean = fitted
    design = model.design
    predictions = outcome.predictions
    assert predictions.dims == ("sample", "obs")
    assert predictions.sizes["sample"] == 600
    assert list(predictions["obs"].to_numpy()) == list(design.index)
    assert set(np.unique(predictions["chain"])) == {0, 1}
    assert np.all(np.isfinite(predictions.to_numpy()))
    # The posterior mean of m(x) tracks the true conditional mean (which omits u_j).
    posterior_mean = predictions.mean("sample").to_numpy()
    assert np.corrcoef(posterior_mean, mean)[0, 1] > 0.95
    # The all-treated group s001 was not in the fit: population-level predictions there.
    assert np.all(np.isfinite(posterior_mean[design.group_codes == 1]))

    fit = quietly(model.fit_map, sigma_beta=0.5)
    table = augment_map(fit, outcome)
    assert table.loc["s001", "mean"] != table.loc["s001", "mean"]  # NaN: no controls
    assert (table.drop(index="s001")["sd"] > 0).all()
    assert np.isfinite(table.attrs["att"]["mean"])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")  # Bambi on str columns
def test_user_formula_on_the_original_frame(fitted):
    model, outcome, _ = fitted
    shuffled = model.data.sample(frac=1.0, random_state=0)
    user = fit_outcome_model(
        model.design,
        formula="y ~ x1 + x2 + v1 + (1 | school)",
        data=shuffled,
        draws=150,
        tune=150,
        random_seed=4,
        sampler="pymc",
        progressbar=False,
    )
    assert user.terms == {}
    assert list(user.predictions["obs"].to_numpy()) == list(model.design.index)
    # The same model as the default one: the same predictions up to Monte Carlo error, on the
    # groups in the fit. The all-treated group s001 has no controls: its predictions carry a
    # new group's intercept drawn from the fitted spread, far noisier in a 600-draw mean.
    user_mean = user.predictions.mean("sample").to_numpy()
    default_mean = outcome.predictions.mean("sample").to_numpy()
    seen = model.design.group_codes != 1
    np.testing.assert_allclose(user_mean[seen], default_mean[seen], atol=0.15)
    np.testing.assert_allclose(user_mean[~seen], default_mean[~seen], atol=0.5)
    table = user.coefficients()
    assert table.loc["x1", "mean"] == pytest.approx(COEFFICIENTS["x1"], abs=0.2)
    # A user formula is fit on the original columns: no rescaling.
    pd.testing.assert_frame_equal(user.coefficients(original_scale=True), table)


@pytest.mark.slow
def test_sample_with_outcome_model_adds_augmented_catts(fitted):
    model, outcome, _ = fitted
    result = quietly(
        model.sample, draws=100, tune=100, chains=2, random_seed=4, outcome_model=outcome
    )
    augmented = result.augmented
    assert list(augmented.index) == list(model.design.groups)
    assert {"mean", "sd", "lower", "upper"} <= set(augmented.columns)
    # The same numbers as augmenting the finished result by hand.
    again = hierps.augment(result, outcome)
    np.testing.assert_allclose(augmented["mean"], again["mean"], equal_nan=True)
    assert augmented.attrs["att"]["mean"] == pytest.approx(again.attrs["att"]["mean"])
    with pytest.raises(TypeError, match="outcome_model"):
        quietly(model.sample, draws=20, tune=20, chains=1, outcome_model=3)
