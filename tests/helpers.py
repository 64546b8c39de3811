"""Helpers shared by the test modules (fixtures live in ``conftest.py``).

- :func:`make_frame`: a frame simulated from a hierarchical logistic propensity model;
- :func:`quietly` and :func:`fit_quietly`: calls with ``HierpsWarning`` silenced;
- :func:`write`: a text file (a model file by default) in a temporary directory;
- :func:`hand_built_tree` and :func:`hand_built_posterior`: small posterior results without
  sampling, a hand-built DataTree passed to ``from_idata``. The draws scatter around a MAP
  fit's coefficients, so that the result has the shape and the derived groups of a real
  :class:`hierps.posterior.result.PosteriorResult` in milliseconds.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hierps.exceptions import HierpsWarning

#: Tests of where warnings point: a mutation run wraps every function in one more call, so
#: they are judged in the normal run only.
not_under_mutation = pytest.mark.skipif(
    "MUTANT_UNDER_TEST" in os.environ, reason="mutation runs add a stack frame to every call"
)


def make_frame(
    seed: int = 0,
    sizes: tuple[int, int] | list[int] = (5, 500),
    n_groups: int = 12,
    n_unit: int = 3,
    n_group: int = 2,
    categorical_levels: int = 0,
    sigma_beta: float = 0.4,
) -> tuple[pd.DataFrame, dict]:
    """A frame from a hierarchical logistic propensity model, with the column roles."""
    rng = np.random.default_rng(seed)
    if isinstance(sizes, tuple):
        size = rng.integers(sizes[0], sizes[1] + 1, n_groups)
        size[0], size[-1] = sizes  # always include the extremes
    else:
        size = np.asarray(sizes)
        n_groups = len(size)
    codes = np.repeat(np.arange(n_groups), size)
    n = len(codes)
    x = rng.normal(size=(n, n_unit)) + rng.normal(scale=0.5, size=(n_groups, n_unit))[codes]
    v = rng.normal(size=(n_groups, n_group))
    beta = 0.4 + sigma_beta * rng.normal(size=(n_groups, n_unit))
    eta = -0.7 + (v @ np.full(n_group, 0.3))[codes] + 0.5 * rng.normal(size=n_groups)[codes]
    eta = eta + np.einsum("nk,nk->n", x, beta[codes])
    frame = pd.DataFrame({f"x{k + 1}": x[:, k] for k in range(n_unit)})
    categorical = []
    if categorical_levels:
        labels = np.array([chr(ord("a") + k) for k in range(categorical_levels)])
        level = rng.integers(0, categorical_levels, n)
        frame["c1"] = labels[level]
        eta = eta + 0.3 * (level - categorical_levels / 2) / categorical_levels
        categorical = ["c1"]
    treated = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int)
    # Every group gets both arms so that all identities have something to balance.
    for j in range(n_groups):
        rows = np.flatnonzero(codes == j)
        treated[rows[0]], treated[rows[-1]] = 1, 0
    frame["school"] = [f"s{j:03d}" for j in codes]
    frame["z"] = treated
    frame["y"] = x[:, 0] + treated * (1 + 0.5 * v[codes, 0] if n_group else 1) + rng.normal(size=n)
    for k in range(n_group):
        frame[f"v{k + 1}"] = v[codes, k]
    roles = dict(
        treatment="z",
        group="school",
        outcome="y",
        unit_covariates=[f"x{k + 1}" for k in range(n_unit)] + categorical,
        group_covariates=[f"v{k + 1}" for k in range(n_group)],
    )
    return frame, roles


def quietly(function, *args, **kwargs):
    """``function(*args, **kwargs)`` with ``HierpsWarning`` silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return function(*args, **kwargs)


def fit_quietly(model, **hyperparameters):
    """``model.fit_map(**hyperparameters)`` with ``HierpsWarning`` silenced."""
    return quietly(model.fit_map, **hyperparameters)


def write(tmp_path: Path, text: str, name: str = "model.toml") -> Path:
    """``text`` written to ``tmp_path / name``."""
    path = tmp_path / name
    path.write_text(text)
    return path


def hand_built_tree(
    fit,
    chains: int = 2,
    draws: int = 60,
    spread: float = 0.1,
    seed: int = 0,
    divergences: int = 0,
) -> xr.DataTree:
    """Posterior draws of the propensity model around ``fit.coefficients``, with sample stats.

    ``alpha`` (chain, draw, group), ``beta`` (chain, draw, group, unit_covariate) and
    hyperparameters ``intercept``, ``sigma_alpha``, ``sigma_beta`` (varying_covariate);
    ``sample_stats`` with ``diverging`` (the first ``divergences`` draws of chain 0) and iid
    ``energy`` (E-BFMI ≈ 2).
    """
    rng = np.random.default_rng(seed)
    coefficients = fit.coefficients
    design = fit.design
    shape = (chains, draws)
    alpha = coefficients["alpha"].to_numpy() + spread * rng.normal(size=(*shape, design.n_groups))
    variables = {
        "alpha": (("chain", "draw", "group"), alpha),
        "intercept": (("chain", "draw"), rng.normal(size=shape)),
        "sigma_alpha": (("chain", "draw"), np.abs(rng.normal(size=shape))),
    }
    coords = {
        "chain": np.arange(chains),
        "draw": np.arange(draws),
        "group": list(design.groups),
    }
    if design.unit_names:
        beta = coefficients["beta"].to_numpy()
        variables["beta"] = (
            ("chain", "draw", "group", "unit_covariate"),
            beta + spread * rng.normal(size=(*shape, *beta.shape)),
        )
        varying = list(design.varying_names)
        variables["sigma_beta"] = (
            ("chain", "draw", "varying_covariate"),
            np.abs(rng.normal(size=(*shape, len(varying)))),
        )
        coords["unit_covariate"] = list(design.unit_names)
        coords["varying_covariate"] = varying
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


def hand_built_posterior(fit, store_weights: bool = False, estimand: str = "att", **kwargs):
    """A :class:`hierps.posterior.result.PosteriorResult` from :func:`hand_built_tree`."""
    from hierps.posterior.draws import from_idata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return from_idata(
            fit.design,
            hand_built_tree(fit, **kwargs),
            uncertainty="propensity",
            estimand=estimand,
            random_seed=1,
            store_weights=store_weights,
        )


def cvxpy_primal(model, fit, deviations: str = "normal"):
    """The primal of the MAP (docs/math.md §7, §19) solved by cvxpy with an exponential-cone
    solver: entropy of the control weights, the quadratic penalties of the Gaussian priors,
    and for the slope deviations a quadratic penalty (normal), a box (laplace) or a
    spectral-norm ball (low_rank) on the within-group imbalances. Returns the control rows,
    their weights and the optimal value."""
    import pytest

    cp = pytest.importorskip("cvxpy")
    d = model.design
    h = fit.hyperparameters
    treated = d.treatment == 1
    controls = np.flatnonzero(~treated)
    x, v, codes = d.unit_matrix, d.group_matrix, d.group_codes
    n1_group = np.bincount(codes, weights=treated, minlength=d.n_groups)
    indicator = np.zeros((len(controls), d.n_groups))
    indicator[np.arange(len(controls)), codes[controls]] = 1.0
    w = cp.Variable(len(controls), nonneg=True)
    group_gap = indicator.T @ w - n1_group
    global_imbalance = x[controls].T @ w - x[treated].sum(axis=0)
    objective = -cp.sum(cp.entr(w)) - cp.sum(w)
    objective += h.sigma_intercept**2 / 2 * cp.square(cp.sum(w) - treated.sum())
    objective += h.sigma_alpha**2 / 2 * cp.sum_squares(group_gap)
    if v.shape[1]:
        objective += h.sigma_gamma**2 / 2 * cp.sum_squares(v.T @ group_gap)
    objective += h.sigma_mu_beta**2 / 2 * cp.sum_squares(global_imbalance)
    varying = np.flatnonzero(d.varying)
    sigma_beta = h.sigma_beta_vector(len(varying))
    rows = [
        indicator.T @ cp.multiply(x[controls, k], w)
        - np.bincount(codes[treated], weights=x[treated, k], minlength=d.n_groups)
        for k in varying
    ]
    constraints = []
    if deviations == "normal":
        for scale, row in zip(sigma_beta, rows, strict=True):
            objective += scale**2 / 2 * cp.sum_squares(row)
    elif deviations == "laplace":
        constraints = [cp.abs(cp.vstack(rows)) <= 1.0 / sigma_beta[0]]
    else:
        constraints = [cp.sigma_max(cp.vstack(rows)) <= 1.0 / sigma_beta[0]]
    problem = cp.Problem(cp.Minimize(objective), constraints)
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    return controls, w.value, problem.value
