"""Identified coding of categorical covariates: all levels, minus the one direction data miss.

A categorical covariate enters the design as one column per level (plus its missingness
indicator when it has missing values). The columns of such a *block* sum to one on every row,
and after centring and scaling ``x_l = (d_l − c_l) / s_l`` the combination ``Σ_l s_l x_l`` is
the same number on every row. So the coefficient direction ``u ∝ s`` of the block changes no
linear predictor after the intercept absorbs that constant: the likelihood is flat along it
and only the prior identifies it. NUTS mixes slowly along such a direction (a long, thin
ridge oblique to every axis) although nothing of interest depends on it.

The identified coding keeps every level's coefficient but samples only the ``K − 1``
coordinates orthogonal to that direction: for an isotropic Gaussian prior, the coefficients
are ``Q m`` with ``m ~ N(0, σ² I_{K−1})`` and ``Q`` an orthonormal basis of ``s^⊥`` (a
Householder reflection). Splitting ``N(0, σ² I_K)`` into ``s^⊥`` and ``s`` is exact, so every
linear predictor, propensity, weight and effect has the same distribution as under the
all-levels model; only the flat component, which changes none of them, is left out. The same
holds for group-varying slopes with a scale per level, ``δ = σ ⊙ z``, ``z ~ N(0, I)``: the flat
direction of ``z`` is ``s / σ``, and ``z = H(σ) [w; 0]`` with ``w ~ N(0, I_{K−1})`` and the
reflection ``H(σ)`` that maps the last axis onto it gives the identified part of ``δ`` the
all-levels distribution for every ``σ``. Hence the MAP of the calibrated loss (where the flat
component sits at the prior's mode) and the posterior describe one model; see
``docs/posterior.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "Block",
    "categorical_blocks",
    "coefficient_names",
    "expansion",
    "householder_basis",
]

# A block is used only when its flat combination is constant to this relative precision
# (a safeguard: by construction it always is).
_FLAT_TOLERANCE = 1e-8


@dataclass(frozen=True)
class Block:
    """The encoded columns of one categorical covariate and its flat direction.

    Attributes
    ----------
    source
        The input column, e.g. ``"C1"``.
    columns
        Positions of its encoded columns (levels and missingness indicator) in the matrix.
    flat
        Unit vector over those columns along which the linear predictor does not change
        (up to a constant): the columns' scales, normalized.
    """

    source: str
    columns: np.ndarray
    flat: np.ndarray

    def __len__(self) -> int:
        return len(self.columns)


def categorical_blocks(
    names: Sequence[str],
    sources: Mapping[str, str],
    scaling: pd.DataFrame,
    matrix: np.ndarray,
) -> list[Block]:
    """The categorical blocks of an encoded matrix (unit or group covariates of a design).

    A source column is categorical when one of its encoded columns is a level, named
    ``source[level]``; its block is every encoded column it produced. Blocks of one column
    have no flat direction and are left out, as is (a safeguard) any block whose flat
    combination is not constant over the rows of ``matrix``.
    """
    names = list(names)
    by_source: dict[str, list[int]] = {}
    for position, name in enumerate(names):
        source = sources.get(name, name)
        by_source.setdefault(source, []).append(position)
    blocks = []
    for source, columns in by_source.items():
        if len(columns) < 2 or not any(names[c].startswith(f"{source}[") for c in columns):
            continue
        scale = scaling.loc[[names[c] for c in columns], "scale"].to_numpy(dtype=float)
        combination = matrix[:, columns] @ scale
        if len(combination) and np.ptp(combination) > _FLAT_TOLERANCE * max(1.0, scale.max()):
            continue
        blocks.append(Block(source, np.asarray(columns), scale / np.linalg.norm(scale)))
    return blocks


def householder_basis(flat: np.ndarray) -> np.ndarray:
    """``(K, K − 1)`` orthonormal basis of the complement of the unit vector ``flat``.

    The first ``K − 1`` columns of the reflection ``H = I − 2 u u' / u'u``, ``u = flat + e_K``,
    which maps ``e_K`` to ``−flat`` (``flat`` has positive entries, so ``u'u > 0``).
    """
    k = len(flat)
    u = np.array(flat, dtype=float)
    u[-1] += 1.0
    reflection = np.eye(k) - 2.0 * np.outer(u, u) / (u @ u)
    return reflection[:, : k - 1]


def coefficient_names(names: Sequence[str], blocks: Sequence[Block]) -> list[str]:
    """Names of the free coordinates: a block of ``K`` columns becomes ``K − 1`` coordinates
    ``source:1`` … ``source:K−1`` at the place of its first column."""
    in_block = {int(block.columns[0]): block for block in blocks}
    skipped = {int(c) for block in blocks for c in block.columns[1:]}
    out: list[str] = []
    for position, name in enumerate(names):
        if position in in_block:
            block = in_block[position]
            out += [f"{block.source}:{i}" for i in range(1, len(block))]
        elif position not in skipped:
            out.append(name)
    return out


def expansion(n_columns: int, blocks: Sequence[Block]) -> np.ndarray:
    """``(n_columns, n_free)`` matrix mapping the free coordinates to every column's coefficient.

    Identity on the columns outside blocks, the Householder basis on each block; the free
    coordinates are ordered as :func:`coefficient_names` names them.
    """
    first = {int(block.columns[0]): block for block in blocks}
    skipped = {int(c) for block in blocks for c in block.columns[1:]}
    parts: list[np.ndarray] = []
    for position in range(n_columns):
        if position in first:
            block = first[position]
            part = np.zeros((n_columns, len(block) - 1))
            part[block.columns] = householder_basis(block.flat)
            parts.append(part)
        elif position not in skipped:
            part = np.zeros((n_columns, 1))
            part[position, 0] = 1.0
            parts.append(part)
    return np.hstack(parts) if parts else np.zeros((n_columns, 0))
