"""Posterior mode: per-draw estimands by hand, agreement with Bambi, bad input, compare, netCDF.

One NUTS run of a small study (6 groups × ~40 units) is shared by most tests; the estimands
of other uncertainty modes and estimands are recomputed from it with ``from_idata``.
"""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers import make_frame

import hierps
from hierps.effects.comparison import compare
from hierps.exceptions import DataError, HierpsWarning
from hierps.mcmc.diagnosis import sampling_problems
from hierps.posterior.draws import from_idata
from hierps.posterior.result import PosteriorResult

SEED = 11
DRAWS = {"chain": [0, 0, 1, 1], "draw": [0, 137, 42, 299]}


FRAME, ROLES = make_frame(seed=3, sizes=(30, 50), n_groups=6, n_unit=2, n_group=1)


@pytest.fixture(scope="module")
def model():
    return hierps.Model(FRAME, **ROLES)


@pytest.fixture(scope="module")
def fit(model):
    """The shared NUTS run (Bayesian bootstrap, every draw's weights stored)."""
    with warnings.catch_warnings():
        # Short chains may trip the convergence checks; they are tested on their own below.
        warnings.simplefilter("ignore", HierpsWarning)
        return model.sample(
            draws=300, tune=500, chains=2, random_seed=SEED, store_weights=True, progressbar=False
        )


@pytest.fixture(scope="module")
def propensity_fit(model, fit):
    return from_idata(model.design, fit.idata, uncertainty="propensity", store_weights=True)


def hand_eta(design, posterior, chain, draw):
    """η of every unit from the raw parameters of one draw (non-centred, docs/math.md §3)."""
    p = {name: posterior[name].sel(chain=chain, draw=draw).to_numpy() for name in posterior}
    alpha = p["intercept"] + design.group_matrix @ p["gamma"] + p["sigma_alpha"] * p["alpha_offset"]
    beta = p["mu_beta"] + p["sigma_beta"] * p["beta_offset"]  # every slope varies here
    codes = design.group_codes
    return alpha[codes] + np.einsum("nk,nk->n", design.unit_matrix, beta[codes])


def hand_effects(design, treated_weights, control_weights, estimand="att"):
    """Hájek effects by explicit loops over groups."""
    y, t, codes = design.outcome, design.treatment, design.group_codes
    effects, group_weight = [], []
    for j in range(design.n_groups):
        treated = (codes == j) & (t == 1)
        control = (codes == j) & (t == 0)
        effects.append(
            np.sum(treated_weights[treated] * y[treated]) / np.sum(treated_weights[treated])
            - np.sum(control_weights[control] * y[control]) / np.sum(control_weights[control])
        )
        # ATT: the (reweighted) treated count of the group; ATE: the group's size.
        group_weight.append(
            np.sum(treated_weights[treated]) if estimand == "att" else np.sum(codes == j)
        )
    effects, group_weight = np.array(effects), np.array(group_weight)
    return effects, np.sum(effects * group_weight) / np.sum(group_weight)


# --------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_result_holds_sampler_and_derived_groups(model, fit):
    assert isinstance(fit, PosteriorResult)
    assert {"posterior", "sample_stats", "estimands", "weights"} <= set(fit.idata.children)
    estimands = fit.idata["estimands"]
    assert estimands["catt"].dims == ("chain", "draw", "group")
    assert estimands["att"].dims == ("chain", "draw")
    assert list(estimands["group"].values) == list(model.design.groups)
    assert estimands.attrs["estimand"] == "att"
    assert estimands.attrs["uncertainty"] == "bayesian_bootstrap"
    assert fit.idata["weights"]["weight"].dims == ("obs",)
    weights = fit.weights
    assert weights.index.equals(model.data.index)
    assert (weights[model.data["z"] == 1] == 1).all() and (weights > 0).all()

    catt = fit.catt
    columns = ["estimate", "mean", "sd", "lower", "upper", "ess_bulk", "ess_tail", "r_hat"]
    assert list(catt.columns) == [*columns, "n_treated", "n_control"]
    # The point estimate and the counts carry the names of MAP results' CATT tables.
    assert (catt["estimate"] == catt["mean"]).all()
    assert {"estimate", "n_treated", "n_control"} <= set(model.fit_map().catt.columns)
    assert catt.index.equals(model.design.groups)
    assert (catt["lower"] < catt["mean"]).all() and (catt["mean"] < catt["upper"]).all()
    att = fit.att
    assert list(att.columns) == columns and list(att.index) == ["att"]
    # The summary is of the stored draws: 90 % equal-tailed interval.
    draws = estimands["att"].to_numpy().ravel()
    assert att.loc["att", "mean"] == pytest.approx(draws.mean(), rel=1e-12)
    assert att.loc["att", "lower"] == pytest.approx(np.quantile(draws, 0.05), rel=1e-12)
    assert att.loc["att", "upper"] == pytest.approx(np.quantile(draws, 0.95), rel=1e-12)
    assert "ATT" in repr(fit)


@pytest.mark.slow
def test_store_weights_false_keeps_only_the_posterior_mean(model, fit):
    light = from_idata(model.design, fit.idata, uncertainty="propensity")
    assert set(light.idata["weights"].data_vars) == {"weight"}
    np.testing.assert_allclose(light.weights, fit.weights, rtol=1e-12)


@pytest.mark.slow
def test_from_idata_refuses_a_posterior_of_other_data(model, fit):
    fewer = hierps.Model(model.data.iloc[:-1], **ROLES)
    with pytest.raises(ValueError, match="belongs to other data"):
        from_idata(fewer.design, fit.idata)
    other_groups = model.data[model.data["school"] != "s005"]
    with pytest.raises(ValueError, match="groups differ"):
        from_idata(hierps.Model(other_groups, **ROLES).design, fit.idata)


# --------------------------------------------------------------------------------------------
# Per-draw estimands against hand computations
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_propensity_estimands_equal_hand_computation(model, propensity_fit):
    design = model.design
    posterior = propensity_fit.idata["posterior"].to_dataset()
    estimands = propensity_fit.idata["estimands"]
    treated = design.treatment == 1
    for chain, draw in zip(DRAWS["chain"], DRAWS["draw"], strict=True):
        eta = hand_eta(design, posterior, chain, draw)
        odds = np.exp(eta)
        catt, att = hand_effects(design, np.ones(design.n_units), odds)
        selected = dict(chain=chain, draw=draw)
        np.testing.assert_allclose(estimands["catt"].sel(selected), catt, rtol=1e-10)
        assert float(estimands["att"].sel(selected)) == pytest.approx(att, rel=1e-10)
        stored = propensity_fit.idata["weights"]["weight_draws"].sel(selected).to_numpy()
        np.testing.assert_allclose(stored, np.where(treated, 1.0, odds), rtol=1e-10)
    # Posterior-mean weights: the mean over all draws of the odds, computed by hand.
    alpha = posterior["alpha"].stack(sample=("chain", "draw")).transpose("sample", ...).to_numpy()
    beta = posterior["beta"].stack(sample=("chain", "draw")).transpose("sample", ...).to_numpy()
    codes = design.group_codes
    eta = alpha[:, codes] + np.einsum("snk,nk->sn", beta[:, codes], design.unit_matrix)
    expected = np.where(treated, 1.0, np.exp(eta).mean(axis=0))
    np.testing.assert_allclose(propensity_fit.weights, expected, rtol=1e-10)


@pytest.mark.slow
def test_bootstrap_weights_sum_to_group_sizes_and_multiply_both_arms(model, fit):
    design = model.design
    posterior = fit.idata["posterior"].to_dataset()
    estimands = fit.idata["estimands"]
    bootstrap = fit.idata["weights"]["bootstrap_weight"]
    assert bootstrap.dims == ("chain", "draw", "obs")
    assert (bootstrap > 0).all()
    sums = np.stack(
        [bootstrap.isel(obs=np.flatnonzero(design.group_codes == j)).sum("obs") for j in range(6)],
        axis=-1,
    )
    np.testing.assert_allclose(sums, np.broadcast_to(design.units_per_group, sums.shape), 1e-12)
    # Different draws get different bootstrap weights.
    assert not np.allclose(bootstrap.isel(chain=0, draw=0), bootstrap.isel(chain=0, draw=1))
    treated = design.treatment == 1
    for chain, draw in zip(DRAWS["chain"], DRAWS["draw"], strict=True):
        selected = dict(chain=chain, draw=draw)
        b = bootstrap.sel(selected).to_numpy()
        odds = np.exp(hand_eta(design, posterior, chain, draw))
        catt, att = hand_effects(design, b, b * odds)
        np.testing.assert_allclose(estimands["catt"].sel(selected), catt, rtol=1e-10)
        assert float(estimands["att"].sel(selected)) == pytest.approx(att, rel=1e-10)
        treated_sums = np.bincount(design.group_codes[treated], weights=b[treated], minlength=6)
        np.testing.assert_allclose(estimands["treated_weight"].sel(selected), treated_sums)


@pytest.mark.slow
def test_bootstrap_adds_outcome_noise_and_is_reproducible(model, fit, propensity_fit):
    # Outcome noise widens every interval beyond the propensity-only one.
    assert fit.att.loc["att", "sd"] > 1.2 * propensity_fit.att.loc["att", "sd"]
    assert (fit.catt["sd"] > propensity_fit.catt["sd"]).all()
    # The seed given to sample() repeats its bootstrap; another seed does not.
    again = from_idata(model.design, fit.idata, random_seed=SEED)
    np.testing.assert_array_equal(again.idata["estimands"]["catt"], fit.idata["estimands"]["catt"])
    other = from_idata(model.design, fit.idata, random_seed=SEED + 1)
    assert not np.allclose(other.idata["estimands"]["att"], fit.idata["estimands"]["att"])
    assert fit.idata["estimands"].attrs["random_seed"] == str(SEED)


@pytest.mark.slow
def test_ate_reweights_both_arms_to_the_whole_sample(model, fit):
    design = model.design
    result = from_idata(model.design, fit.idata, uncertainty="propensity", estimand="ate")
    estimands = result.idata["estimands"]
    assert {"cate", "ate"} <= set(estimands.data_vars) and "catt" not in estimands
    posterior = fit.idata["posterior"].to_dataset()
    for chain, draw in zip(DRAWS["chain"], DRAWS["draw"], strict=True):
        probability = 1 / (1 + np.exp(-hand_eta(design, posterior, chain, draw)))
        cate, ate = hand_effects(design, 1 / probability, 1 / (1 - probability), "ate")
        selected = dict(chain=chain, draw=draw)
        np.testing.assert_allclose(estimands["cate"].sel(selected), cate, rtol=1e-10)
        assert float(estimands["ate"].sel(selected)) == pytest.approx(ate, rel=1e-10)
    assert list(result.ate.index) == ["ate"] and result.cate.index.equals(design.groups)
    with pytest.raises(ValueError, match=r"\.cate"):
        _ = result.catt
    with pytest.raises(ValueError, match=r"\.catt"):
        _ = fit.ate


# --------------------------------------------------------------------------------------------
# Agreement with an independent implementation (Bambi)
# --------------------------------------------------------------------------------------------


# Bambi 0.21 trips a pandas 3 deprecation of its own; not ours to fix.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")
def test_bernoulli_posterior_agrees_with_bambi():
    bmb = pytest.importorskip("bambi")
    frame, _ = make_frame(seed=8, sizes=(30, 60), n_groups=6, n_unit=1, n_group=0)
    model = hierps.Model(frame, treatment="z", group="school", unit_covariates=["x1"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        ours = model.sample(
            draws=1000, tune=1000, chains=2, random_seed=1, uncertainty="propensity"
        ).idata["posterior"]
    # Bambi sees the same standardized x1; its priors are set to ours, and centring of
    # predictors is off so that its intercept prior is ours too.
    data = model.design.unit_frame().assign(z=frame["z"], school=frame["school"])
    hyperprior = bmb.Prior("HalfNormal", sigma=1.0)
    priors = {
        "Intercept": bmb.Prior("Normal", mu=0.0, sigma=2.5),
        "x1": bmb.Prior("Normal", mu=0.0, sigma=1.0),
        "1|school": bmb.Prior("Normal", mu=0.0, sigma=hyperprior),
        "x1|school": bmb.Prior("Normal", mu=0.0, sigma=hyperprior),
    }
    reference = bmb.Model(
        "z ~ 1 + x1 + (1 + x1 | school)",
        data,
        family="bernoulli",
        priors=priors,
        center_predictors=False,
        auto_scale=False,
        noncentered=True,
    )
    theirs = reference.fit(
        draws=1000, tune=1000, chains=2, random_seed=2, inference_method="nutpie", progressbar=False
    )["posterior"]
    theirs = theirs.to_dataset().rename({"school__factor_dim": "group"})
    assert [str(g) for g in theirs["group"].values] == [str(g) for g in ours["group"].values]
    theirs = theirs.assign_coords(group=ours["group"].values)
    pairs = {
        "alpha": (ours["alpha"], theirs["Intercept"] + theirs["1|school"]),
        "beta": (
            ours["beta"].sel(unit_covariate="x1", drop=True),
            theirs["x1"] + theirs["x1|school"],
        ),
        "sigma_alpha": (ours["sigma_alpha"], theirs["1|school_sigma"]),
    }
    for name, (a, b) in pairs.items():
        difference = np.abs(a.mean(("chain", "draw")) - b.mean(("chain", "draw")))
        mcse = np.sqrt(
            az.mcse(a.to_dataset(name="v"))["v"] ** 2 + az.mcse(b.to_dataset(name="v"))["v"] ** 2
        )
        assert (difference < 3 * mcse).all(), (
            f"{name}: {difference.values} vs 3 MCSE {3 * mcse.values}"
        )


# --------------------------------------------------------------------------------------------
# Bad input and defined results
# --------------------------------------------------------------------------------------------


def test_missing_outcome_is_an_error_naming_rows():
    frame, roles = make_frame(seed=4, sizes=(10, 20), n_groups=3, n_unit=1, n_group=0)
    frame.loc[[3, 7], "y"] = np.nan
    with pytest.raises(DataError, match=r"outcome column 'y' has missing values in rows 3, 7"):
        hierps.Model(frame, **roles)


def test_non_numeric_outcome_is_an_error():
    frame, roles = make_frame(seed=4, sizes=(10, 20), n_groups=3, n_unit=1, n_group=0)
    frame["y"] = frame["y"].round(1).astype(str)
    with pytest.raises(DataError, match=r"outcome column 'y' must be numeric"):
        hierps.Model(frame, **roles)


def test_arguments_are_checked_before_sampling(model):
    with pytest.raises(ValueError, match="sampler='stan' is not one of"):
        model.sample(sampler="stan")
    with pytest.raises(ValueError, match="uncertainty='bootstrap' is not one of"):
        model.sample(uncertainty="bootstrap")
    with pytest.raises(ValueError, match="estimand='atx'"):
        model.sample(estimand="atx")
    with pytest.raises(ValueError, match="calibrated loss targets the ATT"):
        model.sample(loss="calibrated", estimand="ate")
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'sigma_betta'"):
        model.sample(sigma_betta=1.0)
    with pytest.raises(ValueError, match="target_accept"):
        model.sample(target_accept=1.5)
    with pytest.raises(TypeError, match="draws must be an integer"):
        model.sample(draws=10.5)


def test_numpyro_without_numpyro_is_a_clear_import_error(model):
    try:
        import numpyro  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"sampler='numpyro' needs .*numpyro"):
            model.sample(sampler="numpyro")
    else:
        pytest.skip("numpyro is installed")


@pytest.fixture(scope="module")
def one_arm_fit():
    """A study whose group s001 has treated units only."""
    frame, roles = make_frame(seed=32, sizes=(15, 30), n_groups=4, n_unit=2, n_group=0)
    frame.loc[frame["school"] == "s001", "z"] = 1
    model = hierps.Model(frame, **roles)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = model.sample(
            draws=200, tune=300, chains=2, random_seed=3, uncertainty="propensity"
        )
    return model, result, [str(w.message) for w in caught if w.category is HierpsWarning]


@pytest.mark.slow
def test_group_without_controls_has_nan_catt_and_leaves_the_att(one_arm_fit):
    model, result, messages = one_arm_fit
    n_left_out = int((model.data["school"] == "s001").sum())
    assert any(
        "'s001'" in m and f"the ATT excludes them — {n_left_out} of " in m for m in messages
    ), messages
    catt = result.catt
    assert catt.loc["s001"].drop(["n_treated", "n_control"]).isna().all()
    assert catt.drop(index="s001")["mean"].notna().all()
    # Per draw, the ATT is the treated-weighted mean of the other groups' CATTs.
    estimands = result.idata["estimands"]
    others = estimands["catt"].drop_sel(group="s001")
    n_treated = xr.DataArray(
        catt.drop(index="s001")["n_treated"].to_numpy(), dims="group", coords=others["group"].coords
    )
    expected = (others * n_treated).sum("group") / n_treated.sum()
    np.testing.assert_allclose(estimands["att"], expected, rtol=1e-12)
    assert np.isfinite(result.att.loc["att", "mean"])


@pytest.mark.slow
def test_group_without_controls_is_left_out_of_the_ate_with_a_count(one_arm_fit):
    model, result, _ = one_arm_fit
    n_units = int((model.data["school"] == "s001").sum())
    with pytest.warns(HierpsWarning, match=rf"'s001'.*excludes them — {n_units} of \d+ unit\(s\)"):
        ate = from_idata(model.design, result.idata, uncertainty="propensity", estimand="ate")
    assert np.isnan(ate.cate.loc["s001", "mean"]) and np.isfinite(ate.ate.loc["ate", "mean"])


@pytest.mark.slow
def test_calibrated_loss_without_outcome_samples_with_the_pymc_sampler():
    """No outcome is needed to sample; weights are exp(η) of the generalized posterior."""
    frame, roles = make_frame(seed=5, sizes=(20, 40), n_groups=4, n_unit=1, n_group=0)
    del roles["outcome"]
    model = hierps.Model(frame, **roles)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        result = model.sample(
            draws=200,
            tune=300,
            chains=2,
            random_seed=4,
            sampler="pymc",
            loss="calibrated",
            sigma_alpha=1.0,
            sigma_beta=0.5,
            store_weights=True,
        )
    assert result.idata.attrs["hierps_loss"] == "calibrated"
    assert "calibrated_loss" not in result.idata["posterior"]
    assert "estimands" not in result.idata.children
    # Without an outcome no bootstrap is drawn, so only the propensity weights are stored.
    assert set(result.idata["weights"].data_vars) == {"weight", "weight_draws"}
    posterior = result.idata["posterior"].to_dataset()
    alpha = posterior["alpha"].stack(s=("chain", "draw")).transpose("s", ...).to_numpy()
    beta = posterior["beta"].stack(s=("chain", "draw")).transpose("s", ...).to_numpy()
    d = model.design
    eta = alpha[:, d.group_codes] + beta[:, d.group_codes, 0] * d.unit_matrix[:, 0]
    expected = np.where(d.treatment == 1, 1.0, np.exp(eta).mean(axis=0))
    np.testing.assert_allclose(result.weights, expected, rtol=1e-10)
    with pytest.raises(ValueError, match="no outcome column"):
        _ = result.catt
    assert "no outcome" in repr(result)


# --------------------------------------------------------------------------------------------
# Sampling diagnostics
# --------------------------------------------------------------------------------------------


def test_sampling_problems_name_parameters_and_fixes():
    rng = np.random.default_rng(0)
    chains, draws = 2, 500
    good = rng.normal(size=(chains, draws))
    stuck = good + np.array([[0.0], [3.0]])  # chains that disagree: R-hat far above 1.01
    sticky = np.cumsum(rng.normal(size=(chains, draws)), axis=1)  # tiny ESS
    diverging = np.zeros((chains, draws), dtype=bool)
    diverging[0, :7] = True
    energy = np.cumsum(rng.normal(size=(chains, draws)), axis=1)  # E-BFMI ≈ 0
    tree = xr.DataTree.from_dict(
        {
            "posterior": xr.Dataset(
                {
                    "intercept": (("chain", "draw"), good),
                    "sigma_alpha": (("chain", "draw"), stuck),
                    "alpha": (("chain", "draw", "group"), np.stack([good, sticky], axis=-1)),
                },
                coords={"group": ["a", "b"]},
            ),
            "sample_stats": xr.Dataset(
                {"diverging": (("chain", "draw"), diverging), "energy": (("chain", "draw"), energy)}
            ),
        }
    )
    problems = sampling_problems(tree)
    assert len(problems) == 4
    divergences, rhat, ess, bfmi = problems
    assert divergences.startswith("7 divergent transitions") and "target_accept" in divergences
    assert "sigma_alpha" in rhat and "alpha[b]" in rhat and "intercept" not in rhat
    assert "tune=" in rhat
    assert "bulk ESS < 200" in ess and "alpha[b]" in ess and "alpha[a]" not in ess
    assert "E-BFMI < 0.3" in bfmi and "chain(s) 0, 1" in bfmi
    healthy = tree.copy()
    healthy["posterior"] = xr.Dataset({"intercept": (("chain", "draw"), good)})
    healthy["sample_stats"] = xr.Dataset(
        {
            "diverging": (("chain", "draw"), np.zeros_like(diverging)),
            "energy": (("chain", "draw"), rng.normal(size=(chains, draws))),
        }
    )
    assert sampling_problems(healthy) == []


# --------------------------------------------------------------------------------------------
# compare() and netCDF
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_compare_table_and_weight_correlation(model, fit):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        map_fit = model.fit_map()
    table = compare(map_fit, fit)
    assert list(table.columns) == ["map", "posterior_mean", "lower", "upper", "map_in_interval"]
    assert table.index.equals(model.design.groups)
    np.testing.assert_allclose(table["map"], map_fit.catt["estimate"])
    np.testing.assert_allclose(table["posterior_mean"], fit.catt["mean"])
    inside = (fit.catt["lower"] <= map_fit.catt["estimate"]) & (
        map_fit.catt["estimate"] <= fit.catt["upper"]
    )
    assert table["map_in_interval"].dtype == "boolean"
    assert table["map_in_interval"].tolist() == inside.tolist()
    controls = model.design.treatment == 0
    expected = np.corrcoef(map_fit.weights[controls], fit.weights[controls])[0, 1]
    assert table.attrs["weight_correlation"] == pytest.approx(expected, rel=1e-12)
    # MAP and posterior-mean weights of one model should largely agree.
    assert table.attrs["weight_correlation"] > 0.5
    assert table.attrs["ci_prob"] == 0.9


@pytest.mark.slow
def test_compare_flags_unknown_groups_and_checks_its_inputs(model, fit, one_arm_fit):
    other_model, one_arm, _ = one_arm_fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        table = compare(other_model.fit_map(), one_arm)
        map_fit = model.fit_map()
    assert table.loc["s001", "map_in_interval"] is pd.NA
    assert table.drop(index="s001")["map_in_interval"].notna().all()
    with pytest.raises(ValueError, match="different data"):
        compare(map_fit, one_arm)
    with pytest.raises(TypeError, match="map_result must be a MapResult"):
        compare(fit, fit)
    ate = from_idata(model.design, fit.idata, estimand="ate")
    with pytest.raises(ValueError, match="estimand='att'"):
        compare(map_fit, ate)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["h5netcdf", None])
def test_round_trip_through_netcdf(model, fit, tmp_path, engine):
    path = tmp_path / "posterior.nc"
    fit.idata.to_netcdf(path, engine=engine)
    with xr.open_datatree(path, engine=engine) as loaded:
        loaded = loaded.load()
    for name in ("catt", "att", "treated_weight", "control_weight"):
        np.testing.assert_array_equal(loaded["estimands"][name], fit.idata["estimands"][name])
    np.testing.assert_array_equal(loaded["weights"]["weight"], fit.idata["weights"]["weight"])
    assert loaded["estimands"].attrs["estimand"] == "att"
    # The loaded tree rebuilds the same result: same summaries, same bootstrap from the seed.
    rebuilt = from_idata(
        model.design, loaded, random_seed=int(loaded["estimands"].attrs["random_seed"])
    )
    pd.testing.assert_frame_equal(rebuilt.catt, fit.catt)
    pd.testing.assert_frame_equal(rebuilt.att, fit.att)
