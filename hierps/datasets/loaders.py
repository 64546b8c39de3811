"""The example data shipped inside the package, as validated DataFrames.

- :func:`load_learning_mindsets` — the ACIC 2018 synthetic learning-mindsets study (students in
  schools). Its terms of use restrict what it may be used for; read them in
  ``hierps/datasets/data/learning_mindsets.md`` (``hierps.datasets.terms("learning_mindsets")``).
- :func:`load_nh0506` — the NHANES 2005–2006 smoking and homocysteine extract of natstrat.

The files are package data, read through :mod:`importlib.resources`, so the loaders work from an
installed wheel as well as from a source checkout.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from hierps.exceptions import ArgumentError, DataError

__all__ = ["load_learning_mindsets", "load_nh0506", "terms"]

_DATA = resources.files("hierps.datasets") / "data"
_MINDSETS_FILE = "acic18_synthetic.csv"
_NH0506_FILE = "nh0506.csv"
# Terms of use and provenance of each data set, shipped beside it.
_TERMS = {"learning_mindsets": "learning_mindsets.md", "nh0506": "nh0506.md"}

# sha256 of the shipped files (also stated in the terms files).
SHA256 = {
    "acic18_synthetic.csv": "8af5e6cdfe1cbc4ac98fb228657f538334befe075922093dbd651521f413590e",
    "nh0506.csv": "32fb7304025ba44bdcfb4afa7d468903f2f5d982a6507d53ad63c45c2643a04f",
}

_MINDSETS_INT = ["schoolid", "Z", "S3", "C1", "C2", "C3", "XC"]
_MINDSETS_FLOAT = ["Y", "X1", "X2", "X3", "X4", "X5"]
_MINDSETS_COLUMNS = ["schoolid", "Z", "Y", "S3", "C1", "C2", "C3", "XC", *_MINDSETS_FLOAT[1:]]

_NH_SEX = ["Male", "Female"]
_NH_RACE = [
    "Mexican American",
    "Other Hispanic",
    "Non-Hispanic White",
    "Non-Hispanic Black",
    "Other Race - Including Multi-Racial",
]
_NH_EDUCATION = [
    "< Grade 9",
    "9-11th grade",
    "High school grad/GED",
    "Some college or AA degree",
    "College graduate or above",
]
_NH_INT = ["SEQN", "z"]
_NH_FLOAT = ["age", "povertyr", "bmi", "cigsperday30", "cotinine", "homocysteine"]
_NH_COLUMNS = ["SEQN", "z", "sex", "age", "race", "education", *_NH_FLOAT[1:]]

# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def _read_csv(
    path: str | os.PathLike[str] | None, shipped: str, loader: str, **options: object
) -> pd.DataFrame:
    """Read ``path``, or the copy of ``shipped`` inside the package when ``path`` is None."""
    if path is None:
        resource = _DATA / shipped
        if not resource.is_file():
            raise FileNotFoundError(
                f"{loader}: the package data file '{shipped}' is missing from this installation "
                f"of hierps (reinstall it, or pass the file's location as {loader}(path=...))."
            )
        with resource.open("rb") as handle:
            return pd.read_csv(handle, **options)
    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(
            f"{loader}: no data file at '{target}'. Check the path given to {loader}(path=...)."
        )
    return pd.read_csv(target, **options)


def terms(name: str) -> str:
    """The terms of use and provenance of a shipped data set, as Markdown text.

    Parameters
    ----------
    name : {"learning_mindsets", "nh0506"}
        The data set.

    Returns
    -------
    str
        The text of the terms file shipped beside the data.
    """
    if name not in _TERMS:
        raise ArgumentError(f"name={name!r} is not one of {sorted(_TERMS)}")
    return (_DATA / _TERMS[name]).read_text(encoding="utf-8")


def _check_columns(df: pd.DataFrame, expected: Sequence[str], name: str) -> None:
    missing = [c for c in expected if c not in df.columns]
    if missing:
        raise DataError(
            f"{name}: the file lacks the expected column(s) {missing}; "
            f"expected {list(expected)}, found {list(df.columns)}."
        )


def _as_int(df: pd.DataFrame, column: str, name: str) -> pd.Series:
    """Cast a column to int64, naming the column if it has missing or non-integer values."""
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() | (values != np.round(values))
    if bad.any():
        first = df.loc[bad, column].iloc[0]
        raise DataError(
            f"{name}: column '{column}' must hold integers without missing values; "
            f"{int(bad.sum())} value(s) do not (first: {first!r} at row {bad.idxmax()})."
        )
    return values.astype("int64")


def _as_float(df: pd.DataFrame, column: str, name: str) -> pd.Series:
    """Cast a column to float64; empty fields are NaN, anything non-numeric is an error."""
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() & df[column].notna()
    if bad.any():
        raise DataError(
            f"{name}: column '{column}' has non-numeric value(s), "
            f"first {df.loc[bad, column].iloc[0]!r} at row {bad.idxmax()}."
        )
    return values.astype("float64")


def _as_categorical(
    df: pd.DataFrame, column: str, levels: list[str], name: str, *, ordered: bool = False
) -> pd.Series:
    """Cast to a categorical with fixed levels; unknown or missing values are errors, not NaN."""
    unknown = sorted(set(df[column].dropna().astype(str)) - set(levels))
    if unknown or df[column].isna().any():
        raise DataError(
            f"{name}: column '{column}' must take only the levels {levels} "
            f"(no missing values); found unknown {unknown} and "
            f"{int(df[column].isna().sum())} missing."
        )
    dtype = pd.CategoricalDtype(levels, ordered=ordered)
    return df[column].astype(str).astype(dtype)


def _check_binary(series: pd.Series, column: str, name: str) -> None:
    bad = ~series.isin([0, 1])
    if bad.any():
        raise DataError(
            f"{name}: treatment column '{column}' must be 0/1; found "
            f"{sorted(series[bad].unique().tolist())[:5]}."
        )


def load_learning_mindsets(path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Load the ACIC 2018 synthetic learning-mindsets study (students in schools).

    The data were simulated from a model fitted to preliminary data of the National Study of
    Learning Mindsets. **Terms:** use them only to evaluate methods for inferring treatment
    effects; do not analyse or publish other features of the covariates' joint distribution; cite
    Yeager et al. (2019), *Nature* 573, 364–369 in any publication. See
    ``hierps.datasets.terms("learning_mindsets")``.

    Parameters
    ----------
    path : str or os.PathLike, optional
        Location of ``acic18_synthetic.csv``. By default the copy shipped inside the package.

    Returns
    -------
    pandas.DataFrame
        10,391 rows × 13 columns: ``schoolid``, ``Z`` (treatment 0/1), ``Y`` (outcome), student
        covariates ``S3``, ``C1``, ``C2``, ``C3`` and school covariates ``XC``, ``X1``–``X5``.
        Codes (``schoolid``, ``Z``, ``S3``, ``C1``–``C3``, ``XC``) are int64, the rest float64;
        declare the unordered codes (``C1``, ``XC``) as categorical when building a model.

    Raises
    ------
    FileNotFoundError
        If the file is not found (the message says where the loader looked).
    DataError
        If expected columns are missing or hold values of the wrong kind.

    Examples
    --------
    >>> df = load_learning_mindsets()
    >>> df.shape
    (10391, 13)
    """
    name = "load_learning_mindsets"
    raw = _read_csv(path, _MINDSETS_FILE, name)
    _check_columns(raw, _MINDSETS_COLUMNS, name)
    out = raw.copy()
    for column in _MINDSETS_INT:
        out[column] = _as_int(raw, column, name)
    for column in _MINDSETS_FLOAT:
        out[column] = _as_float(raw, column, name)
    _check_binary(out["Z"], "Z", name)
    return out


def load_nh0506(path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Load the NHANES 2005–2006 smoking and homocysteine extract (natstrat's ``nh0506``).

    Parameters
    ----------
    path : str or os.PathLike, optional
        Location of ``nh0506.csv``. By default the copy shipped inside the package.

    Returns
    -------
    pandas.DataFrame
        2,928 rows × 11 columns. ``SEQN`` and ``z`` (1 = daily smoker, 0 = never smoker) are
        int64; ``sex`` is categorical (Male, Female); ``race`` categorical with levels Mexican
        American, Other Hispanic, Non-Hispanic White, Non-Hispanic Black, Other Race - Including
        Multi-Racial; ``education`` an ordered categorical from "< Grade 9" to "College graduate
        or above"; ``age``, ``povertyr``, ``bmi``, ``cigsperday30``, ``cotinine`` and
        ``homocysteine`` are float64 with NaN for empty fields (126 in ``povertyr``, 46 in
        ``bmi``).

    Raises
    ------
    FileNotFoundError
        If the file is not found (the message says where the loader looked).
    DataError
        If expected columns are missing or hold values of the wrong kind (including factor
        values outside the documented levels, which are never turned silently into NaN).

    Examples
    --------
    >>> df = load_nh0506()
    >>> int(df["z"].sum())
    581
    """
    name = "load_nh0506"
    # Read factors as strings so that unknown levels can be reported, not coerced.
    raw = _read_csv(path, _NH0506_FILE, name, dtype={"sex": str, "race": str, "education": str})
    _check_columns(raw, _NH_COLUMNS, name)
    out = raw.copy()
    for column in _NH_INT:
        out[column] = _as_int(raw, column, name)
    for column in _NH_FLOAT:
        out[column] = _as_float(raw, column, name)
    out["sex"] = _as_categorical(raw, "sex", _NH_SEX, name)
    out["race"] = _as_categorical(raw, "race", _NH_RACE, name)
    out["education"] = _as_categorical(raw, "education", _NH_EDUCATION, name, ordered=True)
    _check_binary(out["z"], "z", name)
    return out
