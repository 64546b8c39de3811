"""hierps: hierarchical propensity scores for multilevel observational studies.

One PyMC model, two modes: the calibrated-loss mode gives balancing weights (MAP), the
Bernoulli posterior carries propensity uncertainty into group and overall effects.
"""

from hierps import datasets
from hierps.api import Model
from hierps.constraint_weights import constraint_weights
from hierps.constraints import generate_constraints, stand
from hierps.exceptions import ConvergenceError, DataError, FormulaError, HierpsError, HierpsWarning
from hierps.tuning import pooling_path

__version__ = "0.1.0"

__all__ = [
    "ConvergenceError",
    "DataError",
    "FormulaError",
    "HierpsError",
    "HierpsWarning",
    "Model",
    "constraint_weights",
    "datasets",
    "generate_constraints",
    "pooling_path",
    "stand",
]
