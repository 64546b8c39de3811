"""The hyperparameters of the hierarchical propensity model: names, defaults, checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hierps.exceptions import ArgumentError, ArgumentTypeError

__all__ = ["HYPERPARAMETERS", "MapHyperparameters", "check_fixed", "given_scales"]

#: The names users may fix, with what each scales.
HYPERPARAMETERS: dict[str, str] = {
    "sigma_intercept": "prior SD of the overall intercept a0 (global sum-to-n1 balance)",
    "sigma_gamma": "prior SD of the group-covariate coefficients gamma (group-level balance)",
    "sigma_alpha": "SD of the group intercepts around a0 + v'gamma (per-group sum-to-n1j)",
    "sigma_mu_beta": "prior SD of the mean slopes mu_beta (global covariate balance)",
    "sigma_beta": "SD of the group slopes around mu_beta (within-group covariate balance)",
}

#: Scales that are fixed numbers unless the user sets them (no hyperprior).
FIXED_SCALE_DEFAULTS: dict[str, float] = {
    "sigma_intercept": 2.5,
    "sigma_gamma": 1.0,
    "sigma_mu_beta": 1.0,
}

#: Half-normal scales of the hyperpriors of the group-level SDs in posterior mode.
HYPERPRIOR_SCALES: dict[str, float] = {"sigma_alpha": 1.0, "sigma_beta": 1.0}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def check_fixed(fixed: Mapping[str, object], n_varying: int) -> dict[str, float | np.ndarray]:
    """Validate user-fixed hyperparameters: known names, positive finite numbers.

    ``sigma_beta`` may be one number or one per varying slope.
    """
    checked: dict[str, float | np.ndarray] = {}
    for name, value in fixed.items():
        if name not in HYPERPARAMETERS:
            valid = ", ".join(HYPERPARAMETERS)
            raise ArgumentTypeError(f"unknown hyperparameter {name!r}; valid names are {valid}")
        if value is None:
            continue
        if isinstance(value, str | bytes | bool | np.bool_) or not (
            _is_number(value) or isinstance(value, Sequence | np.ndarray)
        ):
            also = " (or 'auto' in MAP mode)" if name in ("sigma_alpha", "sigma_beta") else ""
            raise ArgumentTypeError(
                f"{name} must be a positive number{also}, not {type(value).__name__} {value!r}"
            )
        if not _is_number(value) and not all(_is_number(item) for item in np.ravel(value)):
            raise ArgumentTypeError(f"{name} must hold positive numbers, not {value!r}")
        array = np.asarray(value, dtype=float)
        if name == "sigma_beta" and array.ndim == 1:
            if array.shape != (n_varying,):
                raise ArgumentError(
                    f"sigma_beta has {array.shape[0]} values but the model has {n_varying} "
                    f"varying slopes"
                )
        elif array.ndim != 0:
            raise ArgumentError(f"{name} must be a number, not {value!r}")
        if not np.all(np.isfinite(array)) or np.any(array <= 0):
            raise ArgumentError(f"{name} must be positive and finite, not {value!r}")
        checked[name] = float(array) if array.ndim == 0 else array
    return checked


def given_scales(
    sigma_alpha: object = None,
    sigma_beta: object = None,
    sigma_mu_beta: object = None,
    sigma_gamma: object = None,
    sigma_intercept: object = None,
) -> dict[str, object]:
    """The prior scales a caller set, by name; ``None`` (keep the default) left out."""
    given = {
        "sigma_alpha": sigma_alpha,
        "sigma_beta": sigma_beta,
        "sigma_mu_beta": sigma_mu_beta,
        "sigma_gamma": sigma_gamma,
        "sigma_intercept": sigma_intercept,
    }
    return {name: value for name, value in given.items() if value is not None}


@dataclass(frozen=True)
class MapHyperparameters:
    """The fixed prior scales of a MAP fit (the calibrated-loss mode).

    Defaults: ``sigma_alpha = sigma_beta = 1`` (one standard deviation of the standardized
    covariates on the logit scale), ``sigma_mu_beta = sigma_gamma = 1``,
    ``sigma_intercept = 2.5``. Larger ``sigma_beta`` buys more within-group balance at the
    cost of effective sample size; :func:`hierps.pooling_path` shows the trade-off, and
    ``fit_map(sigma_alpha="auto", sigma_beta="auto")`` estimates both scales by empirical
    Bayes (``docs/estimands.md``; not the default, since in simulations σ_β = 1 estimates the
    group effects better).
    """

    sigma_intercept: float = FIXED_SCALE_DEFAULTS["sigma_intercept"]
    sigma_gamma: float = FIXED_SCALE_DEFAULTS["sigma_gamma"]
    sigma_alpha: float = 1.0
    sigma_mu_beta: float = FIXED_SCALE_DEFAULTS["sigma_mu_beta"]
    sigma_beta: float | Sequence[float] | np.ndarray = 1.0

    @classmethod
    def from_user(cls, n_varying: int, **values: object) -> MapHyperparameters:
        return cls(**check_fixed(values, n_varying))  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, float | np.ndarray]:
        return {name: getattr(self, name) for name in HYPERPARAMETERS}

    def sigma_beta_vector(self, n_varying: int) -> np.ndarray:
        return np.broadcast_to(np.asarray(self.sigma_beta, dtype=float), (n_varying,)).copy()
