"""hierps: hierarchical propensity scores for multilevel observational studies.

One PyMC model, two modes: the calibrated-loss mode gives balancing weights (MAP), the
Bernoulli posterior carries propensity uncertainty into group and overall effects.

The public names below are loaded on first use, so ``import hierps`` stays cheap: PyMC, Bambi,
matplotlib and SciPy's optimizers are imported only when a model is built, sampled or plotted.
``docs/architecture.md`` maps the subpackages.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hierps._version import __version__
from hierps.exceptions import ConvergenceError, DataError, FormulaError, HierpsError, HierpsWarning

# Public name -> module that defines it.
_LAZY = {
    "Model": "hierps.model",
    "build_pymc": "hierps.pymc_model",
    "MapResult": "hierps.calibrated.fit",
    "fit_map": "hierps.calibrated.fit",
    "pooling_path": "hierps.calibrated.path",
    "PosteriorResult": "hierps.posterior.result",
    "sample": "hierps.posterior.run",
    "calibration": "hierps.posterior.checks",
    "sample_prior_predictive": "hierps.posterior.checks",
    "BalanceTable": "hierps.balance.table",
    "overlap": "hierps.balance.overlap",
    "distribution_balance": "hierps.balance.distribution",
    "balance_table": "hierps.balance.table",
    "BalanceComparison": "hierps.balance.weightings",
    "weights_result": "hierps.balance.weightings",
    "Diagnosis": "hierps.mcmc.diagnosis",
    "diagnose": "hierps.mcmc.diagnosis",
    "OutcomeModel": "hierps.effects.outcome",
    "fit_outcome_model": "hierps.effects.outcome",
    "augment": "hierps.effects.augment",
    "PooledCATT": "hierps.effects.catt_pooling",
    "pool_catt": "hierps.effects.catt_pooling",
    "compare": "hierps.effects.comparison",
    "sensitivity": "hierps.effects.sensitivity",
    "robustness_value": "hierps.effects.sensitivity",
    "sensitivity_r2": "hierps.effects.sensitivity_r2",
    "bias_contour": "hierps.effects.sensitivity_r2",
    "benchmark_r2": "hierps.effects.sensitivity_r2",
    "Constraints": "hierps.natstrat.constraints",
    "generate_constraints": "hierps.natstrat.constraints",
    "stand": "hierps.natstrat.constraints",
    "ConstraintFit": "hierps.natstrat.weights",
    "constraint_weights": "hierps.natstrat.weights",
    "BalanceCheck": "hierps.natstrat.check",
    "check_balance": "hierps.natstrat.check",
    "OptimizeControlsResult": "hierps.natstrat.optimize",
    "optimize_controls": "hierps.natstrat.optimize",
    "SavedAnalysis": "hierps.workflow.storage",
    "load": "hierps.workflow.storage",
}
_SUBMODULES = ("datasets", "plots")

__all__ = [
    "BalanceCheck",
    "BalanceComparison",
    "BalanceTable",
    "ConstraintFit",
    "Constraints",
    "ConvergenceError",
    "DataError",
    "Diagnosis",
    "FormulaError",
    "HierpsError",
    "HierpsWarning",
    "MapResult",
    "Model",
    "OptimizeControlsResult",
    "OutcomeModel",
    "PooledCATT",
    "PosteriorResult",
    "SavedAnalysis",
    "__version__",
    "augment",
    "balance_table",
    "benchmark_r2",
    "bias_contour",
    "build_pymc",
    "calibration",
    "check_balance",
    "compare",
    "constraint_weights",
    "datasets",
    "diagnose",
    "distribution_balance",
    "fit_map",
    "fit_outcome_model",
    "generate_constraints",
    "load",
    "optimize_controls",
    "overlap",
    "plots",
    "pool_catt",
    "pooling_path",
    "robustness_value",
    "sample",
    "sample_prior_predictive",
    "sensitivity",
    "sensitivity_r2",
    "stand",
    "weights_result",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"hierps.{name}")
    else:
        raise AttributeError(f"module 'hierps' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # static analysers see the real names
    from hierps import datasets, plots
    from hierps.balance.distribution import distribution_balance
    from hierps.balance.overlap import overlap
    from hierps.balance.table import BalanceTable, balance_table
    from hierps.balance.weightings import BalanceComparison, weights_result
    from hierps.calibrated.fit import MapResult, fit_map
    from hierps.calibrated.path import pooling_path
    from hierps.effects.augment import augment
    from hierps.effects.catt_pooling import PooledCATT, pool_catt
    from hierps.effects.comparison import compare
    from hierps.effects.outcome import OutcomeModel, fit_outcome_model
    from hierps.effects.sensitivity import robustness_value, sensitivity
    from hierps.effects.sensitivity_r2 import benchmark_r2, bias_contour, sensitivity_r2
    from hierps.mcmc.diagnosis import Diagnosis, diagnose
    from hierps.model import Model
    from hierps.natstrat.check import BalanceCheck, check_balance
    from hierps.natstrat.constraints import Constraints, generate_constraints, stand
    from hierps.natstrat.optimize import OptimizeControlsResult, optimize_controls
    from hierps.natstrat.weights import ConstraintFit, constraint_weights
    from hierps.posterior.checks import calibration, sample_prior_predictive
    from hierps.posterior.result import PosteriorResult
    from hierps.posterior.run import sample
    from hierps.pymc_model import build_pymc
    from hierps.workflow.storage import SavedAnalysis, load
