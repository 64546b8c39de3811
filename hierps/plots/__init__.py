"""Figures of a hierps analysis, in one matplotlib style.

Owns every figure: love plots, CATT forest plots, MAP against posterior, the pooling path, weight
distributions, and the sampler trace (drawn by ArviZ). Plots draw results computed elsewhere;
none computes an estimand draw by draw. The calibration plot draws the posterior
predictive table of :func:`hierps.calibration`. Importing this package imports matplotlib.
"""

from hierps.plots.balance import plot_love
from hierps.plots.calibration import plot_calibration
from hierps.plots.diagnostics import plot_trace
from hierps.plots.effects import plot_catt, plot_map_vs_posterior
from hierps.plots.pooling import plot_pooling_path, plot_weights
from hierps.plots.style import COLORS, STYLE, style

__all__ = [
    "COLORS",
    "STYLE",
    "plot_calibration",
    "plot_catt",
    "plot_love",
    "plot_map_vs_posterior",
    "plot_pooling_path",
    "plot_trace",
    "plot_weights",
    "style",
]
