"""Non-Gaussian priors on the group slope deviations: penalties, smoothings and optimality.

The slope deviations ``Δ = (δ_1 … δ_J)`` of MAP mode carry a prior whose negative log
density is a penalty ``h(Δ)``; its convex conjugate is the balance criterion the mode buys on
the school-imbalance matrix ``R`` (``R_jk = Σ_{C_j} w_i x_ik − Σ_{T,j} x_ik`` for varying
``k``; docs/math.md §19):

- ``"normal"``: ``h = Σ δ_jk² / 2b_k²``, conjugate ``Σ b_k² R_jk² / 2`` (a quadratic penalty);
- ``"laplace"``: ``h = Σ |δ_jk| / b_k``, conjugate the indicator of the box
  ``|R_jk| ≤ 1/b_k``: at the mode ``R_jk = −sign(δ_jk)/b_k`` wherever ``δ_jk ≠ 0``;
- ``"low_rank"``: ``h = ‖Δ‖_* / b``, conjugate the indicator of the spectral-norm ball
  ``‖R‖_2 ≤ 1/b``: at the mode ``R = −(U V' + W)/b`` with ``Δ = U Σ V'`` and ``‖W‖_2 ≤ 1``
  orthogonal to ``U`` and ``V``.

The solver (:mod:`hierps.calibrated.proximal`) minimizes smoothings of the non-smooth
penalties, ``√(δ² + ε²)`` per entry or per singular value, with ``ε`` decreasing; this module
holds their values, gradients, exact Hessian products and per-group Hessian blocks, the
optimality (KKT) residuals of the exact problem, and the feasibility check of the bound.
Matrices are ``(J, d)``: one row per group, as the solver holds the deviations.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hierps.exceptions import ArgumentError, ConvergenceError

if TYPE_CHECKING:
    from hierps.calibrated.newton import NewtonTrace
    from hierps.calibrated.problem import CalibratedProblem
    from hierps.design.build import Design
    from hierps.design.hyperparameters import MapHyperparameters

__all__ = [
    "DEVIATIONS",
    "InBasis",
    "Penalty",
    "SignedLinear",
    "deviation_solver",
    "group_minima",
    "imposed_criterion",
    "infeasible_groups",
    "jointly_infeasible",
    "kkt_residuals",
    "penalty_of",
    "raise_without_mode",
    "refuse_empty_groups",
]

#: The priors of the group slope deviations in MAP mode.
DEVIATIONS = ("normal", "laplace", "low_rank")
#: Singular values of the deviations below this (relative to the largest, at least 1) are 0.
RANK_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Penalty:
    """The penalty ``h(Δ)`` of a non-Gaussian deviation prior, and its smoothing.

    ``scale`` is ``b``: one value per varying slope (``"laplace"``) or one value
    (``"low_rank"``, broadcast).
    """

    kind: str
    scale: np.ndarray  # (d,)

    @property
    def inverse_scale(self) -> np.ndarray:
        return 1.0 / self.scale

    def value(self, delta: np.ndarray, epsilon: float = 0.0) -> float:
        """``h_ε(Δ)``: the penalty (``ε = 0``) or its smoothing, ``0`` at ``Δ = 0``."""
        if self.kind == "laplace":
            return float(np.sum((np.hypot(delta, epsilon) - epsilon) * self.inverse_scale))
        sigma = np.linalg.svd(delta, compute_uv=False)
        return float(np.sum(np.hypot(sigma, epsilon) - epsilon) * self.inverse_scale[0])

    def smoothed(
        self,
        delta: np.ndarray,
        epsilon: float,
        svd: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> Smoothed:
        """Gradient, Hessian product and per-group Hessian blocks of ``h_ε`` at ``Δ``.

        ``svd``: the thin SVD ``(U, σ, V')`` of ``Δ`` when known more accurately than the SVD
        of ``Δ`` would give it (nuclear norm only).
        """
        if self.kind == "laplace":
            return _LaplaceSmoothed(delta, epsilon, self.inverse_scale)
        return _NuclearSmoothed(delta, epsilon, float(self.inverse_scale[0]), svd)


class Smoothed(abc.ABC):
    """Derivatives of a smoothed penalty at one point (see :meth:`Penalty.smoothed`)."""

    gradient: np.ndarray  # (J, d)
    blocks: np.ndarray  # (J, d, d): the Hessian's diagonal blocks, one per group
    exact_blocks: bool  # whether the Hessian is block diagonal (then ``blocks`` is it)

    @abc.abstractmethod
    def hessian_product(self, direction: np.ndarray) -> np.ndarray:
        """The Hessian of ``h_ε`` applied to a ``(J, d)`` direction."""


class _LaplaceSmoothed(Smoothed):
    def __init__(self, delta: np.ndarray, epsilon: float, inverse_scale: np.ndarray) -> None:
        root = np.hypot(delta, epsilon)
        self.gradient = delta / root * inverse_scale
        self.curvature = epsilon**2 / root**3 * inverse_scale
        n_groups, d = delta.shape
        self.blocks = np.zeros((n_groups, d, d))
        np.einsum("jkk->jk", self.blocks)[...] = self.curvature
        self.exact_blocks = True

    def hessian_product(self, direction: np.ndarray) -> np.ndarray:
        return self.curvature * direction


class _NuclearSmoothed(Smoothed):
    """``Σ_i √(σ_i² + ε²)/b`` over the singular values of ``Δ`` (J × d).

    With the thin SVD ``Δ = U diag(σ) V'``, ``f(σ) = √(σ² + ε²)`` and ``Ê = U' E V``, the
    Hessian applied to ``E`` is (Lewis & Sendov's formula for spectral functions)::

        U (sym(Ê) ∘ A + skew(Ê) ∘ B) V' + (I − UU') E V diag(g) V' + U diag(g) U' E (I − VV')

    with ``A_kl = (f'_k − f'_l)/(σ_k − σ_l)`` (``f''`` on the diagonal),
    ``B_kl = (f'_k + f'_l)/(σ_k + σ_l)`` and ``g = f'(σ)/σ``, all written so that equal or
    zero singular values need no limits.
    """

    def __init__(
        self,
        delta: np.ndarray,
        epsilon: float,
        inverse_scale: float,
        svd: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        u, sigma, vt = np.linalg.svd(delta, full_matrices=False) if svd is None else svd
        root = np.hypot(sigma, epsilon)
        self.u, self.v, self.c = u, vt.T, inverse_scale
        self.gradient = (u * (sigma / root * inverse_scale)) @ vt
        total = sigma[:, None] + sigma[None, :]
        # (σ_k s_l + σ_l s_k)/(σ_k + σ_l): a weighted mean of s_k and s_l, their mean at 0.
        mixed = sigma[:, None] * root[None, :] + sigma[None, :] * root[:, None]
        both_zero = total <= 0
        mean_root = np.where(
            both_zero, 0.5 * (root[:, None] + root[None, :]), mixed / np.where(both_zero, 1, total)
        )
        self.a = epsilon**2 / (root[:, None] * root[None, :] * mean_root)
        weighted = (sigma / root)[:, None] + (sigma / root)[None, :]
        self.b = np.where(
            both_zero,
            0.5 * (1 / root[:, None] + 1 / root[None, :]),
            weighted / np.where(both_zero, 1, total),
        )
        self.g = 1.0 / root
        # Diagonal blocks: with u_j the j-th row of U, the block of group j in V's coordinates
        # is diag(P u_j²) + N ∘ u_j u_j' with P = (A + B)/2, N = (A − B)/2, plus the parts
        # outside the thin SVD's subspaces.
        p, n = 0.5 * (self.a + self.b), 0.5 * (self.a - self.b)
        u2 = u**2
        inner = n[None] * (u[:, :, None] * u[:, None, :])
        np.einsum("jkk->jk", inner)[...] += u2 @ p.T
        outside_rows = 1.0 - u2.sum(axis=1)  # ‖(I − UU') e_j‖²
        np.einsum("jkk->jk", inner)[...] += outside_rows[:, None] * self.g
        v = self.v
        blocks = v[None] @ inner @ v.T[None]
        outside_columns = np.eye(v.shape[0]) - v @ v.T  # (I − VV')
        blocks += (u2 @ self.g)[:, None, None] * outside_columns[None]
        self.blocks = blocks * inverse_scale
        self.exact_blocks = False

    def hessian_product(self, direction: np.ndarray) -> np.ndarray:
        u, v = self.u, self.v
        projected = u.T @ direction @ v
        sym = 0.5 * (projected + projected.T)
        skew = 0.5 * (projected - projected.T)
        inner = u @ (sym * self.a + skew * self.b) @ v.T
        rows_outside = direction @ v - u @ projected  # (I − UU') E V
        columns_outside = u.T @ direction - projected @ v.T  # U' E (I − VV')
        product = inner + (rows_outside * self.g) @ v.T + u @ (self.g[:, None] * columns_outside)
        return product * self.c


class SignedLinear(Smoothed):
    """The Laplace penalty on a fixed active set with fixed signs: linear, ``Σ s δ / b``."""

    def __init__(self, signs: np.ndarray, inverse_scale: np.ndarray) -> None:
        self.gradient = signs * inverse_scale
        self.blocks = np.zeros((*signs.shape, signs.shape[1]))
        self.exact_blocks = True

    def hessian_product(self, direction: np.ndarray) -> np.ndarray:
        return np.zeros_like(direction)


class InBasis(Smoothed):
    """A penalty of ``C = Δ V`` (J × r) read as one of ``Δ = C V'`` (``V`` orthonormal)."""

    def __init__(self, inner: Smoothed, basis: np.ndarray) -> None:
        self.inner, self.basis = inner, basis
        self.gradient = inner.gradient @ basis.T
        self.blocks = basis @ inner.blocks @ basis.T
        self.exact_blocks = inner.exact_blocks

    def hessian_product(self, direction: np.ndarray) -> np.ndarray:
        return self.inner.hessian_product(direction @ self.basis) @ self.basis.T


def penalty_of(kind: str, scale: np.ndarray) -> Penalty:
    """The penalty of ``deviations=kind`` with prior scales ``b`` (one per varying slope)."""
    return Penalty(kind, np.asarray(scale, dtype=float))


def kkt_residuals(
    penalty: Penalty, delta: np.ndarray, imbalance: np.ndarray, smooth_gradient: float
) -> dict[str, float]:
    """Optimality residuals of the exact non-smooth problem at a solution.

    Parameters
    ----------
    penalty
        The deviation penalty.
    delta
        ``(J, d)``: the slope deviations (exact zeros where inactive).
    imbalance
        ``(J, d)``: the school-imbalance matrix ``R`` (the loss gradient in ``Δ``).
    smooth_gradient
        The largest absolute gradient entry of the smooth coefficients ``(a0, γ, μ, u)``.

    Returns
    -------
    dict
        ``smooth_gradient``; ``stationarity``: the distance of ``−R`` from the subdifferential
        of ``h`` on the active set (entries ``δ_jk ≠ 0``, or the singular subspaces of ``Δ``);
        ``dual_feasibility``: how far the inactive part of ``R`` exceeds the bound (0 inside);
        ``sign``: the largest ``|R_jk|`` with ``R_jk δ_jk > 0`` (a deviation of the wrong
        sign; laplace only) — these four in imbalance units, comparable with the gradient
        tolerance; ``criterion``: the imposed criterion relative to its bound (max
        ``b_k |R_jk|`` or ``b ‖R‖_2``; at most 1), ``active``: the nonzero entries, or the rank
        of ``Δ``.
    """
    scaled = imbalance * penalty.scale
    if penalty.kind == "laplace":
        active = delta != 0
        sign = np.sign(delta)
        inverse = np.broadcast_to(penalty.inverse_scale, delta.shape)
        # Residuals in imbalance units, comparable with the gradient tolerance.
        stationarity = np.abs(imbalance + sign * inverse)[active].max(initial=0.0)
        excess = np.maximum(np.abs(imbalance) - inverse, 0.0)[~active].max(initial=0.0)
        wrong = np.abs(imbalance[active & (imbalance * sign > 0)]).max(initial=0.0)
        criterion = float(np.abs(scaled).max(initial=0.0))
        n_active = int(active.sum())
    else:
        u, sigma, vt = np.linalg.svd(delta, full_matrices=False)
        # The rank up to rounding: deviations held in an r-dimensional row space come out
        # of the SVD with further singular values of order 1e-16.
        rank = int(np.count_nonzero(sigma > RANK_TOLERANCE * max(1.0, sigma.max(initial=0))))
        ur, vr = u[:, :rank], vt[:rank].T
        # R = −(U_r V_r' + W)/b with W orthogonal to both subspaces and ‖W‖_2 ≤ 1.
        core = ur.T @ scaled @ vr + np.eye(rank)
        left = scaled @ vr - ur @ (ur.T @ scaled @ vr)
        right = ur.T @ scaled - (ur.T @ scaled @ vr) @ vr.T
        stationarity = penalty.inverse_scale[0] * max(
            np.abs(core).max(initial=0.0),
            np.abs(left).max(initial=0.0),
            np.abs(right).max(initial=0.0),
        )
        # The part of R outside both singular subspaces: (I − U_r U_r') R (I − V_r V_r').
        outside = scaled - ur @ (ur.T @ scaled)
        rest = outside - (outside @ vr) @ vr.T
        excess = max(_spectral_norm(rest) - 1.0, 0.0) * penalty.inverse_scale[0]
        wrong = 0.0
        criterion = _spectral_norm(scaled)
        n_active = rank
    return {
        "smooth_gradient": float(smooth_gradient),
        "stationarity": float(stationarity),
        "dual_feasibility": float(excess),
        "sign": float(wrong),
        "criterion": float(criterion),
        "active": float(n_active),
    }


def _spectral_norm(matrix: np.ndarray) -> float:
    if matrix.size == 0:
        return 0.0
    return float(np.linalg.norm(matrix, 2))


def infeasible_groups(
    penalty: Penalty, controls: list[np.ndarray], targets: np.ndarray
) -> np.ndarray:
    """Groups whose controls cannot bring their imbalance inside the bound.

    The MAP exists only if some weights ``w ≥ 0`` put every group's imbalance
    ``r_j = X_j' w − t_j`` strictly inside the bound. For the box (``"laplace"``) the groups
    are independent: one linear program per group (SciPy's HiGHS) minimizes
    ``max_k b_k |r_jk|``. For the spectral-norm ball a group's column alone must satisfy
    ``b ‖r_j‖₂ < 1`` (``‖R‖_2`` is at least every column's norm): a non-negative least-squares
    problem per group. The joint condition can still fail when every group passes (see
    :func:`jointly_infeasible`).

    Parameters
    ----------
    penalty
        The deviation penalty.
    controls
        Per group, ``(n_j, d)``: the varying covariates of its weighted units (base weights
        folded in).
    targets
        ``(J, d)``: the target totals ``t_j`` of the varying covariates.

    Returns
    -------
    numpy.ndarray
        ``(J,)`` booleans: the groups that cannot meet the bound.
    """
    return group_minima(penalty, controls, targets) >= 1.0 - 1e-9


def jointly_infeasible(penalty: Penalty, controls: list[np.ndarray], targets: np.ndarray) -> bool:
    """Whether no weights meet the spectral-norm bound, by a Frobenius-norm certificate.

    ``‖R‖_F² ≤ min(J, d) ‖R‖_2²``, and ``‖R‖_F²`` is at least the sum of each group's smallest
    ``‖r_j‖²``: if that sum exceeds ``min(J, d)/b²``, every ``w`` breaks the bound.
    """
    minima = group_minima(penalty, controls, targets)
    return bool(np.sum(minima**2) > min(targets.shape))


def group_minima(penalty: Penalty, controls: list[np.ndarray], targets: np.ndarray) -> np.ndarray:
    """Each group's smallest scaled imbalance over ``w ≥ 0``: ``max_k b_k |r_jk|`` (box) or
    ``b ‖r_j‖₂`` (ball); 1 or more where the group cannot meet the bound."""
    from scipy.optimize import linprog, nnls

    scale = penalty.scale
    minima = np.zeros(len(targets))
    for j, (x, t) in enumerate(zip(controls, targets, strict=True)):
        if penalty.kind == "laplace":
            if len(x) == 0:
                best = float(np.abs(t * scale).max(initial=0.0))
            else:
                # Variables (w, s): minimize s subject to ±b_k (X'w − t)_k ≤ s, w ≥ 0.
                scaled = x.T * scale[:, None]
                column = -np.ones((len(t), 1))
                a_ub = np.block([[scaled, column], [-scaled, column]])
                b_ub = np.concatenate([t * scale, -t * scale])
                cost = np.zeros(len(x) + 1)
                cost[-1] = 1.0
                solution = linprog(cost, A_ub=a_ub, b_ub=b_ub, method="highs")
                best = float(solution.fun) if solution.status == 0 else np.inf
        else:
            best = float(np.linalg.norm(t)) if len(x) == 0 else nnls(x.T, t)[1]
            best *= float(scale[0])
        minima[j] = best
    return minima


#: What each prior bounds, as the balance tables name it.
CRITERIA = {
    "laplace": "max |within-group imbalance|",
    "low_rank": "spectral norm of the within-group imbalance matrix",
}


def imposed_criterion(result: object) -> pd.DataFrame | None:
    """The balance criterion a non-normal deviation prior imposed, per weighted arm.

    ``None`` for normal deviations (their criterion is the quadratic penalty, reported as
    the usual SMDs). Otherwise one row per weighted arm (index ``arm``): ``deviations``,
    ``criterion`` (what is bounded), ``value`` (the largest ``|R_jk|``, or ``‖R‖_2``, on the
    standardized scale of the design), ``bound`` (``1/sigma_beta``; NaN when the Laplace
    scales differ by slope), ``ratio`` (``max b_k |R_jk|`` or ``b ‖R‖_2``: at most 1),
    ``active`` (nonzero deviations, or their rank) and ``kkt_residual`` (the largest
    optimality residual of the fit).
    """
    deviations = getattr(result, "deviations", "normal")
    if deviations == "normal":
        return None
    scale = result.hyperparameters.sigma_beta_vector(int(result.design.varying.sum()))
    uniform = bool(np.ptp(scale) == 0)
    rows = []
    for arm, kkt in result.kkt.items():
        ratio = kkt["criterion"]
        rows.append(
            {
                "arm": arm,
                "deviations": deviations,
                "criterion": CRITERIA[deviations],
                "value": ratio / scale[0] if uniform else np.nan,
                "bound": 1.0 / scale[0] if uniform else np.nan,
                "ratio": ratio,
                "active": int(kkt["active"]),
                "kkt_residual": max(
                    kkt["smooth_gradient"], kkt["stationarity"], kkt["dual_feasibility"]
                ),
            }
        )
    table = pd.DataFrame(rows).set_index("arm")
    table.attrs["scale"] = "standardized covariates, totals over units (docs/math.md §19)"
    return table


def group_controls(problem: CalibratedProblem) -> list[np.ndarray]:
    """Per solver group, ``(n_j, d)``: the varying covariates of its controls × base weight."""
    local = problem.local_index[1:]
    controls = []
    for bucket in problem.buckets:
        offsets = problem.padding[bucket.rows].reshape(bucket.z.shape[0], -1)
        for z, offset in zip(bucket.z, offsets, strict=True):
            present = np.isfinite(offset)
            controls.append((z[local][:, present] * np.exp(offset[present])).T)
    while len(controls) < problem.n_groups:  # groups without controls come last
        controls.append(np.zeros((0, len(local))))
    return controls


def _named(problem: CalibratedProblem, flagged: np.ndarray, labels: list) -> str:
    names = [repr(labels[int(code)]) for code in problem.group_order[flagged]]
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return f"{len(names)} group(s): {shown}"


def _bound_message(penalty: Penalty) -> str:
    if penalty.kind == "laplace":
        bound = np.unique(penalty.inverse_scale)
        text = f"{bound[0]:.4g}" if len(bound) == 1 else "1/sigma_beta_k"
        return f"|within-group imbalance| <= 1/sigma_beta = {text} on every varying covariate"
    return (
        f"spectral norm of the within-group imbalance matrix <= 1/sigma_beta = "
        f"{penalty.inverse_scale[0]:.4g}"
    )


def refuse_empty_groups(problem: CalibratedProblem, penalty: Penalty, labels: list) -> None:
    """Groups without controls cannot move their imbalance: check them before solving."""
    empty = problem.layout.gram[:, 0, 0] == 0
    if not empty.any():
        return
    targets = problem.treated_moments[:, problem.local_index[1:]] * penalty.scale
    if penalty.kind == "laplace":
        excess = np.abs(targets).max(axis=1, initial=0.0) >= 1.0
    else:
        excess = np.linalg.norm(targets, axis=1) >= 1.0
    flagged = empty & excess
    if flagged.any():
        raise ArgumentError(
            f"deviations={penalty.kind!r}: the MAP does not exist — "
            f"{_named(problem, flagged, labels)} have no weighted units, so their imbalance "
            f"cannot meet the bound {_bound_message(penalty)}; use a smaller sigma_beta, "
            f"deviations='normal', or drop those groups"
        )


def raise_without_mode(
    problem: CalibratedProblem, penalty: Penalty, labels: list, failure: str
) -> None:
    """Name the groups whose bound is infeasible, or report the failure as it is."""
    targets = problem.treated_moments[:, problem.local_index[1:]]
    flagged = infeasible_groups(penalty, group_controls(problem), targets)
    if flagged.any():
        raise ArgumentError(
            f"deviations={penalty.kind!r}: the MAP does not exist — no weights of the "
            f"controls of {_named(problem, flagged, labels)} meet the bound "
            f"{_bound_message(penalty)}; use a smaller sigma_beta or deviations='normal'"
        )
    if penalty.kind == "low_rank" and jointly_infeasible(penalty, group_controls(problem), targets):
        raise ArgumentError(
            f"deviations='low_rank': the MAP does not exist — every group can meet the bound "
            f"{_bound_message(penalty)} alone, but not all together (the sum of the groups' "
            f"smallest squared imbalances exceeds min(groups, slopes)/sigma_beta²); use a "
            f"smaller sigma_beta or deviations='normal'"
        )
    joint = (
        " (every group meets the bound alone, but possibly not all together)"
        if penalty.kind == "low_rank"
        else ""
    )
    raise ConvergenceError(
        f"deviations={penalty.kind!r}: the MAP solver failed ({failure}){joint}; "
        f"try a smaller sigma_beta, a larger tol or more max_iterations"
    )


def deviation_solver(
    design: Design, hyperparameters: MapHyperparameters, deviations: str
) -> Callable[..., NewtonTrace]:
    """The solver of :func:`hierps.calibrated.fit.fit_map` for ``deviations`` other than
    ``"normal"``, after refusing the combinations it does not support."""
    n_varying = int(design.varying.sum())
    if n_varying == 0:
        raise ArgumentError(
            f"deviations={deviations!r}: the model has no varying slopes, so there are no "
            f"slope deviations to penalize"
        )
    scale = hyperparameters.sigma_beta_vector(n_varying)
    if deviations == "low_rank" and np.ptp(scale) > 0:
        raise ArgumentError(
            "deviations='low_rank' takes one sigma_beta (the nuclear norm has one scale), "
            f"not {np.asarray(hyperparameters.sigma_beta).tolist()}"
        )
    # As in the normal case, scales beyond the precision bounds act as the bounds.
    from hierps.calibrated.hierarchy import PRECISION_BOUNDS
    from hierps.calibrated.proximal import proximal_solve

    low, high = PRECISION_BOUNDS
    scale = np.clip(scale, high**-0.5, low**-0.5)
    penalty = penalty_of(deviations, scale)
    labels = list(design.groups)

    def solve(problem, theta_global=None, theta_local=None, tol=1e-8, max_iterations=100):
        return proximal_solve(
            problem, penalty, theta_global, theta_local, tol, max_iterations, labels
        )

    return solve
