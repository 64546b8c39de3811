"""Effects per posterior draw: weights from each draw's linear predictor, then Hájek sums.

For every posterior draw ``s`` the control weights are the odds
``w_i = π_i / (1 − π_i) = exp(η_i)`` and the Hájek estimators of ``docs/math.md`` give the group
CATTs and the ATT; collecting them over draws carries the propensity uncertainty into the
effects. With ``uncertainty="bayesian_bootstrap"`` every draw also gets Dirichlet(1, …, 1)
unit weights within each group that multiply both arms, so that outcome noise enters the
intervals too. The outcome never feeds back into the propensity model (a cut posterior).
The work runs over (covariate pattern, arm) cells in chunks of draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import xarray as xr

from hierps._version import __version__
from hierps.arguments import check_flag, seed_sequence
from hierps.design.build import Design
from hierps.effects.estimands import att_from_catt, effects_from_sums
from hierps.effects.inestimable import warn_inestimable
from hierps.exceptions import ArgumentError, ArgumentTypeError, check_choice, warn
from hierps.mcmc.conventions import CI_PROB
from hierps.posterior.result import EFFECT_NAMES, ESTIMANDS, UNCERTAINTIES, PosteriorResult
from hierps.pymc_model import Patterns, compress

__all__ = ["CHUNK_ELEMENTS", "check_estimand_loss", "from_idata", "unit_weights"]

# Draws are processed in chunks of about this many (draw × unit × covariate) numbers, so the
# per-draw linear predictors of a large frame never sit in memory all at once.
CHUNK_ELEMENTS = 1 << 22
_DERIVED_GROUPS = ("estimands", "weights")


def check_estimand_loss(estimand: str, loss: str) -> None:
    """The calibrated loss is the ATT loss: reject it with another estimand."""
    if estimand != "att" and loss == "calibrated":
        raise ArgumentError(
            "the calibrated loss targets the ATT (its weights balance controls to the treated); "
            f"use loss='bernoulli' for estimand={estimand!r}"
        )


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
    check_choice("uncertainty", uncertainty, UNCERTAINTIES)
    check_choice("estimand", estimand, ESTIMANDS)
    if not isinstance(idata, xr.DataTree):
        raise ArgumentTypeError(f"idata must be an xarray.DataTree, not {type(idata).__name__}")
    if "posterior" not in idata.children:
        raise ArgumentError("idata has no 'posterior' group")
    loss = str(idata.attrs.get("hierps_loss", "bernoulli"))
    check_estimand_loss(estimand, loss)
    posterior = idata["posterior"].to_dataset()
    alpha, beta = _coefficients(design, posterior)
    _check_units(design, idata)
    n_chains, n_draws = posterior.sizes["chain"], posterior.sizes["draw"]
    seeds = seed_sequence("random_seed", random_seed)
    store_weights = check_flag("store_weights", store_weights)
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
        **_base_weight_attrs(design),
        "uncertainty": uncertainty,
        "loss": loss,
        "ci_prob": CI_PROB,
        "random_seed": str(seeds.entropy),
        "created_at": datetime.now(UTC).isoformat(),
        "creation_library": "hierps",
        "creation_library_version": __version__,
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
            "description": {
                "att": "posterior-mean weight of each unit (treated 1, controls exp(eta))",
                "atc": "posterior-mean weight of each unit (treated exp(-eta), controls 1)",
                "ate": "posterior-mean weight of each unit (treated 1/pi, controls 1/(1-pi))",
            }[estimand]
            + ("; times the base weight" if design.base_weights is not None else ""),
        },
    )
    if design.outcome is not None:
        group_name, overall_name = EFFECT_NAMES[estimand]
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
        warn_inestimable(design, estimand, _unstable_groups(design, computed["effect"]))
    return PosteriorResult(design, tree, estimand=estimand, uncertainty=uncertainty)


def _check_units(design: Design, idata: xr.DataTree) -> None:
    """The posterior has no unit dimension; the sampled data, when stored, must be the design's."""
    if "constant_data" not in idata.children or "group_index" not in idata["constant_data"]:
        return
    codes = np.asarray(idata["constant_data"]["group_index"].values)
    if codes.shape != design.group_codes.shape or not np.array_equal(codes, design.group_codes):
        raise ArgumentError(
            f"the posterior was sampled on {codes.size} units in another arrangement than the "
            f"design's {design.n_units}: it belongs to other data"
        )


def _coefficients(design: Design, posterior: xr.Dataset) -> tuple[np.ndarray, np.ndarray | None]:
    """``alpha`` and ``beta`` as arrays, after checking they belong to this design."""
    if "alpha" not in posterior:
        raise ArgumentError("the posterior has no 'alpha'; was it sampled from hierps' model?")
    groups = [str(group) for group in posterior["alpha"]["group"].values]
    if groups != [str(group) for group in design.groups]:
        raise ArgumentError(
            "the posterior's groups differ from the design's: it was sampled on other data"
        )
    alpha = posterior["alpha"].transpose("chain", "draw", "group").to_numpy()
    if not design.unit_names:
        return alpha, None
    if "beta" not in posterior:
        raise ArgumentError("the posterior has no 'beta' but the design has unit covariates")
    covariates = [str(name) for name in posterior["beta"]["unit_covariate"].values]
    if covariates != list(design.unit_names):
        raise ArgumentError(
            f"the posterior's unit covariates {covariates} differ from the design's "
            f"{list(design.unit_names)}"
        )
    beta = posterior["beta"].transpose("chain", "draw", "group", "unit_covariate").to_numpy()
    return alpha, beta


def unit_weights(eta: np.ndarray, treatment: np.ndarray, estimand: str) -> np.ndarray:
    """Every unit's weight from its linear predictor ``η = logit π`` (any leading axes).

    ATT: treated 1, controls the odds ``exp(η)``. ATC: treated ``(1 − π)/π = exp(−η)``,
    controls 1. ATE: treated ``1/π = 1 + exp(−η)``, controls ``1/(1 − π) = 1 + exp(η)``.
    """
    treated = treatment == 1
    # Only the arm that uses exp(±η) evaluates it: the other arm's η may be large enough to
    # overflow without meaning anything.
    if estimand == "att":
        return np.where(treated, 1.0, np.exp(np.where(treated, 0.0, eta)))
    if estimand == "atc":
        return np.where(treated, np.exp(-np.where(treated, eta, 0.0)), 1.0)
    return 1.0 + np.exp(np.where(treated, -eta, eta))


@dataclass(frozen=True)
class _Cells:
    """The units split into cells of equal weight in every draw: (covariate pattern, arm).

    A draw's weight depends on a unit only through its group, covariate row and arm, so the
    per-draw work runs over cells (learning mindsets: about 2,700 for 10,391 units). Cells
    are sorted by group, and ``unit_order`` sorts the units by cell, so every sum over a
    cell's units or a group's cells is a sum over a contiguous run.
    """

    pattern: np.ndarray  # (c,) the covariate pattern of each cell (see hierps.pymc_model.compress)
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
    rng: np.random.Generator,
    cells: _Cells,
    outcome: np.ndarray,
    n_draws: int,
    base: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, Callable[[], np.ndarray]]:
    """Bayesian-bootstrap unit weights of ``n_draws`` draws, summed over each cell.

    Dirichlet(1, …, 1) weights within each group, scaled to sum to the group's size (all
    ones is the plain estimate): normalized standard exponentials. Returns each cell's sum
    of the weights and of the weights times the outcome, ``(n_draws, c)`` each, and a
    function giving the weights of every unit ``(n_draws, n)`` (for storing them).
    """
    exponential = rng.standard_exponential((n_draws, len(cells.unit_order)))
    # The Dirichlet scale comes from the bootstrap weights alone; base weights multiply them.
    group_total = np.add.reduceat(
        np.add.reduceat(exponential, cells.unit_starts, axis=1), cells.group_starts, axis=1
    )
    group_size = np.add.reduceat(cells.units, cells.group_starts)
    scale = (group_size / group_total)[:, cells.group]  # (n_draws, c)
    based = exponential if base is None else exponential * base[cells.unit_order]
    mass = np.add.reduceat(based, cells.unit_starts, axis=1)
    outcome_mass = np.add.reduceat(based * outcome[cells.unit_order], cells.unit_starts, 1)

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

    base = design.unit_weights
    cell_mass = np.bincount(cells.of_unit, weights=base, minlength=n_cells)
    if design.outcome is not None:
        outcome_total = np.bincount(cells.of_unit, weights=base * design.outcome, minlength=n_cells)
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
                rng, cells, design.outcome, eta.shape[0], design.base_weights
            )
            if store_weights:
                out["bootstrap"].append(bootstrap_weights())
        else:
            mass, outcome_mass = cell_mass, outcome_total
        effects = effects_from_sums(
            treated_weight=arm_sums(weights * mass, 1),
            treated_total=arm_sums(weights * outcome_mass, 1),
            control_weight=arm_sums(weights * mass, 0),
            control_total=arm_sums(weights * outcome_mass, 0),
        )
        if estimand == "att":
            group_weight = effects["treated_weight"]
        elif estimand == "atc":
            group_weight = effects["control_weight"]
        else:
            # The ATE weighs each group by its (bootstrap, base-weighted) size; without base
            # weights the Dirichlet scaling keeps it at the group's number of units.
            group_weight = arm_sums(np.broadcast_to(mass, weights.shape), 0) + arm_sums(
                np.broadcast_to(mass, weights.shape), 1
            )
        out["effect"].append(effects["catt"])
        out["overall"].append(att_from_catt(effects["catt"], group_weight))
        out["treated"].append(effects["treated_weight"])
        out["control"].append(effects["control_weight"])
    if not np.all(np.isfinite(weight_total)):
        warn(
            "some posterior draws give infinite weights (exp(eta) overflowed); the posterior "
            "has extreme propensities — check overlap and the prior scales"
        )
    result = {key: np.concatenate(parts) for key, parts in out.items() if parts}
    # Unit weights are analysis weights, as in MAP mode: base weight times balancing weight.
    result["mean_weight"] = (weight_total / n_draws)[cells.of_unit] * base
    result["weight_draws"] = result.pop("weights", None)
    if result["weight_draws"] is not None:
        result["weight_draws"] = result["weight_draws"] * base
    result["bootstrap_draws"] = result.pop("bootstrap", None)
    return result


def _base_weight_attrs(design: Design) -> dict[str, str]:
    if design.base_weights is None:
        return {}
    return {
        "base_weights": design.roles.weights or "",
        "likelihood": (
            "pseudo-likelihood: each unit's Bernoulli log-likelihood times its base weight, so "
            "the posterior is a pseudo-posterior (its spread is not a sampling distribution)"
        ),
    }


def _unstable_groups(design: Design, effect: np.ndarray) -> dict[int, float]:
    """Groups with both arms whose effect is NaN in some draws (weights under- or overflowed),
    with the share of draws concerned."""
    n_treated = design.treated_per_group
    both_arms = (n_treated > 0) & (design.units_per_group - n_treated > 0)
    share = np.mean(~np.isfinite(effect), axis=0)
    return {int(j): float(share[j]) for j in np.flatnonzero(both_arms & (share > 0))}
