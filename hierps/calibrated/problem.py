"""The calibrated-loss problem, with its controls laid out for the block Newton solver.

Every unit's linear predictor is ``η_i = c_j · z_i`` with ``z_i = (1, x_i)`` and the group's
coefficients ``c_j = (α_j, β_j)``: global coefficients ``(a0, γ, μ)`` plus per-group
deviations on some entries of ``z``. All data-dependent work of the solver is the per-group
moment matrix ``M_j = Σ_{controls in j} w_i z_i z_i'`` and the predictors ``η``: the controls
are laid out once per design in buckets of groups of similar size, zero-padded to a common
width, so that both are a few batched matrix products rather than one small product per group.
"""

from __future__ import annotations

import functools
import itertools
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from hierps.exceptions import ArgumentError

if TYPE_CHECKING:
    from hierps.design.build import Design

__all__ = ["Bucket", "CalibratedProblem", "ControlLayout", "lay_out_controls", "make_problem"]

# A bucket holds groups whose control counts are within this factor of its smallest (the
# padding costs at most that much extra work) and at most CHUNK_ROWS padded rows, which
# bounds the temporaries of the batched products.
BUCKET_GROWTH = 1.5
CHUNK_ROWS = 1 << 16


@dataclass(frozen=True, eq=False)
class Bucket:
    """Consecutive groups of similar control counts, their controls padded to one width."""

    groups: slice  # the bucket's groups, in the solver's order
    rows: slice  # their span of the padded control vector, group after group
    z: np.ndarray  # (J_b, D, width): z' of each group's controls, zero columns as padding

    @property
    def z_rows(self) -> np.ndarray:
        """``(J_b, width, D)`` view of ``z``."""
        return self.z.transpose(0, 2, 1)


@dataclass(frozen=True, eq=False)
class ControlLayout:
    """Everything the solver needs from the unit rows: the controls in padded buckets.

    The solver numbers the groups by control count (groups without controls last), so that
    each bucket's groups are a slice; ``group_order`` maps them back to the input codes.
    """

    buckets: tuple[Bucket, ...]
    group_order: np.ndarray  # (J,) input code of each solver group
    slots: np.ndarray  # (n_controls,) position of each control in the padded vector
    order: np.ndarray  # (n_controls,) its row in the input, in the same order as slots
    padding: np.ndarray  # (n_padded,) η offset: 0 at controls, -inf at padding (w = 0)
    treated_moments: np.ndarray  # (J, D): Σ_treated z per group, in the solver's order
    gram: np.ndarray  # (J, D, D): Σ_controls z z' per group


@dataclass(frozen=True, eq=False)
class CalibratedProblem:
    """The calibrated-loss problem in the solver's layout.

    Global coefficients are ``(a0, γ, μ)``: group ``j``'s coefficients on ``z = (1, x)`` are
    ``(a0 + v_j'γ, μ)`` plus its local deviations ``(u_j, δ_j)`` on the ``z`` entries
    ``local_index``. With no groups of interest (one group, no local entries) the problem is
    a plain regularized calibration on the columns of ``x``. Per-group arrays are in the
    layout's group order.
    """

    layout: ControlLayout
    intercept_design: np.ndarray  # (J, 1 + p): (1, v_j), so that α_j = (1, v_j)·(a0, γ) + u_j
    local_index: np.ndarray  # (K,) indices into z
    prior_global: np.ndarray  # (G,) prior precisions
    prior_local: np.ndarray  # (K,) prior precisions

    @property
    def buckets(self) -> tuple[Bucket, ...]:
        return self.layout.buckets

    @property
    def group_order(self) -> np.ndarray:
        return self.layout.group_order

    @property
    def slots(self) -> np.ndarray:
        return self.layout.slots

    @property
    def order(self) -> np.ndarray:
        return self.layout.order

    @property
    def padding(self) -> np.ndarray:
        return self.layout.padding

    @property
    def treated_moments(self) -> np.ndarray:
        return self.layout.treated_moments

    @property
    def n_groups(self) -> int:
        return self.treated_moments.shape[0]

    @property
    def dimension(self) -> int:
        return self.treated_moments.shape[1]

    @property
    def n_global(self) -> int:
        return len(self.prior_global)

    @property
    def n_local(self) -> int:
        return len(self.local_index)

    @functools.cached_property
    def all_local(self) -> bool:
        """Whether every entry of ``z`` has per-group deviations, in order (B = I)."""
        return self.n_local == self.dimension and bool(
            np.all(self.local_index == np.arange(self.dimension))
        )


# Layouts of the designs fitted so far: a pooling path or a tuning grid refits one design
# many times, and the layout depends on its rows only. Entries go with their designs.
_LAYOUTS: weakref.WeakKeyDictionary[Design, ControlLayout] = weakref.WeakKeyDictionary()


def _problem(layout, group_design, local_index, prior_global, prior_local) -> CalibratedProblem:
    n_groups = len(layout.group_order)
    group_design = np.asarray(group_design, dtype=float).reshape(n_groups, -1)
    return CalibratedProblem(
        layout=layout,
        intercept_design=np.column_stack([np.ones(n_groups), group_design[layout.group_order]]),
        local_index=np.asarray(local_index, dtype=np.int64),
        prior_global=np.asarray(prior_global, dtype=float),
        prior_local=np.asarray(prior_local, dtype=float),
    )


def make_problem(
    z_all: np.ndarray,
    treatment: np.ndarray,
    codes: np.ndarray,
    group_design: np.ndarray,
    local_index: np.ndarray,
    prior_global: np.ndarray,
    prior_local: np.ndarray,
) -> CalibratedProblem:
    """Lay out a calibrated-loss problem for the Newton solver.

    Parameters
    ----------
    z_all
        ``(n, D)``: ``z = (1, x)`` of every unit; the first column must be the constant 1.
    treatment
        ``(n,)``: 1 for treated units, 0 for controls.
    codes
        ``(n,)``: group code of every unit, in ``0 .. J − 1``.
    group_design
        ``(J, p)``: the group covariates ``v_j``.
    local_index
        ``(K,)``: the entries of ``z`` with per-group deviations (may be empty).
    prior_global, prior_local
        Prior precisions of ``(a0, γ, μ)`` and of each group's deviations.

    Returns
    -------
    CalibratedProblem
    """
    if not np.all(z_all[:, 0] == 1.0):
        raise ArgumentError("the first column of z_all must be the constant 1")
    treated = np.asarray(treatment) == 1
    layout = lay_out_controls(z_all[:, 1:], treated, codes, len(group_design))
    return _problem(layout, group_design, local_index, prior_global, prior_local)


def lay_out_controls(
    x: np.ndarray,
    treated: np.ndarray,
    codes: np.ndarray,
    n_groups: int,
    weighted: np.ndarray | None = None,
    base_weights: np.ndarray | None = None,
) -> ControlLayout:
    """Lay out the controls of ``z = (1, x)`` in padded buckets of groups of similar size.

    Parameters
    ----------
    x
        ``(n, D − 1)``: the unit covariates of every unit.
    treated
        ``(n,)`` booleans: the *target* units, whose moments the weighted units balance.
    codes
        ``(n,)``: group code of every unit, in ``0 .. n_groups − 1``.
    n_groups
        The number of groups.
    weighted
        ``(n,)`` booleans: the units that get weights (the "controls" of the solver); by
        default ``~treated``. Other estimands than the ATT choose other pairs (the ATC
        weights the treated to the controls; the ATE each arm to the whole sample, so the
        two sets may overlap).
    base_weights
        ``(n,)`` positive base weights ``b``: the loss becomes ``Σ b exp(η) − Σ_target b η``.
        They enter as the offset ``log b`` of each control's ``η`` (so the solver's weights
        are ``b·exp(η)``), the Gram matrices and the target moments.

    Returns
    -------
    ControlLayout
    """
    if weighted is None:
        weighted = ~treated
    control_rows = np.flatnonzero(weighted)
    control_codes = codes[control_rows]
    counts = np.bincount(control_codes, minlength=n_groups)
    group_order = np.argsort(counts, kind="stable")
    n_empty = int(np.count_nonzero(counts == 0))
    group_order = np.r_[group_order[n_empty:], group_order[:n_empty]]  # empty groups last
    sizes = counts[group_order]
    cuts = _bucket_cuts(sizes[: n_groups - n_empty])
    widths = np.zeros(n_groups, dtype=np.int64)  # per solver group
    for start, stop in itertools.pairwise(cuts):
        widths[start:stop] = sizes[stop - 1]
    group_start = np.cumsum(widths) - widths
    rank = np.empty(n_groups, dtype=np.int64)
    rank[group_order] = np.arange(n_groups)
    control_ranks = rank[control_codes]
    by_rank = np.argsort(control_ranks, kind="stable")
    order, sorted_ranks = control_rows[by_rank], control_ranks[by_rank]
    first_of_group = np.cumsum(sizes) - sizes
    slots = group_start[sorted_ranks] + np.arange(len(order)) - first_of_group[sorted_ranks]

    padding = np.full(int(widths.sum()), -np.inf)
    padding[slots] = 0.0 if base_weights is None else np.log(base_weights[order])
    source = np.zeros(len(padding), dtype=np.int64)
    source[slots] = order
    gathered = np.take(x, source, axis=0)
    gathered[np.flatnonzero(np.isinf(padding))] = 0.0
    dimension = 1 + x.shape[1]
    buckets = []
    for start, stop in itertools.pairwise(cuts):
        n_bucket, width = stop - start, int(widths[start])
        rows = slice(int(group_start[start]), int(group_start[start]) + n_bucket * width)
        z = np.empty((n_bucket, dimension, width))
        z[:, 0] = np.isfinite(padding[rows]).reshape(n_bucket, width)  # 1, or 0 at padding
        z[:, 1:] = gathered[rows].reshape(n_bucket, width, dimension - 1).transpose(0, 2, 1)
        buckets.append(Bucket(slice(start, stop), rows, z))

    target_weight = treated.astype(float)
    if base_weights is not None:
        target_weight = target_weight * base_weights
    treated_moments = np.empty((n_groups, dimension))
    treated_moments[:, 0] = np.bincount(rank[codes], weights=target_weight, minlength=n_groups)
    # Σ_T x per group as one sparse product: np.add.at is an order of magnitude slower.
    indicator = sp.csc_array(
        (target_weight, rank[codes], np.arange(len(codes) + 1)),
        shape=(n_groups, len(codes)),
    )
    treated_moments[:, 1:] = indicator @ x
    gram = np.zeros((n_groups, dimension, dimension))
    for bucket in buckets:
        z = bucket.z
        if base_weights is not None:
            z = z * np.exp(padding[bucket.rows]).reshape(z.shape[0], 1, -1)
        np.matmul(z, bucket.z_rows, out=gram[bucket.groups])
    return ControlLayout(tuple(buckets), group_order, slots, order, padding, treated_moments, gram)


def _bucket_cuts(sizes) -> list[int]:
    """Cut increasing group sizes into runs within BUCKET_GROWTH and CHUNK_ROWS padded rows."""
    sizes = sizes.tolist()  # plain ints: NumPy scalars make this loop slow
    cuts = [0]
    for i in range(1, len(sizes)):
        first = cuts[-1]
        if sizes[i] > BUCKET_GROWTH * sizes[first] or (i + 1 - first) * sizes[i] > CHUNK_ROWS:
            cuts.append(i)
    return [*cuts, len(sizes)] if sizes else [0]
