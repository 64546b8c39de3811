"""The identified coding of categorical covariates inside the PyMC model.

:mod:`hierps.design.coding` explains the coding: every level keeps a coefficient, and only the
``K − 1`` coordinates orthogonal to a block's flat direction are sampled. Here are the two
places it enters :func:`hierps.pymc_model.build_pymc`: coefficients with a fixed isotropic
prior (``mu_beta``, ``gamma``), and the non-centred group deviations with a scale per level.
Both give every linear predictor exactly the distribution of the all-levels model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from hierps.design.build import Design
from hierps.design.coding import Block, categorical_blocks, coefficient_names, expansion

__all__ = ["CODINGS", "Coding", "coding_of", "identified_deviations", "identified_normal"]

CODINGS = ("identified", "full")


class Coding:
    """The categorical blocks of a design's unit and group covariates, and the free names."""

    def __init__(self, design: Design) -> None:
        self.unit = categorical_blocks(
            design.unit_names, design.unit_sources, design.unit_scaling, design.unit_matrix
        )
        self.group = categorical_blocks(
            design.group_names, design.group_sources, design.group_scaling, design.group_matrix
        )
        # A block constrains the group deviations only when all its levels vary by group: a
        # subset of levels has no flat direction.
        varying_positions = np.flatnonzero(design.varying)
        at = {int(column): i for i, column in enumerate(varying_positions)}
        self.varying = [
            Block(block.source, np.array([at[int(c)] for c in block.columns]), block.flat)
            for block in self.unit
            # Deviations are assembled block by block in column order (levels are adjacent).
            if all(int(c) in at for c in block.columns) and np.all(np.diff(block.columns) == 1)
        ]
        # One scale per varying covariate: a categorical's varying levels share one, the SD of
        # the groups' level deviations on the logit scale (a level's standardized column is
        # its indicator divided by the column's scale, so its slope is that SD times the scale).
        scales: list[str] = []
        index = np.empty(len(varying_positions), dtype="int64")
        multiplier = np.ones(len(varying_positions))
        in_block = {int(c): block for block in self.varying for c in block.columns}
        varying_names = design.varying_names
        for position, name in enumerate(varying_names):
            label = in_block[position].source if position in in_block else name
            if label not in scales:
                scales.append(label)
            index[position] = scales.index(label)
            if position in in_block:
                multiplier[position] = design.unit_scaling.loc[name, "scale"]
        self.varying_scales = scales
        self.scale_index = index
        self.scale_multiplier = multiplier
        self.unit_free = coefficient_names(design.unit_names, self.unit)
        self.group_free = coefficient_names(design.group_names, self.group)
        self.varying_free = coefficient_names(design.varying_names, self.varying)


def coding_of(design: Design) -> Coding:
    """The identified coding of ``design`` (its blocks and free coordinate names)."""
    return Coding(design)


def identified_normal(
    name: str, sigma: float, n_columns: int, blocks: Sequence[Block], dims: tuple[str, str]
) -> pt.TensorVariable:
    """Coefficients with prior ``N(0, sigma² I)`` over all columns, flat components left out.

    Samples ``{name}_contrast`` (dim ``dims[1]``, the free coordinates) and returns the
    deterministic ``name`` (dim ``dims[0]``, every column).
    """
    free = pm.Normal(f"{name}_contrast", 0.0, sigma, dims=dims[1])
    # A broadcast product summed, not pt.dot (numba lowers Dot to a large BLAS wrapper).
    matrix = pt.as_tensor_variable(expansion(n_columns, blocks))
    return pm.Deterministic(name, (matrix * free[None, :]).sum(axis=-1), dims=dims[0])


def identified_deviations(
    offsets: pt.TensorVariable,
    sigma: pt.TensorVariable | float,
    n_varying: int,
    blocks: Sequence[Block],
) -> pt.TensorVariable:
    """Group deviations ``σ ⊙ z`` of the varying slopes from the free offsets ``(J, k_free)``.

    Outside blocks ``z`` is the offset itself. In a block of ``K`` levels, ``z = H(σ) [w; 0]``
    with ``H(σ)`` the reflection that maps the last axis onto the flat direction ``s / σ``
    of ``z``: its first ``K − 1`` columns are an orthonormal basis of the identified part.
    """
    sigma = pt.broadcast_to(pt.as_tensor_variable(sigma), (n_varying,))
    starts = {int(block.columns[0]): block for block in blocks}
    pieces: list[pt.TensorVariable] = []
    column = free = 0
    while column < n_varying:
        block = starts.get(column)
        if block is None:
            pieces.append(offsets[:, free : free + 1])
            column, free = column + 1, free + 1
            continue
        k = len(block)
        # The flat direction of z is s / σ: it turns with the scales, so that z's identified
        # part has the all-levels prior for every σ (a fixed basis of s^⊥ mixed worse).
        direction = block.flat / sigma[column : column + k]
        direction = direction / pt.sqrt((direction**2).sum())
        u = pt.set_subtensor(direction[-1], direction[-1] + 1.0)
        rows = offsets.shape[0]
        padded = pt.concatenate([offsets[:, free : free + k - 1], pt.zeros((rows, 1))], axis=1)
        projection = 2.0 * (padded * u).sum(axis=-1, keepdims=True) / (u * u).sum()
        pieces.append(padded - projection * u)
        column, free = column + k, free + k - 1
    return sigma * pt.concatenate(pieces, axis=1)
