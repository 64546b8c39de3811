"""Squares and pairwise products of the unit covariates, for balance beyond the means.

The MAP weights balance the means of the model's columns; the balance of their squares and
products shows whether variances and covariances came along. :func:`expanded_design` returns
a copy of a design whose unit columns also hold those terms, so that every balance statistic
computed from a design (:func:`hierps.balance_table`) covers them unchanged.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pandas as pd

from hierps.balance.statistics import binary_covariates
from hierps.design.build import Design

__all__ = ["expanded_design"]


def expanded_design(design: Design, squares: bool = False, interactions: bool = False) -> Design:
    """A copy of ``design`` with squares and/or pairwise products of its unit covariates.

    Continuous columns are centred at their treated mean first (binary columns stay 0/1), so
    the mean of a square is a variance about the treated mean and the mean of a product a
    covariance: their SMDs measure the balance of second moments, not a repeat of the means.

    Parameters
    ----------
    design
        The model's design; its unit columns on the original scale are used.
    squares
        Add ``x^2`` for every continuous unit column (the square of a binary column is the
        column itself).
    interactions
        Add ``a:b`` for every pair of unit columns from different source columns (levels of
        one categorical are exclusive, and a column times its own missingness indicator is 0);
        products that are constant are left out.

    Returns
    -------
    Design
        The same units, groups and group covariates; the added unit columns come after the
        model's, on their own scale (centre 0, scale 1 in ``unit_scaling``) and without a
        varying slope. Use it for diagnostics only: the model was not fitted on them.
    """
    original = design.unit_frame(original_scale=True)
    names = list(original.columns)
    values = original.to_numpy()
    binary = binary_covariates(values) if len(names) else np.zeros(0, dtype=bool)
    treated = design.treatment == 1
    centre = np.where(binary, 0.0, values[treated].mean(axis=0) if treated.any() else 0.0)
    centred = values - centre
    extra: dict[str, np.ndarray] = {}
    if squares:
        for k, name in enumerate(names):
            if not binary[k]:
                extra[f"{name}^2"] = centred[:, k] ** 2
    if interactions:
        sources = design.unit_sources
        for a, b in itertools.combinations(range(len(names)), 2):
            if sources.get(names[a], names[a]) == sources.get(names[b], names[b]):
                continue
            product = centred[:, a] * centred[:, b]
            if np.ptp(product) > 0:
                extra[f"{names[a]}:{names[b]}"] = product
    if not extra:
        return design
    added = list(extra)
    scaling = pd.DataFrame(
        {"center": 0.0, "scale": 1.0}, index=pd.Index(added, name=design.unit_scaling.index.name)
    ).reindex(columns=design.unit_scaling.columns)
    return dataclasses.replace(
        design,
        unit_matrix=np.column_stack([design.unit_matrix, *extra.values()]),
        unit_names=(*design.unit_names, *added),
        varying=np.r_[design.varying, np.zeros(len(added), dtype=bool)],
        unit_scaling=pd.concat([design.unit_scaling, scaling]),
        unit_sources={**design.unit_sources, **{name: name for name in added}},
    )
