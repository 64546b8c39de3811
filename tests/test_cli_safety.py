"""The command under stress: interrupted runs, failed runs, bad data files, verbatim messages.

Interruptions run the real command in a subprocess and signal it at several moments of a
run; whatever the moment, the output directory must hold one complete run (the previous one
or the new one), with nothing half-written beside it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import hierps
from hierps.workflow.cli import EXIT_CODES, OUTPUT_MARKER, app

MODEL = """
name = "small"
[data]
treatment = "z"
group = "school"
outcome = "y"
unit_covariates = ["x1", "x2"]
group_covariates = ["v1"]
[data.simulate]
n_groups = 8
group_size = [30, 60]
n_unit_covariates = 2
n_group_covariates = 1
seed = 4
[map]
sigma_beta = {sigma_beta}
pooling_path = [0.1, 0.3, 1.0, 3.0, 10.0]
[posterior]
enabled = false
"""
EXPECTED = {
    OUTPUT_MARKER,
    "result.nc",
    "weights.csv",
    "catt.csv",
    "balance.csv",
    "report.md",
    "figures",
    "overlap.csv",
    "balance_comparison.csv",
    "sensitivity.csv",
    "robustness.csv",
    "benchmarks_r2.csv",
}


def command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "hierps", *arguments]


def model_file(tmp_path: Path, sigma_beta: float, name: str) -> Path:
    path = tmp_path / name
    path.write_text(MODEL.format(sigma_beta=sigma_beta))
    return path


def run_of(out: Path) -> float:
    """The sigma_beta of the one complete run ``out`` holds (asserting that it is whole)."""
    assert {p.name for p in out.iterdir()} == EXPECTED
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "balance_comparison.png",
        "bias_contour.png",
        "catt.png",
        "love.png",
        "overlap.png",
        "pooling_path.png",
        "sensitivity.png",
        "weights.png",
    ]
    saved = hierps.load(out / "result.nc")
    weights = pd.read_csv(out / "weights.csv", index_col="obs")["map_weight"]
    np.testing.assert_allclose(weights.to_numpy(), saved.weights.to_numpy(), rtol=1e-12)
    catt = pd.read_csv(out / "catt.csv")
    assert len(catt) == len(saved.catt)
    sigma = float(saved.tree["map"].attrs["hyperparameter_sigma_beta"])
    assert "sigma_beta" in (out / "report.md").read_text()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert leftovers == []
    return sigma


def wait_for(process: subprocess.Popen, condition, timeout: float = 300.0) -> bool:
    """Poll until ``condition()`` holds (True) or the process ends (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            return False
        if condition():
            return True
        time.sleep(0.002)
    raise AssertionError("the moment never came")


def _loaded(process: subprocess.Popen, library: str):
    maps = Path(f"/proc/{process.pid}/maps")

    def loaded() -> bool:
        try:
            return library in maps.read_text()
        except OSError:  # the process has just ended
            return False

    return loaded


def staging(out: Path) -> list[Path]:
    return list(out.parent.glob(f".{out.name}.partial-*"))


def staged(out: Path, relative: str):
    return lambda: any((path / relative).exists() for path in staging(out))


MOMENTS = {
    # While the command's imports run: numpy is loaded (hierps' own __init__ does not load it).
    "while importing": lambda out: None,
    "staging directory made": lambda out: lambda: bool(staging(out)),
    "result.nc written": lambda out: staged(out, "result.nc"),
    "figures being drawn": lambda out: staged(out, "figures"),
    "report written": lambda out: staged(out, "report.md"),
}


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("interrupt")
    out = tmp_path / "out"
    done = subprocess.run(
        command("fit", str(model_file(tmp_path, 0.5, "a.toml")), "--out", str(out)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert run_of(out) == 0.5
    return tmp_path, out, {"sigma": 0.5}


@pytest.mark.parametrize(
    ("moment", "signal_number"),
    [
        ("while importing", signal.SIGINT),
        ("staging directory made", signal.SIGTERM),
        ("result.nc written", signal.SIGINT),
        ("figures being drawn", signal.SIGTERM),
        ("report written", signal.SIGINT),
    ],
)
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_an_interrupted_fit_leaves_one_complete_run(previous_run, moment, signal_number):
    tmp_path, out, _ = previous_run
    new_model = model_file(tmp_path, 2.0, "b.toml")
    process = subprocess.Popen(
        command("fit", str(new_model), "--out", str(out)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    condition = MOMENTS[moment](out) or _loaded(process, "_multiarray_umath")
    came = wait_for(process, condition)
    if came:
        process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=300)
    previous = previous_run[2]["sigma"]
    if moment in ("while importing", "staging directory made"):
        assert came and process.returncode == 130, stderr  # seconds before the end
    if process.returncode == 130:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("interrupted"), stderr
        assert "Traceback" not in stderr
        now = run_of(out)
        assert now == (2.0 if "holds the completed new output" in stderr else previous)
    else:  # the run finished before the signal arrived
        assert process.returncode == 0, stderr
        now = run_of(out)
        assert now == 2.0
    previous_run[2]["sigma"] = now


def test_a_failed_fit_leaves_the_previous_output(previous_run):
    tmp_path, out, state = previous_run
    failing = tmp_path / "failing.toml"
    failing.write_text(
        MODEL.format(sigma_beta=2.0).replace("[map]\n", "[map]\nmax_iterations = 1\n")
    )
    done = subprocess.run(
        command("fit", str(failing), "--out", str(out)), capture_output=True, text=True
    )
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "fit failed" in done.stderr
    assert run_of(out) == state["sigma"]


runner = CliRunner()


def data_model(tmp_path: Path, frame: pd.DataFrame, covariates: str = '["x1", "x2"]') -> Path:
    frame.to_csv(tmp_path / "data.csv", index=False)
    path = tmp_path / "model.toml"
    path.write_text(
        f'name = "csv"\n[data]\npath = "data.csv"\ntreatment = "z"\ngroup = "school"\n'
        f'outcome = "y"\nunit_covariates = {covariates}\n'
    )
    return path


def csv_frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 120
    return pd.DataFrame(
        {
            "school": np.repeat([f"s{j}" for j in range(6)], n // 6),
            "z": np.tile([0, 1, 0, 1, 1, 0], n // 6),
            "y": rng.normal(size=n),
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
        }
    )


@pytest.mark.parametrize(
    ("spoil", "covariates", "code", "named"),
    [
        (lambda f: f.assign(x1=f["x1"].where(f.index != 7, np.inf)), None, 3, "'x1' has infinite"),
        (lambda f: f.assign(x2=f["x2"].where(f.index != 3, 1e200)), None, 3, "'x2' cannot be"),
        (lambda f: f.assign(y=f["y"].where(f.index != 2, -np.inf)), None, 3, "'y' has infinite"),
        (
            lambda f: f.assign(student=[f"id{i}" for i in range(len(f))]),
            '["x1", "student"]',
            3,
            "'student' is text with 120 distinct values",
        ),
        (lambda f: f.assign(z=f["z"].where(f.index != 5, 2)), None, 3, "'z' must be binary"),
    ],
)
def test_check_validates_data_values(tmp_path, spoil, covariates, code, named):
    path = data_model(tmp_path, spoil(csv_frame()), covariates or '["x1", "x2"]')
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == code, result.output
    assert named in result.output
    assert "valid" not in result.output


def test_check_accepts_clean_data_and_prints_warnings_verbatim(tmp_path):
    frame = csv_frame().assign(c1="a")  # one level: the encoded column c1[a] is constant
    path = data_model(tmp_path, frame, '["x1", "c1"]')
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output
    assert "c1[a]" in result.output  # rich would have read [a] as markup and dropped it


def test_errors_are_printed_verbatim(tmp_path):
    frame = csv_frame()
    frame["x[bold]1"] = frame.pop("x1")
    path = data_model(tmp_path, frame, '["x[bold]1", "missing[red]"]')
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 3
    assert "'missing[red]'" in result.output


def test_help_lists_one_exit_code_per_error_class():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name, code, _ in EXIT_CODES:
        assert f"{code}  {name}" in result.output
    codes = [code for _, code, _ in EXIT_CODES]
    assert len(codes) == len(set(codes))


def test_fit_refuses_an_out_directory_with_other_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    result = runner.invoke(app, ["fit", str(model_file(tmp_path, 0.5, "m.toml")), "-o", str(out)])
    assert result.exit_code == 5
    assert "thesis.tex" in result.output
    assert (out / "thesis.tex").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mine")] == []
