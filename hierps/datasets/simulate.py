"""A simulator of multi-site observational studies with known effects.

:func:`simulate_multisite` draws a study from a *known* hierarchical logistic propensity model and
a known outcome model, so estimators can be checked against the true ATT and school CATTs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, TypeGuard

import numpy as np
import pandas as pd
from scipy.special import expit

from hierps.exceptions import DataError

__all__ = ["SimulatedStudy", "simulate_multisite"]

# Propensities used to draw treatment are clipped to this range (see simulate_multisite).
# Wide enough that the logistic model is (almost) exact — a 0.03 bound changes ~15 % of the default
# study's propensities and biases a logistic fit — yet keeps control odds below 99 and every
# school's redraw probability away from zero.
_PROPENSITY_CLIP = (0.01, 0.99)
_TARGET_TREATED_SHARE = 0.30
_MAX_REDRAWS = 1000


@dataclass(frozen=True, eq=False, repr=False)
class SimulatedStudy:
    """A simulated multi-site observational study with its true effects.

    Attributes
    ----------
    data : pandas.DataFrame
        One row per unit: ``school`` (string label), ``z`` (0/1), ``y``, unit covariates
        ``x1..xd``, group covariates ``v1..vp`` (constant within school) and, if simulated, the
        categorical ``c1``.
    att : float
        Sample ATT: the mean of the unit effects τ_i over the treated units (exact, not an
        expectation).
    catt : pandas.Series
        Sample CATT per school (index ``school``, name ``catt``): mean τ_i over the school's
        treated units; NaN for a school without treated units.
    propensity : pandas.Series
        True propensity π_i used to draw ``z`` (after clipping), on ``data.index``.
    tau : pandas.Series
        Unit treatment effects τ_i = Y_i(1) − Y_i(0), on ``data.index``.
    parameters : dict
        True parameters of both models (see :func:`simulate_multisite`).
    unit_covariates, group_covariates, categorical : list of str
        Column roles, ready for ``hierps.Model``.
    treatment, group, outcome : str
        ``"z"``, ``"school"``, ``"y"``.
    """

    data: pd.DataFrame
    att: float
    catt: pd.Series
    propensity: pd.Series
    tau: pd.Series
    parameters: dict[str, Any]
    unit_covariates: list[str]
    group_covariates: list[str]
    categorical: list[str] = field(default_factory=list)
    treatment: str = "z"
    group: str = "school"
    outcome: str = "y"

    def __repr__(self) -> str:
        n_treated = int(self.data[self.treatment].sum())
        return (
            f"SimulatedStudy(n={len(self.data)}, groups={self.catt.size}, "
            f"treated={n_treated}, att={self.att:.4f}, unit_covariates={self.unit_covariates}, "
            f"group_covariates={self.group_covariates})"
        )


def _is_int(value: object) -> TypeGuard[Integral]:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: object) -> TypeGuard[Real]:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_count(name: str, value: object, minimum: int) -> int:
    if not _is_int(value) or int(value) < minimum:
        raise DataError(
            f"simulate_multisite: {name} must be an integer ≥ {minimum}; got {value!r}."
        )
    return int(value)


def _check_sigma(name: str, value: object) -> float:
    if not _is_real(value) or not math.isfinite(float(value)) or float(value) < 0:
        raise DataError(f"simulate_multisite: {name} must be a finite number ≥ 0; got {value!r}.")
    return float(value)


def _check_group_size(value: object) -> tuple[int, int]:
    msg = (
        "simulate_multisite: group_size must be an integer ≥ 2 or a (min, max) pair of "
        f"integers with 2 ≤ min ≤ max; got {value!r}."
    )
    if _is_int(value):
        low = high = int(value)
    elif isinstance(value, tuple | list) and len(value) == 2 and all(_is_int(v) for v in value):
        low, high = int(value[0]), int(value[1])
    else:
        raise DataError(msg)
    if low < 2 or high < low:
        raise DataError(msg)
    return low, high


def _check_sigma_beta(value: object, d: int) -> np.ndarray:
    if _is_real(value):
        return np.full(d, _check_sigma("sigma_beta", value))
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (d,) or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise DataError(
            "simulate_multisite: sigma_beta must be a number ≥ 0 or a sequence of "
            f"n_unit_covariates={d} finite numbers ≥ 0; got {value!r}."
        )
    return arr


def _signed(rng: np.random.Generator, size: int, low: float, high: float) -> np.ndarray:
    """Coefficients with magnitudes in [low, high] and random signs (never near zero)."""
    return rng.uniform(low, high, size) * rng.choice([-1.0, 1.0], size)


def _solve_intercept(eta: np.ndarray, share: float) -> float:
    """Find a0 with mean(expit(a0 + eta)) = share by Newton's method (monotone, concave-ish)."""
    a0 = math.log(share / (1 - share)) - float(np.median(eta))
    for _ in range(50):
        p = expit(a0 + eta)
        gap = float(p.mean()) - share
        slope = float((p * (1 - p)).mean())
        if abs(gap) < 1e-10 or slope <= 0:
            break
        # Damped step: far from the root the logistic is flat and full steps overshoot.
        a0 -= float(np.clip(gap / slope, -2.0, 2.0))
    return a0


def simulate_multisite(
    n_groups: int = 40,
    group_size: int | tuple[int, int] = (20, 200),
    n_unit_covariates: int = 3,
    n_group_covariates: int = 2,
    sigma_alpha: float = 1.0,
    sigma_beta: float | Sequence[float] = 0.5,
    sigma_tau: float = 0.5,
    n_categories: int = 0,
    seed: int = 0,
) -> SimulatedStudy:
    r"""Simulate a multi-site observational study with a known hierarchical propensity model.

    **Covariates.** Group covariates v_j ~ N(0, I_p). Unit covariates x_ik = 0.5 s_jk + e_ik with
    school shifts s_jk ~ N(0, 1) and e_ik ~ N(0, 1), so schools differ in their covariate mix.
    With ``n_categories = K > 0``, a categorical ``c1`` with levels "a", "b", … is drawn per unit
    from school-specific level probabilities (Dirichlet(2, …, 2) per school).

    **Propensity** (docs/math.md §3)::

        logit π_i = α_j + x_i' β_j (+ ζ_c1[i])
        α_j = a0 + v_j' γ + σ_α z_j,      β_jk = μ_k + σ_β,k z_jk,      z ~ N(0, 1)

    γ and μ have magnitudes in [0.3, 0.8] with random signs; ζ (level "a" = 0, the others
    N(0, 0.5²)) is a common effect, i.e. a slope with σ_β = 0 on c1's indicators. a0 is solved so
    that the mean of the unclipped propensities in the sample is 0.30. Treatment is drawn as
    z_i ~ Bernoulli(π_i) with π_i clipped to [0.01, 0.99]; ``propensity`` holds the clipped π_i.
    With the defaults a few percent of units sit at a bound, but their probability moves by less
    than 0.01, so a logistic fit is practically unbiased (a [0.03, 0.97] clip measurably
    attenuated μ), and control odds stay ≤ 99.
    **Both arms in every school:** a school whose draw has no treated or no control unit has all
    its treatments redrawn (rejection sampling: its z is drawn conditional on both arms being
    present). This is rare for large schools but common for small schools with an extreme α_j
    (about 10 % of schools of size 10–20 with the default σ_α). After 1,000 unsuccessful rounds —
    practically impossible, since the clipping keeps each arm's probability away from 0 — the
    unit with the highest (lowest) propensity is made treated (control). Redrawn schools are
    listed in ``parameters["redrawn_schools"]``.

    **Outcome.** Covariates drive both treatment and outcome, and the outcome is nonlinear, so
    unweighted and linearly adjusted comparisons are biased::

        Y_i(0) = x_i' b + 0.5 (x_i1² − 1) + 0.5 x_i1 x_i2 + v_j' λ (+ ζ^Y_c1[i]) + u_0j + ε_i
        u_0j = 0.5 (ρ z_j + sqrt(1 − ρ²) ε_j),  ρ = 0.5,   ε_i, ε_j ~ N(0, 1)
        τ_i = τ0 + v_j' φ + x_i' κ + u_τj,      u_τj ~ N(0, σ_τ²),   τ0 = 1
        Y_i(1) = Y_i(0) + τ_i,    y_i = Y_i(z_i)

    (the x1·x2 term only when d ≥ 2). The school intercept of the outcome is correlated with the
    propensity's random intercept z_j: unmeasured school-level confounding that only within-school
    balance (the α_j hierarchy) removes.

    Parameters
    ----------
    n_groups : int, default 40
        Number of schools J (≥ 1).
    group_size : int or (int, int), default (20, 200)
        School size: an integer (all schools equal) or a (min, max) pair; sizes are then drawn
        uniformly from the integers min..max. Sizes must be ≥ 2.
    n_unit_covariates : int, default 3
        Number d of continuous unit covariates ``x1..xd`` (≥ 1).
    n_group_covariates : int, default 2
        Number p of group covariates ``v1..vp`` (≥ 0).
    sigma_alpha : float, default 1.0
        Standard deviation of the propensity's random intercepts.
    sigma_beta : float or sequence of float, default 0.5
        Standard deviation(s) of the random slopes: one number for all covariates or one per
        covariate (length d). 0 gives common slopes μ.
    sigma_tau : float, default 0.5
        Standard deviation of the school random effect on τ.
    n_categories : int, default 0
        Levels of an extra categorical unit covariate ``c1`` (0 for none, else 2..26).
    seed : int, default 0
        Seed of the ``numpy.random.Generator``; equal seeds give identical studies.

    Returns
    -------
    SimulatedStudy
        ``data``, the true ``att``, ``catt``, ``propensity``, ``tau`` and ``parameters``, a dict
        with keys ``a0``, ``gamma`` (by v), ``mu_beta`` (by x), ``sigma_alpha``, ``sigma_beta``
        (by x), ``alpha`` (by school), ``beta`` (DataFrame school × x), ``zeta`` (c1 propensity
        effects by level, or None), ``tau0``, ``phi`` (by v), ``kappa`` (by x), ``sigma_tau``,
        ``u_tau`` (by school), ``outcome_coef`` (b, by x), ``outcome_group_coef`` (λ, by v),
        ``outcome_zeta`` (by level, or None), ``school_effect`` (u_0j), ``rho_school``,
        ``propensity_clip`` and ``redrawn_schools``.

    Raises
    ------
    DataError
        If an argument is out of range; the message names the argument and the value.

    Examples
    --------
    >>> study = simulate_multisite(n_groups=10, group_size=50, seed=1)
    >>> study.data.shape
    (500, 8)
    >>> bool(study.data.groupby("school")["z"].agg(["min", "max"]).eq([0, 1]).all().all())
    True
    """
    j_count = _check_count("n_groups", n_groups, 1)
    low, high = _check_group_size(group_size)
    d = _check_count("n_unit_covariates", n_unit_covariates, 1)
    p = _check_count("n_group_covariates", n_group_covariates, 0)
    s_alpha = _check_sigma("sigma_alpha", sigma_alpha)
    s_beta = _check_sigma_beta(sigma_beta, d)
    s_tau = _check_sigma("sigma_tau", sigma_tau)
    k_cat = _check_count("n_categories", n_categories, 0)
    if k_cat == 1 or k_cat > 26:
        raise DataError(
            f"simulate_multisite: n_categories must be 0 or between 2 and 26; got {n_categories!r}."
        )
    if not _is_int(seed) or int(seed) < 0:
        raise DataError(f"simulate_multisite: seed must be an integer ≥ 0; got {seed!r}.")

    # Independent streams per component: adding c1 or changing the outcome model leaves the
    # covariate and propensity draws of a seed unchanged.
    rng_design, rng_prop, rng_treat, rng_out, rng_cat = (
        np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(5)
    )

    # --- design: schools, sizes, covariates --------------------------------------------------
    sizes = rng_design.integers(low, high + 1, size=j_count)
    school_idx = np.repeat(np.arange(j_count), sizes)
    n = int(sizes.sum())
    width = max(2, len(str(j_count)))
    labels = np.array([f"s{j + 1:0{width}d}" for j in range(j_count)])
    x_names = [f"x{k + 1}" for k in range(d)]
    v_names = [f"v{k + 1}" for k in range(p)]

    v = rng_design.standard_normal((j_count, p))
    shift = rng_design.standard_normal((j_count, d))
    x = 0.5 * shift[school_idx] + rng_design.standard_normal((n, d))

    levels: list[str] = [chr(ord("a") + k) for k in range(k_cat)]
    c_idx = np.zeros(n, dtype=np.intp)
    if k_cat:
        probs = rng_cat.dirichlet(np.full(k_cat, 2.0), size=j_count)
        cum = np.cumsum(probs, axis=1)
        u = rng_cat.random(n)
        # Inverse-CDF draw per unit against its school's cumulative probabilities.
        c_idx = np.minimum((u[:, None] >= cum[school_idx]).sum(axis=1), k_cat - 1)

    # --- propensity model ----------------------------------------------------------------------
    gamma = _signed(rng_prop, p, 0.3, 0.8)
    mu = _signed(rng_prop, d, 0.3, 0.8)
    z_alpha = rng_prop.standard_normal(j_count)
    z_beta = rng_prop.standard_normal((j_count, d))
    beta = mu + s_beta * z_beta
    zeta = np.concatenate([[0.0], rng_prop.normal(0.0, 0.5, max(k_cat - 1, 0))]) if k_cat else None
    alpha_rest = v @ gamma + s_alpha * z_alpha  # α_j − a0
    eta_rest = alpha_rest[school_idx] + np.einsum("ik,ik->i", x, beta[school_idx])
    if zeta is not None:
        eta_rest += zeta[c_idx]
    a0 = _solve_intercept(eta_rest, _TARGET_TREATED_SHARE)
    alpha = a0 + alpha_rest
    pi = np.clip(expit(a0 + eta_rest), *_PROPENSITY_CLIP)

    # --- treatment, redrawn per school until both arms are present ----------------------------
    z = rng_treat.random(n) < pi
    redrawn = np.zeros(j_count, dtype=bool)
    for _ in range(_MAX_REDRAWS):
        n_treated = np.bincount(school_idx, weights=z, minlength=j_count)
        bad = (n_treated == 0) | (n_treated == sizes)
        if not bad.any():
            break
        redrawn |= bad
        mask = bad[school_idx]
        z[mask] = rng_treat.random(int(mask.sum())) < pi[mask]
    else:
        n_treated = np.bincount(school_idx, weights=z, minlength=j_count)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        for j in np.flatnonzero((n_treated == 0) | (n_treated == sizes)):
            block = slice(starts[j], starts[j] + sizes[j])
            order = np.argsort(pi[block])
            if n_treated[j] == 0:
                z[starts[j] + order[-1]] = True
            else:
                z[starts[j] + order[0]] = False
    z = z.astype(np.int64)

    # --- outcome model -------------------------------------------------------------------------
    b = _signed(rng_out, d, 0.5, 1.0)
    lam = _signed(rng_out, p, 0.3, 0.8)
    phi = _signed(rng_out, p, 0.2, 0.4)
    kappa = _signed(rng_out, d, 0.1, 0.3)
    tau0 = 1.0
    rho = 0.5
    school_effect = 0.5 * (rho * z_alpha + math.sqrt(1 - rho**2) * rng_out.standard_normal(j_count))
    u_tau = s_tau * rng_out.standard_normal(j_count)
    zeta_y = np.concatenate([[0.0], rng_out.normal(0.0, 0.5, k_cat - 1)]) if k_cat else None

    y0 = x @ b + 0.5 * (x[:, 0] ** 2 - 1) + (v @ lam + school_effect)[school_idx]
    if d >= 2:
        y0 += 0.5 * x[:, 0] * x[:, 1]
    if zeta_y is not None:
        y0 += zeta_y[c_idx]
    y0 += rng_out.standard_normal(n)
    tau = tau0 + (v @ phi + u_tau)[school_idx] + x @ kappa
    y = y0 + z * tau

    # --- assemble ------------------------------------------------------------------------------
    columns: dict[str, Any] = {"school": labels[school_idx], "z": z, "y": y}
    columns.update({name: x[:, k] for k, name in enumerate(x_names)})
    columns.update({name: v[school_idx, k] for k, name in enumerate(v_names)})
    if k_cat:
        columns["c1"] = pd.Categorical.from_codes(c_idx, categories=levels)
    data = pd.DataFrame(columns)
    data["school"] = data["school"].astype(str)

    treated_per_school = np.bincount(school_idx, weights=z, minlength=j_count)
    tau_sum = np.bincount(school_idx, weights=tau * z, minlength=j_count)
    with np.errstate(invalid="ignore", divide="ignore"):
        catt_values = np.where(treated_per_school > 0, tau_sum / treated_per_school, np.nan)
    school_index = pd.Index(labels, name="school")
    catt = pd.Series(catt_values, index=school_index, name="catt")
    att = float(tau[z == 1].mean())

    parameters: dict[str, Any] = {
        "a0": a0,
        "gamma": pd.Series(gamma, index=v_names, name="gamma", dtype=float),
        "mu_beta": pd.Series(mu, index=x_names, name="mu_beta"),
        "sigma_alpha": s_alpha,
        "sigma_beta": pd.Series(s_beta, index=x_names, name="sigma_beta"),
        "alpha": pd.Series(alpha, index=school_index, name="alpha"),
        "beta": pd.DataFrame(beta, index=school_index, columns=pd.Index(x_names)),
        "zeta": None if zeta is None else pd.Series(zeta, index=levels, name="zeta"),
        "tau0": tau0,
        "phi": pd.Series(phi, index=v_names, name="phi", dtype=float),
        "kappa": pd.Series(kappa, index=x_names, name="kappa"),
        "sigma_tau": s_tau,
        "u_tau": pd.Series(u_tau, index=school_index, name="u_tau"),
        "outcome_coef": pd.Series(b, index=x_names, name="outcome_coef"),
        "outcome_group_coef": pd.Series(lam, index=v_names, name="outcome_group_coef", dtype=float),
        "outcome_zeta": None if zeta_y is None else pd.Series(zeta_y, index=levels, name="zeta_y"),
        "school_effect": pd.Series(school_effect, index=school_index, name="school_effect"),
        "rho_school": rho,
        "propensity_clip": _PROPENSITY_CLIP,
        "redrawn_schools": labels[redrawn].tolist(),
    }
    return SimulatedStudy(
        data=data,
        att=att,
        catt=catt,
        propensity=pd.Series(pi, index=data.index, name="propensity"),
        tau=pd.Series(tau, index=data.index, name="tau"),
        parameters=parameters,
        unit_covariates=[*x_names, *(["c1"] if k_cat else [])],
        group_covariates=v_names,
        categorical=["c1"] if k_cat else [],
    )
