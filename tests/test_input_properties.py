"""Properties over random bad input: messy frames never raise anything but the package's own
error, never give a NaN weight without a warning, and never change the caller's frame; and
``hierps.load`` refuses every truncated or random file with the package's error."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import make_frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hierps
from hierps.exceptions import HierpsError, HierpsWarning, ResultFileError

COLUMNS = ["x1", "x2", "v1", "y", "z", "school"]
VALUES = [np.nan, np.inf, -np.inf, 1e200, -1e200, 1e-320, 1e150, "abc", "1.5", None, True]
FIXTURES = [HealthCheck.function_scoped_fixture]
DTYPES = ["str", "object", "category", "Int64", "float32", "bool", "datetime", "complex"]


def base_frame(seed: int) -> tuple[pd.DataFrame, dict]:
    frame, roles = make_frame(seed=seed, sizes=(8, 20), n_groups=4, n_unit=2, n_group=1)
    frame.index = pd.Index([f"u{i}" for i in range(len(frame))])
    return frame, roles


def inject(frame: pd.DataFrame, column: str, rows: list[int], value: object) -> pd.DataFrame:
    frame = frame.copy()
    if not (isinstance(value, float) and frame[column].dtype.kind == "f"):
        frame[column] = frame[column].astype(object)
    frame.iloc[rows, frame.columns.get_loc(column)] = value
    return frame


def retype(frame: pd.DataFrame, column: str, dtype: str) -> pd.DataFrame:
    """``frame`` with ``column`` converted to ``dtype``; unchanged where pandas cannot convert
    what earlier steps left (that is the generator's limit, not hierps')."""
    try:
        return _retype(frame.copy(), column, dtype)
    except (TypeError, ValueError, OverflowError):
        return frame


def _retype(frame: pd.DataFrame, column: str, dtype: str) -> pd.DataFrame:
    series = frame[column]
    if dtype == "datetime":
        frame[column] = pd.Timestamp("2020-01-01") + pd.to_timedelta(
            pd.to_numeric(series, errors="coerce").fillna(0).round(), "D"
        )
    elif dtype == "Int64":
        numeric = pd.to_numeric(series, errors="coerce").astype(float)
        numeric = numeric.where(np.isfinite(numeric) & (numeric.abs() < 1e15))
        frame[column] = numeric.round().astype("Int64")
    elif dtype == "bool":
        frame[column] = pd.to_numeric(series, errors="coerce").fillna(0) > 0
    elif dtype == "complex":
        frame[column] = pd.to_numeric(series, errors="coerce").astype(float).fillna(0.0) + 1j
    elif dtype == "float32":
        frame[column] = pd.to_numeric(series, errors="coerce").astype("float32")
    else:
        frame[column] = series.astype(dtype)
    return frame


@st.composite
def messy_frames(draw):
    frame, roles = base_frame(draw(st.integers(0, 50)))
    duplicates = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["value", "dtype", "duplicate", "one arm"]))
        column = draw(st.sampled_from(COLUMNS))
        if kind == "value":
            rows = draw(st.lists(st.integers(0, len(frame) - 1), min_size=1, max_size=5))
            frame = inject(frame, column, rows, draw(st.sampled_from(VALUES)))
        elif kind == "dtype":
            frame = retype(frame, column, draw(st.sampled_from(DTYPES)))
        elif kind == "duplicate":
            duplicates.append(column)  # last: later steps address columns by name
        else:
            labels = sorted(frame["school"].dropna().astype(str).unique())
            if not labels:
                continue
            group = draw(st.sampled_from(labels))
            frame["z"] = frame["z"].astype(object)  # any dtype the earlier steps left
            frame.loc[frame["school"].astype(str) == group, "z"] = draw(st.sampled_from([0, 1]))
    if duplicates:
        frame = pd.concat([frame, frame[duplicates]], axis=1)
    return frame, roles


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=messy_frames())
def test_messy_frames_give_package_errors_or_warned_results(case):
    frame, roles = case
    before = frame.copy(deep=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fit = hierps.Model(frame, **roles).fit_map()
        except HierpsError:
            fit = None
    pd.testing.assert_frame_equal(frame, before)
    if fit is None:
        return
    warned = [w for w in caught if issubclass(w.category, HierpsWarning)]
    weights = fit.weights.to_numpy()
    assert not np.isnan(weights).any() or warned
    assert np.all(weights >= 0)
    catt = fit.catt["estimate"]
    if catt.isna().any():  # every inestimable group is named in a warning
        messages = " ".join(str(w.message) for w in warned)
        for group in catt.index[catt.isna()]:
            assert repr(group) in messages
    assert np.isfinite(fit.att) or catt.isna().all()


@pytest.fixture(scope="module")
def saved_bytes(tmp_path_factory) -> bytes:
    frame, roles = base_frame(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        fit = hierps.Model(frame, **roles).fit_map()
    path = fit.save(tmp_path_factory.mktemp("saved") / "fit.nc")
    return path.read_bytes()


def load_bytes(tmp_path_factory, data: bytes):
    path = tmp_path_factory.mktemp("fuzz") / "file.nc"
    path.write_bytes(data)
    return hierps.load(path)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_every_truncation_is_refused(saved_bytes, tmp_path_factory, fraction):
    cut = int(fraction * len(saved_bytes))
    with pytest.raises(ResultFileError):
        load_bytes(tmp_path_factory, saved_bytes[:cut])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(min_size=0, max_size=4000),
    signature=st.booleans(),
)
def test_random_files_are_refused(tmp_path_factory, data, signature):
    if signature:
        data = b"\x89HDF\r\n\x1a\n" + data
    with pytest.raises(ResultFileError):
        load_bytes(tmp_path_factory, data)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(start=st.floats(0.0, 1.0), garbage=st.binary(min_size=1, max_size=64))
def test_overwritten_spans_are_refused_or_read_back_intact(
    saved_bytes, tmp_path_factory, start, garbage
):
    """Garbage over a span of a whole file: refused, or (where it only hit padding) the same
    result with its group labels."""
    position = int(start * (len(saved_bytes) - len(garbage)))
    data = saved_bytes[:position] + garbage + saved_bytes[position + len(garbage) :]
    try:
        loaded = load_bytes(tmp_path_factory, data)
    except ResultFileError:
        return
    assert isinstance(loaded, hierps.MapResult)
    assert list(loaded.design.groups) == [f"s{j:03d}" for j in range(4)]


def test_a_saved_result_loads_back_whole(saved_bytes, tmp_path_factory):
    loaded = load_bytes(tmp_path_factory, saved_bytes)
    frame, roles = base_frame(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        fit = hierps.Model(frame, **roles).fit_map()
    assert isinstance(loaded, hierps.MapResult)
    pd.testing.assert_series_equal(loaded.weights, fit.weights)
    pd.testing.assert_frame_equal(loaded.catt, fit.catt)
    assert loaded.att == fit.att
