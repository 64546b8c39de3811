"""Posterior mode: NUTS on the Bernoulli propensity model, then the effects draw by draw.

Everything lands in one ``xarray.DataTree``: the sampler's groups (``posterior``,
``sample_stats``, ``constant_data``, ``observed_data``) plus two derived groups,
``estimands`` (effects per draw, :mod:`hierps.posterior.draws`) and ``weights``
(posterior-mean weight of each unit).
"""

from __future__ import annotations

import json
import os

import numpy as np

from hierps.arguments import check_flag, check_probability, seed_sequence
from hierps.design.build import Design
from hierps.exceptions import ArgumentError, ArgumentTypeError, check_choice, warn
from hierps.mcmc.conventions import check_sampler, show_progress
from hierps.mcmc.diagnosis import diagnose
from hierps.posterior.checks import (
    add_log_likelihood,
    add_posterior_predictive,
    sample_prior_predictive,
)
from hierps.posterior.draws import check_estimand_loss, from_idata
from hierps.posterior.result import ESTIMANDS, UNCERTAINTIES, PosteriorResult
from hierps.pymc_model import LOSSES, build_pymc

__all__ = ["from_idata", "sample"]


def sample(
    design: Design,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    random_seed: int | None = None,
    sampler: str = "nutpie",
    loss: str = "bernoulli",
    uncertainty: str = "bayesian_bootstrap",
    estimand: str = "att",
    target_accept: float = 0.8,
    store_weights: bool = False,
    progressbar: bool | None = None,
    coding: str = "identified",
    checks: bool = True,
    prior_draws: int = 500,
    deviations: str = "normal",
    rank: int | None = None,
    **fixed: float,
) -> PosteriorResult:
    """Sample the propensity model with NUTS and compute the effects draw by draw.

    Parameters
    ----------
    design
        The validated design. An outcome is not needed to sample; without one the result
        holds the propensity posterior and the weights, and asking for effects raises.
    draws, tune, chains
        NUTS draws kept and tuning steps per chain, and the number of chains. Four chains
        (run side by side on the available CPUs) make R-hat a sharper check and give the
        group-level scales of a model with a many-level categorical a bulk ESS above 400
        (two chains: about 360 on learning mindsets with every covariate).
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
        the control weights are still ``exp(η)``. Fix ``sigma_alpha`` and ``sigma_beta`` with
        it (a warning says why): with their hyperpriors this posterior is improper wherever
        a group's arms separate. The calibrated loss is the ATT loss, so it
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
        and ``ate``. ``"atc"``: the treated are reweighted to the controls (``exp(−η)``,
        controls 1), giving group CATCs and the ATC (groups weighted by their controls);
        ``catc`` and ``atc``. With base weights in the model the likelihood is weighted (a
        pseudo-posterior, recorded in the attributes) and the Bayesian bootstrap multiplies
        the base weights.
    target_accept
        NUTS target acceptance rate; raise it (e.g. 0.95) when there are divergences.
    store_weights
        Also store every draw's unit weights as ``weights/weight_draws`` (chain, draw, obs)
        and, with the Bayesian bootstrap, the bootstrap weights as
        ``weights/bootstrap_weight`` (chain, draw, obs). That is
        ``8 × chains × draws × n`` bytes each, so it is off by default; the posterior-mean
        weight of every unit is always stored.
    progressbar
        Show the sampler's progress bar; ``None`` (default): when stderr is a terminal.
    coding
        How categorical covariates are parameterized (see :func:`hierps.pymc_model.build_pymc`):
        ``"identified"`` (default) samples only the coordinates the data identify, with one
        logit-scale ``sigma_beta`` per categorical, and mixes well; ``"full"`` samples a
        coefficient and a scale per level, whose flat sum only the prior pins down (slow
        mixing). With the same scales both give every propensity the same distribution.
    checks
        Add the groups the model checks read (Bernoulli loss only; see
        :mod:`hierps.posterior.checks`): ``log_likelihood`` per (group, covariate pattern)
        cell, so that ``az.loo`` and ``az.compare`` run, and ``posterior_predictive``
        (treated counts per group) for :func:`hierps.calibration`.
    prior_draws
        Number of draws of the prior and the prior predictive (groups ``prior`` and
        ``prior_predictive``; Bernoulli loss only); 0 leaves them out.
    deviations, rank
        The prior of the group slope deviations: ``"normal"`` (default), ``"laplace"``
        (sparse) or ``"low_rank"`` with ``rank`` factors; see
        :func:`hierps.pymc_model.build_pymc` and ``docs/posterior.md``.
    **fixed
        Hyperparameters fixed at a number (``sigma_alpha``, ``sigma_beta``,
        ``sigma_intercept``, ``sigma_gamma``, ``sigma_mu_beta``); see
        :func:`hierps.pymc_model.build_pymc`. ``sigma_alpha`` and ``sigma_beta`` left out get
        half-normal hyperpriors.

    Returns
    -------
    PosteriorResult

    Warns
    -----
    HierpsWarning
        Each problem :func:`hierps.diagnose` finds (divergences, R-hat, bulk/tail ESS, E-BFMI,
        tree depth; with the entries concerned and a suggested fix); groups whose effect
        cannot be estimated.
    """
    check_sampler(sampler)
    check_choice("loss", loss, LOSSES)
    check_choice("uncertainty", uncertainty, UNCERTAINTIES)
    check_choice("estimand", estimand, ESTIMANDS)
    check_estimand_loss(estimand, loss)
    for name, value in (("draws", draws), ("tune", tune), ("chains", chains)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ArgumentTypeError(f"{name} must be an integer, not {type(value).__name__}")
        if value < (0 if name == "tune" else 1):
            raise ArgumentError(f"{name} must be {'≥ 0' if name == 'tune' else '≥ 1'}, not {value}")
    target_accept = check_probability("target_accept", target_accept)
    store_weights = check_flag("store_weights", store_weights)
    if progressbar is not None:  # None: a progress bar when stderr is a terminal
        progressbar = check_flag("progressbar", progressbar)
    seeds = seed_sequence("random_seed", random_seed)
    if isinstance(prior_draws, bool) or not isinstance(prior_draws, int | np.integer):
        raise ArgumentTypeError(f"prior_draws must be an integer, not {type(prior_draws).__name__}")
    if prior_draws < 0:
        raise ArgumentError(f"prior_draws must be ≥ 0, not {prior_draws}")
    free_scales = [name for name in ("sigma_alpha", "sigma_beta") if name not in fixed]
    if loss == "calibrated" and free_scales:
        warn(
            f"loss='calibrated' with hyperpriors on {', '.join(free_scales)}: the generalized "
            f"posterior is improper wherever a group's treated and controls (quasi-)separate "
            f"(the loss is unbounded below there, and its growth outruns the half-normal "
            f"hyperprior), and the chains then stick; fix them at numbers, e.g. the MAP's "
            f"sigma_alpha=1.0, sigma_beta=1.0"
        )
    import pymc as pm

    # Build (and so validate the hyperparameters) before anything slow happens.
    structure = {"deviations": deviations, "rank": rank}
    pymc_model = build_pymc(design, loss=loss, coding=coding, **structure, **fixed)

    # The bootstrap draws from the seed sequence itself and the sampler from a child of it,
    # so from_idata(design, result.idata, random_seed=<the same seed>) repeats the bootstrap.
    # Children by position: the first seeds the sampler, as before the checks were added.
    sampler_seeds, predictive_seeds, prior_seeds = seeds.spawn(3)
    with pymc_model:
        idata = pm.sample(
            draws=draws,
            tune=tune,
            chains=chains,
            random_seed=int(sampler_seeds.generate_state(1)[0]),
            nuts_sampler=sampler,
            progressbar=show_progress(progressbar),
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
            "hierps_deviations": deviations,
            "hierps_rank": -1 if rank is None else int(rank),
        }
    )
    result = from_idata(
        design,
        idata,
        uncertainty=uncertainty,
        estimand=estimand,
        random_seed=seeds,
        store_weights=store_weights,
    )
    # With base weights the likelihood is a weighted pseudo-likelihood (a Potential): there is
    # no Bernoulli observation to predict or to leave out.
    observed = loss == "bernoulli" and design.base_weights is None
    if observed and checks:
        add_log_likelihood(design, result.idata)
        add_posterior_predictive(design, result.idata, np.random.default_rng(predictive_seeds))
    if observed and prior_draws:
        prior = sample_prior_predictive(
            design,
            draws=prior_draws,
            random_seed=np.random.default_rng(prior_seeds),
            coding=coding,
            **structure,
            **fixed,
        )
        for name in ("prior", "prior_predictive"):
            result.idata[name] = prior[name].to_dataset()
    # Judged with the effects in place, so the warnings are exactly what diagnose(result) and
    # the report say about this run.
    result.problems = diagnose(result).problems
    for message in result.problems:
        warn(message)
    return result


def _usable_cpus() -> int:
    """The number of CPUs this process may run on (its affinity mask, where there is one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
