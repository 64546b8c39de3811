"""Shared fixtures: small simulated multilevel frames and compiled models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


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


@pytest.fixture(scope="session")
def small_study():
    return make_frame(seed=3, sizes=(5, 60), n_groups=6, n_unit=2, n_group=1)
