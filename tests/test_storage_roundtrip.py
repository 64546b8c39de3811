"""Saving a MAP result and loading it back keeps names, attributes and dtypes."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers import make_frame

import hierps
from hierps._version import __version__
from hierps.exceptions import HierpsWarning
from hierps.workflow.storage import SavedAnalysis, load, map_dataset, save


@pytest.fixture(scope="module")
def fit():
    frame, roles = make_frame(seed=5, sizes=(6, 40), n_groups=5, n_unit=2, n_group=1)
    frame.index = pd.Index([f"u{i}" for i in range(len(frame))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return hierps.Model(frame, **roles).fit_map(sigma_beta=0.5)


@pytest.fixture(scope="module")
def saved(fit, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "two" / "levels" / "result.nc"
    written = save(xr.DataTree.from_dict({"map": map_dataset(fit)}), path)
    assert written == path and path.stat().st_size > 0
    return load(path)


def test_catt_table_round_trips_with_its_names_and_dtypes(fit, saved):
    assert isinstance(saved, SavedAnalysis)
    catt = saved.catt
    assert catt.index.name == fit.design.roles.group == "school"
    assert list(catt.columns) == list(fit.catt.columns)
    assert dict(catt.dtypes) == dict(fit.catt.dtypes)
    pd.testing.assert_frame_equal(catt, fit.catt, check_index_type=False, rtol=1e-14)


def test_weights_and_att_round_trip(fit, saved):
    weights = saved.weights
    assert weights.name == "weight" and weights.dtype == np.float64
    assert list(weights.index) == list(fit.weights.index)
    pd.testing.assert_series_equal(weights, fit.weights, check_index_type=False, rtol=1e-14)
    assert isinstance(saved.att, float) and saved.att == fit.att


def test_attributes_record_roles_convergence_and_provenance(fit, saved):
    attrs = saved.tree["map"].attrs
    design = fit.design
    assert attrs["group_column"] == "school"
    assert attrs["treatment_column"] == "z"
    assert attrs["outcome_column"] == "y"
    assert int(attrs["converged"]) == int(fit.converged) == 1
    assert int(attrs["iterations"]) == fit.iterations
    assert float(attrs["max_gradient"]) == fit.max_gradient
    assert attrs["creation_library"] == "hierps"
    assert attrs["creation_library_version"] == __version__
    assert attrs["created_at"].endswith("+00:00")
    for name, value in fit.hyperparameters.as_dict().items():
        assert attrs[f"hyperparameter_{name}"] == str(np.asarray(value).tolist())
    assert design.roles.treatment == "z"


def test_coefficients_round_trip_with_their_dims(fit, saved):
    dataset = saved.tree["map"].to_dataset()
    for name, variable in fit.coefficients.data_vars.items():
        stored = dataset[f"coef_{name}"]
        assert stored.dims == variable.dims, name
        np.testing.assert_array_equal(stored.to_numpy(), variable.to_numpy())
    for name in dataset.data_vars:
        if name.startswith("catt_"):
            assert dataset[name].dims == ("group",), name
    assert dataset["weight"].dims == ("obs",) and dataset["att"].dims == ()
    assert [str(g) for g in dataset["group"].to_numpy()] == list(fit.design.groups)
    assert [str(o) for o in dataset["obs"].to_numpy()] == list(fit.design.index)


def test_a_design_without_outcome_saves_weights_only(tmp_path):
    frame, roles = make_frame(seed=6, sizes=(6, 30), n_groups=4, n_unit=1, n_group=1)
    roles.pop("outcome")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        fit = hierps.Model(frame, **roles).fit_map()
    dataset = map_dataset(fit)
    assert "att" not in dataset and not any(n.startswith("catt_") for n in dataset.data_vars)
    assert dataset.attrs["outcome_column"] == ""
    saved = load(save(xr.DataTree.from_dict({"map": dataset}), tmp_path / "r.nc"))
    assert saved.catt.empty and saved.catt.index.name == "school"
    pd.testing.assert_series_equal(saved.weights, fit.weights, check_index_type=False)


def test_files_are_written_and_read_with_h5netcdf(fit, tmp_path, monkeypatch):
    engines = []
    write, read = xr.DataTree.to_netcdf, xr.open_datatree

    def spy_write(self, path, **kwargs):
        engines.append(("write", kwargs.get("engine")))
        return write(self, path, **kwargs)

    def spy_read(path, **kwargs):
        engines.append(("read", kwargs.get("engine")))
        return read(path, **kwargs)

    monkeypatch.setattr(xr.DataTree, "to_netcdf", spy_write)
    monkeypatch.setattr(xr, "open_datatree", spy_read)
    load(save(xr.DataTree.from_dict({"map": map_dataset(fit)}), tmp_path / "r.nc"))
    assert engines == [("write", "h5netcdf"), ("read", "h5netcdf")]
