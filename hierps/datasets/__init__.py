"""Example data and simulated studies.

Owns the data sets shipped inside the package (``data/``, each with its terms of use, read through
:mod:`importlib.resources` so they load from an installed wheel) and the simulator of multi-site
observational studies with known effects used by the demo, the tests and the validation study.
"""

from hierps.datasets.loaders import load_learning_mindsets, load_nh0506, terms
from hierps.datasets.simulate import SimulatedStudy, simulate_multisite

__all__ = [
    "SimulatedStudy",
    "load_learning_mindsets",
    "load_nh0506",
    "simulate_multisite",
    "terms",
]
