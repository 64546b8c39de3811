"""The pooling path: global vs within-group balance as sigma_beta grows."""

from __future__ import annotations

import pytest
from helpers import make_frame

import hierps


@pytest.fixture(scope="module")
def path():
    frame, roles = make_frame(
        seed=51, sizes=(60, 150), n_groups=6, n_unit=2, n_group=1, sigma_beta=1.0
    )
    model = hierps.Model(frame, **roles)
    return model, hierps.pooling_path(model, sigma_beta=[0.01, 0.1, 1.0, 10.0, 100.0])


def test_path_columns_and_trade_off(path):
    _, table = path
    assert list(table.index) == [0.01, 0.1, 1.0, 10.0, 100.0]
    assert {
        "global_max_smd",
        "within_mean_smd",
        "within_max_smd",
        "ess",
        "min_group_ess",
        "att",
        "iterations",
    } <= set(table.columns)
    # More within-group freedom: within-group imbalance falls, effective sample size falls.
    assert table["within_mean_smd"].iloc[-1] < 0.2 * table["within_mean_smd"].iloc[0]
    assert table["ess"].iloc[-1] < table["ess"].iloc[0]
    assert (table["global_max_smd"] < 0.05).all()


def test_path_points_equal_cold_fits(path):
    model, table = path
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cold = model.fit_map(sigma_beta=10.0)
    assert table.loc[10.0, "att"] == pytest.approx(cold.att, rel=1e-8)
    assert table.loc[10.0, "ess"] == pytest.approx(cold.ess, rel=1e-8)


def test_bad_grid():
    frame, roles = make_frame(seed=52, sizes=(20, 40), n_groups=3)
    model = hierps.Model(frame, **roles)
    with pytest.raises(ValueError, match="sigma_beta"):
        hierps.pooling_path(model, sigma_beta=[0.1, -1.0])
    with pytest.raises(ValueError, match="sigma_beta"):
        hierps.pooling_path(model, sigma_beta=[])
