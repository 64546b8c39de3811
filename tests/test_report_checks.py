"""The report's overlap, balance-comparison and sensitivity sections against direct calls."""

from __future__ import annotations

import re
import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from hierps.balance.overlap import overlap
from hierps.balance.table import balance_table
from hierps.effects.sensitivity import ATT_LABEL, robustness_value, sensitivity
from hierps.effects.sensitivity_r2 import benchmark_r2, sensitivity_r2
from hierps.workflow.analysis import run_analysis
from hierps.workflow.report_checks import REPORT_BOOTSTRAPS, REPORT_LAMBDA, flagged_groups
from hierps.workflow.spec import ModelSpec

SMALL = {
    "name": "small",
    "data": {
        "treatment": "z",
        "group": "school",
        "outcome": "y",
        "unit_covariates": ["x1", "x2"],
        "group_covariates": ["v1"],
        "simulate": {
            "n_groups": 8,
            "group_size": [20, 60],
            "n_unit_covariates": 2,
            "n_group_covariates": 1,
            "seed": 4,
        },
    },
    "map": {"sigma_beta": 0.5},
    "posterior": {"enabled": False},
}


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_analysis(ModelSpec.model_validate(SMALL), out_dir=out)
    return result, out, (out / "report.md").read_text()


def section(report: str, title: str) -> str:
    match = re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", report, flags=re.S | re.M)
    assert match, f"no section {title!r}"
    return match.group(1)


def test_overlap_section_lists_the_flagged_groups(analysis):
    result, out, report = analysis
    table = overlap(result.map_fit)
    flagged = flagged_groups(table)
    text = section(report, "Overlap")
    n_groups = int((table.drop("(all)")["n_treated"] > 0).sum())
    if len(flagged):
        assert f"{len(flagged)} of {n_groups} groups with treated units are flagged" in text
        for group, reasons in flagged["reasons"].items():
            assert f"| {group} |" in text and reasons in text
    else:
        assert "No group" in text
    assert "![overlap](figures/overlap.png)" in text
    saved = pd.read_csv(out / "overlap.csv", index_col="group")
    assert saved["limited_overlap"].sum() == len(flagged)


def test_balance_comparison_section_matches_balance_table(analysis):
    result, out, report = analysis
    text = section(report, "Balance comparison")
    assert "| unweighted |" in text and "| MAP |" in text and "posterior |" not in text
    saved = pd.read_csv(out / "balance_comparison.csv")
    single = balance_table(result.map_fit).global_
    rows = saved[(saved["weighting"] == "MAP") & (saved["scope"] == "global")]
    np.testing.assert_allclose(rows["smd_after"], single["smd_after"])
    unweighted = saved[(saved["weighting"] == "unweighted") & (saved["scope"] == "global")]
    np.testing.assert_allclose(unweighted["smd_after"], single["smd_before"])
    assert "![balance_comparison](figures/balance_comparison.png)" in text


def test_sensitivity_section_reports_bounds_and_robustness(analysis):
    result, out, report = analysis
    text = section(report, "Sensitivity")
    options = {"bootstrap": "refit", "n_bootstrap": REPORT_BOOTSTRAPS, "random_seed": 0}
    robustness = robustness_value(result.map_fit, **options)
    value = robustness.at[ATT_LABEL, "robustness_value"]
    assert f"Robustness value of the ATT: Λ = {value:.2f}" in text
    groups = robustness.drop(ATT_LABEL)["robustness_value"].dropna()
    n_away = int((groups < REPORT_LAMBDA[0]).sum())
    assert f"{n_away} of {len(groups)} CATTs are explained away by Λ < 1.25" in text
    bounds = sensitivity(result.map_fit, Lambda=REPORT_LAMBDA, **options)
    att = bounds[bounds["target"] == ATT_LABEL]
    for lam, lower in zip(att["Lambda"], att["lower"], strict=True):
        assert f"| {lam} | {result.map_fit.att:.3f} | {lower:.3f} |" in text
    saved = pd.read_csv(out / "robustness.csv", index_col="target")
    assert saved.loc[ATT_LABEL, "robustness_value"] == pytest.approx(value)
    assert "![sensitivity](figures/sensitivity.png)" in text


def test_variance_based_subsection_matches_direct_calls(analysis):
    result, out, report = analysis
    text = section(report, "Sensitivity")
    summary = sensitivity_r2(result.map_fit).iloc[0]
    assert f"R² ≥ {summary['r2']:.3f} with ρ = 1" in text
    assert f"R² = ρ² = {summary['robustness_value']:.3f}" in text
    benchmarks = benchmark_r2(result.map_fit)
    saved = pd.read_csv(out / "benchmarks_r2.csv", index_col="covariate")
    np.testing.assert_allclose(saved["r2"], benchmarks["r2"])
    np.testing.assert_allclose(saved["bias"], saved["change"], atol=1e-12)
    assert "![bias_contour](figures/bias_contour.png)" in text


@pytest.mark.slow
def test_balance_comparison_adds_the_posterior_when_sampled(tmp_path):
    spec = {**SMALL, "posterior": {"draws": 100, "tune": 200, "chains": 2, "random_seed": 2}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_analysis(ModelSpec.model_validate(spec), out_dir=tmp_path)
    text = section((tmp_path / "report.md").read_text(), "Balance comparison")
    assert "| posterior |" in text
    saved = pd.read_csv(tmp_path / "balance_comparison.csv")
    rows = saved[(saved["weighting"] == "posterior") & (saved["scope"] == "global")]
    single = balance_table(result.posterior).global_
    np.testing.assert_allclose(rows["smd_after"], single["smd_after"])
