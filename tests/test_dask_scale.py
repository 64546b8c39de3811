"""Dask input on a real two-process LocalCluster: the same design, errors and MAP fit as pandas.

Groups span partitions (the rows are split in order and also shuffled), so every per-group
sum of the solver is a reduction across workers.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pandas as pd
import pytest

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

import hierps  # noqa: E402
from hierps.exceptions import DataError, HierpsWarning  # noqa: E402
from hierps.scale import dask_solver  # noqa: E402
from hierps.scale.dask_solver import ControlBlock, GroupPartial, merge_partials  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def study():
    return hierps.datasets.simulate_multisite(
        n_groups=150, group_size=(100, 1500), n_categories=3, seed=11
    )


def roles(study, **extra):
    return {
        "treatment": "z",
        "group": "school",
        "outcome": "y",
        "unit_covariates": ["x1", "x2", "x3"],
        "group_covariates": study.group_covariates,
        **extra,
    }


def fit_both(frame, npartitions, shuffle=False, seed=0, model_options=None, **options):
    if shuffle:
        frame = frame.sample(frac=1.0, random_state=seed)
    model_options = model_options or {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        memory = hierps.Model(frame, **model_options)
        distributed_model = hierps.Model(
            dd.from_pandas(frame, npartitions=npartitions, sort=False), **model_options
        )
        return (
            memory,
            memory.fit_map(**options),
            distributed_model,
            distributed_model.fit_map(**options),
        )


def assert_same_fit(memory_fit, dask_fit):
    weights = dask_fit.weights.compute()
    pd.testing.assert_index_equal(weights.index, memory_fit.weights.index)
    np.testing.assert_allclose(weights, memory_fit.weights, rtol=1e-8, atol=0)
    relative = dask_fit.relative_weights.compute()
    np.testing.assert_allclose(relative, memory_fit.relative_weights, rtol=1e-8, atol=1e-12)
    pd.testing.assert_frame_equal(dask_fit.catt, memory_fit.catt, rtol=1e-8, atol=1e-10)
    assert dask_fit.att == pytest.approx(memory_fit.att, rel=1e-8)
    assert dask_fit.ess == pytest.approx(memory_fit.ess, rel=1e-8)
    for name, values in memory_fit.coefficients.items():
        np.testing.assert_allclose(
            dask_fit.coefficients[name].to_numpy(), values.to_numpy(), rtol=1e-7, atol=1e-9
        )
    pd.testing.assert_frame_equal(dask_fit.balance(), memory_fit.balance(), rtol=1e-7, atol=1e-9)


def test_fit_equals_in_memory_with_groups_across_partitions(client, study):
    options = roles(study, unit_covariates=study.unit_covariates)
    frame = study.data
    assert len(frame) > 50_000
    memory, memory_fit, model, dask_fit = fit_both(frame, 9, model_options=options)
    assert model.design.frame.npartitions == 9
    pd.testing.assert_frame_equal(model.design.unit_scaling, memory.design.unit_scaling)
    np.testing.assert_allclose(model.design.group_matrix, memory.design.group_matrix, rtol=1e-12)
    assert dask_fit.converged and dask_fit.max_gradient <= 1e-8
    assert_same_fit(memory_fit, dask_fit)
    # The weights are lazy, on the input's partitions.
    assert dask_fit.weights.npartitions == 9


def test_shuffled_rows_and_every_option(client, study):
    frame = study.data.copy()
    rng = np.random.default_rng(5)
    frame.loc[rng.random(len(frame)) < 0.03, "x2"] = np.nan  # a missingness indicator
    options = roles(
        study,
        unit_covariates=study.unit_covariates,
        varying_slopes=["x1", "c1"],
        standardize="pooled",
    )
    fit_options = {"sigma_beta": np.array([0.3, 0.6, 0.6, 0.6]), "sigma_alpha": 2.0}
    _, memory_fit, model, dask_fit = fit_both(
        frame, 6, shuffle=True, model_options=options, **fit_options
    )
    assert "x2_missing" in model.design.unit_names
    assert_same_fit(memory_fit, dask_fit)
    # A warm start from the previous fit converges at once to a nearby optimum.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        again = model.fit_map(**{**fit_options, "sigma_alpha": 2.1}, init=dask_fit)
        reference = hierps.Model(frame.sample(frac=1.0, random_state=0), **options).fit_map(
            **{**fit_options, "sigma_alpha": 2.1}
        )
    assert again.iterations <= 4
    assert again.att == pytest.approx(reference.att, rel=1e-8)


def test_parquet_directory_input(client, study, tmp_path):
    frame = study.data.drop(columns="c1")
    bounds = np.linspace(0, len(frame), 5).astype(int)
    for part in range(4):
        frame.iloc[bounds[part] : bounds[part + 1]].to_parquet(tmp_path / f"part-{part}.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        memory_fit = hierps.Model(frame, **roles(study, standardize=False)).fit_map()
        model = hierps.Model(dd.read_parquet(str(tmp_path)), **roles(study, standardize=False))
        dask_fit = model.fit_map()
    weights = dask_fit.weights.compute()
    np.testing.assert_allclose(weights.to_numpy(), memory_fit.weights.to_numpy(), rtol=1e-8)
    pd.testing.assert_frame_equal(dask_fit.catt, memory_fit.catt, rtol=1e-8, atol=1e-10)


def bad_frames(study):
    base = study.data.iloc[:3000].drop(columns="c1").reset_index(drop=True)

    def edit(function):
        frame = base.copy()
        function(frame)
        return frame

    def set_rows(column, rows, value):
        def apply(frame):
            if value is None:
                frame[column] = frame[column].astype(object)
            frame.loc[rows, column] = value if value is not None else None

        return apply

    school = base["school"]
    return {
        "missing treatment": (
            edit(lambda f: f.__setitem__("z", f["z"].where(f.index % 97 != 5))),
            {},
        ),
        "non-binary treatment": (
            edit(lambda f: f.__setitem__("z", f["z"].where(f.index % 500 != 7, 2))),
            {},
        ),
        "all treated": (edit(lambda f: f.__setitem__("z", 1)), {}),
        "missing group": (
            edit(lambda f: f.__setitem__("school", school.where(f.index % 300 != 1))),
            {},
        ),
        "missing outcome": (
            edit(lambda f: f.__setitem__("y", f["y"].where(f.index % 41 != 3))),
            {},
        ),
        "text outcome": (edit(lambda f: f.__setitem__("y", f["y"].astype(str))), {}),
        "varying group covariate": (
            edit(lambda f: f.__setitem__("v1", f["v1"].where(f.index % 250 != 9, 99.0))),
            {},
        ),
        "unknown column": (base, {"unit_covariates": ["x1", "X2"]}),
        "both roles": (base, {"unit_covariates": ["x1", "v1"]}),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing treatment",
        "non-binary treatment",
        "all treated",
        "missing group",
        "missing outcome",
        "text outcome",
        "varying group covariate",
        "unknown column",
        "both roles",
    ],
)
def test_validation_errors_are_those_of_pandas(client, study, case):
    frame, override = bad_frames(study)[case]
    options = {**roles(study), **override}
    with pytest.raises(DataError) as expected:
        hierps.Model(frame, **options)
    with pytest.raises(DataError) as raised:
        hierps.Model(dd.from_pandas(frame, npartitions=4, sort=False), **options)
    assert str(raised.value) == str(expected.value)


def test_warnings_are_those_of_pandas(client, study):
    frame = study.data.iloc[:4000].drop(columns="c1").reset_index(drop=True)
    frame.loc[frame.index % 50 == 3, "x1"] = np.nan
    frame["constant"] = 2.5
    first = frame["school"] == frame["school"].iloc[0]
    frame.loc[first, "z"] = 1  # a group without controls
    options = roles(study, unit_covariates=["x1", "x2", "constant"])

    def messages(data):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hierps.Model(data, **options)
        return [str(w.message) for w in caught if issubclass(w.category, HierpsWarning)]

    expected = messages(frame)
    # Groups without controls are named when a fit needs their effect, not here.
    assert len(expected) == 2
    assert messages(dd.from_pandas(frame, npartitions=3, sort=False)) == expected


def test_segment_sums_across_row_batches(monkeypatch):
    """The batched per-group sums equal direct sums when batches cut through groups."""
    rng = np.random.default_rng(2)
    rows_group = np.sort(rng.integers(0, 40, size=3000))
    starts = np.flatnonzero(np.r_[True, rows_group[1:] != rows_group[:-1]])
    x = rng.normal(size=(3000, 3))
    block = ControlBlock(
        rows_group[starts], starts, rows_group, x, None, GroupPartial(np.zeros(0), np.zeros((0, 0)))
    )
    coefficients = rng.normal(scale=0.3, size=(40, 4))
    monkeypatch.setattr(dask_solver, "CHUNK_ROWS", 137)
    sums = dask_solver.newton_sums(block, coefficients).dense(40)
    w = np.exp(coefficients[rows_group, 0] + np.einsum("ij,ij->i", x, coefficients[rows_group, 1:]))
    expected_first = np.zeros((40, 3))
    np.add.at(expected_first, rows_group, x * w[:, None])
    np.testing.assert_allclose(sums[:, 0], np.bincount(rows_group, weights=w, minlength=40))
    np.testing.assert_allclose(sums[:, 1:4], expected_first)
    # Merging partials adds the entries of shared groups.
    a, b = (
        GroupPartial(np.array([1, 3]), np.ones((2, 1))),
        GroupPartial(np.array([3, 4]), np.ones((2, 1))),
    )
    merged = merge_partials(a, b)
    np.testing.assert_array_equal(merged.groups, [1, 3, 4])
    np.testing.assert_array_equal(merged.values[:, 0], [1, 2, 1])


def write_model_file(folder, study, **data):
    frame = study.data.drop(columns="c1")
    (folder / "parts").mkdir()
    bounds = np.linspace(0, len(frame), 4).astype(int)
    for part in range(3):
        frame.iloc[bounds[part] : bounds[part + 1]].to_parquet(folder / f"parts/{part}.parquet")
    lines = ['name = "scale"', "[data]"]
    settings = {
        "path": "parts/*.parquet",
        "engine": "dask",
        "treatment": "z",
        "group": "school",
        "outcome": "y",
        "unit_covariates": ["x1", "x2", "x3"],
        "group_covariates": ["v1", "v2"],
        **data,
    }
    for key, value in settings.items():
        lines.append(f"{key} = {value!r}".replace("'", '"'))
    lines += ["[posterior]", "enabled = false"]
    (folder / "model.toml").write_text("\n".join(lines) + "\n")
    return frame


def test_model_file_with_dask_engine_runs_on_the_active_client(client, study, tmp_path):
    from typer.testing import CliRunner

    from hierps.workflow.cli import app

    frame = write_model_file(tmp_path, study)
    out = tmp_path / "out"
    run = CliRunner().invoke(app, ["fit", str(tmp_path / "model.toml"), "--out", str(out)])
    assert run.exit_code == 0, run.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        memory = hierps.Model(frame, **roles(study)).fit_map()
    catt = pd.read_csv(out / "catt.csv", index_col=0)
    np.testing.assert_allclose(catt["estimate"], memory.catt["estimate"], rtol=1e-8)
    weights = pd.read_parquet(out / "weights")["weight"]
    np.testing.assert_allclose(np.sort(weights), np.sort(memory.weights), rtol=1e-8)
    report = (out / "report.md").read_text()
    assert f"ATT (MAP balancing weights): {memory.att:.4f}" in report


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"scheduler": "tcp://127.0.0.1:1", "engine": "pandas"}, "'scheduler' needs engine"),
        ({"cut": {"x1c": {"column": "x1", "bins": [-9, 0, 9]}}}, "does not support 'cut'"),
    ],
)
def test_model_file_rejects_what_a_dask_run_cannot_do(tmp_path, study, data, message):
    from hierps.workflow.spec import SpecError, read_spec

    write_model_file(tmp_path, study)
    text = (tmp_path / "model.toml").read_text()
    if "engine" in data:
        text = text.replace('engine = "dask"', f'engine = "{data["engine"]}"')
        text = text.replace("[posterior]", f'scheduler = "{data["scheduler"]}"\n[posterior]')
    else:
        text = text.replace(
            "[posterior]", '[data.cut.x1c]\ncolumn = "x1"\nbins = [-9, 0, 9]\n[posterior]'
        )
    (tmp_path / "model.toml").write_text(text)
    with pytest.raises(SpecError, match=message):
        read_spec(tmp_path / "model.toml")


def test_verbs_that_need_the_units_in_memory_say_so(client, study):
    frame = dd.from_pandas(study.data.iloc[:2000], npartitions=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        model = hierps.Model(frame, **roles(study))
    for verb in (model.sample, model.build_pymc):
        with pytest.raises(TypeError, match="needs the units in memory"):
            verb()
    with pytest.raises(TypeError, match="give the roles by keyword"):
        hierps.Model.from_formula("z ~ x1 + v1 + (x1 | school)", frame)
    assert "Dask, 2 partitions" in model.summary()


def test_posterior_on_cells_counted_by_dask(client):
    """Discrete covariates: the cells, the log density and the effects of the in-memory model."""
    from hierps.pymc_model import build_pymc, compress
    from hierps.scale.dask_cells import cells_of, sample_cells

    rng = np.random.default_rng(1)
    n = 20_000
    g, a, b = rng.integers(0, 12, n), rng.integers(0, 3, n), rng.integers(0, 2, n)
    logit = -0.8 + 0.5 * a - 0.4 * b + 0.2 * (g % 3)
    z = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame(
        {
            "school": [f"s{k:02d}" for k in g],
            "z": z,
            "y": a + b + z * (1 + 0.1 * g) + rng.normal(size=n),
            "a": a,
            "b": b.astype(float),
            "v": (g % 4).astype(float),
        }
    )
    options = {
        "treatment": "z",
        "group": "school",
        "outcome": "y",
        "unit_covariates": ["a", "b"],
        "group_covariates": ["v"],
        "categorical": ["a"],
    }
    memory = hierps.Model(frame, **options)
    model = hierps.Model(dd.from_pandas(frame, npartitions=5, sort=False), **options)
    expected = compress(memory.design)
    patterns, outcomes = cells_of(model.design)
    for name in ("group", "units", "treated"):
        np.testing.assert_array_equal(getattr(patterns, name), getattr(expected, name))
    # The Dask spreads are merged by Chan's update: the same standardization to rounding.
    np.testing.assert_allclose(patterns.design, expected.design, rtol=1e-12, atol=1e-14)
    cell_of_unit = expected.of_unit
    np.testing.assert_allclose(
        outcomes["control_outcome"],
        np.bincount(cell_of_unit, weights=frame["y"] * (1 - frame["z"]), minlength=len(expected)),
    )
    # A Dask design's posterior codes every level (docs/scale.md §5): compare like with like.
    in_memory = build_pymc(memory.design, coding="full", sigma_beta=0.5)
    on_cells = build_pymc(model.design, patterns=patterns, sigma_beta=0.5)
    point = {k: v + 0.1 for k, v in in_memory.initial_point().items()}
    assert on_cells.compile_logp()(point) == pytest.approx(in_memory.compile_logp()(point))

    result = sample_cells(model.design, draws=200, tune=200, chains=2, random_seed=3)
    reference = memory.sample(
        draws=200, tune=200, chains=2, random_seed=3, uncertainty="propensity", coding="full"
    )
    difference = (result.catt["mean"] - reference.catt["mean"]).abs()
    assert (difference < 0.5 * reference.catt["sd"]).all()
    assert abs(result.att["mean"].iloc[0] - reference.att["mean"].iloc[0]) < 0.5 * float(
        reference.att["sd"].iloc[0]
    )
    # The JAX sampler runs the same model on the same cells, where numpyro is installed.
    if importlib.util.find_spec("numpyro") is not None:
        jax_result = sample_cells(
            model.design, draws=200, tune=200, chains=2, random_seed=3, sampler="numpyro"
        )
        difference = (jax_result.catt["mean"] - reference.catt["mean"]).abs()
        assert (difference < 0.5 * reference.catt["sd"]).all()
    # Continuous covariates: every unit its own cell, refused with the way out.
    with pytest.raises(DataError, match="coarsen"):
        cells_of(
            hierps.Model(
                dd.from_pandas(frame.assign(b=rng.normal(size=n)), npartitions=2), **options
            ).design,
            max_cells=1000,
        )
