"""Per-draw effects do not depend on how the draws are split into chunks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import hand_built_tree, make_frame

import hierps
import hierps.posterior.draws as draws_module
from hierps.exceptions import HierpsWarning
from hierps.posterior.draws import from_idata
from hierps.pymc_model import compress


@pytest.fixture(scope="module")
def study():
    frame, roles = make_frame(seed=17, sizes=(8, 40), n_groups=5, n_unit=2, n_group=1)
    model = hierps.Model(frame, **roles)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        fit = model.fit_map(sigma_beta=0.5)
    return model.design, hand_built_tree(fit, chains=2, draws=23, spread=0.3)


def per_draw(design):
    """The numbers a draw holds: units, or covariate-pattern slots when they are more."""
    slots = len(compress(design).group) * max(1, len(design.unit_names))
    return max(design.n_units, slots)


def compute(design, tree, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        result = from_idata(design, tree, random_seed=7, store_weights=True, **kwargs)
    return {
        f"{group}/{name}": result.idata[group][name].to_numpy()
        for group in ("estimands", "weights")
        for name in result.idata[group].data_vars
    }


@pytest.mark.parametrize("estimand", ["att", "ate"])
@pytest.mark.parametrize("uncertainty", ["bayesian_bootstrap", "propensity"])
@pytest.mark.parametrize("draws_per_chunk", [1, 5, 9])
def test_chunked_and_unchunked_results_are_equal(
    study, monkeypatch, estimand, uncertainty, draws_per_chunk
):
    design, tree = study
    whole = compute(design, tree, estimand=estimand, uncertainty=uncertainty)
    monkeypatch.setattr(draws_module, "CHUNK_ELEMENTS", draws_per_chunk * per_draw(design))
    chunked = compute(design, tree, estimand=estimand, uncertainty=uncertainty)
    assert whole.keys() == chunked.keys()
    expected = {"estimands/treated_weight", "weights/weight", "weights/weight_draws"}
    if uncertainty == "bayesian_bootstrap":
        expected.add("weights/bootstrap_weight")
    assert expected <= whole.keys()
    for name, values in whole.items():
        assert chunked[name].shape == values.shape, name
        np.testing.assert_allclose(chunked[name], values, rtol=1e-12, atol=0, err_msg=name)


def test_the_chunk_size_bounds_the_draws_per_chunk(study, monkeypatch):
    design, tree = study
    sizes = []
    original = draws_module._bootstrap_masses

    def recording(rng, cells, outcome, n_draws, *rest):
        sizes.append(n_draws)
        return original(rng, cells, outcome, n_draws, *rest)

    monkeypatch.setattr(draws_module, "_bootstrap_masses", recording)
    monkeypatch.setattr(draws_module, "CHUNK_ELEMENTS", 10 * per_draw(design) + 3)
    compute(design, tree)
    assert sizes == [10, 10, 10, 10, 6]
