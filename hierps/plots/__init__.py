"""Figures of a hierps analysis, in one matplotlib style.

Owns every figure: love plots, CATT forest plots, MAP against posterior, the pooling path, weight
distributions, and the sampler trace (drawn by ArviZ). Plots draw results computed elsewhere;
none computes an estimand draw by draw. Importing this package imports matplotlib.
"""

from hierps.plots._all import (
    COLORS,
    STYLE,
    plot_catt,
    plot_love,
    plot_map_vs_posterior,
    plot_pooling_path,
    plot_trace,
    plot_weights,
    style,
)

__all__ = [
    "COLORS",
    "STYLE",
    "plot_catt",
    "plot_love",
    "plot_map_vs_posterior",
    "plot_pooling_path",
    "plot_trace",
    "plot_weights",
    "style",
]
