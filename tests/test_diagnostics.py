"""Balance tables checked against hand computation, and the sampler diagnosis."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import matplotlib
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers import hand_built_posterior, hand_built_tree, make_frame

import hierps
from hierps.balance.table import balance_table
from hierps.exceptions import HierpsWarning
from hierps.mcmc.diagnosis import Diagnosis, diagnose
from hierps.plots import plot_trace

matplotlib.use("Agg")

CONTINUOUS = ("x1", "x2", "v1")
BINARY = ("x2_missing", "c1[a]", "c1[b]", "c1[c]")
SINGLE_TREATED = "s001"


def study_frame() -> tuple[pd.DataFrame, dict]:
    """Five schools; x2 has missing values; school s001 has exactly one treated student."""
    frame, roles = make_frame(
        seed=7, sizes=(12, 40), n_groups=5, n_unit=2, n_group=1, categorical_levels=3
    )
    frame.loc[frame.index[::6], "x2"] = np.nan
    rows = np.flatnonzero(frame["school"] == SINGLE_TREATED)
    frame.loc[frame.index[rows], "z"] = 0
    frame.loc[frame.index[rows[0]], "z"] = 1
    return frame, roles


@pytest.fixture(scope="module")
def study():
    frame, roles = study_frame()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        model = hierps.Model(frame, **roles)
        fit = model.fit_map(sigma_beta=0.5)
    return frame, model, fit


def hand_columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The covariates as the design sees them, built from the raw frame: x2's missing values
    at the treated mean of its observed values, plus the indicator; one-hot c1."""
    treated = frame["z"].to_numpy() == 1
    x2 = frame["x2"]
    return {
        "x1": frame["x1"].to_numpy(),
        "x2": x2.fillna(x2[treated].mean()).to_numpy(),
        "x2_missing": x2.isna().to_numpy(dtype=float),
        "c1[a]": (frame["c1"] == "a").to_numpy(dtype=float),
        "c1[b]": (frame["c1"] == "b").to_numpy(dtype=float),
        "c1[c]": (frame["c1"] == "c").to_numpy(dtype=float),
        "v1": frame["v1"].to_numpy(),
    }


def weighted_mean_and_variance(x: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    total = w.sum()
    mean = np.sum(w * x) / total
    denominator = total - np.sum(w**2) / total
    variance = np.sum(w * (x - mean) ** 2) / denominator if denominator > 0 else np.nan
    return mean, variance


def hand_balance(x, treated, w, sd, continuous) -> dict[str, float]:
    t, c, wc = x[treated], x[~treated], w[~treated]
    weighted_mean, weighted_var = weighted_mean_and_variance(c, wc)
    treated_var = t.var(ddof=1) if len(t) > 1 else np.nan
    return {
        "treated_mean": t.mean(),
        "control_mean_before": c.mean(),
        "control_mean_after": weighted_mean,
        "smd_before": (t.mean() - c.mean()) / sd,
        "smd_after": (t.mean() - weighted_mean) / sd,
        "var_ratio_before": treated_var / c.var(ddof=1) if continuous else np.nan,
        "var_ratio_after": treated_var / weighted_var if continuous else np.nan,
    }


def test_global_balance_matches_hand_computation(study):
    frame, _, fit = study
    table = balance_table(fit)
    treated = frame["z"].to_numpy() == 1
    w = fit.weights.to_numpy()
    rows = table.global_.set_index("covariate")
    assert list(rows.index) == ["x1", "x2", "x2_missing", "c1[a]", "c1[b]", "c1[c]", "v1"]
    assert rows.loc["v1", "level"] == "group" and rows.loc["x2", "level"] == "unit"
    for name, x in hand_columns(frame).items():
        continuous = name in CONTINUOUS
        assert rows.loc[name, "kind"] == ("continuous" if continuous else "binary")
        sd = x[treated].std(ddof=1)  # treated SD of the unweighted full sample
        expected = hand_balance(x, treated, w, sd, continuous)
        for column, value in expected.items():
            np.testing.assert_allclose(
                rows.loc[name, column], value, rtol=1e-10, atol=1e-12, err_msg=f"{name} {column}"
            )
        assert rows.loc[name, "balanced"] == (abs(expected["smd_after"]) <= 0.1)


def test_group_balance_matches_hand_computation(study):
    frame, _, fit = study
    table = balance_table(fit)
    treated = frame["z"].to_numpy() == 1
    w = fit.weights.to_numpy()
    columns = hand_columns(frame)
    rows = table.by_group.set_index(["group", "covariate"])
    # Group covariates are constant within a group: only unit covariates appear per group.
    assert set(rows.index.get_level_values("covariate")) == set(columns) - {"v1"}
    for school in frame["school"].unique():
        in_group = frame["school"].to_numpy() == school
        assert rows.loc[(school, "x1"), "n_treated"] == (treated & in_group).sum()
        assert rows.loc[(school, "x1"), "n_control"] == (~treated & in_group).sum()
        for name, x in columns.items():
            if name == "v1":
                continue
            sd = x[treated].std(ddof=1)  # the global denominator, also within groups
            expected = hand_balance(
                x[in_group], treated[in_group], w[in_group], sd, name in CONTINUOUS
            )
            for column, value in expected.items():
                np.testing.assert_allclose(
                    rows.loc[(school, name), column],
                    value,
                    rtol=1e-10,
                    atol=1e-12,
                    err_msg=f"{school} {name} {column}",
                )


def test_single_treated_group_has_smd_but_no_variance_ratio(study):
    _, _, fit = study
    rows = balance_table(fit).by_group
    single = rows[rows["group"] == SINGLE_TREATED]
    assert (single["n_treated"] == 1).all()
    assert single["smd_after"].notna().all()
    assert single["var_ratio_after"].isna().all()
    assert single["var_ratio_before"].isna().all()


def test_across_groups_summary(study):
    _, _, fit = study
    table = balance_table(fit, threshold=0.05)
    by_group = table.by_group
    for row in table.across_groups.itertuples(index=False):
        rows = by_group[by_group["covariate"] == row.covariate]
        after = rows["smd_after"].abs().to_numpy()
        before = rows["smd_before"].abs().to_numpy()
        assert row.n_groups == np.isfinite(after).sum() == 5
        assert row.mean_abs_smd_after == pytest.approx(np.nanmean(after))
        assert row.mean_abs_smd_before == pytest.approx(np.nanmean(before))
        assert row.max_abs_smd_after == pytest.approx(np.nanmax(after))
        assert row.max_abs_smd_before == pytest.approx(np.nanmax(before))
        assert row.max_group == rows["group"].iloc[int(np.nanargmax(after))]
        assert row.n_imbalanced == (after > 0.05).sum()
    assert list(table.across_groups["covariate"]) == list(fit.design.unit_names)


def test_ess_matches_hand_computation(study):
    frame, _, fit = study
    ess = balance_table(fit).ess
    treated = frame["z"].to_numpy() == 1
    w = fit.weights.to_numpy()
    wc = w[~treated]
    overall = ess.iloc[0]
    assert overall["scope"] == "global" and overall["group"] is None
    assert overall["ess"] == pytest.approx(wc.sum() ** 2 / np.sum(wc**2))
    assert overall["ess"] == pytest.approx(fit.ess)
    assert overall["weight_sum"] == pytest.approx(wc.sum())
    assert overall["max_weight_share"] == pytest.approx(wc.max() / wc.sum())
    groups = ess.iloc[1:].set_index("group")
    for school in frame["school"].unique():
        weights = w[(frame["school"].to_numpy() == school) & ~treated]
        assert groups.loc[school, "ess"] == pytest.approx(weights.sum() ** 2 / np.sum(weights**2))
        assert groups.loc[school, "ess_ratio"] == pytest.approx(
            groups.loc[school, "ess"] / len(weights)
        )
        assert groups.loc[school, "max_weight_share"] == pytest.approx(
            weights.max() / weights.sum()
        )
    np.testing.assert_allclose(groups["ess"], fit.group_ess.to_numpy())


def test_threshold_flags_and_attrs(study):
    _, _, fit = study
    loose = balance_table(fit, threshold=10.0)
    assert loose.global_["balanced"].all() and loose.by_group["balanced"].all()
    assert loose.n_imbalanced == 0
    strict = balance_table(fit, threshold=1e-12)
    assert not strict.global_["balanced"].any()
    for frame in (strict.global_, strict.by_group, strict.across_groups, strict.ess):
        assert frame.attrs["threshold"] == 1e-12
        assert "treated SD" in frame.attrs["smd_denominator"]
        assert frame.attrs["weights"] == "MAP weights"
    assert not strict.has_intervals


def test_printed_form(study):
    _, _, fit = study
    table = balance_table(fit)
    text = str(table)
    for expected in ("Global balance", "c1[a]", "x2_missing", "v1 (group)", "Within groups"):
        assert expected in text
    assert "Effective sample size" in text and SINGLE_TREATED in text
    assert repr(table) == text
    assert table.__rich__() is not None


def test_covariate_kinds_on_learning_mindsets():
    data = hierps.datasets.load_learning_mindsets()
    model = hierps.Model(
        data,
        treatment="Z",
        group="schoolid",
        unit_covariates=["S3", "C1", "C2", "C3"],
        group_covariates=["X1", "X2"],
        categorical=["C1"],
    )
    # Uniform weights: enough to classify the covariates.
    kinds = balance_table(
        SimpleNamespace(design=model.design, weights=np.ones(len(data)))
    ).global_.set_index("covariate")["kind"]
    # One-hot levels (0/1 up to the rounding of un-standardizing) and C2 (1/2) are binary.
    binary = [name for name in kinds.index if name.startswith("C")]
    assert len(binary) == 17 and (kinds[binary] == "binary").all()
    assert (kinds[["S3", "X1", "X2"]] == "continuous").all()


def test_bad_input(study):
    _, _, fit = study
    with pytest.raises(ValueError, match="threshold"):
        balance_table(fit, threshold=0)
    with pytest.raises(ValueError, match="ci_prob"):
        balance_table(hand_built_posterior(fit), ci_prob=1.5)
    with pytest.raises(TypeError, match="design"):
        balance_table(fit.weights)
    with pytest.raises(ValueError, match="one weight per unit"):
        balance_table(SimpleNamespace(design=fit.design, weights=np.ones(3)))


def test_group_without_controls_gives_undefined_rows():
    frame, roles = make_frame(seed=8, sizes=(10, 30), n_groups=4, n_unit=2, n_group=1)
    frame.loc[frame["school"] == "s002", "z"] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        fit = hierps.Model(frame, **roles).fit_map()
    table = balance_table(fit)
    empty = table.by_group[table.by_group["group"] == "s002"]
    assert empty["smd_after"].isna().all() and empty["balanced"].isna().all()
    assert (table.across_groups["n_groups"] == 3).all()
    assert table.ess.set_index("group").loc["s002", "ess"] == 0


# --------------------------------------------------------------------------------------------
# Posterior results
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def posterior(study):
    _, _, fit = study
    return hand_built_posterior(fit, store_weights=True, chains=2, draws=40, spread=0.2)


def test_posterior_point_table_uses_posterior_mean_weights(study, posterior):
    _, _, fit = study
    table = balance_table(posterior)
    plain = balance_table(SimpleNamespace(design=fit.design, weights=posterior.weights))
    assert table.weights == "posterior-mean weights"
    columns = plain.global_.columns
    pd.testing.assert_frame_equal(table.global_[columns], plain.global_, check_exact=False)
    draws = posterior.idata["weights"]["weight_draws"].to_numpy().reshape(80, -1)
    np.testing.assert_allclose(posterior.weights.to_numpy(), draws.mean(axis=0))


def test_posterior_intervals_match_hand_computation(study, posterior):
    frame, _, _ = study
    table = balance_table(posterior, ci_prob=0.8)
    assert table.has_intervals and table.ci_prob == 0.8
    assert "stored" in table.per_draw
    treated = frame["z"].to_numpy() == 1
    draws = posterior.idata["weights"]["weight_draws"].to_numpy().reshape(80, -1)
    columns = hand_columns(frame)
    rows = table.global_.set_index("covariate")
    group_rows = table.by_group.set_index(["group", "covariate"])
    in_group = frame["school"].to_numpy() == "s003"
    for name in ("x1", "x2", "c1[b]", "v1"):
        x = columns[name]
        sd = x[treated].std(ddof=1)
        smd = [
            (x[treated].mean() - np.average(x[~treated], weights=w[~treated])) / sd for w in draws
        ]
        lower, upper = np.quantile(smd, [0.1, 0.9])
        assert rows.loc[name, "smd_after_lower"] == pytest.approx(lower)
        assert rows.loc[name, "smd_after_upper"] == pytest.approx(upper)
        abs_lower, abs_upper = np.quantile(np.abs(smd), [0.1, 0.9])
        assert rows.loc[name, "abs_smd_after_upper"] == pytest.approx(abs_upper)
        assert rows.loc[name, "abs_smd_after_lower"] == pytest.approx(abs_lower)
        if name == "v1":
            continue
        t, c = treated & in_group, ~treated & in_group
        smd = [(x[t].mean() - np.average(x[c], weights=w[c])) / sd for w in draws]
        assert group_rows.loc[("s003", name), "smd_after_lower"] == pytest.approx(
            np.quantile(smd, 0.1)
        )
    # The maximum over groups, draw by draw.
    x = columns["x1"]
    sd = x[treated].std(ddof=1)
    worst = []
    for w in draws:
        per_group = []
        for school in frame["school"].unique():
            g = frame["school"].to_numpy() == school
            t, c = treated & g, ~treated & g
            per_group.append(abs(x[t].mean() - np.average(x[c], weights=w[c])) / sd)
        worst.append(max(per_group))
    across = table.across_groups.set_index("covariate")
    assert across.loc["x1", "max_abs_smd_after_upper"] == pytest.approx(np.quantile(worst, 0.9))
    # ESS per draw.
    wc = draws[:, ~treated]
    ess = wc.sum(axis=1) ** 2 / (wc**2).sum(axis=1)
    assert table.ess.iloc[0]["ess_lower"] == pytest.approx(np.quantile(ess, 0.1))


def test_recomputed_draws_equal_stored_draws(study, posterior):
    _, _, fit = study
    recomputed = hand_built_posterior(fit, store_weights=False, chains=2, draws=40, spread=0.2)
    assert "weight_draws" not in recomputed.idata["weights"]
    a, b = balance_table(posterior), balance_table(recomputed)
    assert "recomputed" in b.per_draw
    assert b.ci_prob == 0.9  # recorded by the posterior
    for name in ("global_", "by_group", "across_groups", "ess"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=False)


def test_no_per_draw_weights_is_said(study, posterior):
    tree = posterior.idata.copy()
    tree["posterior"] = tree["posterior"].to_dataset().drop_vars(["alpha", "beta"])
    tree["weights"] = tree["weights"].to_dataset().drop_vars("weight_draws")
    result = SimpleNamespace(design=posterior.design, idata=tree, estimand="att")
    table = balance_table(result)
    assert not table.has_intervals
    assert "smd_after_lower" not in table.global_
    assert table.per_draw.startswith("not available")
    assert table.global_.attrs["per_draw"].startswith("not available")
    assert "not available" in str(table)


def test_ate_posterior_gets_a_table_of_both_arms_without_draw_intervals(study):
    _, _, fit = study
    result = hand_built_posterior(fit, estimand="ate", chains=1, draws=10)
    table = balance_table(result)
    assert table.global_.attrs["estimand"] == "ate"
    assert "treated_mean_after" in table.global_
    assert "ess_treated" in table.ess
    assert not table.has_intervals and "ATE" in table.per_draw


# --------------------------------------------------------------------------------------------
# Sampler diagnosis
# --------------------------------------------------------------------------------------------


def test_diagnose_healthy_run(study):
    _, _, fit = study
    result = hand_built_posterior(fit, chains=4, draws=300, seed=11)
    diagnosis = diagnose(result)
    assert isinstance(diagnosis, Diagnosis)
    assert diagnosis.ok, diagnosis.verdict
    assert diagnosis.verdict.startswith("OK")
    table = diagnosis.table
    assert {"intercept", "sigma_alpha", "sigma_beta[x1]", "att", "catt[s000]"} <= set(table.index)
    assert set(table["group"]) == {"posterior", "estimands"}
    assert table["rhat_ok"].all() and table["ess_ok"].all()
    assert list(diagnosis.sampler["divergences"]) == [0, 0, 0, 0]
    assert (diagnosis.sampler["e_bfmi"] > 0.3).all()
    assert "OK" in str(diagnosis)


def test_diagnose_finds_problems(study):
    _, _, fit = study
    tree = hand_built_tree(fit, chains=2, draws=200, divergences=5, seed=12)
    posterior = tree["posterior"].to_dataset()
    # Chains that disagree on sigma_alpha, and a random-walk energy (low E-BFMI).
    posterior["sigma_alpha"] = posterior["sigma_alpha"] + xr.DataArray([0.0, 3.0], dims="chain")
    tree["posterior"] = posterior
    stats = tree["sample_stats"].to_dataset()
    stats["energy"] = stats["energy"].cumsum("draw")
    tree["sample_stats"] = stats
    diagnosis = diagnose(tree)
    assert not diagnosis.ok
    assert diagnosis.verdict.startswith("PROBLEMS")
    text = " ".join(diagnosis.problems)
    assert "5 divergent transitions" in text
    assert "R-hat" in text and "sigma_alpha" in text
    assert "E-BFMI" in text
    assert not diagnosis.table.loc["sigma_alpha", "rhat_ok"]


def test_diagnose_skips_inestimable_effects():
    frame, roles = make_frame(seed=9, sizes=(10, 30), n_groups=3, n_unit=1, n_group=0)
    frame.loc[frame["school"] == "s001", "z"] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        fit = hierps.Model(frame, **roles).fit_map()
    result = hand_built_posterior(fit, chains=4, draws=300, seed=13)
    diagnosis = diagnose(result)
    assert pd.isna(diagnosis.table.loc["catt[s001]", "rhat_ok"])
    assert diagnosis.ok
    assert "not judged" in diagnosis.verdict


def test_diagnose_bad_input(study, posterior):
    _, _, fit = study
    with pytest.raises(TypeError, match="posterior"):
        diagnose(fit)
    with pytest.raises(ValueError, match="not in the posterior"):
        diagnose(posterior, var_names=["tau"])


@pytest.mark.parametrize("kind", ["trace", "rank"])
def test_plot_trace(posterior, kind, tmp_path):
    fig, axes = plot_trace(
        posterior, var_names=("sigma_alpha", "sigma_beta", "intercept"), kind=kind
    )
    path = tmp_path / f"{kind}.png"
    fig.savefig(path)
    assert path.stat().st_size > 10_000
    # One row per variable, two columns (trace: density and trace; rank: …).
    assert len(axes) >= 3
    with pytest.raises(ValueError, match="none of"):
        plot_trace(posterior, var_names=("sigma_gamma",))
    with pytest.raises(ValueError, match="kind"):
        plot_trace(posterior, kind="pairs")
