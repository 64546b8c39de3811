"""Posterior mode: NUTS on the propensity model, then group and overall effects per draw.

For every posterior draw ``s`` the control weights are the odds
``w_i = π_i / (1 − π_i) = exp(η_i)`` and the Hájek estimators of DESIGN §1 give the group
CATTs and the ATT; collecting them over draws carries the propensity uncertainty into the
effects. With ``uncertainty="bayesian_bootstrap"`` every draw also gets Dirichlet(1, …, 1)
unit weights within each group that multiply both arms, so that outcome noise enters the
intervals too. The outcome never feeds back into the propensity model (a cut posterior).

Everything lands in one ``xarray.DataTree``: the sampler's groups (``posterior``,
``sample_stats``, ``constant_data``, ``observed_data``) plus two derived groups,
``estimands`` (effects per draw) and ``weights`` (posterior-mean weight of each unit).
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm
import xarray as xr

from hierps.convergence import rhat_and_ess_of
from hierps.data import Design
from hierps.estimands import att_from_catt, effects_from_sums
from hierps.exceptions import HierpsWarning
from hierps.model import LOSSES, Patterns, build_pymc, compress

__all__ = [
    "CI_PROB",
    "ESTIMANDS",
    "SAMPLERS",
    "UNCERTAINTIES",
    "PosteriorResult",
    "from_idata",
    "sample",
    "sampling_problems",
]

SAMPLERS = ("nutpie", "pymc", "numpyro")
UNCERTAINTIES = ("bayesian_bootstrap", "propensity")
ESTIMANDS = ("att", "ate")
#: Probability of the equal-tailed intervals in the summary tables.
CI_PROB = 0.9
#: Convergence thresholds of :func:`sampling_problems`.
MAX_RHAT = 1.01
MIN_ESS_PER_CHAIN = 100
MIN_BFMI = 0.3
# Draws are processed in chunks of about this many (draw × unit × covariate) numbers, so the
# per-draw linear predictors of a large frame never sit in memory all at once.
CHUNK_ELEMENTS = 1 << 22
_DERIVED_GROUPS = ("estimands", "weights")
_MAX_LISTED = 8
_SAMPLE_DIMS = ("chain", "draw")
_PACKAGE_DIRECTORY = (str(Path(__file__).resolve().parent),)


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def sample(
    design: Design,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 2,
    random_seed: int | None = None,
    sampler: str = "nutpie",
    loss: str = "bernoulli",
    uncertainty: str = "bayesian_bootstrap",
    estimand: str = "att",
    target_accept: float = 0.8,
    store_weights: bool = False,
    progressbar: bool = False,
    **fixed: float,
) -> PosteriorResult:
    """Sample the propensity model with NUTS and compute the effects draw by draw.

    Parameters
    ----------
    design
        The validated design. An outcome is not needed to sample; without one the result
        holds the propensity posterior and the weights, and asking for effects raises.
    draws, tune, chains
        NUTS draws kept and tuning steps per chain, and the number of chains.
    random_seed
        Seeds both the sampler and the Bayesian-bootstrap generator (independent streams
        of one :class:`numpy.random.SeedSequence`), so a seed reproduces the whole result.
        ``None`` draws fresh entropy. The seed is recorded in the ``random_seed`` attribute
        of the derived groups; :func:`from_idata` with that seed repeats the bootstrap.
    sampler
        ``"nutpie"`` (default; the model is compiled with numba, which takes ~10 s once per
        call, then samples fast), ``"pymc"`` or ``"numpyro"`` (needs ``numpyro`` and ``jax``).
    loss
        ``"bernoulli"``: the posterior of the logistic propensity model. ``"calibrated"``:
        the generalized posterior ``exp(−calibrated loss) × prior``, sampled the same way;
        the control weights are still ``exp(η)``. The calibrated loss is the ATT loss, so it
        requires ``estimand="att"``.
    uncertainty
        ``"bayesian_bootstrap"`` (default): propensity uncertainty plus outcome noise through
        per-draw Dirichlet(1, …, 1) unit weights within each group (scaled to sum to the
        group size) that multiply the weights of both arms. ``"propensity"``: propensity
        uncertainty only.
    estimand
        ``"att"`` (default): group CATTs and the ATT; treated units weigh 1, controls
        ``exp(η)``; the variables are named ``catt`` and ``att``. ``"ate"``: both arms are
        reweighted to the whole sample (treated ``1/π``, controls ``1/(1 − π)``), giving group
        CATEs and the ATE (groups weighted by their size); the variables are named ``cate``
        and ``ate``.
    target_accept
        NUTS target acceptance rate; raise it (e.g. 0.95) when there are divergences.
    store_weights
        Also store every draw's unit weights as ``weights/weight_draws`` (chain, draw, obs)
        and, with the Bayesian bootstrap, the bootstrap weights as
        ``weights/bootstrap_weight`` (chain, draw, obs). That is
        ``8 × chains × draws × n`` bytes each, so it is off by default; the posterior-mean
        weight of every unit is always stored.
    progressbar
        Show the sampler's progress bar.
    **fixed
        Hyperparameters fixed at a number (``sigma_alpha``, ``sigma_beta``,
        ``sigma_intercept``, ``sigma_gamma``, ``sigma_mu_beta``); see
        :func:`hierps.model.build_pymc`. ``sigma_alpha`` and ``sigma_beta`` left out get
        half-normal hyperpriors.

    Returns
    -------
    PosteriorResult

    Warns
    -----
    HierpsWarning
        Divergences, R-hat > 1.01, bulk ESS below 100 per chain or E-BFMI below 0.3 (with the
        parameters concerned and a suggested fix); groups whose effect cannot be estimated.
    """
    _check_choice("sampler", sampler, SAMPLERS)
    _check_choice("loss", loss, LOSSES)
    _check_choice("uncertainty", uncertainty, UNCERTAINTIES)
    _check_choice("estimand", estimand, ESTIMANDS)
    _check_estimand_loss(estimand, loss)
    for name, value in (("draws", draws), ("tune", tune), ("chains", chains)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
        if value < (0 if name == "tune" else 1):
            raise ValueError(f"{name} must be {'≥ 0' if name == 'tune' else '≥ 1'}, not {value}")
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept must lie strictly between 0 and 1, not {target_accept}")
    _check_sampler_installed(sampler)
    # Build (and so validate the hyperparameters) before anything slow happens.
    pymc_model = build_pymc(design, loss=loss, **fixed)

    # The bootstrap draws from the seed sequence itself and the sampler from a child of it,
    # so from_idata(design, result.idata, random_seed=<the same seed>) repeats the bootstrap.
    seeds = np.random.SeedSequence(random_seed)
    (sampler_seeds,) = seeds.spawn(1)
    with pymc_model:
        idata = pm.sample(
            draws=draws,
            tune=tune,
            chains=chains,
            random_seed=int(sampler_seeds.generate_state(1)[0]),
            nuts_sampler=sampler,
            progressbar=progressbar,
            # hierps runs its own checks below and turns them into HierpsWarnings.
            compute_convergence_checks=False,
            nuts={"target_accept": target_accept},
            # nutpie: compile the data in as constants. Without shared data nutpie's numba
            # wrapper needs no code to unpack it, which halves the compile time of a fit
            # (the model is compiled per call and never reused with other data anyway).
            compile_kwargs={"freeze_model": True} if sampler == "nutpie" else None,
            # PyMC's default takes half the CPUs (it guesses the rest are hyperthreads), so on
            # two CPUs nutpie would run the chains one after the other; its chains are threads
            # of one process, cheap to run side by side.
            cores=min(chains, _usable_cpus()) if sampler == "nutpie" else None,
        )
    idata.attrs.update(
        {
            "hierps_loss": loss,
            "hierps_sampler": sampler,
            "hierps_fixed": json.dumps({k: np.asarray(v).tolist() for k, v in fixed.items()}),
            "hierps_target_accept": float(target_accept),
        }
    )
    problems = sampling_problems(idata)
    for message in problems:
        _warn(message)
    result = from_idata(
        design,
        idata,
        uncertainty=uncertainty,
        estimand=estimand,
        random_seed=seeds,
        store_weights=store_weights,
    )
    result.problems = problems
    return result


def _usable_cpus() -> int:
    """The number of CPUs this process may run on (its affinity mask, where there is one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _warn(message: str) -> None:
    # Point the warning at the user's call, whether it came through Model.sample or not.
    warnings.warn(message, HierpsWarning, skip_file_prefixes=_PACKAGE_DIRECTORY)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        valid = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"{name}={value!r} is not one of {valid}")


def _check_estimand_loss(estimand: str, loss: str) -> None:
    if estimand == "ate" and loss == "calibrated":
        raise ValueError(
            "the calibrated loss targets the ATT (its weights balance controls to the treated); "
            "use loss='bernoulli' for estimand='ate'"
        )


def _check_sampler_installed(sampler: str) -> None:
    needed = {"nutpie": ["nutpie"], "pymc": [], "numpyro": ["numpyro", "jax"]}[sampler]
    missing = [package for package in needed if importlib.util.find_spec(package) is None]
    if missing:
        raise ImportError(
            f"sampler={sampler!r} needs the package(s) {', '.join(missing)}, which are not "
            f"installed: pip install {' '.join(missing)} — or use sampler='nutpie' or 'pymc'"
        )


# --------------------------------------------------------------------------------------------
# Sampling diagnostics
# --------------------------------------------------------------------------------------------


def sampling_problems(idata: xr.DataTree) -> list[str]:
    """Check a NUTS run and describe each problem with the parameters concerned and a fix.

    Checks divergent transitions, rank-normalized split R-hat > 1.01, bulk ESS below 100 per
    chain, and E-BFMI below 0.3, over every variable of the ``posterior`` group.

    Parameters
    ----------
    idata
        A ``DataTree`` with ``posterior`` and ``sample_stats`` groups.

    Returns
    -------
    list of str
        One message per kind of problem; empty when the run looks healthy.
    """
    posterior = idata["posterior"].to_dataset()
    stats = idata["sample_stats"].to_dataset() if "sample_stats" in idata.children else None
    n_chains = posterior.sizes["chain"]
    scales = [name for name in ("sigma_alpha", "sigma_beta") if name in posterior]
    scale_hint = (
        f"fix the group-level scale(s) {', '.join(scales)} at a number, or let fewer slopes "
        f"vary (varying_slopes=[...])"
        if scales
        else "let fewer slopes vary (varying_slopes=[...])"
    )
    problems = []
    if stats is not None and "diverging" in stats:
        n_divergent = int(stats["diverging"].sum())
        if n_divergent:
            n_draws = stats["diverging"].size
            problems.append(
                f"{n_divergent} divergent transitions after tuning ({n_divergent / n_draws:.1%} "
                f"of the draws): the posterior geometry (typically the funnel of the "
                f"group-level scales {', '.join(scales) or 'of the hierarchy'}) is not explored "
                f"reliably. Raise target_accept (e.g. target_accept=0.95), or {scale_hint}"
            )
    rhat, ess = rhat_and_ess_of(posterior)
    high = _flagged(rhat, lambda value: value > MAX_RHAT)
    if high:
        problems.append(
            f"R-hat > {MAX_RHAT} for {_describe(high, 'R-hat')}: the chains disagree. Sample "
            f"longer (more tune= and draws=), use more chains, or {scale_hint}"
        )
    minimum = MIN_ESS_PER_CHAIN * n_chains
    low = _flagged(ess, lambda value: value < minimum, descending=False)
    if low:
        problems.append(
            f"bulk ESS < {minimum} ({MIN_ESS_PER_CHAIN} per chain) for "
            f"{_describe(low, 'ESS', '.0f')}: too few effective draws for stable means and "
            f"intervals. Sample longer (more draws= and tune=), or {scale_hint}"
        )
    if stats is not None and "energy" in stats and stats.sizes.get("draw", 0) > 1:
        bfmi = np.atleast_1d(np.asarray(az.bfmi(stats[["energy"]])["energy"], dtype=float))
        poor = np.flatnonzero(bfmi < MIN_BFMI)
        if len(poor):
            problems.append(
                f"E-BFMI < {MIN_BFMI} in chain(s) {', '.join(str(c) for c in poor)} (lowest "
                f"{bfmi[poor].min():.2f}): the momentum resampling explores the energy poorly, "
                f"typical of heavy tails or funnels in {', '.join(scales) or 'the hierarchy'}. "
                f"Use more tune=, or {scale_hint}"
            )
    return problems


def _flagged(
    values: xr.Dataset, bad: Callable[[np.ndarray], np.ndarray], descending: bool = True
) -> list[tuple[str, float]]:
    """Labels such as ``beta[s001, x1]`` of the entries where ``bad`` holds, worst first."""
    flagged = []
    for name, array in values.data_vars.items():
        data = np.asarray(array.values, dtype=float)
        with np.errstate(invalid="ignore"):
            mask = np.asarray(bad(data)) & np.isfinite(data)
        for position in zip(*np.nonzero(np.atleast_1d(mask)), strict=False):
            if array.ndim == 0:
                label = str(name)
            else:
                keys = [array[dim].values[i] for dim, i in zip(array.dims, position, strict=True)]
                label = f"{name}[{', '.join(str(key) for key in keys)}]"
            flagged.append((label, float(data[position] if array.ndim else data)))
    flagged.sort(key=lambda item: -item[1] if descending else item[1])
    return flagged


def _describe(flagged: list[tuple[str, float]], what: str, fmt: str = ".3f") -> str:
    shown = ", ".join(f"{label} ({what} {value:{fmt}})" for label, value in flagged[:_MAX_LISTED])
    more = len(flagged) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


# --------------------------------------------------------------------------------------------
# Effects per draw
# --------------------------------------------------------------------------------------------


def from_idata(
    design: Design,
    idata: xr.DataTree,
    uncertainty: str = "bayesian_bootstrap",
    estimand: str = "att",
    random_seed: int | np.random.SeedSequence | None = None,
    store_weights: bool = False,
) -> PosteriorResult:
    """Compute the per-draw weights and effects of an existing posterior of the model.

    Use it to change the estimand or the uncertainty of a fit without sampling again, or
    to rebuild a result from a ``DataTree`` read back with ``xarray.open_datatree``. Any
    ``estimands`` and ``weights`` groups already in ``idata`` are replaced.

    Parameters
    ----------
    design
        The design the posterior was sampled on (same groups, covariates and rows).
    idata
        A ``DataTree`` whose ``posterior`` holds ``alpha`` (chain, draw, group) and, if the
        model has unit covariates, ``beta`` (chain, draw, group, unit_covariate).
    uncertainty, estimand, store_weights
        As in :func:`sample`.
    random_seed
        Seed of the Bayesian-bootstrap generator; the seed given to :func:`sample` repeats
        that call's bootstrap draws.

    Returns
    -------
    PosteriorResult
    """
    _check_choice("uncertainty", uncertainty, UNCERTAINTIES)
    _check_choice("estimand", estimand, ESTIMANDS)
    if "posterior" not in idata.children:
        raise ValueError("idata has no 'posterior' group")
    loss = str(idata.attrs.get("hierps_loss", "bernoulli"))
    _check_estimand_loss(estimand, loss)
    posterior = idata["posterior"].to_dataset()
    alpha, beta = _coefficients(design, posterior)
    _check_units(design, idata)
    n_chains, n_draws = posterior.sizes["chain"], posterior.sizes["draw"]
    seeds = (
        random_seed
        if isinstance(random_seed, np.random.SeedSequence)
        else np.random.SeedSequence(random_seed)
    )
    computed = _per_draw(
        design,
        alpha.reshape(n_chains * n_draws, *alpha.shape[2:]),
        None if beta is None else beta.reshape(n_chains * n_draws, *beta.shape[2:]),
        uncertainty=uncertainty,
        estimand=estimand,
        rng=np.random.default_rng(seeds),
        store_weights=store_weights,
    )
    tree = idata.drop_nodes(list(_DERIVED_GROUPS), errors="ignore")
    attrs = {
        "estimand": estimand,
        "uncertainty": uncertainty,
        "loss": loss,
        "ci_prob": CI_PROB,
        "random_seed": str(seeds.entropy),
        "created_at": datetime.now(UTC).isoformat(),
        "creation_library": "hierps",
        "creation_library_version": version("hierps"),
    }
    coords = {
        "chain": posterior["chain"].values,
        "draw": posterior["draw"].values,
        "group": list(design.groups),
        "obs": list(design.index),
    }

    def by_draw(values: np.ndarray) -> np.ndarray:
        return values.reshape(n_chains, n_draws, *values.shape[1:])

    weights = {"weight": (("obs",), computed["mean_weight"])}
    if store_weights:
        weights["weight_draws"] = (("chain", "draw", "obs"), by_draw(computed["weight_draws"]))
        if computed["bootstrap_draws"] is not None:  # drawn only when there is an outcome
            weights["bootstrap_weight"] = (
                ("chain", "draw", "obs"),
                by_draw(computed["bootstrap_draws"]),
            )
    tree["weights"] = xr.Dataset(
        weights,
        coords={k: coords[k] for k in (("chain", "draw", "obs") if store_weights else ("obs",))},
        attrs={
            **attrs,
            "description": (
                "posterior-mean weight of each unit (treated 1, controls exp(eta))"
                if estimand == "att"
                else "posterior-mean weight of each unit (treated 1/pi, controls 1/(1-pi))"
            ),
        },
    )
    if design.outcome is not None:
        group_name, overall_name = ("catt", "att") if estimand == "att" else ("cate", "ate")
        tree["estimands"] = xr.Dataset(
            {
                group_name: (("chain", "draw", "group"), by_draw(computed["effect"])),
                overall_name: (("chain", "draw"), by_draw(computed["overall"])),
                "treated_weight": (("chain", "draw", "group"), by_draw(computed["treated"])),
                "control_weight": (("chain", "draw", "group"), by_draw(computed["control"])),
            },
            coords={k: coords[k] for k in ("chain", "draw", "group")},
            attrs=attrs,
        )
        _warn_inestimable(design, estimand)
    return PosteriorResult(design, tree, estimand=estimand, uncertainty=uncertainty)


def _check_units(design: Design, idata: xr.DataTree) -> None:
    """The posterior has no unit dimension; the sampled data, when stored, must be the design's."""
    if "constant_data" not in idata.children or "group_index" not in idata["constant_data"]:
        return
    codes = np.asarray(idata["constant_data"]["group_index"].values)
    if codes.shape != design.group_codes.shape or not np.array_equal(codes, design.group_codes):
        raise ValueError(
            f"the posterior was sampled on {codes.size} units in another arrangement than the "
            f"design's {design.n_units}: it belongs to other data"
        )


def _coefficients(design: Design, posterior: xr.Dataset) -> tuple[np.ndarray, np.ndarray | None]:
    """``alpha`` and ``beta`` as arrays, after checking they belong to this design."""
    if "alpha" not in posterior:
        raise ValueError("the posterior has no 'alpha'; was it sampled from hierps' model?")
    groups = [str(group) for group in posterior["alpha"]["group"].values]
    if groups != [str(group) for group in design.groups]:
        raise ValueError(
            "the posterior's groups differ from the design's: it was sampled on other data"
        )
    alpha = posterior["alpha"].transpose("chain", "draw", "group").to_numpy()
    if not design.unit_names:
        return alpha, None
    if "beta" not in posterior:
        raise ValueError("the posterior has no 'beta' but the design has unit covariates")
    covariates = [str(name) for name in posterior["beta"]["unit_covariate"].values]
    if covariates != list(design.unit_names):
        raise ValueError(
            f"the posterior's unit covariates {covariates} differ from the design's "
            f"{list(design.unit_names)}"
        )
    beta = posterior["beta"].transpose("chain", "draw", "group", "unit_covariate").to_numpy()
    return alpha, beta


def unit_weights(eta: np.ndarray, treatment: np.ndarray, estimand: str) -> np.ndarray:
    """Every unit's weight from its linear predictor ``η = logit π`` (any leading axes).

    ATT: treated 1, controls the odds ``exp(η)``. ATE: treated ``1/π = 1 + exp(−η)``,
    controls ``1/(1 − π) = 1 + exp(η)``.
    """
    treated = treatment == 1
    # Only the arm that uses exp(±η) evaluates it: the other arm's η may be large enough to
    # overflow without meaning anything.
    if estimand == "att":
        return np.where(treated, 1.0, np.exp(np.where(treated, 0.0, eta)))
    return 1.0 + np.exp(np.where(treated, -eta, eta))


@dataclass(frozen=True)
class _Cells:
    """The units split into cells of equal weight in every draw: (covariate pattern, arm).

    A draw's weight depends on a unit only through its group, covariate row and arm, so the
    per-draw work runs over cells (learning mindsets: about 2,700 for 10,391 units). Cells
    are sorted by group, and ``unit_order`` sorts the units by cell, so every sum over a
    cell's units or a group's cells is a sum over a contiguous run.
    """

    pattern: np.ndarray  # (c,) the covariate pattern of each cell (see hierps.model.compress)
    treated: np.ndarray  # (c,) 1 for a cell of treated units, else 0
    group: np.ndarray  # (c,) the group of each cell
    of_unit: np.ndarray  # (n,) the cell of every unit
    units: np.ndarray  # (c,) number of units in each cell
    unit_order: np.ndarray  # (n,) the units sorted by cell
    unit_starts: np.ndarray  # (c,) where each cell's run starts in unit_order
    group_starts: np.ndarray  # (J,) where each group's run of cells starts


def _cells(design: Design, patterns: Patterns) -> _Cells:
    key = 2 * patterns.of_unit + design.treatment.astype("int64")
    cell_keys, of_unit = np.unique(key, return_inverse=True)
    pattern = cell_keys // 2
    group = patterns.group[pattern]  # non-decreasing: patterns are sorted by group
    units = np.bincount(of_unit, minlength=len(cell_keys))
    return _Cells(
        pattern=pattern,
        treated=cell_keys % 2,
        group=group,
        of_unit=of_unit,
        units=units,
        unit_order=np.argsort(of_unit, kind="stable"),
        unit_starts=np.r_[0, np.cumsum(units)[:-1]],
        group_starts=np.searchsorted(group, np.arange(design.n_groups)),
    )


def _bootstrap_masses(
    rng: np.random.Generator, cells: _Cells, outcome: np.ndarray, n_draws: int
) -> tuple[np.ndarray, np.ndarray, Callable[[], np.ndarray]]:
    """Bayesian-bootstrap unit weights of ``n_draws`` draws, summed over each cell.

    Dirichlet(1, …, 1) weights within each group, scaled to sum to the group's size (all
    ones is the plain estimate): normalized standard exponentials. Returns each cell's sum
    of the weights and of the weights times the outcome, ``(n_draws, c)`` each, and a
    function giving the weights of every unit ``(n_draws, n)`` (for storing them).
    """
    exponential = rng.standard_exponential((n_draws, len(cells.unit_order)))
    mass = np.add.reduceat(exponential, cells.unit_starts, axis=1)
    outcome_mass = np.add.reduceat(exponential * outcome[cells.unit_order], cells.unit_starts, 1)
    group_total = np.add.reduceat(mass, cells.group_starts, axis=1)
    group_size = np.add.reduceat(cells.units, cells.group_starts)
    scale = (group_size / group_total)[:, cells.group]  # (n_draws, c)

    def unit_weights() -> np.ndarray:
        weights = np.empty_like(exponential)
        unit_scale = np.repeat(scale, cells.units, axis=1)
        weights[:, cells.unit_order] = exponential * unit_scale
        return weights

    return mass * scale, outcome_mass * scale, unit_weights


def _per_draw(
    design: Design,
    alpha: np.ndarray,
    beta: np.ndarray | None,
    uncertainty: str,
    estimand: str,
    rng: np.random.Generator,
    store_weights: bool,
) -> dict[str, np.ndarray]:
    """Weights and effects of every draw, computed per cell over chunks of draws.

    Each arm's Hájek sums ``Σ w`` and ``Σ w Y`` of a group add up over its cells: a cell's
    weight times its unit count and outcome total, or, with the Bayesian bootstrap, times the
    sums of that draw's bootstrap weights over the cell's units.
    """
    n_draws, n = alpha.shape[0], design.n_units
    patterns = compress(design)
    cells = _cells(design, patterns)
    n_cells = len(cells.pattern)
    arm_mask = {arm: cells.treated == arm for arm in (0, 1)}

    def arm_sums(values: np.ndarray, arm: int) -> np.ndarray:
        """Sums over the cells of one arm in each group: (draws, c) -> (draws, J)."""
        return np.add.reduceat(np.where(arm_mask[arm], values, 0.0), cells.group_starts, 1)

    if design.outcome is not None:
        outcome_total = np.bincount(cells.of_unit, weights=design.outcome, minlength=n_cells)
    # Chunks bound the (draws × units) bootstrap or stored weights and the gathered slopes.
    size = max(1, CHUNK_ELEMENTS // max(n, len(patterns) * max(1, len(design.unit_names))))
    weight_total = np.zeros(n_cells)
    out: dict[str, list[np.ndarray]] = {
        key: [] for key in ("effect", "overall", "treated", "control", "weights", "bootstrap")
    }
    for start in range(0, n_draws, size):
        draws = slice(start, start + size)
        eta = alpha[draws][:, patterns.group]
        if beta is not None:
            eta = eta + np.einsum("spk,pk->sp", beta[draws][:, patterns.group], patterns.design)
        with np.errstate(over="ignore"):
            weights = unit_weights(eta[:, cells.pattern], cells.treated, estimand)
        weight_total += weights.sum(axis=0)
        if store_weights:
            out["weights"].append(weights[:, cells.of_unit])
        if design.outcome is None:
            continue
        if uncertainty == "bayesian_bootstrap":
            mass, outcome_mass, bootstrap_weights = _bootstrap_masses(
                rng, cells, design.outcome, eta.shape[0]
            )
            if store_weights:
                out["bootstrap"].append(bootstrap_weights())
        else:
            mass, outcome_mass = cells.units, outcome_total
        effects = effects_from_sums(
            treated_weight=arm_sums(weights * mass, 1),
            treated_total=arm_sums(weights * outcome_mass, 1),
            control_weight=arm_sums(weights * mass, 0),
            control_total=arm_sums(weights * outcome_mass, 0),
        )
        if estimand == "att":
            group_weight = effects["treated_weight"]
        else:
            # The ATE weighs each group by its (bootstrap) size, which the Dirichlet scaling
            # keeps at the group's number of units.
            group_weight = np.broadcast_to(
                design.units_per_group.astype(float), effects["catt"].shape
            )
        out["effect"].append(effects["catt"])
        out["overall"].append(att_from_catt(effects["catt"], group_weight))
        out["treated"].append(effects["treated_weight"])
        out["control"].append(effects["control_weight"])
    if not np.all(np.isfinite(weight_total)):
        _warn(
            "some posterior draws give infinite weights (exp(eta) overflowed); the posterior "
            "has extreme propensities — check overlap and the prior scales"
        )
    result = {key: np.concatenate(parts) for key, parts in out.items() if parts}
    result["mean_weight"] = (weight_total / n_draws)[cells.of_unit]
    result["weight_draws"] = result.pop("weights", None)
    result["bootstrap_draws"] = result.pop("bootstrap", None)
    return result


def _warn_inestimable(design: Design, estimand: str) -> None:
    """Name the groups whose effect is NaN and count the units the overall effect leaves out."""
    n_treated = design.treated_per_group
    n_control = design.units_per_group - n_treated
    labels = design.groups.tolist()
    if estimand == "att":
        missing = np.flatnonzero((n_treated > 0) & (n_control == 0))
        if len(missing):
            left_out = int(n_treated[missing].sum())
            _warn(
                f"group(s) {', '.join(repr(labels[j]) for j in missing)} have no control "
                f"units: their CATT is NaN and their {left_out} treated unit(s) are excluded "
                f"from the ATT"
            )
        return
    missing = np.flatnonzero((n_treated == 0) | (n_control == 0))
    if len(missing):
        left_out = int(design.units_per_group[missing].sum())
        _warn(
            f"group(s) {', '.join(repr(labels[j]) for j in missing)} lack treated or control "
            f"units: their CATE is NaN and their {left_out} unit(s) are excluded from the ATE"
        )


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


class PosteriorResult:
    """A posterior of the propensity model with the effects it implies, draw by draw.

    Attributes
    ----------
    design
        The design that was sampled.
    idata
        ``xarray.DataTree``: the sampler's groups plus ``estimands`` (with ATT:
        ``catt`` (chain, draw, group), ``att`` (chain, draw); with ATE: ``cate``, ``ate``;
        and ``treated_weight``, ``control_weight`` (chain, draw, group), the weight sums of
        each arm) and ``weights`` (``weight`` (obs): posterior-mean weight of each unit;
        ``weight_draws`` / ``bootstrap_weight`` (chain, draw, obs) with
        ``store_weights=True``). Write it with ``idata.to_netcdf(path)``; read it back with
        ``xarray.open_datatree(path)`` and :func:`from_idata`.
    estimand
        ``"att"`` or ``"ate"``.
    uncertainty
        ``"bayesian_bootstrap"`` or ``"propensity"``.
    problems
        The sampling problems found (each was also issued as a ``HierpsWarning``).
    """

    def __init__(self, design: Design, idata: xr.DataTree, estimand: str, uncertainty: str) -> None:
        self.design = design
        self.idata = idata
        self.estimand = estimand
        self.uncertainty = uncertainty
        self.problems: list[str] = []
        #: Augmented CATTs (``Model.sample(outcome_model=...)`` or :func:`hierps.augment`).
        self.augmented: pd.DataFrame | None = None

    def __repr__(self) -> str:
        posterior = self.idata["posterior"]
        runs = f"{posterior.sizes['chain']} chains × {posterior.sizes['draw']} draws"
        if self.design.outcome is None:
            effect = "no outcome (propensity posterior and weights only)"
        else:
            row = self._overall_table().iloc[0]
            effect = (
                f"{self.estimand.upper()} {row['mean']:.4g} "
                f"[{CI_PROB:.0%} interval {row['lower']:.4g}, {row['upper']:.4g}]"
            )
        return (
            f"PosteriorResult: {effect}; {self.design.n_groups} groups; {runs}; "
            f"uncertainty {self.uncertainty}"
        )

    @property
    def weights(self) -> pd.Series:
        """Posterior-mean weight of every unit, on the frame's index (ATT: treated = 1)."""
        values = self.idata["weights"]["weight"].to_numpy()
        return pd.Series(values, index=self.design.index, name="weight")

    def _estimands(self) -> xr.Dataset:
        if "estimands" not in self.idata.children:
            raise ValueError(
                "the model has no outcome column, so there are no effects: give outcome= to "
                "hierps.Model (the propensity posterior and .weights need none)"
            )
        return self.idata["estimands"].to_dataset()

    def _names(self, requested: str) -> tuple[str, str]:
        names = ("catt", "att") if self.estimand == "att" else ("cate", "ate")
        if requested != self.estimand:
            raise ValueError(
                f"this result estimated the {self.estimand.upper()}: use .{names[0]} and "
                f".{names[1]}, or from_idata(..., estimand={requested!r})"
            )
        return names

    def _group_table(self) -> pd.DataFrame:
        name = "catt" if self.estimand == "att" else "cate"
        table = summarize(self._estimands()[name])
        table.index = self.design.groups
        n_treated = self.design.treated_per_group.astype(int)
        table["n_treated"] = n_treated
        table["n_control"] = self.design.units_per_group - n_treated
        return table

    def _overall_table(self) -> pd.DataFrame:
        name = "att" if self.estimand == "att" else "ate"
        return summarize(self._estimands()[name]).set_axis([name])

    @property
    def catt(self) -> pd.DataFrame:
        """Group CATTs: ``mean``, ``sd``, 90 % equal-tailed interval (``lower``, ``upper``),
        ``ess_bulk``, ``ess_tail``, ``r_hat``, ``n_treated``, ``n_control``; NaN where a group
        has no controls (or no treated)."""
        self._names("att")
        return self._group_table()

    @property
    def att(self) -> pd.DataFrame:
        """The ATT as a one-row table with the columns of :attr:`catt` (without counts)."""
        self._names("att")
        return self._overall_table()

    @property
    def cate(self) -> pd.DataFrame:
        """Group CATEs (with ``estimand="ate"``); the columns of :attr:`catt`."""
        self._names("ate")
        return self._group_table()

    @property
    def ate(self) -> pd.DataFrame:
        """The ATE (with ``estimand="ate"``) as a one-row table."""
        self._names("ate")
        return self._overall_table()


def summarize(draws: xr.DataArray, ci_prob: float = CI_PROB) -> pd.DataFrame:
    """Mean, sd, equal-tailed interval, bulk and tail ESS and R-hat of a (chain, draw, …) array.

    Returns a DataFrame with one row per entry of the non-sample dims (one row for a scalar).
    """
    data = draws.to_dataset(name="value")
    interval = az.eti(data, prob=ci_prob)["value"]
    columns = {
        # skipna=False: a group without an estimable effect stays NaN without a warning.
        "mean": draws.mean(_SAMPLE_DIMS, skipna=False),
        "sd": draws.std(_SAMPLE_DIMS, ddof=1, skipna=False),
        "lower": interval.sel(ci_bound="lower", drop=True),
        "upper": interval.sel(ci_bound="upper", drop=True),
        "ess_bulk": az.ess(data, method="bulk")["value"],
        "ess_tail": az.ess(data, method="tail")["value"],
        "r_hat": az.rhat(data)["value"],
    }
    return pd.DataFrame(
        {name: np.atleast_1d(np.asarray(values, dtype=float)) for name, values in columns.items()}
    )
