"""Conventions declared once: interval probability, sample dims, thresholds, the sampler table.

Every result table, warning and report of hierps reads its defaults from here, so a threshold
changed here changes every verdict at once.
"""

from __future__ import annotations

import importlib.util
import sys

from hierps.exceptions import ArgumentError

__all__ = [
    "CI_PROB",
    "ESTIMAND_VARIABLES",
    "HYPERPARAMETER_NAMES",
    "MAX_RHAT",
    "MAX_RHAT_GROUP_LEVEL",
    "MIN_BFMI",
    "MIN_ESS_PER_CHAIN",
    "SAMPLERS",
    "SAMPLE_DIMS",
    "TREEDEPTH_STATS",
    "check_sampler",
    "show_progress",
]

#: Probability of every equal-tailed interval hierps reports (effects, SMDs, ESS).
CI_PROB = 0.9
#: The dims that index posterior draws.
SAMPLE_DIMS = ("chain", "draw")
#: Convergence thresholds (Vehtari et al. 2021; ArviZ's defaults): rank-normalized split R-hat,
#: bulk and tail ESS per chain, E-BFMI per chain.
MAX_RHAT = 1.01
#: R-hat threshold of entries with a ``group`` dim: with hundreds of them, the largest R-hat of
#: a healthy 2 × 1000-draw run exceeds 1.01 by Monte Carlo noise about one run in four.
MAX_RHAT_GROUP_LEVEL = 1.02
MIN_ESS_PER_CHAIN = 100
MIN_BFMI = 0.3
#: The propensity model's hyperparameters, as named in the PyMC model.
HYPERPARAMETER_NAMES = ("intercept", "sigma_alpha", "sigma_beta", "mu_beta", "gamma")
#: Variables of a result's ``estimands`` group that hold effects (group-level, overall).
ESTIMAND_VARIABLES = ("catt", "att", "cate", "ate")
#: Names the samplers give the "hit the maximum tree depth" statistic (PyMC's, nutpie's).
TREEDEPTH_STATS = ("reached_max_treedepth", "maxdepth_reached")

#: NUTS samplers hierps can run, with the packages each needs beyond PyMC.
SAMPLERS: dict[str, tuple[str, ...]] = {
    "nutpie": ("nutpie",),
    "pymc": (),
    "numpyro": ("numpyro", "jax"),
}


def check_sampler(sampler: object, allowed: tuple[str, ...] = tuple(SAMPLERS)) -> str:
    """Return ``sampler`` if it is one of ``allowed`` and its packages are installed.

    Raises
    ------
    ValueError
        If ``sampler`` is not one of ``allowed``.
    ImportError
        If a package it needs is missing (the message says what to install).
    """
    if sampler not in allowed:
        valid = ", ".join(repr(choice) for choice in allowed)
        raise ArgumentError(f"sampler={sampler!r} is not one of {valid}")
    missing = [name for name in SAMPLERS[sampler] if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"sampler={sampler!r} needs the package(s) {', '.join(missing)}, which are not "
            f"installed: pip install {' '.join(missing)} — or use sampler='nutpie' or 'pymc'"
        )
    return sampler


def show_progress(progressbar: bool | None) -> bool:
    """Whether a sampler shows its progress bar: as asked, else when stderr is a terminal.

    ``None`` (every default in hierps) follows PyMC's convention: a bar on an interactive
    terminal, quiet in logs, pipes, CI and tests. A Jupyter kernel's stderr is no terminal,
    so notebooks ask with ``progressbar=True``.
    """
    if progressbar is not None:
        return bool(progressbar)
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False
