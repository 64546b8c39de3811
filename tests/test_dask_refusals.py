"""What a model of a Dask DataFrame cannot fit is refused by name, before any work."""

from __future__ import annotations

import dask
import dask.dataframe as dd
import pytest

import hierps
from hierps.exceptions import ArgumentError


@pytest.fixture(scope="module")
def dask_frame():
    study = hierps.datasets.simulate_multisite(n_groups=6, seed=2)
    roles = dict(
        treatment="z", group="school", outcome="y", unit_covariates=list(study.unit_covariates)
    )
    return dd.from_pandas(study.data.assign(b=1.0), npartitions=2), roles


def test_base_weights_are_refused(dask_frame):
    frame, roles = dask_frame
    with dask.config.set(scheduler="synchronous"), pytest.raises(ArgumentError, match="weights="):
        hierps.Model(frame, weights="b", **roles)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"estimand": "ate"}, "estimand='ate'"),
        ({"sigma_beta": "auto"}, "'auto'"),
        ({"deviations": "laplace"}, "deviations='laplace'"),
    ],
)
def test_estimands_and_auto_scales_are_refused(dask_frame, options, message):
    frame, roles = dask_frame
    with dask.config.set(scheduler="synchronous"):
        model = hierps.Model(frame, **roles)
        with pytest.raises(ArgumentError, match=message):
            model.fit_map(**options)
