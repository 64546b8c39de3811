"""Bad input, one table row each: the error class, a message naming the culprit, and the
caller's frame left as it was. Rows marked ``warns`` expect a defined result with a
``HierpsWarning``; rows marked ``accepts`` expect a valid result (extreme but valid input).
"""

from __future__ import annotations

import decimal
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers import make_frame
from typer.testing import CliRunner

import hierps
from hierps.effects.catt_pooling import pool_catt
from hierps.exceptions import (
    ArgumentError,
    ArgumentTypeError,
    DataError,
    HierpsError,
    HierpsWarning,
    ResultFileError,
)
from hierps.workflow.cli import app


@dataclass(frozen=True)
class Case:
    """``make(frame, roles, tmp)`` spoils a copy of the base frame (or prepares files) and
    returns the call to run; the frame it returns must be unchanged by that call."""

    category: str
    name: str
    make: Callable
    expect: type[BaseException] | str | int  # an error class, "warns", "accepts" or an exit code
    match: str


def base() -> tuple[pd.DataFrame, dict]:
    frame, roles = make_frame(seed=5, sizes=(12, 40), n_groups=6, n_unit=2, n_group=1)
    frame.index = pd.Index([f"u{i}" for i in range(len(frame))], name="unit")
    return frame, roles


def model(frame, roles, **overrides):
    return lambda: hierps.Model(frame, **{**roles, **overrides})


def fit(frame, roles, **options):
    built = hierps.Model(frame, **roles)
    return lambda: built.fit_map(**options)


def sample(frame, roles, **options):
    built = hierps.Model(frame, **roles)
    return lambda: built.sample(**{"draws": 10, "tune": 10, "chains": 1, **options})


def setter(column, rows, value):
    def make(frame, roles, tmp):
        if isinstance(value, str) or value is None:
            frame = frame.astype({column: object})
        elif isinstance(value, float) and not float(value).is_integer():
            frame = frame.astype({column: float})
        frame.loc[frame.index[rows], column] = value
        return frame, model(frame, roles)

    return make


def replace(column, values, **overrides):
    def make(frame, roles, tmp):
        frame[column] = values(frame)
        extra = {}
        if column not in {
            roles["treatment"],
            roles["group"],
            roles["outcome"],
            *roles["unit_covariates"],
            *roles["group_covariates"],
        }:
            extra = {"unit_covariates": [*roles["unit_covariates"], column]}
        return frame, model(frame, roles, **{**extra, **overrides})

    return make


def options(call, **kwargs):
    return lambda frame, roles, tmp: (frame, call(frame, roles, **kwargs))


def with_roles(**overrides):
    return lambda frame, roles, tmp: (frame, model(frame, roles, **overrides))


def saved_map(tmp: Path) -> Path:
    frame, roles = base()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        result = hierps.Model(frame, **roles).fit_map()
    return result.save(tmp / "fit.nc")


def load_of(prepare):
    def make(frame, roles, tmp):
        path = prepare(tmp)
        return frame, lambda: hierps.load(path)

    return make


def truncated(tmp: Path) -> Path:
    path = saved_map(tmp)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def random_bytes(tmp: Path) -> Path:
    path = tmp / "random.nc"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    return path


def random_after_signature(tmp: Path) -> Path:
    path = tmp / "random_hdf.nc"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + np.random.default_rng(1).bytes(5000))
    return path


def foreign(tmp: Path) -> Path:
    path = tmp / "foreign.nc"
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_netcdf(path, engine="h5netcdf")
    return path


def retagged(**attrs):
    def prepare(tmp: Path) -> Path:
        path = saved_map(tmp)
        with xr.open_datatree(path, engine="h5netcdf") as tree:
            tree = tree.load()
        tree.attrs.update(attrs)
        other = tmp / "retagged.nc"
        tree.to_netcdf(other, engine="h5netcdf")
        return other

    return prepare


def without_group(group: str):
    def prepare(tmp: Path) -> Path:
        path = saved_map(tmp)
        with xr.open_datatree(path, engine="h5netcdf") as tree:
            tree = tree.load()
        other = tmp / "incomplete.nc"
        tree.drop_nodes(group).to_netcdf(other, engine="h5netcdf")
        return other

    return prepare


def empty_file(tmp: Path) -> Path:
    path = tmp / "empty.nc"
    path.write_bytes(b"")
    return path


def save_into_directory(frame, roles, tmp):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        result = hierps.Model(frame, **roles).fit_map()
    return frame, lambda: result.save(tmp)


def only_arm(arm: int, group: str = "s002"):
    def make(frame, roles, tmp):
        frame.loc[frame["school"] == group, "z"] = arm
        built = hierps.Model(frame, **roles)
        return frame, lambda: built.fit_map().att

    return make


def both_one_arm_groups(frame, roles, tmp):
    frame.loc[frame["school"] == "s001", "z"] = 0
    frame.loc[frame["school"] == "s004", "z"] = 1
    built = hierps.Model(frame, **roles)

    def call():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = built.fit_map()
        named = [w for w in caught if "s001" in str(w.message) and "s004" in str(w.message)]
        assert len(named) == 1, [str(w.message) for w in caught]
        warnings.warn(str(named[0].message), HierpsWarning, stacklevel=2)
        return result

    return frame, call


def posterior_underflow(frame, roles, tmp):
    """A posterior whose draws make one group's control weights underflow: from_idata names
    the group, with the share of draws, in the one warning."""
    from hierps.posterior.draws import from_idata

    built = hierps.Model(frame, **roles)
    design = built.design
    rng = np.random.default_rng(0)
    alpha = rng.normal(-0.5, 0.1, size=(1, 20, design.n_groups))
    alpha[0, :10, 3] = -1e4  # group s003: exp(eta) = 0 for every control in half the draws
    beta = rng.normal(0.3, 0.05, size=(1, 20, design.n_groups, len(design.unit_names)))
    posterior = xr.Dataset(
        {
            "alpha": (("chain", "draw", "group"), alpha),
            "beta": (("chain", "draw", "group", "unit_covariate"), beta),
        },
        coords={"group": list(design.groups), "unit_covariate": list(design.unit_names)},
    )
    tree = xr.DataTree.from_dict({"posterior": posterior})
    return frame, lambda: from_idata(design, tree, uncertainty="propensity")


def extreme_accepted(**hyperparameters):
    def make(frame, roles, tmp):
        built = hierps.Model(frame, **roles)

        def call():
            result = built.fit_map(**hyperparameters)
            assert np.isfinite(result.weights).all() and np.isfinite(result.att)
            return result

        return frame, call

    return make


def ids(frame):
    return [f"student-{i:05d}" for i in range(len(frame))]


def cli(spoil, *extra: str, covariates: str = '["x1", "x2"]', toml: str = ""):
    """``hierps check`` (or the command in ``extra``) on the spoiled frame written as CSV."""

    def make(frame, roles, tmp):
        frame = spoil(frame)
        frame.to_csv(tmp / "data.csv")
        model_file = tmp / "model.toml"
        model_file.write_text(
            f'name = "t"\n[data]\npath = "data.csv"\ntreatment = "z"\ngroup = "school"\n'
            f'outcome = "y"\nunit_covariates = {covariates}\ngroup_covariates = ["v1"]\n' + toml
        )
        arguments = [*(extra or ("check",)), str(model_file)]
        arguments = [a.replace("{tmp}", str(tmp)) for a in arguments]
        return frame, lambda: CliRunner().invoke(app, arguments)

    return make


def pooled(**options):
    def make(frame, roles, tmp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HierpsWarning)
            result = hierps.Model(frame, **roles).fit_map()
        return frame, lambda: pool_catt(result, **options)

    return make


def spoil_cell(column, row, value):
    def spoil(frame):
        frame = frame.astype({column: object}) if isinstance(value, str) else frame
        frame.loc[frame.index[row], column] = value
        return frame

    return spoil


CASES = [
    # -- values: non-finite, overflow, text, IDs, dates, duplicates ----------------------
    Case(
        "values",
        "inf in a unit covariate",
        setter("x1", [3], np.inf),
        DataError,
        r"'x1' has infinite values in rows 'u3'",
    ),
    Case(
        "values",
        "-inf in a unit covariate",
        setter("x2", [5, 7], -np.inf),
        DataError,
        r"'x2' has infinite values in rows 'u5', 'u7'",
    ),
    Case(
        "values",
        "inf in a group covariate",
        replace("v1", lambda f: np.where(f["school"] == "s001", np.inf, f["v1"])),
        DataError,
        r"group covariate column 'v1' has infinite values in rows 'u\d+'",
    ),
    Case(
        "values",
        "inf in the outcome",
        setter("y", [2], np.inf),
        DataError,
        r"outcome column 'y' has infinite values in rows 'u2'",
    ),
    Case(
        "values",
        "-inf in the outcome",
        setter("y", [0], -np.inf),
        DataError,
        r"outcome column 'y' has infinite values in rows 'u0'",
    ),
    Case(
        "values",
        "inf in the treatment",
        setter("z", [1], np.inf),
        DataError,
        r"treatment column 'z' must be binary.*inf",
    ),
    Case(
        "values",
        "inf as a group id",
        replace(
            "school",
            lambda f: np.where(f["school"] == "s001", np.inf, f["school"].str[1:].astype(float)),
        ),
        DataError,
        r"group column 'school' has infinite values",
    ),
    Case(
        "values",
        "NaN in the treatment",
        setter("z", [4], np.nan),
        DataError,
        r"treatment column 'z' has missing values in rows 'u4'",
    ),
    Case(
        "values",
        "NaN group id",
        setter("school", [6], None),
        DataError,
        r"group column 'school' has missing ids in rows 'u6'",
    ),
    Case(
        "values",
        "NaN outcome",
        setter("y", [8], np.nan),
        DataError,
        r"outcome column 'y' has missing values in rows 'u8'",
    ),
    Case(
        "values",
        "treatment 2",
        setter("z", [1], 2),
        DataError,
        r"treatment column 'z' must be binary.*2",
    ),
    Case(
        "values",
        "treatment yes/no",
        replace("z", lambda f: np.where(f["z"] == 1, "yes", "no")),
        DataError,
        r"treatment column 'z' must be binary.*'no'",
    ),
    Case("values", "all treated", replace("z", lambda f: 1), DataError, r"'z' has no control"),
    Case("values", "none treated", replace("z", lambda f: 0), DataError, r"'z' has no treated"),
    Case(
        "values",
        "1e200 in a covariate",
        setter("x1", [3], 1e200),
        DataError,
        r"unit covariate 'x1' cannot be standardized: its standard deviation overflows",
    ),
    Case(
        "values",
        "1e200 in a group covariate",
        replace("v1", lambda f: np.where(f["school"] == "s002", 1e200, f["v1"])),
        DataError,
        r"group covariate 'v1' cannot be standardized.*overflows",
    ),
    Case(
        "values",
        "subnormal covariate",
        replace("x3", lambda f: f["x1"] * 1e-320),
        DataError,
        r"unit covariate 'x3' cannot be standardized.*underflows",
    ),
    Case(
        "values",
        "string ID column as covariate",
        replace("student", ids),
        DataError,
        r"unit covariate 'student' is text with \d+ distinct values",
    ),
    Case(
        "values",
        "numbers stored as text",
        replace("x3", lambda f: f["x1"].round(3).astype(str)),
        DataError,
        r"'x3' holds numbers stored as text \(\d+ distinct",
    ),
    Case(
        "values",
        "0/1 stored as text",
        replace("x3", lambda f: f["z"].astype(str)),
        DataError,
        r"'x3' holds numbers stored as text \(2 distinct",
    ),
    Case(
        "values",
        "datetime covariate",
        replace("when", lambda f: pd.Timestamp("2020-01-01") + pd.to_timedelta(f["x1"], "D")),
        DataError,
        r"'when' has dtype datetime64.*distinct values",
    ),
    Case(
        "values",
        "timedelta covariate",
        replace("gap", lambda f: pd.to_timedelta(f["x1"], "h")),
        DataError,
        r"'gap' has dtype timedelta64",
    ),
    Case(
        "values",
        "period covariate",
        replace("month", lambda f: pd.period_range("2020-01", periods=len(f), freq="M")),
        DataError,
        r"'month' has dtype period",
    ),
    Case(
        "values",
        "numbers and text mixed",
        replace(
            "mix",
            lambda f: pd.Series(
                [1.5 if i % 2 else "a" for i in range(len(f))], index=f.index, dtype=object
            ),
        ),
        DataError,
        r"'mix' mixes numbers and text",
    ),
    Case(
        "values",
        "complex covariate",
        replace("c", lambda f: f["x1"] + 1j),
        DataError,
        r"'c' holds complex numbers",
    ),
    Case(
        "values",
        "complex outcome",
        replace("y", lambda f: f["y"] + 1j),
        DataError,
        r"'y' holds complex numbers",
    ),
    Case(
        "values",
        "lists in a covariate",
        replace("bag", lambda f: pd.Series([[i] for i in range(len(f))], index=f.index)),
        DataError,
        r"'bag' holds values of type list",
    ),
    Case(
        "values",
        "Decimal objects in a covariate",
        replace("dec", lambda f: [decimal.Decimal(i % 3) for i in range(len(f))]),
        DataError,
        r"'dec' holds values of type Decimal",
    ),
    Case(
        "values",
        "group ids 1 and '1' mixed",
        replace(
            "school",
            lambda f: pd.Series(
                [
                    int(s[1:]) if s in ("s000", "s002") else s[1:].lstrip("0") or "0"
                    for s in f["school"]
                ],
                index=f.index,
                dtype=object,
            ),
        ),
        DataError,
        r"group column 'school' mixes ids of different types",
    ),
    Case(
        "values",
        "duplicated covariate column",
        lambda f, r, t: _model_of(pd.concat([f, f[["x1"]]], axis=1), r),
        DataError,
        r"duplicated column names 'x1' \(2×\)",
    ),
    Case(
        "values",
        "duplicated treatment column",
        lambda f, r, t: _model_of(pd.concat([f, f[["z"]]], axis=1), r),
        DataError,
        r"duplicated column names 'z'",
    ),
    Case(
        "values",
        "outcome as text",
        replace("y", lambda f: f["y"].round(2).astype(str)),
        DataError,
        r"outcome column 'y' must be numeric",
    ),
    Case(
        "values",
        "group covariate varying within a group",
        setter("v1", [0], 99.0),
        DataError,
        r"group covariate 'v1' varies within group\(s\) 's000'",
    ),
    Case(
        "values",
        "unknown column",
        with_roles(unit_covariates=["x1", "x9"]),
        DataError,
        r"unit covariate column 'x9' is not in the data",
    ),
    Case(
        "values",
        "empty frame",
        lambda f, r, t: (f.iloc[:0], model(f.iloc[:0], r)),
        DataError,
        r"the data frame is empty",
    ),
    Case(
        "values",
        "duplicated index labels",
        lambda f, r, t: _model_of(f.set_axis(["a"] * len(f)), r),
        DataError,
        r"index has duplicated labels 'a'",
    ),
    Case(
        "values",
        "declared categorical with 80 levels",
        lambda f, r, t: _model_of(
            f.assign(code=np.arange(len(f)) % 80),
            r,
            unit_covariates=["x1", "code"],
            categorical=["code"],
        ),
        "warns",
        r"categorical unit covariate 'code' has 80 levels",
    ),
    Case(
        "values",
        "missing covariate values",
        setter("x2", [1, 2], np.nan),
        "warns",
        r"covariate 'x2' has 2 missing values.*'x2_missing'",
    ),
    Case(
        "values",
        "constant covariate",
        replace("x2", lambda f: 0.5),
        "warns",
        r"unit covariates x2 are constant in the data and are dropped",
    ),
    # -- arguments -------------------------------------------------------------------------
    Case(
        "arguments",
        "data not a frame",
        lambda f, r, t: (f, lambda: hierps.Model(f.to_dict(), **r)),
        ArgumentTypeError,
        r"data must be a pandas DataFrame, not dict",
    ),
    Case(
        "arguments",
        "covariates as a string",
        with_roles(unit_covariates="x1"),
        ArgumentTypeError,
        r"unit_covariates must be a list.*\['x1'\]",
    ),
    Case(
        "arguments",
        "treatment as a list",
        with_roles(treatment=["z"]),
        ArgumentTypeError,
        r"treatment must be a column name, not list",
    ),
    Case(
        "arguments",
        "standardize unknown",
        with_roles(standardize="yes"),
        ArgumentError,
        r"standardize='yes'",
    ),
    Case(
        "arguments",
        "sigma_beta negative",
        options(fit, sigma_beta=-1.0),
        ArgumentError,
        r"sigma_beta must be positive and finite",
    ),
    Case(
        "arguments",
        "sigma_gamma text",
        options(fit, sigma_gamma="abc"),
        ArgumentTypeError,
        r"sigma_gamma must be a positive number, not str 'abc'",
    ),
    Case(
        "arguments",
        "sigma_gamma numeric text",
        options(fit, sigma_gamma="1"),
        ArgumentTypeError,
        r"sigma_gamma must be a positive number, not str '1'",
    ),
    Case(
        "arguments",
        "sigma_alpha True",
        options(fit, sigma_alpha=True),
        ArgumentTypeError,
        r"sigma_alpha must be a positive number \(or 'auto' in MAP mode\), not bool",
    ),
    Case(
        "arguments",
        "sigma_alpha NaN",
        options(fit, sigma_alpha=float("nan")),
        ArgumentError,
        r"sigma_alpha must be positive and finite",
    ),
    Case(
        "arguments",
        "sigma_mu_beta inf",
        options(fit, sigma_mu_beta=float("inf")),
        ArgumentError,
        r"sigma_mu_beta must be positive and finite",
    ),
    Case(
        "arguments",
        "sigma_beta wrong length",
        options(fit, sigma_beta=[1.0] * 5),
        ArgumentError,
        r"sigma_beta has 5 values but the model has 2 varying slopes",
    ),
    Case("arguments", "tol zero", options(fit, tol=0), ArgumentError, r"tol must be > 0, not 0"),
    Case("arguments", "tol text", options(fit, tol="small"), ArgumentTypeError, r"tol must be"),
    Case(
        "arguments",
        "max_iterations negative",
        options(fit, max_iterations=-5),
        ArgumentError,
        r"max_iterations must be at least 1, not -5",
    ),
    Case(
        "arguments",
        "max_iterations float",
        options(fit, max_iterations=2.5),
        ArgumentTypeError,
        r"max_iterations must be an integer",
    ),
    Case(
        "arguments",
        "init not a result",
        options(fit, init="previous"),
        ArgumentTypeError,
        r"init must be a MapResult",
    ),
    Case(
        "arguments",
        "unknown fit option",
        options(fit, sigma_bta=1.0),
        ArgumentTypeError,
        r"unknown option\(s\) 'sigma_bta'",
    ),
    Case(
        "arguments",
        "random_seed text",
        options(sample, random_seed="abc"),
        ArgumentTypeError,
        r"random_seed must be None, a non-negative integer",
    ),
    Case(
        "arguments",
        "random_seed negative",
        options(sample, random_seed=-1),
        ArgumentError,
        r"random_seed must be a non-negative integer, not -1",
    ),
    Case("arguments", "draws zero", options(sample, draws=0), ArgumentError, r"draws must be ≥ 1"),
    Case(
        "arguments",
        "chains text",
        options(sample, chains="2"),
        ArgumentTypeError,
        r"chains must be an integer",
    ),
    Case(
        "arguments",
        "target_accept 1.5",
        options(sample, target_accept=1.5),
        ArgumentError,
        r"target_accept must lie strictly between 0 and 1",
    ),
    Case(
        "arguments",
        "sampler unknown",
        options(sample, sampler="stan"),
        ArgumentError,
        r"sampler='stan'",
    ),
    Case(
        "arguments",
        "store_weights text",
        options(sample, store_weights="yes"),
        ArgumentTypeError,
        r"store_weights must be True or False",
    ),
    Case(
        "arguments",
        "unknown sample option",
        options(sample, draw=10),
        ArgumentTypeError,
        r"unknown option\(s\) 'draw'",
    ),
    Case(
        "arguments",
        "pooling path negative",
        lambda f, r, t: (f, lambda: hierps.pooling_path(hierps.Model(f, **r), [-1.0, 1.0])),
        ArgumentError,
        r"sigma_beta",
    ),
    Case(
        "arguments",
        "sigma_beta 1e-12 (extreme, valid)",
        extreme_accepted(sigma_beta=1e-12),
        "accepts",
        "",
    ),
    Case(
        "arguments",
        "sigma_beta 1e12 (extreme, valid)",
        extreme_accepted(sigma_beta=1e12),
        "accepts",
        "",
    ),
    Case(
        "arguments",
        "sigma_beta 1e8 (extreme, valid)",
        extreme_accepted(sigma_beta=1e8),
        "accepts",
        "",
    ),
    Case(
        "arguments",
        "sigma_alpha 1e-12 (extreme, valid)",
        extreme_accepted(sigma_alpha=1e-12),
        "accepts",
        "",
    ),
    Case(
        "arguments",
        "every scale 1e12 (extreme, valid)",
        extreme_accepted(
            sigma_alpha=1e12,
            sigma_beta=1e12,
            sigma_mu_beta=1e12,
            sigma_gamma=1e12,
            sigma_intercept=1e12,
        ),
        "accepts",
        "",
    ),
    Case(
        "arguments",
        "every scale 1e-12 (extreme, valid)",
        extreme_accepted(
            sigma_alpha=1e-12,
            sigma_beta=1e-12,
            sigma_mu_beta=1e-12,
            sigma_gamma=1e-12,
            sigma_intercept=1e-12,
        ),
        "accepts",
        "",
    ),
    # -- groups that cannot be estimated -----------------------------------------------------
    Case(
        "groups",
        "group with only controls",
        only_arm(0),
        "warns",
        r"group\(s\) 's002' have no treated units.*cannot be estimated",
    ),
    Case(
        "groups",
        "group with only treated units",
        only_arm(1),
        "warns",
        r"group\(s\) 's002' of 'school' have no control units.*\d+ of \d+ treated unit",
    ),
    Case(
        "groups",
        "one warning names both kinds",
        both_one_arm_groups,
        "warns",
        r"'s004'.*no control units.*'s001' have no treated units",
    ),
    Case(
        "groups",
        "posterior draws whose weights underflow",
        posterior_underflow,
        "warns",
        r"control weights of group\(s\) 's003' \(50% of draws\) under- or overflow",
    ),
    # -- result files ------------------------------------------------------------------------
    Case(
        "files",
        "load a missing file",
        load_of(lambda t: t / "absent.nc"),
        ResultFileError,
        r"absent.nc' does not exist",
    ),
    Case("files", "load a directory", load_of(lambda t: t), ResultFileError, r"is a directory"),
    Case(
        "files",
        "load random bytes",
        load_of(random_bytes),
        ResultFileError,
        r"random.nc' is not a hierps result file",
    ),
    Case(
        "files",
        "load random bytes behind the signature",
        load_of(random_after_signature),
        ResultFileError,
        r"random_hdf.nc' cannot be read",
    ),
    Case(
        "files",
        "load an empty file",
        load_of(empty_file),
        ResultFileError,
        r"empty.nc' is not a hierps result file",
    ),
    Case(
        "files",
        "load a truncated file",
        load_of(truncated),
        ResultFileError,
        r"fit.nc' cannot be read — it is truncated or damaged",
    ),
    Case(
        "files",
        "load a foreign netCDF file",
        load_of(foreign),
        ResultFileError,
        r"foreign.nc' is not a hierps result file \(no 'hierps-result' format marker",
    ),
    Case(
        "files",
        "load a newer format version",
        load_of(retagged(hierps_format_version=99)),
        ResultFileError,
        r"has format version 99, newer",
    ),
    Case(
        "files",
        "load an unknown kind",
        load_of(retagged(hierps_kind="movie")),
        ResultFileError,
        r"unknown kind of result 'movie'",
    ),
    Case(
        "files",
        "load a file without its map group",
        load_of(without_group("map")),
        ResultFileError,
        r"incomplete: the map result lacks its 'map' group",
    ),
    Case(
        "files",
        "load a file without its design",
        load_of(without_group("design")),
        ResultFileError,
        r"lacks its 'design' group",
    ),
    Case(
        "files",
        "save onto a directory",
        save_into_directory,
        ResultFileError,
        r"is a directory; give a file name",
    ),
    # -- the command line: check runs fit's validation; one exit code per class --------------
    Case(
        "cli",
        "check: inf in a covariate",
        cli(spoil_cell("x1", 3, np.inf)),
        3,
        r"'x1' has infinite values in rows 3",
    ),
    Case(
        "cli",
        "check: 1e200 in a covariate",
        cli(spoil_cell("x2", 5, 1e200)),
        3,
        r"'x2' cannot be standardized",
    ),
    Case(
        "cli",
        "check: inf outcome",
        cli(spoil_cell("y", 2, -np.inf)),
        3,
        r"outcome column 'y' has infinite values in rows 2",
    ),
    Case(
        "cli",
        "check: string IDs as a covariate",
        cli(lambda f: f.assign(student=ids(f)), covariates='["x1", "student"]'),
        3,
        r"'student' is text with \d+ distinct values",
    ),
    Case(
        "cli",
        "check: treatment 2",
        cli(spoil_cell("z", 1, 2)),
        3,
        r"treatment column 'z' must be binary",
    ),
    Case(
        "cli",
        "check: bad hyperparameter",
        cli(lambda f: f, toml="[map]\nsigma_beta = -1\n"),
        2,
        r"map.sigma_beta",
    ),
    Case(
        "cli",
        "check: text hyperparameter",
        cli(lambda f: f, toml='[map]\nsigma_gamma = "abc"\n'),
        2,
        r"map.sigma_gamma",
    ),
    Case(
        "cli",
        "fit: --out is a file",
        cli(lambda f: f, "fit", "--out", "{tmp}/data.csv"),
        5,
        r"is a file; give a directory",
    ),
    Case(
        "cli",
        "fit: does not converge",
        cli(
            lambda f: f,
            "fit",
            "--out",
            "{tmp}/out",
            toml="[map]\nmax_iterations = 1\n[posterior]\nenabled = false\n",
        ),
        1,
        r"fit failed: the MAP Newton solver",
    ),
    Case(
        "arguments",
        "pool_catt draws zero",
        pooled(draws=0),
        ArgumentError,
        r"draws must be at least 1, not 0",
    ),
    Case(
        "arguments",
        "pool_catt random_seed text",
        pooled(random_seed="x"),
        ArgumentTypeError,
        r"random_seed must be None",
    ),
    Case(
        "arguments",
        "pooling path of text",
        lambda f, r, t: (f, lambda: hierps.pooling_path(hierps.Model(f, **r), "abc")),
        ArgumentTypeError,
        r"sigma_beta must be a list of positive numbers, not 'abc'",
    ),
]


def _model_of(frame, roles, **overrides):
    return frame, model(frame, roles, **overrides)


def test_the_table_covers_every_category_with_at_least_50_rows():
    categories = {case.category for case in CASES}
    assert categories == {"values", "arguments", "groups", "files", "cli"}
    assert len(CASES) >= 50
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.category}: {c.name}" for c in CASES])
def test_bad_input(case, tmp_path):
    frame, roles = base()
    frame, call = case.make(frame, roles, tmp_path)
    before = frame.copy(deep=True)
    if case.expect == "accepts":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HierpsWarning)
            call()
    elif isinstance(case.expect, int):
        result = call()
        assert result.exit_code == case.expect, result.output
        assert "Traceback" not in result.output
        # One line, or (model files) a first line followed by one line per problem.
        lines = result.output.strip().splitlines()
        assert lines[0].startswith(("error:", "fit failed:")), result.output
        assert all(line.startswith("  ") for line in lines[1:]), result.output
        assert re.search(case.match, result.output), result.output
    elif case.expect == "warns":
        with pytest.warns(HierpsWarning, match=case.match):
            call()
    else:
        assert issubclass(case.expect, HierpsError)
        with pytest.raises(case.expect, match=case.match) as raised:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", HierpsWarning)
                call()
        # The package's own error, with the conventional second base where there is one.
        assert isinstance(raised.value, HierpsError)
        assert "\n" not in str(raised.value)
    pd.testing.assert_frame_equal(frame, before)
