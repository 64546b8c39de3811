"""hierps: hierarchical propensity scores for multilevel observational studies.

One PyMC model, two modes: the calibrated-loss mode gives balancing weights (MAP), the
Bernoulli posterior carries propensity uncertainty into group and overall effects.
Plots live in :mod:`hierps.plots`; PyMC is imported only when a model is built or sampled.
"""

from hierps import datasets
from hierps.api import Model
from hierps.augment import augment
from hierps.compare import compare
from hierps.constraint_weights import constraint_weights
from hierps.constraints import generate_constraints, stand
from hierps.diagnostics import balance_table, diagnose
from hierps.exceptions import ConvergenceError, DataError, FormulaError, HierpsError, HierpsWarning
from hierps.io import load
from hierps.pooling import pool_catt
from hierps.tuning import pooling_path

__version__ = "0.1.0"

__all__ = [
    "ConvergenceError",
    "DataError",
    "FormulaError",
    "HierpsError",
    "HierpsWarning",
    "Model",
    "augment",
    "balance_table",
    "compare",
    "constraint_weights",
    "datasets",
    "diagnose",
    "generate_constraints",
    "load",
    "pool_catt",
    "pooling_path",
    "stand",
]
