"""Tests of the shipped data loaders and the multi-site simulator."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import logit

from hierps.datasets import (
    SimulatedStudy,
    load_learning_mindsets,
    load_nh0506,
    simulate_multisite,
    terms,
)
from hierps.datasets.loaders import SHA256
from hierps.exceptions import DataError

ROOT = Path(__file__).resolve().parents[1]
MINDSETS = ROOT / "hierps" / "datasets" / "data" / "acic18_synthetic.csv"
NH0506 = ROOT / "hierps" / "datasets" / "data" / "nh0506.csv"


# --------------------------------------------------------------------------------------------
# Shipped data
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "name"),
    [(MINDSETS, "learning_mindsets"), (NH0506, "nh0506")],
    ids=["mindsets", "nh0506"],
)
def test_shipped_file_matches_sha256_in_its_terms_file(path: Path, name: str) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == SHA256[path.name]
    assert digest in terms(name)


def test_mindsets_terms_file_carries_the_terms() -> None:
    text = terms("learning_mindsets")
    for phrase in ["National Study of Learning Mindsets", "prohibited", "Yeager", "364–369"]:
        assert phrase in text


def test_load_learning_mindsets_shape_and_dtypes() -> None:
    df = load_learning_mindsets()
    assert df.shape == (10_391, 13)
    assert list(df.columns) == [
        "schoolid",
        "Z",
        "Y",
        "S3",
        "C1",
        "C2",
        "C3",
        "XC",
        "X1",
        "X2",
        "X3",
        "X4",
        "X5",
    ]
    assert df["schoolid"].nunique() == 76
    assert round(100 * df["Z"].mean(), 1) == 32.6
    for column in ["schoolid", "Z", "S3", "C1", "C2", "C3", "XC"]:
        assert df[column].dtype == np.int64, column
    for column in ["Y", "X1", "X2", "X3", "X4", "X5"]:
        assert df[column].dtype == np.float64, column
    assert not df.isna().any().any()
    arms = df.groupby("schoolid")["Z"].agg(["min", "max"])
    assert (arms["min"] == 0).all() and (arms["max"] == 1).all()
    # School-level covariates are constant within a school.
    assert (df.groupby("schoolid")[["XC", "X1", "X2", "X3", "X4", "X5"]].nunique() == 1).all().all()


def test_load_nh0506_shape_and_dtypes() -> None:
    df = load_nh0506()
    assert df.shape == (2_928, 11)
    assert int(df["z"].sum()) == 581
    assert int(df["povertyr"].isna().sum()) == 126
    assert int(df["bmi"].isna().sum()) == 46
    assert int(df.drop(columns=["povertyr", "bmi"]).isna().sum().sum()) == 0
    assert df["SEQN"].dtype == np.int64 and df["z"].dtype == np.int64
    for column in ["age", "povertyr", "bmi", "cigsperday30", "cotinine", "homocysteine"]:
        assert df[column].dtype == np.float64, column
    assert list(df["sex"].cat.categories) == ["Male", "Female"]
    assert not df["sex"].cat.ordered
    assert list(df["race"].cat.categories) == [
        "Mexican American",
        "Other Hispanic",
        "Non-Hispanic White",
        "Non-Hispanic Black",
        "Other Race - Including Multi-Racial",
    ]
    assert df["education"].cat.ordered
    assert list(df["education"].cat.categories) == [
        "< Grade 9",
        "9-11th grade",
        "High school grad/GED",
        "Some college or AA degree",
        "College graduate or above",
    ]
    # Casting must not have lost any factor value.
    assert not df[["sex", "race", "education"]].isna().any().any()


@pytest.mark.parametrize(
    ("loader", "source"),
    [(load_learning_mindsets, MINDSETS), (load_nh0506, NH0506)],
    ids=["mindsets", "nh0506"],
)
def test_loader_reads_an_explicit_path(loader, source: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.csv"
    shutil.copyfile(source, copy)
    pd.testing.assert_frame_equal(loader(copy), loader())
    pd.testing.assert_frame_equal(loader(str(copy)), loader())


@pytest.mark.parametrize("loader", [load_learning_mindsets, load_nh0506])
def test_loader_missing_file_says_where_it_looked(loader, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.csv.*path="):
        loader(missing)


def test_mindsets_missing_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    pd.read_csv(MINDSETS).drop(columns=["X3", "C2"]).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"\['C2', 'X3'\]"):
        load_learning_mindsets(path)


def test_nh0506_missing_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "n.csv"
    pd.read_csv(NH0506).drop(columns=["education"]).to_csv(path, index=False)
    with pytest.raises(DataError, match="education"):
        load_nh0506(path)


def test_nh0506_unknown_level_is_an_error_not_nan(tmp_path: Path) -> None:
    path = tmp_path / "n.csv"
    raw = pd.read_csv(NH0506)
    raw.loc[3, "race"] = "Martian"
    raw.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"race.*Martian"):
        load_nh0506(path)


def test_nonbinary_treatment_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    raw = pd.read_csv(MINDSETS)
    raw.loc[0, "Z"] = 2
    raw.to_csv(path, index=False)
    with pytest.raises(DataError, match="'Z'"):
        load_learning_mindsets(path)


def test_missing_integer_code_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    raw = pd.read_csv(MINDSETS)
    raw.loc[5, "S3"] = np.nan
    raw.to_csv(path, index=False)
    with pytest.raises(DataError, match="'S3'"):
        load_learning_mindsets(path)


# --------------------------------------------------------------------------------------------
# Simulator
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study() -> SimulatedStudy:
    return simulate_multisite(n_groups=60, group_size=(20, 200), n_categories=3, seed=7)


def test_simulate_columns_and_roles(study: SimulatedStudy) -> None:
    data = study.data
    assert list(data.columns) == ["school", "z", "y", "x1", "x2", "x3", "v1", "v2", "c1"]
    assert study.unit_covariates == ["x1", "x2", "x3", "c1"]
    assert study.group_covariates == ["v1", "v2"]
    assert study.categorical == ["c1"]
    assert (study.treatment, study.group, study.outcome) == ("z", "school", "y")
    assert data["z"].dtype == np.int64
    assert set(data["z"].unique()) == {0, 1}
    assert list(data["c1"].cat.categories) == ["a", "b", "c"]
    assert data["school"].nunique() == 60
    assert study.catt.name == "catt" and study.catt.index.name == "school"
    assert study.propensity.index.equals(data.index)
    assert study.parameters["beta"].shape == (60, 3)
    assert "SimulatedStudy(n=" in repr(study)


def test_simulate_is_deterministic_per_seed() -> None:
    a = simulate_multisite(n_groups=15, seed=3, n_categories=2)
    b = simulate_multisite(n_groups=15, seed=3, n_categories=2)
    pd.testing.assert_frame_equal(a.data, b.data)
    pd.testing.assert_series_equal(a.catt, b.catt)
    pd.testing.assert_series_equal(a.propensity, b.propensity)
    assert a.att == b.att
    pd.testing.assert_frame_equal(a.parameters["beta"], b.parameters["beta"])


def test_simulate_differs_across_seeds() -> None:
    a = simulate_multisite(n_groups=15, group_size=50, seed=1)
    b = simulate_multisite(n_groups=15, group_size=50, seed=2)
    assert a.data.shape == b.data.shape
    assert not np.allclose(a.data["y"], b.data["y"])
    assert not np.array_equal(a.data["z"], b.data["z"])
    assert a.att != b.att


def test_group_covariates_constant_within_school(study: SimulatedStudy) -> None:
    counts = study.data.groupby("school")[study.group_covariates].nunique()
    assert (counts == 1).all().all()
    # …and they do vary between schools.
    assert (study.data[study.group_covariates].nunique() == 60).all()


def test_att_is_treated_weighted_mean_of_catts(study: SimulatedStudy) -> None:
    data = study.data
    n_treated = data.groupby("school")["z"].sum().reindex(study.catt.index)
    assert study.att == pytest.approx(float((n_treated * study.catt).sum() / n_treated.sum()))
    assert study.att == pytest.approx(float(study.tau[data["z"] == 1].mean()))
    # CATT is the mean unit effect over the school's treated units.
    treated = data["z"] == 1
    expected = study.tau[treated].groupby(data.loc[treated, "school"]).mean()
    pd.testing.assert_series_equal(
        study.catt, expected.rename("catt").reindex(study.catt.index), check_names=False
    )


@pytest.mark.parametrize(
    ("group_size", "sigma_alpha"), [(10, 1.0), ((10, 15), 3.0), ((2, 4), 1.0), (2, 4.0)]
)
def test_every_school_has_both_arms(group_size: int | tuple[int, int], sigma_alpha: float) -> None:
    sim = simulate_multisite(n_groups=300, group_size=group_size, sigma_alpha=sigma_alpha, seed=5)
    arms = sim.data.groupby("school")["z"].agg(["min", "max"])
    assert (arms["min"] == 0).all() and (arms["max"] == 1).all()
    assert not sim.catt.isna().any()
    # Such small or extreme schools do need redraws; they are reported.
    assert len(sim.parameters["redrawn_schools"]) > 0


def test_true_propensity_follows_the_hierarchical_logistic_model(study: SimulatedStudy) -> None:
    data, par = study.data, study.parameters
    x = data[["x1", "x2", "x3"]].to_numpy()
    school = data["school"].to_numpy()
    beta = par["beta"].loc[school].to_numpy()
    eta = par["alpha"].loc[school].to_numpy() + np.einsum("ik,ik->i", x, beta)
    eta += par["zeta"].loc[data["c1"].astype(str)].to_numpy()
    low, high = par["propensity_clip"]
    inside = (study.propensity > low) & (study.propensity < high)
    assert inside.mean() > 0.9
    np.testing.assert_allclose(logit(study.propensity[inside]), eta[inside], atol=1e-8)
    np.testing.assert_allclose(study.propensity, np.clip(1 / (1 + np.exp(-eta)), low, high))
    # α_j = a0 + v_j'γ + σ_α z_j: the residual is a spread of school effects, not a constant.
    v = data.groupby("school")[["v1", "v2"]].first()
    resid = par["alpha"] - par["a0"] - v.to_numpy() @ par["gamma"].to_numpy()
    assert 0.5 < resid.std() / par["sigma_alpha"] < 1.5


def test_treated_share_is_about_thirty_percent() -> None:
    sim = simulate_multisite(n_groups=200, seed=11)
    assert 0.25 < sim.data["z"].mean() < 0.35


def test_group_sizes() -> None:
    equal = simulate_multisite(n_groups=12, group_size=33, seed=0)
    assert (equal.data["school"].value_counts() == 33).all()
    ranged = simulate_multisite(n_groups=200, group_size=(20, 40), seed=0)
    sizes = ranged.data["school"].value_counts()
    assert sizes.between(20, 40).all() and sizes.nunique() > 5


def test_school_labels_are_zero_padded_and_sorted() -> None:
    sim = simulate_multisite(n_groups=120, group_size=10, seed=0)
    labels = list(pd.unique(sim.data["school"]))
    assert labels[0] == "s001" and labels[-1] == "s120"
    assert labels == sorted(labels)
    assert list(sim.catt.index) == labels
    assert simulate_multisite(n_groups=3, group_size=10).data["school"].iloc[0] == "s01"


def test_sigma_beta_vector_fixes_chosen_slopes() -> None:
    sim = simulate_multisite(n_groups=30, group_size=20, sigma_beta=[0.0, 1.0, 0.0], seed=4)
    beta, mu = sim.parameters["beta"], sim.parameters["mu_beta"]
    np.testing.assert_allclose(beta["x1"], mu["x1"])
    np.testing.assert_allclose(beta["x3"], mu["x3"])
    assert beta["x2"].std() > 0.3


def test_confounding_makes_weighting_matter() -> None:
    sim = simulate_multisite(n_groups=200, group_size=(50, 300), seed=0)
    data, pi = sim.data, sim.propensity
    treated, control = data["z"] == 1, data["z"] == 0
    naive = data.loc[treated, "y"].mean() - data.loc[control, "y"].mean()
    odds = pi[control] / (1 - pi[control])
    oracle = data.loc[treated, "y"].mean() - np.average(data.loc[control, "y"], weights=odds)
    assert abs(naive - sim.att) > 0.2
    assert abs(oracle - sim.att) < 0.1


def _fit_fixed_intercept_logit(
    x: np.ndarray, school: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood logistic fit with one intercept per school and common slopes."""
    codes, _ = pd.factorize(school, sort=True)
    n_groups = int(codes.max()) + 1

    def negloglik(theta: np.ndarray) -> tuple[float, np.ndarray]:
        alpha, beta = theta[:n_groups], theta[n_groups:]
        eta = alpha[codes] + x @ beta
        value = float(np.sum(np.logaddexp(0.0, eta) - z * eta))
        resid = 1.0 / (1.0 + np.exp(-eta)) - z
        grad = np.concatenate([np.bincount(codes, weights=resid, minlength=n_groups), x.T @ resid])
        return value, grad

    start = np.zeros(n_groups + x.shape[1])
    result = minimize(negloglik, start, jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    assert result.success, result.message
    return result.x[:n_groups], result.x[n_groups:]


def test_pooled_logistic_fit_recovers_mu() -> None:
    sim = simulate_multisite(n_groups=30, group_size=1000, sigma_beta=0.0, seed=2)
    data = sim.data
    alpha_hat, mu_hat = _fit_fixed_intercept_logit(
        data[["x1", "x2", "x3"]].to_numpy(), data["school"].to_numpy(), data["z"].to_numpy()
    )
    np.testing.assert_allclose(mu_hat, sim.parameters["mu_beta"].to_numpy(), atol=0.08)
    assert np.corrcoef(alpha_hat, sim.parameters["alpha"].to_numpy())[0, 1] > 0.95


@settings(max_examples=40, deadline=None)
@given(
    n_groups=st.integers(1, 8),
    group_size=st.one_of(
        st.integers(2, 30),
        st.tuples(st.integers(2, 10), st.integers(0, 20)).map(lambda t: (t[0], t[0] + t[1])),
    ),
    n_unit=st.integers(1, 4),
    n_group=st.integers(0, 3),
    sigma_alpha=st.floats(0.0, 3.0),
    sigma_beta=st.floats(0.0, 2.0),
    sigma_tau=st.floats(0.0, 2.0),
    n_categories=st.sampled_from([0, 2, 3, 5]),
    seed=st.integers(0, 2**32),
)
def test_simulate_properties(
    n_groups: int,
    group_size: int | tuple[int, int],
    n_unit: int,
    n_group: int,
    sigma_alpha: float,
    sigma_beta: float,
    sigma_tau: float,
    n_categories: int,
    seed: int,
) -> None:
    sim = simulate_multisite(
        n_groups=n_groups,
        group_size=group_size,
        n_unit_covariates=n_unit,
        n_group_covariates=n_group,
        sigma_alpha=sigma_alpha,
        sigma_beta=sigma_beta,
        sigma_tau=sigma_tau,
        n_categories=n_categories,
        seed=seed,
    )
    data = sim.data
    low, high = (group_size, group_size) if isinstance(group_size, int) else group_size
    sizes = data["school"].value_counts()
    assert len(sizes) == n_groups and sizes.between(low, high).all()
    assert data.shape[1] == 3 + n_unit + n_group + (n_categories > 0)
    assert len(sim.unit_covariates) == n_unit + (n_categories > 0)
    assert len(sim.group_covariates) == n_group
    assert not data["y"].isna().any() and np.isfinite(data["y"]).all()
    assert ((sim.propensity > 0) & (sim.propensity < 1)).all()
    arms = data.groupby("school")["z"].agg(["min", "max"])
    assert (arms["min"] == 0).all() and (arms["max"] == 1).all()
    n_treated = data.groupby("school")["z"].sum().reindex(sim.catt.index)
    assert sim.att == pytest.approx(float((n_treated * sim.catt).sum() / n_treated.sum()))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"n_groups": 0}, "n_groups.*0"),
        ({"n_groups": 2.5}, "n_groups.*2.5"),
        ({"n_groups": True}, "n_groups.*True"),
        ({"group_size": 1}, "group_size.*1"),
        ({"group_size": (30, 10)}, r"group_size.*\(30, 10\)"),
        ({"group_size": (5, 10, 20)}, "group_size"),
        ({"group_size": "big"}, "group_size.*'big'"),
        ({"n_unit_covariates": 0}, "n_unit_covariates.*0"),
        ({"n_group_covariates": -1}, "n_group_covariates.*-1"),
        ({"sigma_alpha": -0.1}, r"sigma_alpha.*-0\.1"),
        ({"sigma_alpha": float("nan")}, "sigma_alpha.*nan"),
        ({"sigma_beta": -1.0}, "sigma_beta.*-1"),
        ({"sigma_beta": [0.5, 0.5]}, "sigma_beta.*n_unit_covariates=3"),
        ({"sigma_beta": [0.5, -0.5, 0.5]}, "sigma_beta"),
        ({"sigma_beta": "wide"}, "sigma_beta.*'wide'"),
        ({"sigma_tau": float("inf")}, "sigma_tau.*inf"),
        ({"n_categories": 1}, "n_categories.*1"),
        ({"n_categories": 27}, "n_categories.*27"),
        ({"seed": -3}, "seed.*-3"),
        ({"seed": 1.5}, r"seed.*1\.5"),
    ],
)
def test_bad_arguments_raise_data_error(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        simulate_multisite(**kwargs)  # type: ignore[arg-type]
