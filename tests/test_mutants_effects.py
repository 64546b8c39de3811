"""Effects from weights and per-draw posterior effects, pinned by hand computations.

Fast counterparts of the sampling tests: hand-built posteriors stand in for sampled ones.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import hand_built_tree, make_frame

import hierps
import hierps.posterior.draws as draws_module
from hierps.effects.estimands import (
    GroupSums,
    att_from_catt,
    catt_from_weights,
    effects_from_sums,
    kish_ess,
)
from hierps.exceptions import HierpsWarning
from hierps.posterior.draws import check_estimand_loss, from_idata, unit_weights

CODES = np.array([0, 0, 1, 1, 1, 2, 2, 0])
TREATMENT = np.array([1, 0, 1, 0, 0, 1, 0, 0])
OUTCOME = np.array([3.0, 1.0, 2.0, 0.5, -1.0, 4.0, 2.5, 0.0])


def test_group_sums_of_one_vector_and_of_a_stack():
    sums = GroupSums(CODES, 4)
    assert sums.n_groups == 4
    np.testing.assert_array_equal(sums(OUTCOME), [4.0, 1.5, 6.5, 0.0])
    stack = np.stack([OUTCOME, 2 * OUTCOME, np.ones(8)])[None]
    expected = np.array([[[4.0, 1.5, 6.5, 0.0], [8.0, 3.0, 13.0, 0.0], [3.0, 3.0, 2.0, 0.0]]])
    np.testing.assert_array_equal(sums(stack), expected)
    np.testing.assert_array_equal(sums([1, 1, 1, 1, 1, 1, 1, 1]), [3, 3, 2, 0])


def test_catt_from_weights_by_hand():
    w = np.array([9.0, 2.0, 9.0, 1.0, 3.0, 9.0, 0.5, 1.0])  # treated entries are ignored
    effects = catt_from_weights(OUTCOME, TREATMENT, GroupSums(CODES, 3), w)
    control_mean = [(2 * 1.0 + 1 * 0.0) / 3, (1 * 0.5 + 3 * -1.0) / 4, 2.5]
    np.testing.assert_allclose(effects["control_mean"], control_mean)
    np.testing.assert_allclose(effects["treated_mean"], [3.0, 2.0, 4.0])
    np.testing.assert_allclose(effects["catt"], np.array([3.0, 2.0, 4.0]) - control_mean)
    np.testing.assert_allclose(effects["treated_weight"], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(effects["control_weight"], [3.0, 4.0, 0.5])


def test_catt_from_weights_with_treated_weights_per_draw():
    w = np.array([[9.0, 2.0, 9.0, 1.0, 3.0, 9.0, 0.5, 1.0], np.ones(8)])
    a = np.array([[2.0, 7.0, 0.5, 7.0, 7.0, 3.0, 7.0, 7.0], np.ones(8)])
    effects = catt_from_weights(OUTCOME, TREATMENT, GroupSums(CODES, 3), w, a)
    assert effects["catt"].shape == (2, 3)
    np.testing.assert_allclose(effects["treated_weight"], [[2.0, 0.5, 3.0], [1.0, 1.0, 1.0]])
    np.testing.assert_allclose(effects["control_weight"], [[3.0, 4.0, 0.5], [2.0, 2.0, 1.0]])
    np.testing.assert_allclose(effects["treated_mean"][0], [3.0, 2.0, 4.0])
    np.testing.assert_allclose(effects["control_mean"][1], [0.5, -0.25, 2.5])


def test_effects_from_sums_give_nan_for_an_arm_without_weight():
    effects = effects_from_sums(
        treated_weight=np.array([2.0, 0.0, 1.0]),
        treated_total=np.array([4.0, 0.0, 3.0]),
        control_weight=np.array([4.0, 1.0, 0.0]),
        control_total=np.array([2.0, 3.0, 0.0]),
    )
    np.testing.assert_array_equal(effects["treated_mean"], [2.0, np.nan, 3.0])
    np.testing.assert_array_equal(effects["control_mean"], [0.5, 3.0, np.nan])
    np.testing.assert_array_equal(effects["catt"], [1.5, np.nan, np.nan])


def test_att_weighs_the_estimable_catts_by_treated_weight():
    catt = np.array([[1.0, np.nan, 4.0], [2.0, 3.0, 5.0]])
    weight = np.array([[1.0, 5.0, 3.0], [2.0, 1.0, 1.0]])
    np.testing.assert_allclose(att_from_catt(catt, weight), [13.0 / 4.0, 12.0 / 4.0])


def test_kish_ess_overall_and_per_group():
    w = np.array([1.0, 3.0, 2.0, 2.0, 0.0, 0.0])
    assert kish_ess(w) == pytest.approx(64.0 / 18.0)
    per_group = kish_ess(w, GroupSums(np.array([0, 0, 1, 1, 2, 2]), 3))
    np.testing.assert_allclose(per_group, [16.0 / 10.0, 2.0, 0.0])


def test_unit_weights_for_both_estimands():
    eta = np.array([[0.5, -1.0, 800.0], [-800.0, 2.0, 0.0]])
    treatment = np.array([0, 1, 1])
    with np.errstate(over="ignore"):
        att = unit_weights(eta, treatment, "att")
        ate = unit_weights(eta, treatment, "ate")
    np.testing.assert_allclose(att, [[np.exp(0.5), 1.0, 1.0], [np.exp(-800.0), 1.0, 1.0]])
    expected = [[1 + np.exp(0.5), 1 + np.exp(1.0), 1.0], [1.0, 1 + np.exp(-2.0), 2.0]]
    np.testing.assert_allclose(ate, expected)


def test_the_calibrated_loss_is_refused_for_the_ate():
    check_estimand_loss("att", "calibrated")
    check_estimand_loss("ate", "bernoulli")
    with pytest.raises(ValueError, match="calibrated loss targets the ATT"):
        check_estimand_loss("ate", "calibrated")


# --------------------------------------------------------------------------------------------
# Per-draw effects of a hand-built posterior, by hand
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study():
    frame, roles = make_frame(seed=31, sizes=(6, 30), n_groups=4, n_unit=2, n_group=1)
    frame["x2"] = np.round(frame["x2"])  # repeated covariate patterns
    model = hierps.Model(frame, **roles)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        fit = model.fit_map(sigma_beta=0.5)
    return model.design, hand_built_tree(fit, chains=2, draws=7, spread=0.4, seed=2)


def draws_eta(design, tree):
    posterior = tree["posterior"]
    alpha = posterior["alpha"].stack(sample=("chain", "draw")).transpose("sample", ...).to_numpy()
    beta = posterior["beta"].stack(sample=("chain", "draw")).transpose("sample", ...).to_numpy()
    codes = design.group_codes
    return alpha[:, codes] + np.einsum("snk,nk->sn", beta[:, codes], design.unit_matrix)


def by_hand(design, treated_weights, control_weights, estimand):
    y, t, codes = design.outcome, design.treatment, design.group_codes
    effects, group_weight, treated_sum, control_sum = [], [], [], []
    for j in range(design.n_groups):
        a, c = (codes == j) & (t == 1), (codes == j) & (t == 0)
        treated_sum.append(treated_weights[a].sum())
        control_sum.append(control_weights[c].sum())
        effects.append(
            np.sum(treated_weights[a] * y[a]) / treated_sum[-1]
            - np.sum(control_weights[c] * y[c]) / control_sum[-1]
        )
        group_weight.append(treated_sum[-1] if estimand == "att" else np.sum(codes == j))
    effects, group_weight = np.array(effects), np.array(group_weight)
    overall = np.sum(effects * group_weight) / np.sum(group_weight)
    return effects, overall, np.array(treated_sum), np.array(control_sum)


def result_of(design, tree, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return from_idata(design, tree, random_seed=4, store_weights=True, **kwargs)


@pytest.mark.parametrize("estimand", ["att", "ate"])
@pytest.mark.parametrize("uncertainty", ["propensity", "bayesian_bootstrap"])
def test_per_draw_effects_equal_hand_computation(study, estimand, uncertainty):
    design, tree = study
    result = result_of(design, tree, estimand=estimand, uncertainty=uncertainty)
    eta = draws_eta(design, tree)
    treated = design.treatment == 1
    probability = 1 / (1 + np.exp(-eta))
    if estimand == "att":
        treated_w, control_w = np.ones_like(eta), np.exp(eta)
        unit_w = np.where(treated, 1.0, np.exp(eta))
    else:
        treated_w, control_w = 1 / probability, 1 / (1 - probability)
        unit_w = np.where(treated, treated_w, control_w)
    weights = result.idata["weights"]
    stored = weights["weight_draws"].stack(sample=("chain", "draw")).transpose("sample", "obs")
    np.testing.assert_allclose(stored.to_numpy(), unit_w, rtol=1e-10)
    np.testing.assert_allclose(weights["weight"].to_numpy(), unit_w.mean(axis=0), rtol=1e-10)
    if uncertainty == "bayesian_bootstrap":
        boot = weights["bootstrap_weight"].stack(sample=("chain", "draw"))
        boot = boot.transpose("sample", "obs").to_numpy()
        sums = np.stack([boot[:, design.group_codes == j].sum(1) for j in range(4)], axis=1)
        np.testing.assert_allclose(sums, np.broadcast_to(design.units_per_group, sums.shape))
        assert (boot > 0).all() and not np.allclose(boot[0], boot[1])
    else:
        assert "bootstrap_weight" not in weights
        boot = np.ones_like(eta)
    group_name, overall_name = ("catt", "att") if estimand == "att" else ("cate", "ate")
    estimands = result.idata["estimands"]
    assert estimands[group_name].dims == ("chain", "draw", "group")
    assert estimands[overall_name].dims == ("chain", "draw")
    flat = {
        name: estimands[name].stack(sample=("chain", "draw")).transpose("sample", ...).to_numpy()
        for name in (group_name, overall_name, "treated_weight", "control_weight")
    }
    for s in range(len(eta)):
        effects, overall, treated_sum, control_sum = by_hand(
            design, boot[s] * treated_w[s], boot[s] * control_w[s], estimand
        )
        np.testing.assert_allclose(flat[group_name][s], effects, rtol=1e-10)
        assert flat[overall_name][s] == pytest.approx(overall, rel=1e-10)
        np.testing.assert_allclose(flat["treated_weight"][s], treated_sum, rtol=1e-10)
        np.testing.assert_allclose(flat["control_weight"][s], control_sum, rtol=1e-10)
    attrs = estimands.attrs
    assert attrs["estimand"] == estimand and attrs["uncertainty"] == uncertainty
    assert attrs["random_seed"] == "4" and attrs["ci_prob"] == 0.9
    assert attrs["creation_library"] == "hierps"
    assert weights.attrs["estimand"] == estimand
    assert ("controls exp(eta)" in weights.attrs["description"]) == (estimand == "att")


def test_without_stored_weights_only_the_posterior_mean_weight_is_kept(study):
    design, tree = study
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        result = from_idata(design, tree, random_seed=4)
    assert list(result.idata["weights"].data_vars) == ["weight"]
    assert result.idata["weights"]["weight"].dims == ("obs",)
    stored = result_of(design, tree)
    np.testing.assert_array_equal(
        result.idata["estimands"]["catt"], stored.idata["estimands"]["catt"]
    )


def test_seeds_repeat_the_bootstrap_and_a_seed_sequence_is_accepted(study):
    design, tree = study
    first = result_of(design, tree)
    again = result_of(design, tree)
    np.testing.assert_array_equal(first.idata["estimands"]["att"], again.idata["estimands"]["att"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        sequence = from_idata(design, tree, random_seed=np.random.SeedSequence(4))
    np.testing.assert_array_equal(
        sequence.idata["estimands"]["att"], first.idata["estimands"]["att"]
    )


def test_a_design_without_outcome_gives_weights_only(study):
    design, tree = study
    frame, roles = make_frame(seed=31, sizes=(6, 30), n_groups=4, n_unit=2, n_group=1)
    frame["x2"] = np.round(frame["x2"])
    roles.pop("outcome")
    no_outcome = hierps.Model(frame, **roles).design
    result = result_of(no_outcome, tree)
    assert "estimands" not in result.idata.children
    assert "bootstrap_weight" not in result.idata["weights"]
    np.testing.assert_allclose(
        result.idata["weights"]["weight_draws"],
        result_of(design, tree).idata["weights"]["weight_draws"],
    )


def test_groups_without_controls_are_named_and_counted():
    frame, roles = make_frame(seed=32, sizes=(6, 30), n_groups=4, n_unit=1, n_group=1)
    last = frame["school"] == frame["school"].iloc[-1]
    frame.loc[last, "z"] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        model = hierps.Model(frame, **roles)
        fit = model.fit_map()
    tree = hand_built_tree(fit, chains=1, draws=4)
    n_last = int(last.sum())
    with pytest.warns(HierpsWarning) as caught:
        result = from_idata(model.design, tree, uncertainty="propensity")
    message = " ".join(str(w.message) for w in caught)
    assert "'s003'" in message and f"the ATT excludes them — {n_last} of " in message
    assert "treated unit(s) left out" in message
    assert np.isnan(result.idata["estimands"]["catt"].isel(group=3)).all()
    assert np.isfinite(result.idata["estimands"]["att"]).all()
    with pytest.warns(HierpsWarning) as caught:
        from_idata(model.design, tree, uncertainty="propensity", estimand="ate")
    message = " ".join(str(w.message) for w in caught)
    assert "'s003'" in message and f"the ATE excludes them — {n_last} of " in message


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_overflowing_draws_warn(study):
    design, tree = study
    huge = tree.copy(deep=True)
    huge["posterior"]["alpha"] = huge["posterior"]["alpha"] + 800.0
    with pytest.warns(HierpsWarning, match="infinite weights"):
        from_idata(design, huge, uncertainty="propensity")


def test_posteriors_of_other_data_are_refused(study):
    design, tree = study
    no_alpha = tree.copy(deep=True)
    no_alpha["posterior"] = no_alpha["posterior"].to_dataset().drop_vars("alpha")
    with pytest.raises(ValueError, match="has no 'alpha'"):
        from_idata(design, no_alpha)
    no_beta = tree.copy(deep=True)
    no_beta["posterior"] = no_beta["posterior"].to_dataset().drop_vars("beta")
    with pytest.raises(ValueError, match="has no 'beta'"):
        from_idata(design, no_beta)
    renamed = tree.copy(deep=True)
    posterior = renamed["posterior"].to_dataset()
    renamed["posterior"] = posterior.assign_coords(group=[f"g{j}" for j in range(4)])
    with pytest.raises(ValueError, match="groups differ"):
        from_idata(design, renamed)
    other = tree.copy(deep=True)
    other["posterior"] = other["posterior"].to_dataset().assign_coords(unit_covariate=["a", "b"])
    with pytest.raises(ValueError, match="unit covariates"):
        from_idata(design, other)
    with pytest.raises(ValueError, match="no 'posterior' group"):
        from_idata(design, tree.drop_nodes("posterior"))
    moved = tree.copy(deep=True)
    codes = design.group_codes[::-1].copy()
    moved["constant_data"] = pd.DataFrame({"group_index": codes}).to_xarray()
    with pytest.raises(ValueError, match="other data"):
        from_idata(design, moved)


def test_estimators_of_a_stack_of_draws_keep_the_draw_axis():
    draws = np.array([[1.0, 3.0, 2.0, 2.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_allclose(kish_ess(draws), [64.0 / 18.0, 6.0])
    w = np.array([[9.0, 2.0, 9.0, 1.0, 3.0, 9.0, 0.5, 1.0], np.ones(8)])
    effects = catt_from_weights(OUTCOME, TREATMENT, GroupSums(CODES, 3), w)
    assert effects["treated_weight"].shape == effects["control_weight"].shape == (2, 3)
    np.testing.assert_allclose(effects["treated_weight"], [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])


def test_empty_arms_and_groups_raise_no_floating_point_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        effects = effects_from_sums(
            treated_weight=np.array([0.0, 1.0]),
            treated_total=np.array([0.0, 2.0]),
            control_weight=np.array([0.0, 0.0]),
            control_total=np.array([0.0, 0.0]),
        )
        ess = kish_ess(np.array([0.0, 0.0, 1.0]), GroupSums(np.array([0, 0, 1]), 3))
    assert np.isnan(effects["catt"]).all()
    np.testing.assert_array_equal(ess, [0.0, 1.0, 0.0])


def test_treated_units_never_evaluate_their_odds():
    eta = np.array([[900.0, 0.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(unit_weights(eta, np.array([1, 0]), "att"), [[1, np.exp(0.5)]])


def test_argument_and_loss_checks_of_from_idata(study):
    design, tree = study
    with pytest.raises(ValueError, match=r"^uncertainty='none' is not one of "):
        from_idata(design, tree, uncertainty="none")
    with pytest.raises(ValueError, match=r"^estimand='atx' is not one of "):
        from_idata(design, tree, estimand="atx")
    with pytest.raises(ValueError, match=r"^idata has no 'posterior' group$"):
        from_idata(design, tree.drop_nodes("posterior"))
    calibrated = tree.copy(deep=True)
    calibrated.attrs["hierps_loss"] = "calibrated"
    with pytest.raises(ValueError, match="calibrated loss targets the ATT"):
        from_idata(design, calibrated, estimand="ate")
    assert result_of(design, calibrated).idata["weights"].attrs["loss"] == "calibrated"
    assert result_of(design, tree).idata["weights"].attrs["loss"] == "bernoulli"


def test_a_healthy_posterior_raises_no_warning():
    # Every group has both arms, one of them a single treated unit.
    frame, roles = make_frame(seed=33, sizes=[2, 20, 30], n_unit=1, n_group=1)
    rows = np.flatnonzero(frame["school"] == "s000")
    frame.loc[frame.index[rows], "z"] = [1, 0]
    model = hierps.Model(frame, **roles)
    fit = model.fit_map()
    tree = hand_built_tree(fit, chains=1, draws=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for estimand in ("att", "ate"):
            from_idata(model.design, tree, estimand=estimand, store_weights=True)


def test_overflow_message_and_quiet_exponentials(study):
    design, tree = study
    huge = tree.copy(deep=True)
    huge["posterior"]["alpha"] = huge["posterior"]["alpha"] + 800.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from_idata(design, huge, uncertainty="propensity")
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "overflow encountered" in m]
    assert (
        "some posterior draws give infinite weights (exp(eta) overflowed); the posterior has "
        "extreme propensities — check overlap and the prior scales"
    ) in messages


def test_groups_lacking_an_arm_are_listed_together():
    frame, roles = make_frame(seed=34, sizes=[1, 12, 3, 20], n_unit=1, n_group=1)
    for label in ("s000", "s002"):
        frame.loc[frame["school"] == label, "z"] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        model = hierps.Model(frame, **roles)
        fit = model.fit_map()
    tree = hand_built_tree(fit, chains=1, draws=4)
    with pytest.warns(
        HierpsWarning, match=r"^group\(s\) 's000', 's002' of 'school' have no control"
    ):
        from_idata(model.design, tree, uncertainty="propensity")
    with pytest.warns(
        HierpsWarning, match=r"^group\(s\) 's000', 's002' of 'school' have no control"
    ):
        from_idata(model.design, tree, uncertainty="propensity", estimand="ate")


def test_weights_without_outcome_in_many_chunks(study, monkeypatch):
    _, tree = study
    frame, roles = make_frame(seed=31, sizes=(6, 30), n_groups=4, n_unit=2, n_group=1)
    frame["x2"] = np.round(frame["x2"])
    roles.pop("outcome")
    no_outcome = hierps.Model(frame, **roles).design
    whole = result_of(no_outcome, tree).idata["weights"]["weight_draws"].to_numpy()
    monkeypatch.setattr(draws_module, "CHUNK_ELEMENTS", 3 * 2 * no_outcome.n_units)
    chunked = result_of(no_outcome, tree).idata["weights"]["weight_draws"].to_numpy()
    np.testing.assert_array_equal(chunked, whole)


def test_derived_groups_keep_the_posteriors_labels_and_are_replaced(study):
    from hierps._version import __version__

    design, tree = study
    relabelled = tree.copy(deep=True)
    posterior = relabelled["posterior"].to_dataset()
    relabelled["posterior"] = posterior.assign_coords(draw=posterior["draw"] + 500, chain=[3, 7])
    result = result_of(design, relabelled)
    for group in ("weights", "estimands"):
        data = result.idata[group]
        np.testing.assert_array_equal(data["draw"], np.arange(500, 507))
        np.testing.assert_array_equal(data["chain"], [3, 7])
        attrs = data.attrs
        assert attrs["loss"] == "bernoulli" and attrs["creation_library_version"] == __version__
        assert attrs["created_at"].endswith("+00:00")
    assert list(result.idata["weights"]["obs"].to_numpy()) == list(design.index)
    for name in ("treated_weight", "control_weight"):
        assert result.idata["estimands"][name].dims == ("chain", "draw", "group")
    assert result.idata["weights"].attrs["description"] == (
        "posterior-mean weight of each unit (treated 1, controls exp(eta))"
    )
    ate = result_of(design, relabelled, estimand="ate").idata["weights"].attrs["description"]
    assert ate == "posterior-mean weight of each unit (treated 1/pi, controls 1/(1-pi))"
    # Recomputing from a result's own tree replaces its derived groups.
    frame, roles = make_frame(seed=31, sizes=(6, 30), n_groups=4, n_unit=2, n_group=1)
    frame["x2"] = np.round(frame["x2"])
    roles.pop("outcome")
    no_outcome = hierps.Model(frame, **roles).design
    again = result_of(no_outcome, result.idata)
    assert "estimands" not in again.idata.children


def test_stored_group_codes_of_the_same_data_are_accepted(study):
    design, tree = study
    same = tree.copy(deep=True)
    same["constant_data"] = pd.DataFrame({"group_index": design.group_codes}).to_xarray()
    result_of(design, same)


def test_exact_messages_of_from_idata(study):
    design, tree = study
    with pytest.raises(ValueError, match=r"use loss='bernoulli' for estimand='ate'$"):
        check_estimand_loss("ate", "calibrated")
    no_alpha = tree.copy(deep=True)
    no_alpha["posterior"] = no_alpha["posterior"].to_dataset().drop_vars("alpha")
    with pytest.raises(
        ValueError, match=r"^the posterior has no 'alpha'; was it sampled from hierps' model\?$"
    ):
        from_idata(design, no_alpha)
    no_beta = tree.copy(deep=True)
    no_beta["posterior"] = no_beta["posterior"].to_dataset().drop_vars("beta")
    with pytest.raises(
        ValueError, match=r"^the posterior has no 'beta' but the design has unit covariates$"
    ):
        from_idata(design, no_beta)
    renamed = tree.copy(deep=True)
    renamed["posterior"] = renamed["posterior"].to_dataset().assign_coords(group=list("abcd"))
    with pytest.raises(
        ValueError,
        match=r"^the posterior's groups differ from the design's: it was sampled on other data$",
    ):
        from_idata(design, renamed)


def test_a_design_with_group_covariates_only():
    frame, roles = make_frame(seed=35, sizes=(6, 20), n_groups=4, n_unit=1, n_group=1)
    roles["unit_covariates"] = []
    model = hierps.Model(frame, **roles)
    fit = model.fit_map()
    tree = hand_built_tree(fit, chains=1, draws=3)
    result = result_of(model.design, tree, uncertainty="propensity")
    alpha = tree["posterior"]["alpha"].to_numpy()[0]
    treated = model.design.treatment == 1
    w = np.where(treated, 1.0, np.exp(alpha[:, model.design.group_codes]))
    np.testing.assert_allclose(result.idata["weights"]["weight_draws"].to_numpy()[0], w)


@pytest.fixture(scope="module")
def weighted_study():
    """Base weights; s001 has a single treated unit, s002 a single control, s003 no controls,
    s004 no treated units."""
    frame, roles = make_frame(seed=35, sizes=(8, 30), n_groups=5, n_unit=2, n_group=1)
    frame["base"] = np.random.default_rng(35).uniform(0.5, 2.0, len(frame))
    for label, arm in (("s001", 0), ("s002", 1)):
        rows = np.flatnonzero(frame["school"] == label)
        frame.loc[rows, "z"] = arm
        frame.loc[rows[0], "z"] = 1 - arm
    frame.loc[frame["school"] == "s003", "z"] = 1
    frame.loc[frame["school"] == "s004", "z"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        model = hierps.Model(frame, weights="base", **roles)
        fit = model.fit_map(sigma_beta=0.5)
    return model.design, hand_built_tree(fit, chains=2, draws=6, spread=0.3, seed=5)


def test_bootstrap_effects_with_base_weights_by_hand(weighted_study):
    design, tree = weighted_study
    result = result_of(design, tree, uncertainty="bayesian_bootstrap")
    stored = result.idata["weights"]
    weights = stored["weight_draws"].stack(sample=("chain", "draw")).transpose("sample", "obs")
    bootstrap = (
        stored["bootstrap_weight"].stack(sample=("chain", "draw")).transpose("sample", "obs")
    )
    weights, bootstrap = weights.to_numpy(), bootstrap.to_numpy()
    eta = draws_eta(design, tree)
    treated = design.treatment == 1
    base = design.unit_weights
    np.testing.assert_allclose(weights, np.where(treated, 1.0, np.exp(eta)) * base, rtol=1e-12)
    catt = result.idata["estimands"]["catt"].stack(sample=("chain", "draw"))
    catt = catt.transpose("sample", "group").to_numpy()
    att = result.idata["estimands"]["att"].stack(sample=("chain", "draw")).to_numpy()
    for s in range(weights.shape[0]):
        mass = bootstrap[s] * weights[s]  # bootstrap × base (treated), × base × odds (controls)
        expected, _, treated_sum, _ = by_hand(design, mass, mass, "att")
        np.testing.assert_allclose(catt[s], expected, rtol=1e-10)
        estimable = np.isfinite(expected)  # s003 has no controls, s004 no treated
        share = treated_sum[estimable] / treated_sum[estimable].sum()
        assert att[s] == pytest.approx(share @ expected[estimable], rel=1e-10)
    assert stored.attrs["description"] == (
        "posterior-mean weight of each unit (treated 1, controls exp(eta)); times the base weight"
    )
    assert stored.attrs["base_weights"] == "base"
    assert stored.attrs["likelihood"] == (
        "pseudo-likelihood: each unit's Bernoulli log-likelihood times its base weight, so the "
        "posterior is a pseudo-posterior (its spread is not a sampling distribution)"
    )


def test_atc_weights_description_and_values(study):
    design, tree = study
    result = result_of(design, tree, estimand="atc")
    stored = result.idata["weights"]
    assert stored.attrs["description"] == (
        "posterior-mean weight of each unit (treated exp(-eta), controls 1)"
    )
    assert "base_weights" not in stored.attrs and "likelihood" not in stored.attrs
    eta = draws_eta(design, tree)
    treated = design.treatment == 1
    np.testing.assert_allclose(
        stored["weight_draws"].stack(sample=("chain", "draw")).transpose("sample", "obs"),
        np.where(treated, np.exp(-np.where(treated, eta, 0.0)), 1.0),
        rtol=1e-12,
    )


def test_argument_types_of_from_idata_are_named(study):
    design, tree = study
    with pytest.raises(
        hierps.exceptions.ArgumentTypeError, match=r"^idata must be an xarray\.DataTree, not str$"
    ):
        from_idata(design, "posterior.nc")
    with pytest.raises(hierps.exceptions.ArgumentTypeError, match=r"^store_weights must be "):
        from_idata(design, tree, store_weights="yes")
    with pytest.raises((TypeError, ValueError), match=r"^random_seed"):
        from_idata(design, tree, random_seed="seven")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_unstable_groups_are_those_with_both_arms(weighted_study):
    design, tree = weighted_study
    huge = tree.copy(deep=True)
    huge["posterior"]["alpha"] = huge["posterior"]["alpha"] + 800.0
    with pytest.warns(HierpsWarning) as caught:
        from_idata(design, huge, uncertainty="propensity")
    (message,) = [str(w.message) for w in caught if "under- or overflow" in str(w.message)]
    # s003 and s004 lack an arm: named as such, not as unstable; s001 and s002 have one unit
    # in an arm and are unstable like s000.
    assert "group(s) 's003' of 'school' have no control units" in message
    assert "group(s) 's004' have no treated units" in message
    assert (
        "the control weights of group(s) 's000' (100% of draws), 's001' (100% of draws), "
        "'s002' (100% of draws) under- or overflow"
    ) in message
