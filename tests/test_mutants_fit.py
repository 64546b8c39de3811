"""MAP results pinned down beyond the optimum: the coefficients' composition, the arguments
reaching the solver, and the messages naming what went wrong."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from helpers import make_frame, not_under_mutation

import hierps
from hierps.calibrated.fit import _short, fit_map
from hierps.exceptions import ArgumentError, ArgumentTypeError, ConvergenceError, HierpsWarning

# Small simulated groups: one control may carry most of a group's weight, which is not the point.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*carrying more than:hierps.exceptions.HierpsWarning"
)


def _model(seed=51, weights=False, outcome=True, **kwargs):
    frame, roles = make_frame(seed=seed, sizes=(20, 40), n_groups=5, n_unit=3, n_group=2)
    if weights:
        frame["base"] = np.random.default_rng(seed).uniform(0.5, 2.0, len(frame))
    if not outcome:
        roles.pop("outcome")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return hierps.Model(
            frame, weights="base" if weights else None, varying_slopes=["x1", "x3"], **roles
        )


def _other_fit(seed, n_groups, **options):
    """A MAP fit of another simulated design, for warm starts that do not fit."""
    frame, roles = make_frame(seed=seed, sizes=(20, 40), n_groups=n_groups, n_unit=3, n_group=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return hierps.Model(frame, **options, **roles).fit_map()


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.mark.parametrize("estimand", ["att", "atc", "ate"])
@pytest.mark.parametrize("weights", [False, True], ids=["unweighted", "base weights"])
def test_coefficients_give_the_log_weights_unit_by_unit(estimand, weights):
    model = _model(weights=weights)
    d = model.design
    fit = model.fit_map(sigma_beta=0.7, estimand=estimand)
    w = fit.weights.to_numpy() / d.unit_weights
    arms = {"att": ["control"], "atc": ["treated"], "ate": ["control", "treated"]}[estimand]
    for arm in arms:
        c = fit.arm_coefficients(arm)
        assert c.attrs["weighted_arm"] == arm and c.attrs["estimand"] == estimand
        assert c.attrs["sigma_beta"] == str(fit.hyperparameters.as_dict()["sigma_beta"])
        assert c.attrs["scale"] == f"logit scale, covariates standardized ({d.standardize})"
        alpha = c["alpha"].to_numpy()
        np.testing.assert_allclose(
            alpha,
            float(c["intercept"])
            + d.group_matrix @ c["gamma"].to_numpy()
            + c["alpha_deviation"].to_numpy(),
            rtol=1e-12,
        )
        beta = c["beta"].transpose("group", "unit_covariate").to_numpy()
        deviation = beta - c["mu_beta"].to_numpy()
        np.testing.assert_allclose(deviation[:, ~d.varying], 0.0, atol=1e-14)
        np.testing.assert_allclose(
            deviation[:, d.varying], c["beta_deviation"].to_numpy(), rtol=1e-12, atol=1e-14
        )
        eta = alpha[d.group_codes] + np.einsum("nk,nk->n", d.unit_matrix, beta[d.group_codes])
        weighted = d.treatment == (1 if arm == "treated" else 0)
        np.testing.assert_allclose(np.log(w[weighted]), eta[weighted], rtol=1e-9, atol=1e-9)
        assert c["alpha"].dims == c["alpha_deviation"].dims == ("group",)
        assert c["gamma"].dims == ("group_covariate",)
        assert c["beta_deviation"].dims == ("group", "varying_covariate")
        assert list(c["varying_covariate"].values) == ["x1", "x3"]
        assert list(c["group_covariate"].values) == list(d.group_names)


def test_other_arm_and_other_estimand_are_named(model):
    fit = model.fit_map(estimand="atc")
    with pytest.raises(ValueError, match=r"^arm='control': the ATC weights treated only$"):
        fit.arm_coefficients("control")
    ate = model.fit_map(estimand="ate")
    with pytest.raises(ValueError, match=r"^arm='both': the ATE weights control and treated only$"):
        ate.arm_coefficients("both")
    with pytest.raises(
        ValueError,
        match=r"^this fit targets the ATC: use \.catc and \.atc \(or \.group_effects and "
        r"\.overall_effect\), or refit with estimand='att'$",
    ):
        _ = fit.catt
    assert fit.catc is not None and np.isfinite(fit.atc)


def test_overall_effect_weighs_groups_by_the_target_arm(model):
    d = model.design
    for estimand, target in (("att", d.treatment == 1), ("atc", d.treatment == 0)):
        fit = model.fit_map(estimand=estimand)
        effects = fit.group_effects["estimate"].to_numpy()
        share = np.bincount(d.group_codes, weights=target, minlength=d.n_groups)
        assert fit.overall_effect == pytest.approx(share @ effects / share.sum(), rel=1e-12)
    fit = model.fit_map(estimand="ate")
    size = np.bincount(d.group_codes, minlength=d.n_groups)
    effects = fit.group_effects["estimate"].to_numpy()
    assert fit.ate == pytest.approx(size @ effects / size.sum(), rel=1e-12)


def test_results_without_an_outcome_say_so():
    fit = _model(outcome=False).fit_map()
    with pytest.raises(
        ArgumentError, match=r"^the model has no outcome column: give outcome= to hierps\.Model$"
    ):
        _ = fit.att
    assert repr(fit).startswith("MapResult: ATT weights (no outcome); 5 groups; converged in ")


def test_repr_reports_the_effect_and_the_solver(model):
    fit = model.fit_map(estimand="atc")
    assert repr(fit) == (
        f"MapResult: ATC {fit.atc:.4g}; 5 groups; converged in {fit.iterations} Newton "
        f"iterations (max |gradient| {fit.max_gradient:.2g})"
    )


def test_balance_follows_the_estimand(model):
    fit = model.fit_map(estimand="ate")
    assert "imbalance_treated" in fit.balance().columns


def test_solver_arguments_reach_the_solver(model):
    tight = model.fit_map()
    loose = model.fit_map(tol=10.0)
    assert loose.iterations < tight.iterations and loose.max_gradient <= 10.0
    with pytest.raises(hierps.exceptions.ConvergenceError, match=r"stopped after 1 iterations"):
        model.fit_map(max_iterations=1, sigma_beta=10.0)
    fit = model.fit_map(sigma_gamma=0.01)
    assert fit.hyperparameters.sigma_gamma == 0.01
    assert np.abs(fit.coefficients["gamma"]).max() < np.abs(tight.coefficients["gamma"]).max()


def test_warm_starts_need_the_same_design_and_count_only_for_the_same_estimand(model):
    fit = model.fit_map(sigma_beta=0.5)
    warm = model.fit_map(sigma_beta=0.6, init=fit)
    cold = model.fit_map(sigma_beta=0.6)
    assert warm.iterations < cold.iterations
    np.testing.assert_allclose(warm.weights, cold.weights, rtol=1e-7)
    other = model.fit_map(sigma_beta=0.6, init=model.fit_map(estimand="atc"))
    assert other.iterations == cold.iterations
    with pytest.raises(ArgumentTypeError, match=r"^init must be a MapResult or None, not dict$"):
        model.fit_map(init={})
    all_slopes = _other_fit(seed=52, n_groups=5)
    with pytest.raises(
        ArgumentError,
        match=r"^init is a fit of another design \(other covariates or varying slopes\): "
        r"warm starts need a fit of the same design$",
    ):
        model.fit_map(init=all_slopes)


def test_auto_and_structured_deviations_are_checked(model):
    with pytest.raises(
        ArgumentError, match=r"^sigma_gamma='auto': only sigma_alpha and sigma_beta may be 'auto'$"
    ):
        model.fit_map(sigma_gamma="auto")
    with pytest.raises(
        ArgumentError,
        match=r"^deviations='laplace' needs numeric scales: 'auto' estimates them under normal "
        r"deviations only$",
    ):
        model.fit_map(sigma_beta="auto", deviations="laplace")
    auto = fit_map(model.design, sigma_alpha="auto")
    assert auto.selection is not None and auto.selection.scales.keys() == {"sigma_alpha"}
    assert auto.hyperparameters.sigma_alpha == pytest.approx(auto.selection.scales["sigma_alpha"])
    normal = model.fit_map()
    assert normal.deviations == "normal" and normal.kkt == {"control": {}}
    laplace = model.fit_map(sigma_beta=0.5, deviations="laplace")
    assert laplace.deviations == "laplace" and set(laplace.kkt) == {"control"}
    assert laplace.kkt["control"] and all(np.isfinite(list(laplace.kkt["control"].values())))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(estimand="ATT"), r"estimand"),
        (dict(deviations="sparse"), r"deviations"),
        (dict(tol="small"), r"tol"),
        (dict(max_iterations=2.5), r"max_iterations"),
    ],
)
def test_bad_arguments_are_named(model, arguments, message):
    with pytest.raises((ArgumentError, ArgumentTypeError), match=message):
        model.fit_map(**arguments)


def test_short_lists():
    assert _short(["a", "b"]) == "'a', 'b'"
    assert _short(list("abcdefg")) == "'a', 'b', 'c', 'd', 'e' and 2 more"
    assert _short(list("abcdef")) == "'a', 'b', 'c', 'd', 'e' and 1 more"
    assert _short(list("abcde")) == "'a', 'b', 'c', 'd', 'e'"


def test_bad_choices_name_the_argument(model):
    with pytest.raises(ArgumentError, match=r"^estimand='ATT' is not one of 'att', 'atc', 'ate'$"):
        model.fit_map(estimand="ATT")


def test_warm_start_from_another_number_of_groups_is_named(model):
    other = _other_fit(seed=53, n_groups=4, varying_slopes=["x1", "x3"])
    with pytest.raises(
        ArgumentError,
        match=r"^init has 4 groups but the design has 5: warm starts need a fit of the same "
        r"design$",
    ):
        model.fit_map(init=other)


def test_auto_scales_are_estimated_given_the_fixed_ones(model):
    from hierps.calibrated.empirical_bayes import estimate_scales

    fit = fit_map(model.design, sigma_alpha="auto", sigma_beta=0.3)
    alone = estimate_scales(model.design, ["sigma_alpha"], sigma_beta=0.3)
    assert fit.hyperparameters.sigma_beta == 0.3
    assert fit.hyperparameters.sigma_alpha == pytest.approx(alone.scales["sigma_alpha"], rel=1e-9)
    other = estimate_scales(model.design, ["sigma_alpha"])
    assert other.scales["sigma_alpha"] != pytest.approx(alone.scales["sigma_alpha"], rel=1e-3)


def test_groups_without_the_target_arm_are_named_for_the_estimand():
    frame, roles = make_frame(seed=54, sizes=(20, 40), n_groups=5, n_unit=3, n_group=2)
    frame.loc[frame["school"] == "s002", "z"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        model = hierps.Model(frame, **roles)
    n_control = int((frame["z"] == 0).sum())
    left_out = int((frame["school"] == "s002").sum())
    with pytest.warns(HierpsWarning) as caught:
        model.fit_map(estimand="atc")
    messages = [str(w.message) for w in caught]
    assert (
        f"group(s) 's002' have no treated units: their CATC cannot be estimated (NaN) and the "
        f"ATC excludes them — {left_out} of {n_control} control unit(s) left out"
    ) in messages


class _Solver:
    """A stand-in for the Newton solver that fails in a chosen way."""

    def __init__(self, failure):
        self.failure = failure

    def __call__(self, problem, *start, tol, max_iterations):
        from hierps.calibrated.newton import NewtonTrace

        if self.failure == "singular":
            raise np.linalg.LinAlgError("Singular matrix")
        n = len(problem.order)
        return NewtonTrace(
            theta_global=np.zeros(problem.n_global),
            theta_local=np.zeros((problem.n_groups, problem.n_local)),
            objective=np.inf,
            max_gradient=np.inf if self.failure == "overflow" else 0.0,
            iterations=7,
            converged=self.failure != "overflow",
            control_weights=np.full(n, np.inf),
        )


SCALES = "sigma_intercept=2.5, sigma_gamma=1.0, sigma_alpha=0.5, sigma_mu_beta=1.0, sigma_beta=0.25"


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (
            "singular",
            f"the MAP Newton system became singular (Singular matrix) with prior scales {SCALES}: "
            f"some groups cannot be balanced on every covariate (too few units in the weighted "
            f"arm); use a smaller sigma_beta or fewer varying_slopes",
        ),
        (
            "overflow",
            f"the MAP weights overflowed after 7 Newton iterations with prior scales {SCALES}: "
            f"the balance they ask for is infeasible in some group; use a smaller sigma_beta or "
            f"sigma_alpha",
        ),
        ("infinite weights", "the MAP weights overflowed; try smaller prior scales"),
    ],
)
def test_solver_failures_name_the_scales(model, monkeypatch, failure, message):
    monkeypatch.setattr("hierps.calibrated.fit.newton_solve", _Solver(failure))
    with pytest.raises(ConvergenceError, match=f"^{re.escape(message)}$"):
        model.fit_map(sigma_alpha=0.5, sigma_beta=0.25)


def test_extreme_weight_warning_lists_the_five_largest_shares():
    frame, roles = make_frame(seed=65, sizes=(4, 12), n_groups=14, n_unit=2, n_group=0)
    model = hierps.Model(frame, **roles)
    with pytest.warns(HierpsWarning) as caught:
        fit = model.fit_map(sigma_beta=100.0, sigma_alpha=100.0)
    d = model.design
    control = d.treatment == 0
    relative = fit.relative_weights.to_numpy()
    weights = fit.weights.to_numpy()
    labels = d.groups.tolist()
    count = np.bincount(d.group_codes[control], minlength=d.n_groups)
    share = np.array(
        [
            1.0 / relative[(d.group_codes == j) & control].sum() if count[j] else 0.0
            for j in range(d.n_groups)
        ]
    )
    weight_sum = np.bincount(d.group_codes, weights=np.where(control, weights, 0.0))
    extreme = np.flatnonzero((share > 0.5) & (count >= 2))
    assert 5 < len(extreme) < d.n_groups and (count[share > 0.5] == 1).any()
    assert (count[extreme] == 2).any()
    worst = extreme[np.argsort(-share[extreme], kind="stable")][:5]
    table = ", ".join(f"{labels[j]!r}: {share[j]:.0%}" for j in worst)
    vanishing = [labels[j] for j in extreme if weight_sum[j] < 1e-8]
    note = (
        f"; the weights of {_short(vanishing)} vanish (exact balance there is nearly "
        f"infeasible): their effects are computed from the relative weights"
        if vanishing
        else ""
    )
    expected = (
        f"{len(extreme)} group(s) have one control unit carrying more than 50% of the group's "
        f"control weight (largest shares: {table}){note}; their effects rest on very few units "
        f"(see fit.group_effects) — a smaller sigma_beta trades within-group balance for "
        f"effective sample size"
    )
    assert expected in [str(w.message) for w in caught]


@not_under_mutation
def test_warnings_point_at_the_callers_code():
    frame, roles = make_frame(seed=65, sizes=(4, 12), n_groups=14, n_unit=2, n_group=0)
    frame.loc[3, "x1"] = np.nan  # a missing value: an indicator is added
    frame["x3"] = 1.0  # constant: dropped
    frame["x4"] = np.where(frame["z"] == 1, 0.5, frame["x2"])  # no spread among the treated
    roles["unit_covariates"] = ["x1", "x2", "x3", "x4"]
    with pytest.warns(HierpsWarning) as made:
        model = hierps.Model(frame, **roles)
    with pytest.warns(HierpsWarning) as fitted:
        model.fit_map(sigma_beta=100.0, sigma_alpha=100.0)
    with pytest.warns(HierpsWarning) as fitted_directly:
        fit_map(model.design, sigma_beta=100.0, sigma_alpha=100.0)
    messages = [str(w.message) for w in made]
    assert any("missing values" in m for m in messages)
    assert any("constant in the data" in m for m in messages)
    assert any("no variation among the treated" in m for m in messages)
    for caught in (made, fitted, fitted_directly):
        assert caught and all(w.filename == __file__ for w in caught), [w.filename for w in caught]
