"""CATT pooling without sampling: standard errors by hand, and the tables of pool_catt built
from known posterior draws (the sampler replaced by a stub)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers import make_frame, not_under_mutation

import hierps
import hierps.effects.catt_pooling as pooling
from hierps.arguments import check_sampling
from hierps.exceptions import DataError, HierpsWarning
from hierps.mcmc.summary import summarize_draws


def quietly(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return function(*args, **kwargs)


@pytest.fixture(scope="module")
def study():
    frame, roles = make_frame(seed=4, sizes=(8, 40), n_groups=5, n_unit=2, n_group=1)
    # Group s002 keeps a single treated unit: its treated variance is the pooled one.
    rows = np.flatnonzero(frame["school"] == "s002")
    frame.loc[frame.index[rows[1:]], "z"] = 0
    frame.loc[frame.index[rows[0]], "z"] = 1
    model = hierps.Model(frame, **roles)
    return model, quietly(model.fit_map, sigma_beta=0.5)


def hand_se(design, w, values):
    treated = design.treatment == 1
    codes = design.group_codes
    squares, dof = 0.0, 0
    for j in range(design.n_groups):
        y_t = values[(codes == j) & treated]
        if len(y_t) >= 2:
            squares += np.sum((y_t - y_t.mean()) ** 2)
            dof += len(y_t) - 1
    out = []
    for j in range(design.n_groups):
        t, c = (codes == j) & treated, (codes == j) & ~treated
        y_t, y_c, w_c = values[t], values[c], w[c]
        if t.sum() == 0 or w_c.sum() == 0:
            out.append(np.nan)
            continue
        variance = y_t.var(ddof=1) if t.sum() >= 2 else squares / dof
        mean_c = np.sum(w_c * y_c) / w_c.sum()
        control = np.sum(w_c**2 * (y_c - mean_c) ** 2) / w_c.sum() ** 2
        out.append(np.sqrt(variance / t.sum() + control))
    return np.array(out)


def test_hajek_standard_errors_by_hand(study):
    model, _ = study
    design = model.design
    rng = np.random.default_rng(0)
    w = rng.uniform(0.2, 3.0, design.n_units)
    values = rng.normal(size=design.n_units)
    se = pooling.hajek_standard_errors(design, w, values)
    assert se.name == "se" and se.index.equals(design.groups)
    np.testing.assert_allclose(se.to_numpy(), hand_se(design, w, values), rtol=1e-12)
    # A group without control weight has no standard error.
    w[(design.group_codes == 1) & (design.treatment == 0)] = 0.0
    se = pooling.hajek_standard_errors(design, w, values)
    assert np.isnan(se["s001"]) and np.isfinite(se.drop("s001")).all()


def test_map_standard_errors_use_the_map_weights(study):
    model, fit = study
    design = model.design
    se = pooling.map_standard_errors(fit)
    expected = hand_se(design, fit.weights.to_numpy(), design.outcome)
    np.testing.assert_allclose(se.to_numpy(), expected, rtol=1e-10)
    with pytest.raises(TypeError, match="MapResult"):
        pooling.map_standard_errors(object())


def test_map_standard_errors_need_an_outcome():
    frame, roles = make_frame(seed=5, sizes=(8, 20), n_groups=3, n_unit=1, n_group=0)
    roles.pop("outcome")
    fit = quietly(hierps.Model(frame, **roles).fit_map)
    with pytest.raises(ValueError, match="no outcome column"):
        pooling.map_standard_errors(fit)


# --------------------------------------------------------------------------------------------
# pool_catt with a stub sampler
# --------------------------------------------------------------------------------------------

GROUPS = pd.Index([f"g{j}" for j in range(6)], name="school")


def stub_tree(estimate, covariates, chains=2, draws=400, divergences=0, seed=0):
    """Posterior draws shaped like the pooling model's, centred on the estimates."""
    rng = np.random.default_rng(seed)
    shape = (chains, draws)
    groups, names = list(covariates.index), [str(c) for c in covariates.columns]
    theta = estimate + 0.1 * rng.normal(size=(*shape, len(groups)))
    variables = {
        "mu_tau": (("chain", "draw"), rng.normal(size=shape)),
        "sigma_tau": (("chain", "draw"), np.abs(rng.normal(size=shape))),
        "z": (("chain", "draw", "group"), rng.normal(size=(*shape, len(groups)))),
        "theta": (("chain", "draw", "group"), theta),
        "fitted": (("chain", "draw", "group"), theta - 0.05),
    }
    coords = {"chain": np.arange(chains), "draw": np.arange(draws), "group": groups}
    if names:
        variables["phi"] = (("chain", "draw", "covariate"), rng.normal(size=(*shape, len(names))))
        coords["covariate"] = names
    diverging = np.zeros(shape, dtype=bool)
    diverging[0, :divergences] = True
    stats = xr.Dataset(
        {
            "diverging": (("chain", "draw"), diverging),
            "energy": (("chain", "draw"), rng.normal(size=shape)),
        },
        coords={"chain": coords["chain"], "draw": coords["draw"]},
    )
    return xr.DataTree.from_dict(
        {"posterior": xr.Dataset(variables, coords=coords), "sample_stats": stats}
    )


@pytest.fixture
def stub(monkeypatch):
    calls = []

    def sample(estimate, se, covariates, sampling, sampler, progressbar):
        calls.append(
            dict(
                estimate=estimate,
                se=se,
                covariates=covariates,
                **sampling,
                sampler=sampler,
                progressbar=progressbar,
            )
        )
        return stub_tree(estimate, covariates)

    monkeypatch.setattr(pooling, "_sample", sample)
    return calls


def inputs():
    table = pd.DataFrame(
        {
            "estimate": [1.0, 0.4, np.nan, 2.0, 1.5, 0.2],
            "se": [0.3, 0.5, 0.4, 0.6, 0.0, 0.35],
        },
        index=GROUPS,
    )
    covariates = pd.DataFrame(
        {"v1": [1.0, 2.0, 3.0, 5.0, 8.0, 13.0], "flat": [2.0, 2.0, 7.0, 2.0, 9.0, 2.0]},
        index=GROUPS,
    )
    return table, covariates


def test_pool_catt_passes_the_usable_groups_and_standardized_covariates(stub):
    table, covariates = inputs()
    with pytest.warns(HierpsWarning) as caught:
        result = pooling.pool_catt(
            table,
            covariates,
            draws=30,
            tune=40,
            chains=3,
            random_seed=9,
            sampler="pymc",
            progressbar=False,
        )
    # 'flat' is constant over the pooled groups g0, g1, g3, g5.
    assert [str(w.message) for w in caught if "sampler reports" not in str(w.message)] == [
        "group(s) 'g2' have no CATT estimate (NaN) and are left out of the pooling model",
        "group(s) 'g4' have a missing or non-positive standard error and are left out of the "
        "pooling model",
        "group covariates 'flat' do not vary across the pooled groups and are dropped from the "
        "pooling model",
    ]
    (call,) = stub
    usable = ["g0", "g1", "g3", "g5"]
    np.testing.assert_array_equal(call["estimate"], table.loc[usable, "estimate"])
    np.testing.assert_array_equal(call["se"], table.loc[usable, "se"])
    v1 = covariates.loc[usable, "v1"]
    assert list(call["covariates"].columns) == ["v1"]
    assert list(call["covariates"].index) == usable
    np.testing.assert_allclose(call["covariates"]["v1"], (v1 - v1.mean()) / v1.std(ddof=1))
    assert (call["draws"], call["tune"], call["chains"]) == (30, 40, 3)
    assert (call["random_seed"], call["sampler"], call["progressbar"]) == (9, "pymc", False)
    scaling = result.covariate_scaling
    assert scaling.index.name == "covariate" and list(scaling.index) == ["v1"]
    assert scaling.loc["v1", "center"] == pytest.approx(v1.mean())
    assert scaling.loc["v1", "scale"] == pytest.approx(v1.std(ddof=1))


def test_pool_catt_tables_summarize_the_draws(stub):
    table, covariates = inputs()
    result = quietly(pooling.pool_catt, table, covariates[["v1"]], ci_prob=0.8)
    posterior = result.idata["posterior"]
    usable = ["g0", "g1", "g3", "g5"]
    catt = result.catt
    assert list(catt.index) == list(GROUPS)
    pd.testing.assert_frame_equal(catt[["estimate", "se"]], table)
    theta = summarize_draws(posterior["theta"], 0.8).set_axis(pd.Index(usable, name="school"))
    for column in theta.columns:
        np.testing.assert_allclose(catt.loc[usable, column], theta[column], rtol=1e-12)
    np.testing.assert_allclose(
        catt.loc[usable, "fitted"], posterior["fitted"].mean(("chain", "draw")), rtol=1e-12
    )
    assert catt.loc[["g2", "g4"], ["mean", "sd", "lower", "upper", "fitted"]].isna().all().all()
    moderators = result.moderators
    assert moderators.index.name == "parameter"
    assert list(moderators.index) == ["mu_tau", "sigma_tau", "v1"]
    for name, draws in [
        ("mu_tau", posterior["mu_tau"]),
        ("sigma_tau", posterior["sigma_tau"]),
        ("v1", posterior["phi"]),
    ]:
        expected = summarize_draws(draws, 0.8).iloc[0]
        np.testing.assert_allclose(moderators.loc[name, expected.index], expected, rtol=1e-12)
    assert result.ci_prob == 0.8


def test_pool_catt_without_moderators_and_bad_settings(stub):
    table, _ = inputs()
    result = quietly(pooling.pool_catt, table)
    assert list(result.moderators.index) == ["mu_tau", "sigma_tau"]
    assert result.covariate_scaling.empty
    assert stub[0]["covariates"].shape == (4, 0)
    for bad in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="ci_prob"):
            pooling.pool_catt(table, ci_prob=bad)
    with pytest.raises(DataError, match=r"at least two groups.*1 remain"):
        quietly(pooling.pool_catt, table.assign(se=[0.3, 0.0, 0.1, -1.0, np.nan, 0.0]))
    clash = pd.DataFrame({"mu_tau": np.arange(6.0)}, index=GROUPS)
    with pytest.raises(DataError, match="may not be named 'mu_tau'"):
        quietly(pooling.pool_catt, table, clash)


def test_sampling_problems_of_the_pooling_model_are_reported(monkeypatch):
    table, covariates = inputs()

    def sample(estimate, se, covariates, *args):
        return stub_tree(estimate, covariates, divergences=5)

    monkeypatch.setattr(pooling, "_sample", sample)
    with pytest.warns(HierpsWarning, match="pooling model's sampler reports: .*diverg"):
        pooling.pool_catt(table.dropna().drop("g4"), covariates[["v1"]].drop(["g2", "g4"]))


def test_standardize_keeps_single_group_scale_and_drops_constants():
    frame = pd.DataFrame({"a": [1.0, 3.0, 5.0], "b": [4.0, 4.0, 4.0]}, index=["x", "y", "z"])
    with pytest.warns(HierpsWarning, match="'b'"):
        standardized, scaling = pooling._standardize(frame)
    assert list(standardized.columns) == ["a"]
    np.testing.assert_allclose(standardized["a"], [-1.0, 0.0, 1.0])
    assert scaling.loc["a", "scale"] == pytest.approx(2.0)
    one = pd.DataFrame({"a": [2.0]}, index=["x"])
    with pytest.warns(HierpsWarning, match="'a'"):
        standardized, scaling = pooling._standardize(one)
    assert standardized.shape == (1, 0)


def test_usable_groups_need_a_finite_estimate_and_a_positive_se():
    table = pd.DataFrame(
        {
            "estimate": [1.0, np.nan, 2.0, 3.0, np.inf, 4.0],
            "se": [0.1, 0.1, 0.0, np.nan, 0.2, 1e-9],
        },
        index=list("abcdef"),
    )
    with pytest.warns(HierpsWarning) as caught:
        usable = pooling._usable_groups(table)
    np.testing.assert_array_equal(usable, [True, False, False, False, False, True])
    assert len(caught) == 2
    assert "'b', 'e'" in str(caught[0].message) and "'c', 'd'" in str(caught[1].message)


# --------------------------------------------------------------------------------------------
# Inputs, messages and the sampler call
# --------------------------------------------------------------------------------------------


def test_pool_catt_defaults_reach_the_sampler(stub):
    table, _ = inputs()
    quietly(pooling.pool_catt, table)
    (call,) = stub
    assert (call["draws"], call["tune"], call["chains"]) == (1000, 1000, 2)
    assert (call["random_seed"], call["sampler"], call["progressbar"]) == (None, "nutpie", None)


def test_pool_catt_checks_its_settings_exactly(stub):
    table, _ = inputs()
    with pytest.raises(ValueError, match=r"^sampler='numpyro' is not one of 'nutpie', 'pymc'$"):
        pooling.pool_catt(table, sampler="numpyro")
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match=rf"^ci_prob={bad!r} must be between 0 and 1$"):
            pooling.pool_catt(table, ci_prob=bad)
    # Two usable groups are enough.
    two = table.loc[["g0", "g1"]]
    result = pooling.pool_catt(two)
    assert list(result.catt.index) == ["g0", "g1"] and not stub[-1]["covariates"].shape[1]


@not_under_mutation
def test_warnings_point_at_the_caller(stub):
    table, covariates = inputs()
    with pytest.warns(HierpsWarning) as caught:
        pooling.pool_catt(table, covariates)
    inputs_warnings = [w for w in caught if "sampler reports" not in str(w.message)]
    assert len(inputs_warnings) == 3, [str(w.message) for w in caught]
    assert all(w.filename == __file__ for w in inputs_warnings)
    assert all(w.category is HierpsWarning for w in inputs_warnings)


def test_estimates_and_covariates_are_read_as_floats():
    table = pd.DataFrame({"estimate": [1, 2, 3], "se": [1, 1, 2]}, index=["a", "b", "c"])
    covariates = pd.DataFrame({"v": [1, 2, 5]}, index=["c", "b", "a"])
    read, read_covariates = pooling.pooling_inputs(table, covariates)
    assert (read.dtypes == np.float64).all() and (read_covariates.dtypes == np.float64).all()
    assert list(read_covariates.index) == ["a", "b", "c"]
    np.testing.assert_array_equal(read_covariates["v"], [5.0, 2.0, 1.0])
    posterior = SimpleNamespace(design=None, catt=pd.DataFrame({"mean": [1], "sd": [1]}))
    with pytest.raises(TypeError, match="must be a posterior result"):
        pooling.pooling_inputs(posterior, None)


def test_a_posterior_catt_with_just_mean_and_sd_is_accepted(study):
    model, _ = study
    design = model.design
    catt = pd.DataFrame({"mean": np.arange(5), "sd": np.ones(5, dtype=int)}, index=design.groups)
    table, _ = pooling.pooling_inputs(SimpleNamespace(design=design, catt=catt), None)
    assert (table.dtypes == np.float64).all()
    np.testing.assert_array_equal(table["estimate"], np.arange(5.0))


def test_input_messages(study):
    _, fit = study
    duplicated = pd.DataFrame({"estimate": [1.0, 2.0], "se": [0.5, 0.5]}, index=["a", "a"])
    with pytest.raises(
        DataError, match=r"^the group index of the estimates has duplicated labels$"
    ):
        pooling.pooling_inputs(duplicated, None)
    estimates = pd.DataFrame({"estimate": [1.0, 2.0], "se": [0.5, 0.5]}, index=["a", "b"])
    with pytest.raises(TypeError, match=r"there is no design to look names up in\)$"):
        pooling.pooling_inputs(estimates, ["v1"])
    with pytest.raises(DataError, match=r"it lacks 'estimate', 'se'$"):
        pooling.pooling_inputs(estimates[[]], None)
    missing = pd.DataFrame({"v": [1.0, np.nan]}, index=["a", "b"])
    with pytest.raises(DataError, match=r"^group covariate 'v' is missing for group\(s\) 'b'$"):
        pooling.pooling_inputs(estimates, missing)
    with pytest.raises(
        DataError,
        match=r"^'zzz' is not a group covariate of the design \(group covariates: 'v1'\)$",
    ):
        pooling.pooling_inputs(fit, ["zzz"])
    with pytest.raises(DataError, match=r"\(group covariates: 'v1'\); did you mean 'v1'\?$"):
        pooling.pooling_inputs(fit, ["V1"])
    frame, roles = make_frame(seed=5, sizes=(8, 20), n_groups=3, n_unit=1, n_group=0)
    bare = quietly(hierps.Model(frame, **roles).fit_map)
    with pytest.raises(DataError, match=r"\(group covariates: \(none\)\)$"):
        pooling.pooling_inputs(bare, ["v1"])
    with pytest.raises(TypeError, match=r"^result must be a MapResult, not object$"):
        pooling.map_standard_errors(object())
    roles.pop("outcome")
    no_outcome = quietly(hierps.Model(frame, **roles).fit_map)
    with pytest.raises(
        ValueError, match=r"^the model has no outcome column: give outcome= to hierps\.Model$"
    ):
        pooling.map_standard_errors(no_outcome)


def test_standardize_two_groups_and_small_spreads():
    frame = pd.DataFrame({"a": [1.0, 3.0], "small": [0.1, 0.3]}, index=["x", "y"])
    standardized, scaling = pooling._standardize(frame)
    np.testing.assert_allclose(standardized["a"], [-1 / np.sqrt(2), 1 / np.sqrt(2)])
    np.testing.assert_allclose(standardized["small"], [-1 / np.sqrt(2), 1 / np.sqrt(2)])
    np.testing.assert_allclose(scaling["scale"], [np.sqrt(2), 0.1 * np.sqrt(2)])


def test_hajek_pooled_variance_counts_groups_of_two_treated():
    # Treated per group: 1, 2, 3 and 0; control weights summing below 1 in the first group.
    codes = np.repeat(np.arange(4), [4, 5, 6, 3])
    treatment = np.zeros(18, dtype=int)
    treatment[[0, 4, 5, 9, 10, 11]] = 1
    rng = np.random.default_rng(3)
    values = rng.normal(size=18)
    w = rng.uniform(0.05, 0.3, 18)
    design = SimpleNamespace(
        treatment=treatment, group_codes=codes, n_groups=4, groups=pd.Index(list("abcd"))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        se = pooling.hajek_standard_errors(design, w, values)
    assert np.isnan(se["d"])  # no treated
    design.n_units = 18
    np.testing.assert_allclose(se.to_numpy()[:3], hand_se(design, w, values)[:3], rtol=1e-12)


def test_only_the_models_parameters_are_judged(monkeypatch):
    # The raw offsets z are not judged: chains that disagree on z alone raise no warning.
    table, covariates = inputs()

    def sample(estimate, se, covariates, *args):
        tree = stub_tree(estimate, covariates)
        posterior = tree["posterior"].to_dataset()
        z = posterior["z"] + np.array([0.0, 5.0])[:, None, None]
        tree["posterior"] = posterior.assign(z=z)
        return tree

    monkeypatch.setattr(pooling, "_sample", sample)
    usable = table.drop(["g2", "g4"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pooling.pool_catt(usable, covariates[["v1"]].loc[usable.index])


def test_the_sampler_gets_the_pooling_model_and_the_settings(monkeypatch):
    import pymc as pm

    seen = {}

    def fake_sample(**kwargs):
        model = pm.modelcontext(None)
        seen.update(kwargs)
        seen["data"] = model.rvs_to_values[model["estimate"]].data
        seen["coords"] = dict(model.coords)
        return "tree"

    monkeypatch.setattr(pm, "sample", fake_sample)
    estimate, se = np.array([1.0, 2.0, 0.5]), np.array([0.3, 0.4, 0.5])
    covariates = pd.DataFrame({"v": [-1.0, 0.0, 1.0]}, index=["a", "b", "c"])
    sampling = check_sampling(11, 12, 3, 13)
    out = pooling._sample(estimate, se, covariates, sampling, "pymc", False)
    assert out == "tree"
    assert {k: seen[k] for k in ("draws", "tune", "chains", "random_seed")} == dict(
        draws=11, tune=12, chains=3, random_seed=13
    )
    assert seen["nuts_sampler"] == "pymc" and seen["progressbar"] is False
    np.testing.assert_array_equal(seen["data"], estimate)
    assert seen["coords"]["group"] == ("a", "b", "c") and seen["coords"]["covariate"] == ("v",)


def test_pooling_model_dims():
    covariates = pd.DataFrame({"v": [-1.0, 0.0, 1.0]}, index=["a", "b", "c"])
    model = pooling._pooling_model(np.array([1.0, 2.0, 0.5]), np.ones(3), covariates)
    dims = model.named_vars_to_dims
    assert dims["v"] == ("group", "covariate") and dims["phi"] == ("covariate",)
    for name in ("fitted", "z", "theta", "estimate"):
        assert dims[name] == ("group",), name
    assert "mu_tau" not in dims and "sigma_tau" not in dims


def _two_arm_by_hand(fit):
    """Each arm's Σ a² (Y − Ȳ_a)² / (Σ a)² per group, the arm that is not reweighted with
    its base weights, the factor m / (m − 1), and the pooled variance where it has one unit."""
    d = fit.design
    y, codes, base = d.outcome, d.group_codes, d.unit_weights
    weights = fit.weights.to_numpy()
    reweighted = {"att": {0}, "atc": {1}, "ate": {0, 1}}[fit.estimand]
    variance = np.zeros(d.n_groups)
    estimable = np.ones(d.n_groups, dtype=bool)
    for arm in (0, 1):
        parts, spreads, dofs, counts = [], [], [], []
        for j in range(d.n_groups):
            rows = (codes == j) & (d.treatment == arm)
            a = (weights if arm in reweighted else base)[rows]
            m = rows.sum()
            if m == 0:
                estimable[j] = False
                parts.append(np.nan), spreads.append(0.0), dofs.append(0.0), counts.append(0)
                continue
            mean = a @ y[rows] / a.sum()
            spread = a**2 @ (y[rows] - mean) ** 2
            parts.append(spread / a.sum() ** 2)
            spreads.append(spread)
            dofs.append((a**2).sum() * (m - 1) / m)
            counts.append(m)
        parts, counts = np.array(parts), np.array(counts)
        if arm not in reweighted:
            several = counts >= 2
            pooled = np.sum(np.array(spreads)[several]) / np.sum(np.array(dofs)[several])
            for j in range(d.n_groups):
                rows = (codes == j) & (d.treatment == arm)
                if counts[j] >= 2:
                    parts[j] *= counts[j] / (counts[j] - 1)
                elif counts[j] == 1:
                    parts[j] = pooled * base[rows][0] ** 2 / base[rows][0] ** 2
        variance += np.nan_to_num(parts)
    return np.where(estimable, np.sqrt(variance), np.nan)


@pytest.mark.parametrize("estimand", ["att", "atc", "ate"])
def test_two_arm_standard_errors_by_hand(estimand):
    frame, roles = make_frame(seed=71, sizes=(12, 40), n_groups=6, n_unit=2, n_group=1)
    frame["base"] = np.random.default_rng(71).uniform(0.5, 2.0, len(frame))
    s001 = np.flatnonzero(frame["school"] == "s001")
    frame.loc[s001, "z"] = 0
    frame.loc[s001[0], "z"] = 1  # one treated unit: the pooled variance of the treated
    s002 = np.flatnonzero(frame["school"] == "s002")
    frame.loc[s002, "z"] = 1
    frame.loc[s002[0], "z"] = 0  # one control unit
    frame.loc[frame["school"] == "s003", "z"] = 1  # no controls: no standard error
    s004 = np.flatnonzero(frame["school"] == "s004")
    frame.loc[s004, "z"] = 0
    frame.loc[s004[:2], "z"] = 1  # two treated units
    s005 = np.flatnonzero(frame["school"] == "s005")
    frame.loc[s005, "z"] = 1
    frame.loc[s005[:2], "z"] = 0  # two control units
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        fit = hierps.Model(frame, weights="base", **roles).fit_map(
            estimand=estimand, sigma_beta=0.5
        )
    with np.errstate(all="raise"):
        se = pooling.map_standard_errors(fit)
    assert se.name == "se" and se.index.equals(fit.design.groups)
    np.testing.assert_allclose(se.to_numpy(), _two_arm_by_hand(fit), rtol=1e-10)
    assert np.isnan(se["s003"]) and np.isfinite(se.drop("s003")).all()
