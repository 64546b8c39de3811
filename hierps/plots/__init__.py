"""Figures of a hierps analysis, in one matplotlib style.

Owns every figure: love plots (one weighting or several), CATT forest plots, MAP against
posterior, the pooling path, weight distributions, sensitivity bounds, overlap, the calibration
plot (the posterior predictive table of :func:`hierps.calibration`) and the sampler trace (drawn
by ArviZ). Plots draw results computed elsewhere; none computes an estimand draw by draw.
Importing this package imports matplotlib.
"""

from hierps.plots.balance import plot_love
from hierps.plots.calibration import plot_calibration
from hierps.plots.checks import plot_bias_contour, plot_overlap, plot_sensitivity
from hierps.plots.diagnostics import plot_trace
from hierps.plots.effects import plot_catt, plot_map_vs_posterior
from hierps.plots.pooling import plot_pooling_path, plot_weights
from hierps.plots.style import COLORS, STYLE, style

__all__ = [
    "COLORS",
    "STYLE",
    "plot_bias_contour",
    "plot_calibration",
    "plot_catt",
    "plot_love",
    "plot_map_vs_posterior",
    "plot_overlap",
    "plot_pooling_path",
    "plot_sensitivity",
    "plot_trace",
    "plot_weights",
    "style",
]
