"""The ``hierps`` command: reads a model file, calls the library, writes and prints results.

Every error the library raises on purpose ends the command with one line on stderr and the
exit code of its class (:data:`EXIT_CODES`, listed by ``hierps --help``). ``hierps fit``
writes into a temporary directory beside ``--out`` and moves it into place only when every
file is written, so ``--out`` always holds one complete run; SIGINT or SIGTERM leave it as
it was, print one line and exit with 130.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

#: Exit code of each outcome, most specific error class first (a subclass before its base).
EXIT_CODES: tuple[tuple[str, int, str], ...] = (
    ("ConvergenceError", 1, "the fit did not converge"),
    ("SpecError", 2, "the model file cannot be read or breaks the schema (2 also: usage)"),
    ("DataError", 3, "the data cannot be used as the model file says"),
    ("FormulaError", 4, "a formula cannot be parsed or names unusable terms"),
    ("ArgumentError", 5, "a setting is out of range or of the wrong type"),
    ("ResultFileError", 6, "a result file is missing, truncated or not hierps'"),
    ("HierpsError", 7, "any other error hierps raises on purpose"),
    ("internal error", 70, "an unexpected failure (a bug: please report it)"),
    ("interrupted", 130, "SIGINT or SIGTERM; --out keeps the previous output"),
)
EXIT_BAD_INPUT = 2
EXIT_FAILED_FIT = 1
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
#: What an output directory may hold: the files ``hierps fit`` writes (and its marker).
OUTPUT_MARKER = ".hierps-output"
_OUTPUT_NAMES = {
    OUTPUT_MARKER,
    "result.nc",
    "weights.csv",
    "catt.csv",
    "balance.csv",
    "report.md",
    "figures",
}

_HELP = "\n\n".join(
    [
        "Hierarchical propensity scores for multilevel observational studies.",
        "Exit codes (one per error class; the message is one line on stderr):",
        *[f"{code:>3}  {name}: {meaning}" for name, code, meaning in EXIT_CODES],
        "  0  success",
    ]
)

app = typer.Typer(
    help=_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console(highlight=False)
errors = Console(stderr=True, soft_wrap=True, highlight=False)  # whole lines for grep


def _say(console_: Console, label: str, style: str, message: str) -> None:
    """Print ``label: message`` with the message verbatim (markup escaped, one line)."""
    console_.print(f"[{style}]{label}:[/{style}] {escape(str(message))}", soft_wrap=True)


def _exit_code(error: BaseException) -> tuple[int, str]:
    """The exit code and label of an error: that of its most specific listed class."""
    from hierps import exceptions as ex
    from hierps.workflow.spec import SpecError

    classes = (
        (ex.ConvergenceError, EXIT_FAILED_FIT),
        (SpecError, 2),
        (ex.DataError, 3),
        (ex.FormulaError, 4),
        ((ex.ArgumentError, ex.ArgumentTypeError), 5),
        (ex.ResultFileError, 6),
        (ex.HierpsError, 7),
    )
    for cls, code in classes:
        if isinstance(error, cls):
            return code, "fit failed" if code == EXIT_FAILED_FIT else "error"
    return EXIT_INTERNAL, "internal error"


class _Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during a command, raised so that the same cleanup runs."""


@contextmanager
def _exit_codes(out: Path | None = None) -> Iterator[dict]:
    """Map the library's errors onto the command's exit codes, with a one-line message.

    The yielded dict's ``committed`` entry tells an interruption message whether ``out``
    already holds the new run.
    """
    state = {"committed": False}

    def on_signal(signum, frame) -> None:
        raise _Interrupted

    previous = {
        number: signal.signal(number, on_signal) for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield state
    except KeyboardInterrupt:
        if out is None:
            where = ""
        elif state["committed"]:
            where = f"; {out} holds the completed new output"
        else:
            where = f"; {out} left as it was"
        errors.print(f"interrupted{escape(where)}", markup=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except typer.Exit:
        raise
    except Exception as error:
        code, label = _exit_code(error)
        if code == EXIT_INTERNAL:
            message = f"{type(error).__name__}: {error}"
        else:
            message = str(error)
        _say(errors, label, "bold red", message)
        raise typer.Exit(code) from None
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def _staged_output(out: Path, state: dict) -> Iterator[Path]:
    """A temporary directory beside ``out`` that replaces ``out`` once everything is written.

    The swap runs with SIGINT and SIGTERM held back, so an interruption leaves either the
    previous output or the new one, never a mixture.
    """
    from hierps.exceptions import ArgumentError

    if out.exists() and not out.is_dir():
        raise ArgumentError(f"--out {out} is a file; give a directory")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _OUTPUT_NAMES)
        if foreign and not (out / OUTPUT_MARKER).exists():
            raise ArgumentError(
                f"--out {out} holds files hierps did not write ({', '.join(foreign[:5])}); "
                f"give a new or an earlier output directory"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    # Named before it exists, so an interruption at any point after can remove it.
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        staging.mkdir()
        yield staging
        (staging / OUTPUT_MARKER).write_text("written by hierps fit\n")
    except BaseException:
        # A second signal must not cut the clean-up short.
        ignored = {
            sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        shutil.rmtree(staging, ignore_errors=True)
        for sig, handler in ignored.items():
            signal.signal(sig, handler)
        raise
    retired = out.parent / f".{out.name}.previous-{os.getpid()}"
    # Signals that arrive during the swap are held and delivered after it. Handlers, not a
    # thread's signal mask: the interpreter runs handlers in the main thread even when another
    # thread (the sampler's, BLAS's) is the one the signal reached.
    pending: list[int] = []
    held = [signal.SIGINT, signal.SIGTERM]
    previous = {
        sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in held
    }
    try:
        if out.exists():
            os.rename(out, retired)
        os.rename(staging, out)
        state["committed"] = True
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            signal.raise_signal(pending[0])


def _print_version(value: bool) -> None:
    if value:
        from hierps._version import __version__

        console.print(f"hierps {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
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
            f"CATT {escape(str(group))} (n1={int(values['n_treated'])})",
            values["estimate"],
            summary,
            true_value,
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
        _say(console, "warning", "yellow", message)


def _fit_into(spec, out: Path, sample: bool | None, state: dict):
    with _staged_output(out, state) as staging:
        result = _run(spec, staging, sample)
    result.files = [out / path.relative_to(staging) for path in result.files]
    return result


@app.command()
def demo(
    out: Path = typer.Option(Path("results/demo"), help="Where to write the report."),
    sample: bool = typer.Option(True, help="Also sample the posterior with NUTS."),
    seed: int = typer.Option(1, help="Seed of the samplers (the simulated study is fixed)."),
) -> None:
    """Simulate a multi-site study with known effects, fit MAP and posterior, compare to truth."""
    with _exit_codes(out) as state:
        from hierps.workflow.spec import demo_spec

        spec = demo_spec()
        update = {"posterior": spec.posterior.model_copy(update={"random_seed": seed})}
        if spec.pooling is not None:
            update["pooling"] = spec.pooling.model_copy(update={"random_seed": seed})
        spec = spec.model_copy(update=update)
        result = _fit_into(spec, out, sample, state)
        console.print(f"[bold]{escape(spec.description)}[/bold]")
        console.print(escape(result.model.summary()))
        _print_results(result)
        console.print(f"report: {escape(str(out / 'report.md'))}")


@app.command()
def fit(
    model_file: Path = typer.Argument(..., help="A model file (TOML)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory."),
    sample: bool | None = typer.Option(
        None, help="Sample the posterior (default: the file's posterior.enabled)."
    ),
) -> None:
    """Fit a model file and write result.nc, CSV tables, figures and report.md to OUT.

    OUT is replaced as a whole once every file is written: an interrupted or failed run
    leaves the previous output untouched.
    """
    with _exit_codes(out) as state:
        from hierps.workflow.spec import read_spec

        spec = read_spec(model_file)
        result = _fit_into(spec, out, sample, state)
        _print_results(result)
        console.print(
            f"wrote {len(result.files)} files to {escape(str(out))}; report: "
            f"{escape(str(out / 'report.md'))}"
        )


@app.command()
def check(model_file: Path = typer.Argument(..., help="A model file (TOML).")) -> None:
    """Validate a model file and its data without fitting: the checks ``fit`` runs first.

    Reads the data, checks every value of the columns the file names, the hyperparameters
    and the balance formulas; prints the design and any warning, and exits non-zero with
    the problem named when something is wrong.
    """
    with _exit_codes():
        from hierps.workflow.analysis import check_spec
        from hierps.workflow.spec import read_spec

        spec = read_spec(model_file)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if spec.data.engine == "dask":
                from hierps.scale.cluster import dask_client

                with dask_client(spec.data.scheduler):
                    model = check_spec(spec)
            else:
                model = check_spec(spec)
        console.print(f"[green]{escape(str(model_file))}: valid[/green]")
        console.print(escape(model.summary()))
        from hierps.exceptions import HierpsWarning

        for warning in caught:
            if issubclass(warning.category, HierpsWarning):
                _say(console, "warning", "yellow", str(warning.message))


if __name__ == "__main__":
    sys.exit(app())
