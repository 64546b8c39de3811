"""Randomized rounding of the control-selection linear program.

Within each treatment group × stratum the linear program's values are inclusion probabilities
summing to the stratum's size. Units at 1 are kept and the fractional ones are drawn by
conditional Poisson sampling (CPS, the maximum-entropy design of fixed size; Hájek 1964;
Chen, Dempster & Liu 1994) whose working probabilities are fitted so that each unit's
inclusion probability equals its linear-program value. The draw therefore has the exact size
and the exact first-order inclusion probabilities. natstrat uses Sampford's rejective method
for fewer than 100 fractional units and Midzuno's method above; both have the same size and
inclusion probabilities, and CPS avoids the rejection loop, whose cost explodes when many
probabilities are close to 1.

Everything runs in log space: the elementary symmetric polynomials behind CPS overflow
quickly in floating point.
"""

from __future__ import annotations

import itertools

import numpy as np

from hierps.exceptions import ConvergenceError

__all__ = [
    "ConditionalPoisson",
    "conditional_poisson_sample",
    "cps_inclusion_probabilities",
    "dependent_rounding",
    "round_by_expectation",
]

_FIT_TOLERANCE = 1e-10
# The linear-program values are rounded to 5 decimals, so a smaller error is immaterial.
_ACCEPTABLE_ERROR = 1e-7
_FIT_MAX_ITERATIONS = 200


def _suffix_table(log_w: np.ndarray, size: int) -> np.ndarray:
    """``S[k, j] = log e_j(w_k, ..., w_{m-1})`` for ``j <= size`` (``-inf`` where empty)."""
    m = len(log_w)
    table = np.full((m + 1, size + 1), -np.inf)
    table[m, 0] = 0.0
    for k in range(m - 1, -1, -1):
        table[k, 0] = 0.0
        table[k, 1:] = np.logaddexp(table[k + 1, 1:], log_w[k] + table[k + 1, :-1])
    return table


def _prefix_table(log_w: np.ndarray, size: int) -> np.ndarray:
    """``P[i, j] = log e_j(w_0, ..., w_{i-1})`` for ``j <= size``."""
    m = len(log_w)
    table = np.full((m + 1, size + 1), -np.inf)
    table[0, 0] = 0.0
    for i in range(1, m + 1):
        table[i, 0] = 0.0
        table[i, 1:] = np.logaddexp(table[i - 1, 1:], log_w[i - 1] + table[i - 1, :-1])
    return table


def cps_inclusion_probabilities(log_w: np.ndarray, size: int) -> np.ndarray:
    """Inclusion probabilities of conditional Poisson sampling with weights ``exp(log_w)``.

    Parameters
    ----------
    log_w
        Log working weights (odds of the underlying Poisson design), one per unit.
    size
        Sample size, between 1 and ``len(log_w)``.

    Returns
    -------
    numpy.ndarray
        ``pi_i = w_i e_{size-1}(w without i) / e_size(w)``.
    """
    suffix = _suffix_table(log_w, size)
    prefix = _prefix_table(log_w, size)
    # e_{n-1}(w without i) = sum_j e_j(w_0..w_{i-1}) e_{n-1-j}(w_{i+1}..w_{m-1}).
    pairs = prefix[:-1, :size] + suffix[1:, :size][:, ::-1]
    peak = pairs.max(axis=1)
    total = peak + np.log(np.exp(pairs - peak[:, None]).sum(axis=1))
    return np.exp(log_w + total - suffix[0, size])


def _fit_log_weights(pi: np.ndarray, size: int) -> np.ndarray:
    """Working log weights whose CPS inclusion probabilities are ``pi``.

    Each iteration tries Chen, Dempster & Liu's (1994) step ``log w += log pi - log pi(w)``
    (always convergent, exact at once for size 1, but slow when probabilities approach 1)
    and the step ``logit w += logit pi - logit pi(w)`` (fast there) and keeps the one with the
    smaller largest error, halving the logit step while neither improves.
    """
    target = np.log(pi) - np.log1p(-pi)
    log_w = target.copy()
    current = cps_inclusion_probabilities(log_w, size)
    error = float(np.max(np.abs(current - pi)))

    def attempt(candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        trial = cps_inclusion_probabilities(candidate, size)
        return candidate, trial, float(np.max(np.abs(trial - pi)))

    for _ in range(_FIT_MAX_ITERATIONS):
        if error < _FIT_TOLERANCE:
            return log_w
        clipped = np.clip(current, 1e-300, 1.0 - 1e-16)
        logit_step = target - (np.log(clipped) - np.log1p(-clipped))
        log_step = attempt(log_w + np.log(pi) - np.log(clipped))
        best = min(log_step, attempt(log_w + logit_step), key=lambda t: t[2])
        fraction = 0.5
        while best[2] >= error and fraction > 1e-3:
            best = min(best, attempt(log_w + fraction * logit_step), key=lambda t: t[2])
            fraction /= 2
        if best[2] >= error:
            best = log_step
        # Only ratios of weights matter: recentre to keep the logs bounded.
        log_w, current, error = best[0] - best[0].mean(), best[1], best[2]
    if error < _ACCEPTABLE_ERROR:
        return log_w
    raise ConvergenceError(
        f"conditional Poisson working probabilities did not converge for {len(pi)} units "
        f"of size {size} (largest inclusion error {error:.2e})"
    )


class ConditionalPoisson:
    """A fixed-size conditional Poisson design with given inclusion probabilities.

    The working probabilities are fitted once, in the constructor; :meth:`sample` then draws
    as often as needed.

    Parameters
    ----------
    pi
        Inclusion probabilities in [0, 1] whose sum is (within 1e-3) an integer, the sample
        size. Units at 0 are never drawn and units at 1 always are.

    Raises
    ------
    ValueError
        If ``pi`` leaves [0, 1] or does not sum to an integer.
    """

    def __init__(self, pi: np.ndarray) -> None:
        pi = np.asarray(pi, dtype=float)
        if not np.all(np.isfinite(pi)) or np.any((pi < 0) | (pi > 1)):
            raise ValueError("inclusion probabilities must lie in [0, 1]")
        total = float(pi.sum())
        size = round(total)
        if abs(total - size) > 1e-3:
            raise ValueError(f"inclusion probabilities sum to {total:.6f}, not to an integer")
        self._certain = pi >= 1.0
        fractional = np.flatnonzero((pi > 0.0) & (pi < 1.0))
        needed = size - int(self._certain.sum())
        if needed >= len(fractional):
            self._certain[fractional] = True
        if needed <= 0 or needed >= len(fractional):
            fractional = fractional[:0]
        self._fractional = fractional
        self._needed = needed
        if len(fractional):
            # Rescale the linear program's rounding error away so the sum is integral.
            target = pi[fractional] * (needed / pi[fractional].sum())
            target = np.clip(target, 1e-12, 1.0 - 1e-12)
            self._log_w = _fit_log_weights(target, needed)
            self._suffix = _suffix_table(self._log_w, needed)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """Boolean mask of one draw; exactly ``round(sum(pi))`` entries are set."""
        selected = self._certain.copy()
        remaining = self._needed if len(self._fractional) else 0
        for position, unit in enumerate(self._fractional):
            if remaining == 0:
                break
            # P(draw unit | earlier units decided) = w e_{r-1}(later) / e_r(this and later).
            log_p = (
                self._log_w[position]
                + self._suffix[position + 1, remaining - 1]
                - self._suffix[position, remaining]
            )
            if rng.random() < np.exp(log_p):
                selected[unit] = True
                remaining -= 1
        return selected


def conditional_poisson_sample(pi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw once from :class:`ConditionalPoisson` with inclusion probabilities ``pi``.

    Parameters
    ----------
    pi
        Inclusion probabilities in [0, 1] summing to an integer.
    rng
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        Boolean mask of the drawn units; it has exactly ``round(sum(pi))`` entries set.
    """
    return ConditionalPoisson(pi).sample(rng)


def round_by_expectation(pr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Assign each unit to at most one comparison, with the linear-program values as odds.

    Parameters
    ----------
    pr
        Array of shape (comparisons, units); each column sums to at most 1.
    rng
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        Boolean array of the shape of ``pr``: unit ``i`` goes to comparison ``c`` with
        probability ``pr[c, i]`` and to none with the rest, so sizes are right only in
        expectation (natstrat's ``randomized_rounding_expectation``).
    """
    n_comp, n_units = pr.shape
    none = np.maximum(np.round(1.0 - pr.sum(axis=0), 5), 0.0)
    probabilities = np.vstack([pr, none[None, :]])
    cumulative = np.cumsum(probabilities, axis=0) / probabilities.sum(axis=0)
    draws = rng.random(n_units)
    choice = (draws[None, :] >= cumulative).sum(axis=0)
    selected = np.zeros((n_comp, n_units), dtype=bool)
    chosen = choice < n_comp
    selected[choice[chosen], np.flatnonzero(chosen)] = True
    return selected


_SNAP = 1e-6


def dependent_rounding(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Round a units × comparisons table keeping every row and column sum (bipartite rounding).

    Parameters
    ----------
    values
        Array (units, comparisons) in [0, 1]; each row sums to at most 1 and each column to
        an integer (the comparison's size in this group × stratum).
    rng
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        Boolean array of the same shape: each unit in at most one comparison, each column
        summing to its size, and ``P(unit i in comparison c) = values[i, c]``.

    Notes
    -----
    Dependent rounding on a bipartite graph (Gandhi, Khuller, Parthasarathy & Srinivasan,
    2006): units on one side, comparisons plus "not selected" on the other, an edge per
    fractional value. While edges remain fractional, take a cycle (or a maximal path) of them,
    split it into alternate edges and shift mass between the two halves by a random amount
    chosen so that the expected change is zero and at least one edge becomes 0 or 1. Node
    sums inside the cycle are unchanged, so sizes stay exact.
    """
    n_units, n_comp = values.shape
    table = np.zeros((n_units, n_comp + 1))
    table[:, :n_comp] = values
    table[:, n_comp] = 1.0 - values.sum(axis=1)  # "not selected"
    table[table < _SNAP] = 0.0
    table[table > 1.0 - _SNAP] = 1.0
    while True:
        fractional = (table > 0.0) & (table < 1.0)
        if not fractional.any():
            break
        edges = _cycle_or_path(fractional)
        cells = tuple(np.array(edges).T)
        sign = np.where(np.arange(len(edges)) % 2 == 0, 1.0, -1.0)
        current = table[cells]
        # Largest moves keeping every edge in [0, 1] along +sign (alpha) and -sign (beta).
        alpha = np.min(np.where(sign > 0, 1.0 - current, current))
        beta = np.min(np.where(sign > 0, current, 1.0 - current))
        step = alpha if rng.random() < beta / (alpha + beta) else -beta
        updated = current + step * sign
        updated[np.abs(updated) < 1e-12] = 0.0
        updated[np.abs(updated - 1.0) < 1e-12] = 1.0
        table[cells] = np.clip(updated, 0.0, 1.0)
    return table[:, :n_comp] > 0.5


def _cycle_or_path(fractional: np.ndarray) -> list[tuple[int, int]]:
    """Edges (unit, column) of a cycle of fractional edges, else of a maximal path.

    Nodes are ``("u", i)`` for units and ``("c", j)`` for columns; consecutive edges share a
    node, so alternate edges can take opposite shifts.
    """

    def neighbours(node: tuple[str, int]) -> list[tuple[str, int]]:
        side, k = node
        if side == "u":
            return [("c", j) for j in np.flatnonzero(fractional[k])]
        return [("u", i) for i in np.flatnonzero(fractional[:, k])]

    def edge(a: tuple[str, int], b: tuple[str, int]) -> tuple[int, int]:
        return (a[1], b[1]) if a[0] == "u" else (b[1], a[1])

    def walk(start: tuple[str, int]) -> tuple[list[tuple[str, int]], bool]:
        path, seen, previous = [start], {start: 0}, None
        while True:
            options = [n for n in neighbours(path[-1]) if n != previous]
            if not options:
                return path, False
            previous, step = path[-1], options[0]
            if step in seen:
                return [*path[seen[step] :], step], True
            seen[step] = len(path)
            path.append(step)

    first_unit = int(np.argwhere(fractional)[0, 0])
    nodes, closed = walk(("u", first_unit))
    if not closed:
        # A dead end is a path's endpoint: walking from it gives a maximal path or a cycle.
        nodes, _ = walk(nodes[-1])
    return [edge(a, b) for a, b in itertools.pairwise(nodes)]
