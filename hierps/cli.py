"""The ``hierps`` command: a thin layer that reads input, calls the library, prints results."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Hierarchical propensity scores for multilevel observational studies.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


@app.callback()
def main() -> None:
    """Hierarchical propensity scores for multilevel observational studies."""


@app.command()
def demo(
    seed: int = typer.Option(2026, help="Seed of the simulated study."),
    n_groups: int = typer.Option(30, help="Number of schools."),
) -> None:
    """Simulate a multi-site study with known effects and compare MAP estimates to the truth."""
    import hierps

    study = hierps.datasets.simulate_multisite(n_groups=n_groups, seed=seed)
    model = hierps.Model(
        study.data,
        treatment=study.treatment,
        group=study.group,
        outcome=study.outcome,
        unit_covariates=study.unit_covariates,
        group_covariates=study.group_covariates,
        categorical=study.categorical,
    )
    console.print(f"[bold]Simulated study[/bold] (hierps.datasets.simulate_multisite, seed={seed})")
    console.print(model.summary())

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = model.fit_map()
    elapsed = time.perf_counter() - start
    console.print(
        f"\n[bold]MAP balancing weights[/bold]: {fit.iterations} Newton iterations, "
        f"max |gradient| {fit.max_gradient:.1e}, {elapsed * 1000:.0f} ms"
    )
    for warning in caught:
        console.print(f"[yellow]warning:[/yellow] {warning.message}")

    balance = fit.balance()
    overall = balance[(balance["scope"] == "global") & (balance["covariate"] != "(intercept)")]
    within = balance[(balance["scope"] == "group") & (balance["covariate"] != "(intercept)")]
    table = Table(title="Balance: |standardized mean difference|")
    for column in ("", "before", "after"):
        table.add_column(column, justify="right")
    table.add_row(
        "global, max over covariates",
        f"{overall['smd_before'].abs().max():.3f}",
        f"{overall['smd_after'].abs().max():.3f}",
    )
    table.add_row(
        "within schools, mean",
        f"{within['smd_before'].abs().mean():.3f}",
        f"{within['smd_after'].abs().mean():.3f}",
    )
    console.print(table)

    catt = fit.catt.join(study.catt.rename("truth"))
    errors = catt["estimate"] - catt["truth"]
    table = Table(title="Effects on the treated: truth vs MAP estimate")
    for column in ("", "truth", "estimate", "error"):
        table.add_column(column, justify="right")
    table.add_row("ATT", f"{study.att:.3f}", f"{fit.att:.3f}", f"{fit.att - study.att:+.3f}")
    unweighted = _unweighted_att(study.data, study)
    table.add_row(
        "ATT, unweighted difference",
        f"{study.att:.3f}",
        f"{unweighted:.3f}",
        f"{unweighted - study.att:+.3f}",
    )
    shown = catt.sort_values("n_treated", ascending=False).head(8)
    for school, row in shown.iterrows():
        table.add_row(
            f"CATT {school} (n1={int(row['n_treated'])})",
            f"{row['truth']:.3f}",
            f"{row['estimate']:.3f}",
            f"{row['estimate'] - row['truth']:+.3f}",
        )
    console.print(table)
    console.print(f"CATT RMSE over {len(catt)} schools: {np.sqrt(np.nanmean(errors**2)):.3f}")


def _unweighted_att(data: pd.DataFrame, study) -> float:
    per_group = data.groupby([study.group, study.treatment])[study.outcome].mean().unstack()
    treated = data[data[study.treatment] == 1].groupby(study.group).size()
    difference = per_group[1] - per_group[0]
    return float(np.average(difference.loc[treated.index], weights=treated))


if __name__ == "__main__":
    app()
