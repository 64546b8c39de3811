"""The identified coding of categorical covariates: the all-levels model minus its flat part."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pymc as pm
import pytest
from scipy.stats import norm

import hierps
from hierps.design.coding import categorical_blocks, coefficient_names, expansion
from hierps.exceptions import HierpsWarning
from hierps.pymc_coding import coding_of

FIXED_SCALES = {"sigma_mu_beta": 1.1, "sigma_gamma": 0.9, "sigma_intercept": 2.5}


def frame_with_categoricals(seed: int = 3, n: int = 500) -> pd.DataFrame:
    """Schools with a unit-level categorical (with missing values) and a school-level one."""
    rng = np.random.default_rng(seed)
    school = rng.integers(0, 6, n)
    level = rng.choice(["a", "b", "c", "d"], n, p=[0.4, 0.3, 0.2, 0.1])
    frame = pd.DataFrame(
        {
            "school": [f"s{j}" for j in school],
            "x1": rng.normal(size=n),
            "c1": pd.Series(level).where(rng.random(n) > 0.05),
            "kind": np.array(["u", "r", "s", "u", "r", "s"])[school],
            "v1": np.array([0.3, -1.2, 0.8, 0.1, -0.4, 1.0])[school],
        }
    )
    frame["z"] = (rng.random(n) < 0.3 + 0.2 * (level == "a")).astype(int)
    return frame


@pytest.fixture(scope="module")
def model() -> hierps.Model:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)  # the missing values of c1
        return hierps.Model(
            frame_with_categoricals(),
            treatment="z",
            group="school",
            unit_covariates=["x1", "c1"],
            group_covariates=["kind", "v1"],
        )


@pytest.mark.parametrize("standardize", [True, "pooled", False])
def test_blocks_have_a_flat_direction(standardize):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        design = hierps.Model(
            frame_with_categoricals(),
            treatment="z",
            group="school",
            unit_covariates=["x1", "c1"],
            group_covariates=["kind", "v1"],
            standardize=standardize,
        ).design
    (block,) = categorical_blocks(
        design.unit_names, design.unit_sources, design.unit_scaling, design.unit_matrix
    )
    # Four levels and the missingness indicator.
    assert [design.unit_names[c] for c in block.columns] == [
        "c1[a]",
        "c1[b]",
        "c1[c]",
        "c1[d]",
        "c1_missing",
    ]
    combination = design.unit_matrix[:, block.columns] @ block.flat
    assert np.ptp(combination) < 1e-10
    names = coefficient_names(design.unit_names, [block])
    assert names == ["x1", "c1:1", "c1:2", "c1:3", "c1:4"]
    matrix = expansion(len(design.unit_names), [block])
    # Orthonormal columns, orthogonal to the flat direction, identity outside the block.
    np.testing.assert_allclose(matrix.T @ matrix, np.eye(len(names)), atol=1e-12)
    np.testing.assert_allclose(matrix[block.columns].T @ block.flat, 0.0, atol=1e-12)
    assert matrix[0, 0] == 1.0


def test_numeric_columns_and_single_levels_make_no_block():
    frame = frame_with_categoricals().dropna()
    design = hierps.Model(
        frame, treatment="z", group="school", unit_covariates=["x1"], group_covariates=["v1"]
    ).design
    coding = coding_of(design)
    assert coding.unit == [] and coding.group == []
    pymc_model = hierps.Model(
        frame, treatment="z", group="school", unit_covariates=["x1"], group_covariates=["v1"]
    ).build_pymc()
    assert {rv.name for rv in pymc_model.free_RVs} >= {"mu_beta", "gamma", "beta_offset"}


def _full_point(full, identified_point, coding, design, rng, sigma):
    """The all-levels point whose identified part is ``identified_point``, with random flat
    components; returns it and the log-density of those flat components."""
    point = dict(identified_point)
    extra = 0.0
    # mu_beta and gamma: the free coordinates mapped back, plus t times the flat direction.
    for name, blocks, n_columns, prior_sd in (
        ("mu_beta", coding.unit, len(design.unit_names), FIXED_SCALES["sigma_mu_beta"]),
        ("gamma", coding.group, len(design.group_names), FIXED_SCALES["sigma_gamma"]),
    ):
        value = expansion(n_columns, blocks) @ point.pop(f"{name}_contrast")
        for block in blocks:
            t = rng.normal(scale=0.7)
            value[block.columns] += t * block.flat
            extra += norm.logpdf(t, 0.0, prior_sd)
        point[name] = value
    # beta_offset: z = H(sigma) [w; a] in every block, with a random a per group.
    offsets = point["beta_offset"]
    columns = []
    free = 0
    for block in coding.varying:
        start = int(block.columns[0])
        while len(columns) < start:
            columns.append(offsets[:, free])
            free += 1
        k = len(block)
        direction = block.flat / sigma[block.columns]
        direction /= np.linalg.norm(direction)
        u = direction.copy()
        u[-1] += 1.0
        a = rng.normal(size=offsets.shape[0])
        padded = np.column_stack([offsets[:, free : free + k - 1], a])
        z = padded - 2.0 * np.outer(padded @ u, u) / (u @ u)
        columns += list(z.T)
        extra += norm.logpdf(a).sum()
        free += k - 1
    columns += list(offsets[:, free:].T)
    point["beta_offset"] = np.column_stack(columns)
    return point, extra


def test_identified_density_is_the_full_density_minus_the_flat_components(model):
    """Exact equivalence: full logp(identified part + flat part) = identified logp + the
    prior density of the flat part, at random points with unequal per-level scales."""
    design = model.design
    coding = coding_of(design)
    assert [b.source for b in coding.unit] == ["c1"] and [b.source for b in coding.group] == [
        "kind"
    ]
    sigma = np.linspace(0.3, 1.7, len(design.varying_names))
    identified = model.build_pymc(coding="identified", sigma_beta=sigma, **FIXED_SCALES)
    full = model.build_pymc(coding="full", sigma_beta=sigma, **FIXED_SCALES)
    logp_identified = identified.compile_logp()
    logp_full = full.compile_logp()
    rng = np.random.default_rng(0)
    for _ in range(3):
        point = {
            name: rng.normal(scale=0.5, size=np.shape(value))
            for name, value in identified.initial_point().items()
        }
        full_point, extra = _full_point(full, point, coding, design, rng, sigma)
        np.testing.assert_allclose(
            logp_full(full_point), logp_identified(point) + extra, rtol=1e-10
        )


def test_identified_coding_keeps_every_level_and_the_linear_predictor(model):
    pymc_model = model.build_pymc(**FIXED_SCALES)
    names = {rv.name for rv in pymc_model.free_RVs}
    assert {"mu_beta_contrast", "gamma_contrast", "beta_offset"} <= names
    assert "mu_beta" not in names
    assert pymc_model.named_vars_to_dims["mu_beta"] == ("unit_covariate",)
    assert pymc_model.named_vars_to_dims["beta_offset"] == ("group", "varying_contrast")
    assert len(pymc_model.coords["unit_covariate"]) == len(model.design.unit_names)
    with pytest.raises(ValueError, match="coding='reduced'"):
        model.build_pymc(coding="reduced")


def test_a_categorical_shares_one_logit_scale_across_its_levels(model):
    """With the hyperprior, sigma_beta has one entry per covariate; a categorical's level
    deviations have that SD on the logit scale, whatever the level's frequency."""
    design = model.design
    pymc_model = model.build_pymc(**FIXED_SCALES)
    assert pymc_model.named_vars_to_dims["sigma_beta"] == ("varying_scale",)
    assert list(pymc_model.coords["varying_scale"]) == ["x1", "c1"]
    prior = pm.draw(pymc_model["beta"] - pymc_model["mu_beta"], draws=4000, random_seed=1)
    prior_sigma = pm.draw(pymc_model["sigma_beta"], draws=1)  # shape check only
    assert prior_sigma.shape == (2,)
    levels = [i for i, name in enumerate(design.unit_names) if name.startswith("c1[")]
    scale = design.unit_scaling.loc[[design.unit_names[i] for i in levels], "scale"].to_numpy()
    logit = prior[:, 0, levels] / scale  # one school's level deviations, per unit indicator
    # Exchangeable levels: equal spread on the logit scale (a zero-sum constraint over the
    # levels and the missingness indicator shrinks every variance by the same factor).
    spread = logit.std(axis=0)
    np.testing.assert_allclose(spread / spread.mean(), 1.0, atol=0.08)


@pytest.mark.slow
def test_calibrated_mode_is_the_same_under_both_codings(model):
    """The MAP solver works with every level; the identified model's mode gives its weights."""
    fit = model.fit_map(sigma_alpha=1.3, sigma_beta=0.7, **FIXED_SCALES)
    identified = model.build_pymc(
        loss="calibrated", coding="identified", sigma_alpha=1.3, sigma_beta=0.7, **FIXED_SCALES
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = pm.find_MAP(model=identified, progressbar=False, maxeval=20000)
    design = model.design
    eta = found["alpha"][design.group_codes] + np.einsum(
        "nk,nk->n", design.unit_matrix, found["beta"][design.group_codes]
    )
    control = design.treatment == 0
    np.testing.assert_allclose(
        np.exp(eta[control]), fit.weights.to_numpy()[control], rtol=2e-3, atol=1e-4
    )
