"""Results saved whole and loaded back as the kind that was saved, labels intact."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers import make_frame

import hierps
from hierps.exceptions import HierpsWarning
from hierps.posterior.draws import from_idata


def fitted(frame, roles, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return hierps.Model(frame, **roles).fit_map(**options)


@pytest.mark.parametrize(
    "labels",
    [
        lambda school: school,  # text
        lambda school: school.str[1:].astype(int) * 7,  # integers
        lambda school: [(2024, s) for s in school],  # tuples
    ],
    ids=["text", "int", "tuple"],
)
def test_map_result_round_trip(tmp_path, labels):
    frame, roles = make_frame(seed=2, sizes=(8, 30), n_groups=5, n_unit=2, n_group=1)
    frame["school"] = pd.Series(list(labels(frame["school"])), index=frame.index, dtype=object)
    frame.index = pd.Index(np.arange(len(frame)) * 3 + 100, name="pupil")
    fit = fitted(frame, roles, sigma_beta=[0.3, 3.0])
    loaded = hierps.load(fit.save(tmp_path / "fit.nc"))
    assert isinstance(loaded, hierps.MapResult)
    assert list(loaded.design.groups) == list(fit.design.groups)
    pd.testing.assert_series_equal(loaded.weights, fit.weights)
    pd.testing.assert_frame_equal(loaded.catt, fit.catt)
    assert loaded.att == fit.att
    np.testing.assert_array_equal(loaded.hyperparameters.sigma_beta, [0.3, 3.0])
    if not isinstance(fit.design.groups[0], tuple):  # balance tables index groups flat
        pd.testing.assert_frame_equal(loaded.balance(), fit.balance())
    # The loaded result warm-starts a refit like the original.
    refit = fitted(frame, roles, sigma_beta=1.0, init=loaded)
    assert refit.converged


def test_posterior_result_round_trip(tmp_path):
    frame, roles = make_frame(seed=4, sizes=(8, 30), n_groups=4, n_unit=2, n_group=1)
    design = hierps.Model(frame, **roles).design
    rng = np.random.default_rng(0)
    posterior = xr.Dataset(
        {
            "alpha": (("chain", "draw", "group"), rng.normal(-0.5, 0.1, (2, 30, 4))),
            "beta": (
                ("chain", "draw", "group", "unit_covariate"),
                rng.normal(0.3, 0.05, (2, 30, 4, 2)),
            ),
        },
        coords={"group": list(design.groups), "unit_covariate": list(design.unit_names)},
    )
    result = from_idata(design, xr.DataTree.from_dict({"posterior": posterior}), random_seed=1)
    result.problems = ["an example problem"]
    loaded = hierps.load(result.save(tmp_path / "posterior.nc"))
    assert isinstance(loaded, hierps.PosteriorResult)
    assert loaded.problems == ["an example problem"]
    assert (loaded.estimand, loaded.uncertainty) == (result.estimand, result.uncertainty)
    pd.testing.assert_frame_equal(loaded.catt, result.catt)
    pd.testing.assert_frame_equal(loaded.att, result.att)
    pd.testing.assert_series_equal(loaded.weights, result.weights)


def test_saving_replaces_a_file_whole(tmp_path):
    frame, roles = make_frame(seed=5, sizes=(8, 30), n_groups=4, n_unit=2, n_group=1)
    path = tmp_path / "fit.nc"
    first = fitted(frame, roles, sigma_beta=0.5)
    second = fitted(frame, roles, sigma_beta=5.0)
    first.save(path)
    second.save(path)
    assert hierps.load(path).att == second.att
    assert [p.name for p in tmp_path.iterdir()] == ["fit.nc"]  # no temporary left behind
