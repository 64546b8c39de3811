"""The hierps command, run for real in a subprocess: outputs, round trip, exit codes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import write

import hierps

SMALL = """
name = "small"
description = "a small simulated study"
[data]
treatment = "z"
group = "school"
outcome = "y"
unit_covariates = ["x1", "x2"]
group_covariates = ["v1"]
[data.simulate]
n_groups = 6
group_size = [20, 40]
n_unit_covariates = 2
n_group_covariates = 1
seed = 4
[map]
sigma_beta = 0.5
pooling_path = [0.1, 1.0, 10.0]
[posterior]
draws = 200
tune = 200
chains = 2
"""


def hierps_command(*arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hierps", *arguments],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_version_prints_the_package_version(tmp_path):
    done = hierps_command("--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"hierps {hierps.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", hierps.__version__)


def test_check_accepts_a_valid_file(tmp_path):
    done = hierps_command("check", str(write(tmp_path, SMALL)))
    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout and "6 groups" in done.stdout


def test_fit_writes_every_output_and_loads_back(tmp_path):
    out = tmp_path / "out"
    done = hierps_command("fit", str(write(tmp_path, SMALL)), "--out", str(out), "--no-sample")
    assert done.returncode == 0, done.stderr
    for name in ("result.nc", "weights.csv", "catt.csv", "balance.csv", "report.md"):
        assert (out / name).stat().st_size > 0, name
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == [
        "balance_comparison.png",
        "bias_contour.png",
        "catt.png",
        "love.png",
        "overlap.png",
        "pooling_path.png",
        "sensitivity.png",
        "weights.png",
    ]
    report = (out / "report.md").read_text()
    assert "## MAP balancing weights" in report and "![love](figures/love.png)" in report
    for section in ("## Overlap", "## Balance comparison", "## Sensitivity"):
        assert section in report, section

    # The saved result gives back the CATT table and weights of a fit in this process.
    from hierps.workflow.analysis import build_model
    from hierps.workflow.spec import load_data, read_spec

    spec = read_spec(tmp_path / "model.toml")
    frame, _ = load_data(spec)
    fit = build_model(spec, frame).fit_map(**spec.map_hyperparameters())
    saved = hierps.load(out / "result.nc")
    pd.testing.assert_series_equal(saved.weights, fit.weights, check_index_type=False, rtol=1e-12)
    pd.testing.assert_frame_equal(saved.catt, fit.catt, check_names=False, check_index_type=False)
    assert saved.att == pytest.approx(fit.att)
    weights_csv = pd.read_csv(out / "weights.csv", index_col="obs")
    assert weights_csv["map_weight"].to_numpy() == pytest.approx(fit.weights.to_numpy())


def test_missing_data_file_exits_2(tmp_path):
    text = SMALL.replace("[data.simulate]", "[unused]").replace(
        "[data]\n", '[data]\npath = "absent.csv"\n'
    )
    text = text.replace(
        "[unused]\nn_groups = 6\ngroup_size = [20, 40]\nn_unit_covariates = 2\n"
        "n_group_covariates = 1\nseed = 4\n",
        "",
    )
    done = hierps_command("check", str(write(tmp_path, text)))
    assert done.returncode == 2
    assert "absent.csv" in done.stderr and "does not exist" in done.stderr


def test_unknown_column_exits_3_with_suggestion(tmp_path):
    done = hierps_command("check", str(write(tmp_path, SMALL.replace('"x2"]', '"x22"]'))))
    assert done.returncode == 3
    assert "'x22'" in done.stderr and "did you mean" in done.stderr


def test_malformed_toml_exits_2(tmp_path):
    done = hierps_command("check", str(write(tmp_path, SMALL + "\n[map\n")))
    assert done.returncode == 2
    assert "not valid TOML" in done.stderr


def test_key_of_wrong_type_exits_2_with_key_and_line(tmp_path):
    done = hierps_command(
        "fit",
        str(write(tmp_path, SMALL.replace("chains = 2", 'chains = "two"'))),
        "--out",
        str(tmp_path / "out"),
    )
    assert done.returncode == 2
    assert "model.toml:22: posterior.chains" in done.stderr.replace("\n", "")


def test_missing_model_file_exits_2(tmp_path):
    done = hierps_command("check", str(tmp_path / "absent.toml"))
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_failed_fit_exits_1(tmp_path):
    text = SMALL.replace("sigma_beta = 0.5", "sigma_beta = 0.5\nmax_iterations = 1")
    done = hierps_command("fit", str(write(tmp_path, text)), "--out", str(tmp_path / "out"))
    assert done.returncode == 1
    assert "fit failed" in done.stderr and "iterations" in done.stderr
