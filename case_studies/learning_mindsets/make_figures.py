"""MAP-side figures of the learning-mindsets case study (students in 76 schools).

Fits the hierarchical propensity model's MAP balancing weights on the ACIC 2018 synthetic
learning-mindsets data, prints the balance table, and writes into ``figures/``:

- ``love_map.png``: |SMD| before/after weighting, globally and in the worst school;
- ``catt_map.png``: the school CATTs of the MAP weights;
- ``pooling_path.png``: global and within-school balance against ESS along sigma_beta;
- ``weights_map.png``: the largest weight share and the ESS of every school.

Run from anywhere: ``python case_studies/learning_mindsets/make_figures.py``.

The data were simulated from a model fitted to the National Study of Learning Mindsets and
may be used only to evaluate methods for treatment effects; cite Yeager et al. (2019),
*Nature* 573, 364–369 (see ``data/README.md``).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from rich.console import Console

import hierps
from hierps.diagnostics import balance_table
from hierps.exceptions import HierpsWarning
from hierps.plots import plot_catt, plot_love, plot_pooling_path, plot_weights

FIGURES = Path(__file__).resolve().parent / "figures"
#: The default prior scale of the school slopes (one SD of a standardized covariate on the
#: logit scale); the pooling-path figure shows where it sits between the two extremes.
SIGMA_BETA = 1.0


def main() -> None:
    console = Console(width=110)
    data = hierps.datasets.load_learning_mindsets()
    model = hierps.Model(
        data,
        treatment="Z",
        group="schoolid",
        outcome="Y",
        unit_covariates=["S3", "C1", "C2", "C3"],
        group_covariates=["X1", "X2", "X3", "X4", "X5"],
        categorical=["C1"],
    )
    console.print(model.summary())

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", HierpsWarning)
        fit = model.fit_map(sigma_beta=SIGMA_BETA)
    console.print(f"\n{fit}  ({(time.perf_counter() - start) * 1000:.0f} ms)")
    for warning in caught:
        console.print(f"[yellow]warning:[/yellow] {warning.message}")

    table = balance_table(fit)
    console.print(table)
    path = hierps.pooling_path(model)

    FIGURES.mkdir(exist_ok=True)
    figures = {
        "love_map": plot_love(table)[0],
        "catt_map": plot_catt(fit, sort_by="estimate")[0],
        "pooling_path": plot_pooling_path(path, chosen=SIGMA_BETA)[0],
        "weights_map": plot_weights(table)[0],
    }
    for name, fig in figures.items():
        target = FIGURES / f"{name}.png"
        fig.savefig(target, dpi=150)
        plt.close(fig)
        console.print(f"wrote {target}")


if __name__ == "__main__":
    main()
