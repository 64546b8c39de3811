"""The ``hierps`` command: reads a model file, calls the library, writes and prints results.

Exit codes: 0 success, 2 bad input (the message says what and where), 1 a failed fit.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    help="Hierarchical propensity scores for multilevel observational studies.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True, soft_wrap=True)  # messages stay whole lines for grep

EXIT_BAD_INPUT = 2
EXIT_FAILED_FIT = 1


@contextmanager
def _exit_codes():
    """Map the library's errors onto the command's exit codes, with a one-line message."""
    from hierps.exceptions import ConvergenceError, HierpsError

    try:
        yield
    except ConvergenceError as error:
        errors.print(f"[bold red]fit failed:[/bold red] {escape(str(error))}")
        raise typer.Exit(EXIT_FAILED_FIT) from None
    except (HierpsError, FileNotFoundError, TypeError, ValueError) as error:
        errors.print(f"[bold red]bad input:[/bold red] {escape(str(error))}", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except Exception as error:  # any other failure is a failed fit, reported, not a traceback
        errors.print(
            f"[bold red]fit failed:[/bold red] {type(error).__name__}: {escape(str(error))}"
        )
        raise typer.Exit(EXIT_FAILED_FIT) from None


@app.callback()
def main() -> None:
    """Hierarchical propensity scores for multilevel observational studies."""


def _run(spec, out: Path | None, sample: bool | None):
    from hierps.mcmc.conventions import show_progress
    from hierps.workflow.analysis import run_analysis

    if show_progress(None):
        # The samplers draw their own progress bars, and rich allows one live display at a
        # time: print the steps instead of a spinner.
        return run_analysis(
            spec,
            out_dir=out,
            sample=sample,
            report=lambda message: console.print(f"[dim]{message} …[/dim]"),
        )
    with console.status("starting") as status:
        result = run_analysis(
            spec, out_dir=out, sample=sample, report=lambda message: status.update(message)
        )
    return result


def _print_results(result) -> None:
    fit, posterior, truth = result.map_fit, result.posterior, result.truth
    design = result.model.design
    console.print(
        f"MAP: {fit.iterations} Newton iterations, max |gradient| {fit.max_gradient:.1e}, "
        f"{result.timings['map'] * 1e3:.0f} ms"
    )
    if design.outcome is None:
        return
    table = Table(title="Effects on the treated")
    columns = ["", "MAP"]
    if posterior is not None:
        columns += ["posterior mean", "90% interval"]
    if truth is not None:
        columns += ["truth"]
    for column in columns:
        table.add_column(column, justify="right")

    def row(label, map_value, summary=None, true_value=None):
        cells = [label, f"{map_value:.3f}"]
        if posterior is not None:
            cells += (
                [f"{summary['mean']:.3f}", f"[{summary['lower']:.3f}, {summary['upper']:.3f}]"]
                if summary is not None
                else ["", ""]
            )
        if truth is not None:
            cells += [f"{true_value:.3f}" if true_value is not None else ""]
        table.add_row(*cells)

    att = None
    if posterior is not None:
        att = posterior.att
        att = att.iloc[0] if hasattr(att, "iloc") and att.ndim == 2 else att
    row("ATT", fit.att, att, truth.att if truth is not None else None)
    catt = fit.catt.sort_values("n_treated", ascending=False).head(10)
    for group, values in catt.iterrows():
        summary = posterior.catt.loc[group] if posterior is not None else None
        true_value = float(truth.catt.loc[group]) if truth is not None else None
        row(
            f"CATT {group} (n1={int(values['n_treated'])})", values["estimate"], summary, true_value
        )
    console.print(table)
    if truth is not None:
        error = fit.catt["estimate"] - truth.catt.reindex(fit.catt.index)
        line = f"CATT RMSE over {len(error)} groups: MAP {np.sqrt(np.nanmean(error**2)):.3f}"
        if posterior is not None:
            error = posterior.catt["mean"] - truth.catt.reindex(posterior.catt.index)
            lower, upper = posterior.catt["lower"], posterior.catt["upper"]
            true = truth.catt.reindex(posterior.catt.index)
            covered = ((lower <= true) & (true <= upper)).mean()
            line += (
                f", posterior mean {np.sqrt(np.nanmean(error**2)):.3f}; "
                f"90% intervals cover {covered:.0%} of the true CATTs"
            )
        console.print(line)
    for message in result.warnings[:5]:
        console.print(f"[yellow]warning:[/yellow] {message}")


@app.command()
def demo(
    out: Path = typer.Option(Path("results/demo"), help="Where to write the report."),
    sample: bool = typer.Option(True, help="Also sample the posterior with NUTS."),
    seed: int = typer.Option(1, help="Seed of the samplers (the simulated study is fixed)."),
) -> None:
    """Simulate a multi-site study with known effects, fit MAP and posterior, compare to truth."""
    with _exit_codes():
        from hierps.workflow.spec import demo_spec

        spec = demo_spec()
        update = {"posterior": spec.posterior.model_copy(update={"random_seed": seed})}
        if spec.pooling is not None:
            update["pooling"] = spec.pooling.model_copy(update={"random_seed": seed})
        spec = spec.model_copy(update=update)
        result = _run(spec, out, sample)
        console.print(f"[bold]{spec.description}[/bold]")
        console.print(result.model.summary())
        _print_results(result)
        console.print(f"report: {out / 'report.md'}")


@app.command()
def fit(
    model_file: Path = typer.Argument(..., help="A model file (TOML)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory."),
    sample: bool | None = typer.Option(
        None, help="Sample the posterior (default: the file's posterior.enabled)."
    ),
) -> None:
    """Fit a model file and write result.nc, CSV tables, figures and report.md to OUT."""
    with _exit_codes():
        from hierps.workflow.spec import read_spec

        spec = read_spec(model_file)
        result = _run(spec, out, sample)
        _print_results(result)
        console.print(f"wrote {len(result.files)} files to {out}; report: {out / 'report.md'}")


@app.command()
def check(model_file: Path = typer.Argument(..., help="A model file (TOML).")) -> None:
    """Validate a model file and its data without fitting."""
    with _exit_codes():
        from hierps.workflow.analysis import build_model
        from hierps.workflow.spec import load_data, read_spec

        spec = read_spec(model_file)
        frame, _ = load_data(spec)
        model = build_model(spec, frame)
        console.print(f"[green]{model_file}: valid[/green]")
        console.print(model.summary())


if __name__ == "__main__":
    sys.exit(app())
