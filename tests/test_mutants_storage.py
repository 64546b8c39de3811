"""Result files: designs, labels, attributes and every refusal of a damaged file, exactly."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers import hand_built_posterior, make_frame, quietly

import hierps
from hierps._version import __version__
from hierps.exceptions import ArgumentTypeError, ResultFileError
from hierps.workflow import storage
from hierps.workflow.storage import (
    SavedAnalysis,
    design_dataset,
    design_from_dataset,
    load,
    map_dataset,
    save,
    save_result,
)

FIELDS = (
    "unit_names",
    "group_names",
    "standardize",
    "unit_sources",
    "group_sources",
)
ARRAYS = {
    "treatment": np.int8,
    "group_codes": np.int64,
    "unit_matrix": np.float64,
    "group_matrix": np.float64,
    "varying": np.bool_,
}


def assert_same_design(loaded, design):
    assert loaded.roles.__dict__ == design.roles.__dict__
    for name in FIELDS:
        assert getattr(loaded, name) == getattr(design, name), name
        assert type(getattr(loaded, name)) is type(getattr(design, name)), name
    for name, dtype in ARRAYS.items():
        value = getattr(loaded, name)
        np.testing.assert_array_equal(value, getattr(design, name), err_msg=name)
        assert value.dtype == dtype, name
    for name in ("unit_matrix", "group_matrix"):
        assert getattr(loaded, name).flags.c_contiguous, name
    for name in ("outcome", "base_weights"):
        value, expected = getattr(loaded, name), getattr(design, name)
        if expected is None:
            assert value is None, name
        else:
            assert value.dtype == np.float64, name
            np.testing.assert_array_equal(value, expected, err_msg=name)
    for name in ("index", "groups"):
        index, expected = getattr(loaded, name), getattr(design, name)
        pd.testing.assert_index_equal(index, expected, exact="equiv", check_exact=True)
        assert [type(v) for v in index] == [type(v) for v in expected], name
    for name in ("unit_scaling", "group_scaling"):
        table, expected = getattr(loaded, name), getattr(design, name)
        assert list(table.columns) == ["center", "scale"], name
        assert table.index.name == "covariate" and table.index.dtype == object, name
        assert list(table.index) == list(expected.index), name
        np.testing.assert_array_equal(table.to_numpy(), expected.to_numpy(float), err_msg=name)
        assert (table.dtypes == np.float64).all(), name


def round_trip(design, tmp_path=None):
    dataset = design_dataset(design)
    if tmp_path is not None:
        path = tmp_path / "design.nc"
        dataset.to_netcdf(path, engine="h5netcdf")
        with xr.open_dataset(path, engine="h5netcdf") as stored:
            dataset = stored.load()
    return design_from_dataset(dataset)


def model_of(frame, roles, **options):
    return hierps.Model(frame, **{**roles, **options})


@pytest.fixture(scope="module")
def rich_design():
    frame, roles = make_frame(seed=3, sizes=(6, 20), n_groups=4, n_unit=2, categorical_levels=3)
    frame["w"] = np.linspace(0.5, 2.0, len(frame))
    frame.index = pd.Index(np.arange(len(frame)) * 2 + 7, name="pupil")
    return model_of(
        frame, roles, categorical=["c1"], varying_slopes=["x1"], weights="w", standardize="pooled"
    ).design


@pytest.mark.parametrize("on_disk", [False, True], ids=["memory", "file"])
def test_a_rich_design_round_trips_field_by_field(rich_design, on_disk, tmp_path):
    loaded = round_trip(rich_design, tmp_path if on_disk else None)
    assert_same_design(loaded, rich_design)
    assert loaded.roles.varying_slopes == ("x1",) and loaded.roles.weights == "w"
    assert loaded.roles.categorical == ("c1",)
    assert isinstance(loaded.roles.unit_covariates, tuple)
    assert isinstance(loaded.roles.group_covariates, tuple)
    assert loaded.standardize == "pooled"
    assert loaded.unit_sources  # the categorical's dummies name their source column


def test_design_dataset_names_its_dims_dtypes_and_attributes(rich_design):
    dataset = design_dataset(rich_design)
    dims = {
        "treatment": ("obs",),
        "group_codes": ("obs",),
        "unit_matrix": ("obs", "unit_covariate"),
        "group_matrix": ("group", "group_covariate"),
        "varying": ("unit_covariate",),
        "unit_center": ("unit_covariate",),
        "unit_scale": ("unit_covariate",),
        "group_center": ("group_covariate",),
        "group_scale": ("group_covariate",),
        "outcome": ("obs",),
        "base_weight": ("obs",),
    }
    assert {name: dataset[name].dims for name in dataset.data_vars} == dims
    assert dataset["treatment"].dtype == np.int8 and dataset["varying"].dtype == np.int8
    assert dataset["group_codes"].dtype == np.int64
    np.testing.assert_array_equal(dataset["base_weight"], rich_design.base_weights)
    np.testing.assert_array_equal(dataset["outcome"], rich_design.outcome)
    np.testing.assert_array_equal(
        dataset["unit_scale"], rich_design.unit_scaling["scale"].to_numpy(float)
    )
    np.testing.assert_array_equal(
        dataset["group_center"], rich_design.group_scaling["center"].to_numpy(float)
    )
    assert list(dataset["unit_covariate"].values) == list(rich_design.unit_names)
    assert list(dataset["group_covariate"].values) == list(rich_design.group_names)
    for name in ("unit_covariate", "group_covariate"):  # variable-length strings in the file
        assert dataset[name].dtype == object, name
    attrs = dataset.attrs
    roles = json.loads(attrs["roles"])
    assert roles["varying_slopes"] == ["x1"] and roles["group"] == "school"
    assert attrs["standardize"] == "pooled"
    assert json.loads(attrs["unit_sources"]) == rich_design.unit_sources
    assert json.loads(attrs["group_sources"]) == rich_design.group_sources
    assert (attrs["obs_encoding"], attrs["group_encoding"]) == ("native", "native")
    assert (attrs["index_name"], attrs["group_name"]) == ('"pupil"', '"school"')


def test_a_design_without_outcome_weights_or_slopes_round_trips():
    frame, roles = make_frame(seed=8, sizes=(5, 12), n_groups=3, n_unit=1, n_group=1)
    roles.pop("outcome")
    design = model_of(frame, roles).design
    dataset = design_dataset(design)
    assert "outcome" not in dataset and "base_weight" not in dataset
    loaded = design_from_dataset(dataset)
    assert_same_design(loaded, design)
    assert loaded.roles.varying_slopes is None and loaded.roles.outcome is None


LABELS = {
    "int": (pd.Index([3, 1, 2], name="id"), "native"),
    "float": (pd.Index([0.5, 1.5, 2.5], name=2.0), "native"),
    "bool": (pd.Index([True, False, True], name=None), "native"),
    "text": (pd.Index(["a", "b", "c"], name=7, dtype=object), "native"),
    "tuple": (pd.Index([(1, "a"), (1, "b"), (2, None)], tupleize_cols=False), "json"),
    "nested": (pd.Index([(1, (2, 3.5)), (True, ("x",))], tupleize_cols=False), "json"),
    "mixed": (pd.Index([1, "a", None, 2.5], name="m"), "json"),
    "numpy": (pd.Index([np.int64(4), "b"], dtype=object), "json"),
    "multi": (pd.MultiIndex.from_tuples([(1, "a"), (2, "b")], names=["k", "l"]), "json"),
}


@pytest.mark.parametrize("case", list(LABELS))
def test_labels_keep_their_values_types_and_name(case):
    index, encoding = LABELS[case]
    values, how = storage._label_array(index, "row")
    assert how == encoding
    if encoding == "json" or case == "text":  # variable-length strings in the file
        assert values.dtype == object and all(isinstance(v, str) for v in values)
    back = storage._labels(values, how, index.name)
    assert list(back) == list(index)
    assert [type(v) for v in back] == [
        type(v.item() if isinstance(v, np.generic) else v) for v in list(index)
    ]
    assert back.name == index.name
    if case not in ("multi", "numpy", "text"):
        pd.testing.assert_index_equal(back, index, exact=True)
    if case == "multi":
        assert back.nlevels == 1 and back.dtype == object


def test_tuple_labels_are_encoded_as_tagged_json():
    values, how = storage._label_array(pd.Index([(1, "a")], tupleize_cols=False), "row")
    assert how == "json" and list(values) == ['{"tuple": [1, "a"]}']
    assert storage._from_plain({"other": 1}) == {"other": 1}
    assert storage._plain(np.float32(0.5)) == 0.5 and type(storage._plain(np.int8(3))) is int


def test_categorical_labels_round_trip_as_their_values():
    index = pd.CategoricalIndex(["b", "a", "b"], name="g")
    values, how = storage._label_array(index, "group")
    assert how == "native" and list(values) == ["b", "a", "b"]
    index = pd.CategoricalIndex([2, 1], name="g")
    values, how = storage._label_array(index, "group")
    assert how == "json" and list(storage._labels(values, how, "g")) == [2, 1]


def test_labels_that_cannot_be_saved_name_the_first_one():
    index = pd.Index([pd.Timestamp("2024-01-02"), 5], dtype=object)
    message = (
        "the group labels (e.g. Timestamp('2024-01-02 00:00:00') of type Timestamp) cannot be "
        "saved: use numbers, text or tuples of them (e.g. reset_index())"
    )
    with pytest.raises(ArgumentTypeError, match=f"^{re.escape(message)}$"):
        storage._label_array(index, "group")
    with pytest.raises(TypeError, match=r"^object$"):
        storage._plain(object())


@pytest.mark.parametrize(
    ("name", "stored"),
    [(None, "null"), ("pupil", '"pupil"'), (3, "3"), (2.5, "2.5"), (("a", 1), "\"('a', 1)\"")],
)
def test_index_names_are_stored_plainly(name, stored):
    frame, roles = make_frame(seed=8, sizes=(5, 12), n_groups=3, n_unit=1, n_group=1)
    frame.index = pd.Index(np.arange(len(frame)), name=name)
    design = model_of(frame, roles).design
    dataset = design_dataset(design)
    assert dataset.attrs["index_name"] == stored
    loaded = design_from_dataset(dataset)
    expected = name if not isinstance(name, tuple) else str(name)
    assert loaded.index.name == expected
    assert storage._plain_name(True) is True


# -- MAP results ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    frame, roles = make_frame(seed=5, sizes=(6, 30), n_groups=4, n_unit=2, n_group=1)
    return frame, roles


@pytest.fixture(scope="module")
def map_fit(small):
    frame, roles = small
    return quietly(model_of(frame, roles).fit_map, sigma_beta=0.7)


@pytest.fixture(scope="module")
def saved_path(map_fit, tmp_path_factory):
    return map_fit.save(tmp_path_factory.mktemp("map") / "fit.nc")


def test_map_dataset_attributes(map_fit):
    attrs = map_dataset(map_fit).attrs
    assert attrs["converged"] == 1 and type(attrs["converged"]) is int
    assert attrs["iterations"] == map_fit.iterations
    assert attrs["objective"] == map_fit.objective
    assert attrs["estimand"] == "att"
    assert attrs["weights_column"] == ""
    assert attrs["n_excluded"] == map_fit.n_excluded
    assert attrs["hyperparameter_sigma_beta"] == "0.7"
    assert "deviations" not in attrs and "scale_selection" not in attrs
    created = datetime.fromisoformat(attrs["created_at"])
    assert created.microsecond == 0 and created.utcoffset().total_seconds() == 0
    assert attrs["created_at"] == created.isoformat(timespec="seconds")


def test_map_dataset_names_effects_after_the_estimand(small):
    frame, roles = small
    fit = quietly(model_of(frame, roles).fit_map, estimand="ate")
    dataset = map_dataset(fit)
    assert "ate" in dataset and dataset["ate"].item() == fit.overall_effect
    assert any(name.startswith("cate_") for name in dataset.data_vars)
    assert dataset.attrs["estimand"] == "ate"


def test_map_round_trip_keeps_estimand_deviations_and_weights_column(small, tmp_path):
    frame, roles = small
    frame = frame.assign(w=np.linspace(1.0, 2.0, len(frame)))
    fit = quietly(
        model_of(frame, roles, weights="w").fit_map,
        estimand="atc",
        deviations="laplace",
        sigma_beta=0.5,
    )
    dataset = map_dataset(fit)
    assert dataset.attrs["deviations"] == "laplace" and dataset.attrs["weights_column"] == "w"
    loaded = load(fit.save(tmp_path / "fit.nc"))
    assert (loaded.estimand, loaded.deviations) == ("atc", "laplace")
    pd.testing.assert_series_equal(loaded.weights, fit.weights)
    assert_same_design(loaded.design, fit.design)


def test_map_round_trip_keeps_the_scale_selection(small, tmp_path):
    frame, roles = small
    fit = quietly(model_of(frame, roles).fit_map, sigma_alpha="auto")
    attrs = map_dataset(fit).attrs
    assert attrs["scale_selection"] == fit.selection.method
    assert attrs["log_marginal_likelihood"] == fit.selection.log_marginal_likelihood
    loaded = load(fit.save(tmp_path / "fit.nc"))
    pd.testing.assert_series_equal(loaded.weights, fit.weights)


def test_a_loaded_map_result_is_the_saved_one(map_fit, saved_path):
    loaded = load(saved_path)
    assert isinstance(loaded, hierps.MapResult)
    assert_same_design(loaded.design, map_fit.design)
    pd.testing.assert_series_equal(loaded.weights, map_fit.weights)
    assert loaded.att == map_fit.att and loaded.estimand == "att"
    assert loaded.deviations == "normal"
    tree = xr.open_datatree(saved_path, engine="h5netcdf")
    attrs = dict(tree.attrs)
    tree.close()
    assert attrs["hierps_format"] == "hierps-result"
    assert attrs["hierps_format_version"] == 1 and attrs["hierps_kind"] == "map"
    assert attrs["creation_library"] == "hierps"
    assert attrs["creation_library_version"] == __version__
    assert set(tree.children) == {"design", "map"}


def test_save_keeps_the_tree_attributes_and_leaves_the_tree_alone(map_fit, tmp_path):
    tree = xr.DataTree.from_dict({"map": map_dataset(map_fit)})
    tree.attrs = {"note": "kept"}
    path = save(tree, tmp_path / "a" / "b.nc")
    assert path == tmp_path / "a" / "b.nc" and tree.attrs == {"note": "kept"}
    loaded = load(str(path))
    assert isinstance(loaded, SavedAnalysis)
    assert loaded.tree.attrs["note"] == "kept" and loaded.tree.attrs["hierps_kind"] == "analysis"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.nc"]


def test_saved_analysis_tables(map_fit, tmp_path):
    loaded = load(save(xr.DataTree.from_dict({"map": map_dataset(map_fit)}), tmp_path / "r.nc"))
    catt = loaded.catt
    assert catt.index.name == "school"
    assert catt["n_treated"].dtype == int and catt["n_control"].dtype == int
    pd.testing.assert_frame_equal(catt, map_fit.catt, check_index_type=False)
    weights = loaded.weights
    assert weights.name == "weight" and list(weights.index) == list(map_fit.weights.index)
    assert loaded.att == map_fit.att and type(loaded.att) is float


def test_a_failed_write_removes_its_temporary_file(map_fit, tmp_path, monkeypatch):
    def broken(self, path, **kwargs):
        open(path, "wb").close()
        raise OSError("disk full")

    monkeypatch.setattr(xr.DataTree, "to_netcdf", broken)
    target = tmp_path / "fit.nc"
    with pytest.raises(OSError, match=r"^disk full$"):
        map_fit.save(target)
    assert list(tmp_path.iterdir()) == []


def test_writes_go_to_a_temporary_file_beside_the_destination(map_fit, tmp_path, monkeypatch):
    written = []
    write = xr.DataTree.to_netcdf

    def spy(self, path, **kwargs):
        written.append(path)
        return write(self, path, **kwargs)

    monkeypatch.setattr(xr.DataTree, "to_netcdf", spy)
    map_fit.save(tmp_path / "fit.nc")
    assert written == [tmp_path / f".fit.nc.{os.getpid()}.partial"]


def test_save_result_refuses_other_objects(tmp_path):
    message = "result must be a MapResult or PosteriorResult, not dict"
    with pytest.raises(ArgumentTypeError, match=f"^{message}$"):
        save_result({}, tmp_path / "x.nc")


def test_saving_onto_a_directory_is_refused(map_fit, tmp_path):
    message = f"{str(tmp_path)!r} is a directory; give a file name such as fit.nc"
    with pytest.raises(ResultFileError, match=f"^{re.escape(message)}$"):
        map_fit.save(tmp_path)


# -- posterior results ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def posterior(map_fit):
    result = hand_built_posterior(map_fit, chains=2, draws=20)
    result.problems = ["first", "second"]
    return result


def test_a_posterior_result_round_trips(posterior, tmp_path):
    path = posterior.save(tmp_path / "post.nc")
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        assert tree.attrs["hierps_kind"] == "posterior"
        assert tree.attrs["hierps_estimand"] == "att"
        assert tree.attrs["hierps_uncertainty"] == "propensity"
        assert tree.attrs["hierps_problems"] == '["first", "second"]'
    loaded = load(path)
    assert isinstance(loaded, hierps.PosteriorResult)
    assert (loaded.estimand, loaded.uncertainty) == ("att", "propensity")
    assert loaded.problems == ["first", "second"]
    assert "design" not in loaded.idata.children
    for key in ("hierps_format", "hierps_format_version", "hierps_kind"):
        assert key not in loaded.idata.attrs
    assert loaded.idata.attrs["creation_library"] == "hierps"
    assert_same_design(loaded.design, posterior.design)
    pd.testing.assert_frame_equal(loaded.catt, posterior.catt)


def test_a_posterior_result_with_other_estimand_and_no_problems(map_fit, tmp_path):
    result = hand_built_posterior(map_fit, estimand="atc", chains=2, draws=20)
    path = result.save(tmp_path / "post.nc")
    tree = _read(path)
    del tree.attrs["hierps_problems"]
    loaded = load(_write(tree, tmp_path / "copy.nc"))
    assert loaded.estimand == "atc" and loaded.problems == []
    del tree.attrs["hierps_estimand"]
    del tree.attrs["hierps_uncertainty"]
    loaded = load(_write(tree, tmp_path / "defaults.nc"))
    assert (loaded.estimand, loaded.uncertainty) == ("att", "bayesian_bootstrap")


# -- refusals ------------------------------------------------------------------------------


def _read(path):
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        return tree.load()


def _write(tree, path):
    tree.to_netcdf(path, engine="h5netcdf")
    return path


def refused(path, message):
    with pytest.raises(ResultFileError, match=f"^{re.escape(message)}$"):
        load(path)


def test_missing_files_and_directories_are_refused(tmp_path):
    refused(tmp_path / "absent.nc", f"result file {str(tmp_path / 'absent.nc')!r} does not exist")
    refused(tmp_path, f"{str(tmp_path)!r} is a directory, not a result file")


def test_files_without_the_signature_are_refused(tmp_path, saved_path):
    path = tmp_path / "short.nc"
    path.write_bytes(saved_path.read_bytes()[:7])
    refused(
        path,
        f"{str(path)!r} is not a hierps result file (not netCDF-4/HDF5: it does not start "
        f"with the HDF5 signature)",
    )
    path.write_bytes(saved_path.read_bytes()[:8] + b"\0" * 100)
    with pytest.raises(
        ResultFileError,
        match=rf"^{re.escape(repr(str(path)))} cannot be read — "
        r"it is truncated or damaged \(OSError: .+\)$",
    ):
        load(path)


def test_files_read_but_fail_the_marker(tmp_path, saved_path):
    tree = _read(saved_path)
    del tree.attrs["hierps_format"]
    path = _write(tree, tmp_path / "nomarker.nc")
    refused(
        path,
        f"{str(path)!r} is not a hierps result file (no 'hierps-result' format marker); only "
        f"files written by hierps fit or result.save() can be loaded",
    )
    tree = _read(saved_path)
    del tree.attrs["hierps_format_version"]
    path = _write(tree, tmp_path / "noversion.nc")
    refused(path, f"{str(path)!r} has no valid format version")
    tree.attrs["hierps_format_version"] = "one"
    path = _write(tree, tmp_path / "badversion.nc")
    refused(path, f"{str(path)!r} has no valid format version")
    tree.attrs["hierps_format_version"] = 2
    path = _write(tree, tmp_path / "newer.nc")
    refused(
        path,
        f"{str(path)!r} has format version 2, newer than this hierps ({__version__}) reads "
        f"(≤ 1); upgrade hierps",
    )
    tree.attrs["hierps_format_version"] = 0
    path = _write(tree, tmp_path / "older.nc")
    assert isinstance(load(path), hierps.MapResult)
    del tree.attrs["hierps_kind"]
    path = _write(tree, tmp_path / "nokind.nc")
    refused(path, f"{str(path)!r} holds an unknown kind of result 'None'")


def _without(saved_path, tmp_path, group, drop=(), coords=()):
    tree = _read(saved_path)
    dataset = tree[group].to_dataset().drop_vars([*drop, *coords])
    tree[group] = dataset
    return _write(tree, tmp_path / "incomplete.nc")


@pytest.mark.parametrize(
    ("group", "drop", "coords", "lacks"),
    [
        ("map", ("weight",), (), "weight"),
        ("design", ("unit_matrix", "treatment"), (), "treatment, unit_matrix"),
        ("design", ("group_codes",), ("group",), "group_codes, group (coordinate)"),
        ("map", (), ("group",), "group (coordinate)"),
        ("map", (), ("obs",), "obs (coordinate)"),
        ("design", (), ("obs",), "obs (coordinate)"),
    ],
)
def test_groups_lacking_variables_or_coordinates_are_refused(
    saved_path, tmp_path, group, drop, coords, lacks
):
    path = _without(saved_path, tmp_path, group, drop, coords)
    refused(path, f"{str(path)!r} is incomplete: group '{group}' lacks {lacks}")


def test_posterior_groups_are_required(posterior, tmp_path):
    path = posterior.save(tmp_path / "post.nc")
    tree = _read(path)
    for group in ("posterior", "weights"):
        if group in tree.children:
            other = _write(tree.drop_nodes(group), tmp_path / f"no_{group}.nc")
            refused(
                other,
                f"{str(other)!r} is incomplete: the posterior result lacks its '{group}' group",
            )
    other = _write(tree.drop_nodes("estimands"), tmp_path / "no_estimands.nc")
    refused(other, "the posterior result is incomplete: it lacks its 'estimands' group")
    tree["posterior"] = tree["posterior"].to_dataset().drop_vars("alpha")
    other = _write(tree, tmp_path / "no_alpha.nc")
    refused(other, f"{str(other)!r} is incomplete: group 'posterior' lacks alpha")


def test_posterior_sizes_must_match_the_design(posterior, tmp_path):
    tree = _read(posterior.save(tmp_path / "post.nc"))
    estimands = tree["estimands"].to_dataset()
    tree["estimands"] = estimands.isel(group=slice(1, None))
    path = _write(tree, tmp_path / "short.nc")
    refused(
        path,
        f"the file's 'group' dimension has {estimands.sizes['group'] - 1} entries but its "
        f"design has {estimands.sizes['group']}: the file is damaged",
    )


def test_analysis_files_need_their_map_group(map_fit, tmp_path):
    path = save(xr.DataTree.from_dict({"other": xr.Dataset()}), tmp_path / "r.nc")
    refused(path, f"{str(path)!r} is incomplete: the analysis result lacks its 'map' group")


def _damaged(saved_path, tmp_path, group, name, change):
    tree = _read(saved_path)
    dataset = tree[group].to_dataset()
    dataset[name] = dataset[name].copy(data=change(dataset[name].to_numpy().copy()))
    tree[group] = dataset
    return _write(tree, tmp_path / "damaged.nc")


def _set(index, value):
    def change(array):
        array[index] = value
        return array

    return change


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        (
            "group_codes",
            _set(0, -1),
            "the file's group codes point outside its groups: it is damaged",
        ),
        (
            "group_codes",
            _set(-1, 4),
            "the file's group codes point outside its groups: it is damaged",
        ),
        ("treatment", _set(0, 2), "the file's treatment is not 0/1: it is damaged"),
        (
            "unit_matrix",
            _set((0, 1), np.nan),
            "the file's unit_matrix holds non-finite values: it is damaged",
        ),
        (
            "group_matrix",
            _set((2, 0), np.inf),
            "the file's group_matrix holds non-finite values: it is damaged",
        ),
    ],
)
def test_impossible_design_values_are_refused(saved_path, tmp_path, name, change, message):
    refused(_damaged(saved_path, tmp_path, "design", name, change), message)


def test_extreme_but_valid_group_codes_load(saved_path, tmp_path):
    codes = _read(saved_path)["design"]["group_codes"].to_numpy()
    assert codes.min() == 0 and codes.max() == 3  # the checks' edges are reached and pass
    assert isinstance(load(saved_path), hierps.MapResult)


def test_map_sizes_must_match_the_design(saved_path, tmp_path):
    tree = _read(saved_path)
    tree["map"] = tree["map"].to_dataset().isel(obs=slice(2, None))
    path = _write(tree, tmp_path / "short.nc")
    n = tree["design"].sizes["obs"]
    refused(
        path,
        f"the file's 'obs' dimension has {n - 2} entries but its design has {n}: the file is "
        f"damaged",
    )


def test_weights_that_differ_from_a_refit_are_refused(saved_path, tmp_path):
    path = _damaged(saved_path, tmp_path, "map", "weight", lambda w: w * (1 + 1e-5))
    refused(
        path,
        "the saved MAP weights differ from a refit of the saved design and scales: the file is "
        "damaged or was written by an incompatible version",
    )
    path = _damaged(saved_path, tmp_path, "map", "weight", lambda w: w * (1 + 1e-8))
    assert isinstance(load(path), hierps.MapResult)  # within the solver's tolerance


def test_scales_that_cannot_be_solved_are_refused(saved_path, tmp_path):
    tree = _read(saved_path)
    tree["map"].attrs["hyperparameter_sigma_beta"] = '"wide"'
    path = _write(tree, tmp_path / "scales.nc")
    with pytest.raises(
        ResultFileError,
        match=r"^the saved design and scales cannot be solved again \(.+\): the file is damaged "
        r"or was written by an incompatible version$",
    ):
        load(path)


def test_damaged_attributes_are_refused_as_damaged(saved_path, tmp_path):
    tree = _read(saved_path)
    del tree["design"].attrs["roles"]
    path = _write(tree, tmp_path / "roles.nc")
    refused(path, f"{str(path)!r} is damaged: KeyError: 'roles'")
    tree = _read(saved_path)
    tree["design"].attrs["obs_encoding"] = "json"
    path = _write(tree, tmp_path / "encoding.nc")
    with pytest.raises(ResultFileError, match=rf"^{re.escape(repr(str(path)))} is damaged: \w+: "):
        load(path)


def test_files_without_estimand_or_deviations_load_with_the_defaults(saved_path, tmp_path):
    tree = _read(saved_path)
    del tree["map"].attrs["estimand"]
    tree["map"].attrs.pop("deviations", None)
    loaded = load(_write(tree, tmp_path / "old.nc"))
    assert (loaded.estimand, loaded.deviations) == ("att", "normal")


def test_a_write_failing_before_its_file_exists_raises_its_own_error(
    map_fit, tmp_path, monkeypatch
):
    def broken(self, path, **kwargs):
        raise OSError("no space")

    monkeypatch.setattr(xr.DataTree, "to_netcdf", broken)
    with pytest.raises(OSError, match=r"^no space$"):
        map_fit.save(tmp_path / "fit.nc")
    assert list(tmp_path.iterdir()) == []


def test_posterior_weights_are_required_and_sized(posterior, tmp_path):
    tree = _read(posterior.save(tmp_path / "post.nc"))
    weights = tree["weights"].to_dataset()
    short = tree.copy()
    short["weights"] = weights.isel(obs=slice(3, None))
    path = _write(short, tmp_path / "short.nc")
    n = weights.sizes["obs"]
    refused(
        path,
        f"the file's 'obs' dimension has {n - 3} entries but its design has {n}: the file is "
        f"damaged",
    )
    tree["weights"] = weights.drop_vars("weight")
    path = _write(tree, tmp_path / "no_weight.nc")
    refused(path, f"{str(path)!r} is incomplete: group 'weights' lacks weight")


def test_analysis_files_need_their_weights(map_fit, tmp_path):
    dataset = map_dataset(map_fit).drop_vars("weight")
    path = save(xr.DataTree.from_dict({"map": dataset}), tmp_path / "r.nc")
    refused(path, f"{str(path)!r} is incomplete: group 'map' lacks weight")


def test_map_dataset_names_the_labels_it_cannot_save(small):
    frame, roles = small
    frame = frame.set_axis(pd.date_range("2024-01-01", periods=len(frame), freq="D"))
    fit = quietly(model_of(frame, roles).fit_map)
    message = (
        "the row labels (e.g. Timestamp('2024-01-01 00:00:00') of type Timestamp) cannot be "
        "saved: use numbers, text or tuples of them (e.g. reset_index())"
    )
    for convert in (map_dataset, lambda fit: design_dataset(fit.design)):
        with pytest.raises(ArgumentTypeError, match=f"^{re.escape(message)}$"):
            convert(fit)
    frame, roles = small
    schools = sorted(frame["school"].unique())
    days = dict(zip(schools, pd.date_range("2024-01-01", periods=len(schools)), strict=True))
    frame = frame.assign(school=frame["school"].map(days).astype(object))
    fit = quietly(model_of(frame, roles).fit_map)
    for convert in (map_dataset, lambda fit: design_dataset(fit.design)):
        with pytest.raises(ArgumentTypeError, match=r"^the group labels \(e\.g\. Timestamp"):
            convert(fit)


def test_tiny_weights_are_checked_to_an_absolute_tolerance(small, tmp_path):
    frame, roles = small
    fit = quietly(model_of(frame, roles).fit_map, sigma_beta=5.0)
    weights = fit.weights.to_numpy()
    smallest = int(np.argmin(np.abs(weights)))
    assert abs(weights[smallest]) < 1e-6
    saved = fit.save(tmp_path / "fit.nc")
    path = _damaged(
        saved, tmp_path, "map", "weight", lambda w: _set(smallest, w[smallest] + 5e-9)(w)
    )
    refused(
        path,
        "the saved MAP weights differ from a refit of the saved design and scales: the file is "
        "damaged or was written by an incompatible version",
    )
